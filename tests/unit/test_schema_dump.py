"""How tests/support/schema_dump.py turns two pg_dump outputs (the host's schema before and
after the migrations) into dispatcher/sql/schema.sql; the real dumps are compared in
tests/integration/test_schema_sql.py."""

from __future__ import annotations

from support.schema_dump import Entry, dispatcher_part, entries, normalise, stale_message

PG18_DUMP = """\
--
-- PostgreSQL database dump
--

\\restrict IJNIGvpl5LRHE7r0MsHVJPdfPio0OtepdbRuHkpfDbnXS1ugdqVawpEYVceA4o0

-- Dumped from database version 18.6
-- Dumped by pg_dump version 18.6

SET statement_timeout = 0;
SET transaction_timeout = 0;
SELECT pg_catalog.set_config('search_path', '', false);

--
-- Name: outbox; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.outbox (
    id bigint CONSTRAINT outbox_id_not_null NOT NULL,
    note text
);


SET default_tablespace = '';

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: -
--

ALTER DEFAULT PRIVILEGES FOR ROLE host_owner IN SCHEMA public GRANT ALL ON TABLES  TO anon;


--
-- PostgreSQL database dump complete
--

\\unrestrict IJNIGvpl5LRHE7r0MsHVJPdfPio0OtepdbRuHkpfDbnXS1ugdqVawpEYVceA4o0
"""


def test_normalise_drops_what_differs_by_version_and_run() -> None:
    text = normalise(PG18_DUMP)
    for gone in ("\\restrict", "\\unrestrict", "Dumped", "SET ", "set_config", "_not_null"):
        assert gone not in text
    assert "    id bigint NOT NULL,\n" in text
    assert "GRANT ALL ON TABLES TO anon;" in text


def test_entries_are_split_at_pg_dump_headers_without_the_trailer() -> None:
    found = entries(normalise(PG18_DUMP))
    assert [e.key for e in found] == [
        ("dispatcher", "TABLE", "outbox"),
        ("public", "DEFAULT ACL", "DEFAULT PRIVILEGES FOR TABLES"),
    ]
    assert found[0].sql.startswith("CREATE TABLE dispatcher.outbox (")
    assert found[1].sql == (
        "ALTER DEFAULT PRIVILEGES FOR ROLE host_owner IN SCHEMA public GRANT ALL ON TABLES TO anon;"
    )


def _entry(schema: str, type_: str, name: str, sql: str = "") -> Entry:
    return Entry(schema, type_, name, sql or f"-- {name}")


def test_schema_sql_holds_ours_and_what_the_migrations_added_or_changed_on_the_host() -> None:
    events = _entry("public", "TABLE", "events", "CREATE TABLE public.events ();")
    policy = _entry("public", "FUNCTION", "user_is_admin()", "CREATE FUNCTION a();")
    dropped = _entry("public", "VIEW", "old_view")
    host = [events, policy, dropped]
    migrated = [
        _entry("-", "SCHEMA", "dispatcher", "CREATE SCHEMA dispatcher;"),
        events,
        _entry("public", "FUNCTION", "user_is_admin()", "CREATE FUNCTION b();"),
        _entry("dispatcher", "FUNCTION", "intake_events_v1()", "CREATE FUNCTION intake();"),
        _entry("public", "TRIGGER", "events dispatcher_intake", "CREATE TRIGGER intake;"),
    ]
    text = dispatcher_part(host, migrated)
    assert "CREATE TABLE public.events" not in text  # the host's, unchanged
    ours, added = text.split("-- Added to the host's schema public")
    assert "CREATE SCHEMA dispatcher;" in ours
    assert "CREATE FUNCTION intake();" in ours
    assert "-- TRIGGER events dispatcher_intake (schema public)\n" in added
    assert "user_is_admin() (schema public): changed by the migrations" in added
    assert "CREATE FUNCTION b();" in added
    assert "-- VIEW old_view (schema public)" in added.split("dropped")[1]


def test_a_stale_file_is_reported_with_the_command_that_regenerates_it() -> None:
    message = stale_message("CREATE TABLE a ();\n", "CREATE TABLE b ();\n")
    assert "run `scripts/schema-dump`" in message
    assert "-CREATE TABLE a ();" in message
    assert "+CREATE TABLE b ();" in message
