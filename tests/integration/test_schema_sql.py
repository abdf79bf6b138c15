"""dispatcher/sql/schema.sql is the schema the migrations make: regenerated here from a fresh
host database migrated as the host's owner, and compared with the committed file. Runs on every
PostgreSQL of the version matrix (pgmatrix): the generator normalises what pg_dump 15, 16 and 18
write differently, so all of them must give the committed text."""

from __future__ import annotations

from support import schema_dump
from support.pg import PgCluster


def test_committed_schema_sql_is_what_the_migrations_make(pg_cluster: PgCluster) -> None:
    fresh = schema_dump.generate(pg_cluster)
    committed = schema_dump.SCHEMA_SQL.read_text()
    assert committed == fresh, schema_dump.stale_message(committed, fresh)


def test_schema_sql_shows_the_intake_path_and_not_the_host_tables() -> None:
    text = schema_dump.SCHEMA_SQL.read_text()
    assert "CREATE FUNCTION dispatcher.intake_events_v1() RETURNS trigger" in text
    assert "CREATE TRIGGER dispatcher_intake AFTER INSERT ON public.events" in text
    assert "CREATE TABLE dispatcher.outbox (" in text
    assert "CREATE TABLE public." not in text  # the host's own tables are left out
    assert "CREATE TABLE dispatcher.attempts_p2" not in text  # day partitions: data, not schema
