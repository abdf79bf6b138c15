"""Generate ``dispatcher/sql/schema.sql``: the schema as the migrations leave it on a host.

``scripts/schema-dump`` (``PYTHONPATH=tests python -m support.schema_dump``) starts a throwaway
cluster, creates a database from the host's real SQL (``tests/integration/host_schema.sql``,
as ``host_db_dsn`` does), dumps it with ``pg_dump --schema-only``, applies every migration as
the host's non-superuser owner, dumps again, and writes what the migrations made: everything
in schema ``dispatcher`` and every object they added to (or changed in) the host's ``public``
schema: intake and status triggers, indexes. ``tests/integration/test_schema_sql.py`` runs the
same generation and fails when the committed file differs.

Normalised so that PostgreSQL 15, 16 and 18 give the same text (the version matrix of
scripts/test): no header naming versions, no ``SET`` lines, no ``\\restrict`` keys (pg_dump
since 18, 17.6, 16.10, 15.14), no owners, PostgreSQL 18's names of NOT NULL constraints
(``CONSTRAINT attempts_id_not_null NOT NULL``) left out, spaces collapsed in default ACLs.
The day partitions ``dispatcher.attempts_pYYYYMMDD`` are left out: ``migrate`` creates them for
the days around the day it runs (ensure_attempt_partitions_v1), so they are data, not schema.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import hostdb

from dispatcher.migrations import apply_migrations, available

from .pg import PgCluster

REPO = Path(__file__).resolve().parents[2]
SCHEMA_SQL = REPO / "dispatcher" / "sql" / "schema.sql"
REGENERATE = "scripts/schema-dump"
DAY_PARTITIONS = "dispatcher.attempts_p[0-9]*"

# pg_dump's session settings, emitted before the first entry and between entries.
_SETTINGS = re.compile(
    r"^SET (statement_timeout|lock_timeout|idle_in_transaction_session_timeout|"
    r"transaction_timeout|client_encoding|standard_conforming_strings|check_function_bodies|"
    r"xmloption|client_min_messages|row_security|default_tablespace|"
    r"default_table_access_method|default_with_oids) = .*;$"
)
_HEADER = re.compile(
    r"^--\n-- Name: (?P<name>.*); Type: (?P<type>.*); Schema: (?P<schema>.*); Owner: .*\n--\n",
    re.MULTILINE,
)
_NAMED_NOT_NULL = re.compile(r" CONSTRAINT \S+ NOT NULL\b")  # PostgreSQL 18
_SPACES_BEFORE_TO = re.compile(r"  +TO ")  # pg_dump 15 writes "ON TABLES  TO anon"


@dataclass(frozen=True)
class Entry:
    """One object of a dump: pg_dump's ``-- Name: ...; Type: ...; Schema: ...`` and its SQL."""

    schema: str
    type: str
    name: str
    sql: str

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.schema, self.type, self.name)

    def render(self, note: str = "") -> str:
        where = "" if self.schema == "-" else f" (schema {self.schema})"
        head = f"-- {self.type} {self.name}{where}{note}"
        return f"--\n{head}\n--\n\n{self.sql}\n"


def pg_dump(cluster: PgCluster, dbname: str) -> str:
    """``pg_dump --schema-only --no-owner`` of ``dbname``, by the cluster's own pg_dump (its
    version: an older pg_dump refuses a newer server)."""
    argv = [
        str(cluster.bindir / "pg_dump"),
        "--schema-only",
        "--no-owner",
        f"--exclude-table={DAY_PARTITIONS}",
        "--dbname",
        cluster.dsn(dbname),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pg_dump of {dbname} exited {done.returncode}: {done.stderr}")
    return done.stdout


def normalise(dump: str) -> str:
    """The dump without what differs between PostgreSQL versions or runs (module docstring)."""
    lines = []
    for line in dump.splitlines():
        if line.startswith(("\\restrict ", "\\unrestrict ", "-- Dumped from ", "-- Dumped by ")):
            continue
        if line.startswith("SELECT pg_catalog.set_config('search_path', '', false);"):
            continue
        if _SETTINGS.match(line):
            continue
        line = _NAMED_NOT_NULL.sub(" NOT NULL", line)
        lines.append(_SPACES_BEFORE_TO.sub(" TO ", line))
    return "\n".join(lines) + "\n"


def entries(dump: str) -> list[Entry]:
    """The objects of a normalised plain-format dump, in pg_dump's order (dependencies first)."""
    found: list[Entry] = []
    matches = list(_HEADER.finditer(dump))
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(dump)
        body = dump[m.end() : end]
        body = body.split("\n--\n-- PostgreSQL database dump complete\n--", 1)[0]
        found.append(
            Entry(m["schema"], m["type"], m["name"], re.sub(r"\n{3,}", "\n\n", body).strip())
        )
    return found


def dispatcher_part(host: list[Entry], migrated: list[Entry]) -> str:
    """schema.sql: the objects of ``migrated`` that are the dispatcher's (schema dispatcher),
    or new or changed against ``host`` (the host's schema before any migration)."""
    before = {e.key: e for e in host}
    after = {e.key for e in migrated}
    ours: list[str] = []
    added: list[str] = []
    for entry in migrated:
        old = before.get(entry.key)
        if entry.schema == "dispatcher" or entry.key == ("-", "SCHEMA", "dispatcher"):
            ours.append(entry.render())
        elif old is None:
            added.append(entry.render())
        elif old.sql != entry.sql:
            added.append(entry.render(": changed by the migrations"))
    gone = [f"-- {e.type} {e.name} (schema {e.schema})" for e in host if e.key not in after]
    last = available()[-1]
    parts = [
        _preamble(f"{last.version:04d}_{last.name}"),
        _section("Schema dispatcher"),
        *ours,
        _section("Added to the host's schema public"),
        *added,
    ]
    if gone:
        parts += [_section("Host objects the migrations dropped"), "\n".join(gone) + "\n"]
    return "\n\n".join(p.rstrip("\n") for p in parts) + "\n"


def _preamble(last_migration: str) -> str:
    return f"""\
-- GENERATED by {REGENERATE} (tests/support/schema_dump.py): do not edit by hand.
--
-- The dispatcher's schema as the migrations (up to {last_migration}) leave a host database:
-- every object of schema dispatcher, then what the migrations add to the host's schema public
-- (the intake trigger on events, triggers and indexes on webhooks and webhook_deliveries).
-- Read it to see the current definitions without replaying dispatcher/sql/migrations/; a
-- database gets this schema from `dispatcher migrate`, never from this file. pg_dump
-- --schema-only --no-owner of a database made from tests/integration/host_schema.sql and
-- migrated as the host's owner, in pg_dump's order (what an object needs comes before it),
-- without the host's own objects. Left out: the day partitions dispatcher.attempts_pYYYYMMDD
-- (`migrate` makes them for the days around its run; attempts_default shows their shape)."""


def _section(title: str) -> str:
    bar = "-- " + "=" * 76
    return f"{bar}\n-- {title}\n{bar}"


def generate(cluster: PgCluster) -> str:
    """schema.sql's text, made in two new databases of a running ``cluster`` (dropped after)."""
    suffix = uuid.uuid4().hex[:12]
    host_db, migrated_db = f"schema_host_{suffix}", f"schema_migrated_{suffix}"
    try:
        cluster.create_database(host_db)
        with cluster.connect(host_db) as conn:
            conn.execute(hostdb.host_schema_sql(conn))
        host = entries(normalise(pg_dump(cluster, host_db)))
        cluster.create_database(migrated_db, template=host_db)
        with cluster.connect() as conn:
            conn.execute(f'ALTER DATABASE "{migrated_db}" OWNER TO {hostdb.HOST_OWNER}')
        asyncio.run(apply_migrations(cluster.dsn(migrated_db, user=hostdb.HOST_OWNER)))
        migrated = entries(normalise(pg_dump(cluster, migrated_db)))
    finally:
        cluster.drop_database(migrated_db)
        cluster.drop_database(host_db)
    return dispatcher_part(host, migrated)


def stale_message(committed: str, fresh: str, context_lines: int = 3, limit: int = 80) -> str:
    """Why the committed schema.sql is stale: the command that regenerates it and the diff."""
    diff = list(
        difflib.unified_diff(
            committed.splitlines(),
            fresh.splitlines(),
            "dispatcher/sql/schema.sql (committed)",
            "as the migrations leave the schema",
            n=context_lines,
            lineterm="",
        )
    )
    shown = "\n".join(diff[:limit])
    more = f"\n... {len(diff) - limit} more diff lines" if len(diff) > limit else ""
    return (
        f"dispatcher/sql/schema.sql is out of date with the migrations: run `{REGENERATE}` "
        f"and commit the result.\n{shown}{more}"
    )


def main() -> int:
    """Write schema.sql (``--check``: exit 1 with the diff when it is out of date instead)."""
    check = sys.argv[1:] == ["--check"]
    if sys.argv[1:] not in ([], ["--check"]):
        print(f"usage: {REGENERATE} [--check]", file=sys.stderr)
        return 2
    cluster = PgCluster()
    try:
        cluster.start()
        fresh = generate(cluster)
    finally:
        cluster.cleanup()
    committed = SCHEMA_SQL.read_text() if SCHEMA_SQL.exists() else ""
    if check:
        if committed != fresh:
            print(stale_message(committed, fresh), file=sys.stderr)
            return 1
        print(f"{SCHEMA_SQL.relative_to(REPO)} is up to date")
        return 0
    SCHEMA_SQL.write_text(fresh)
    state = "unchanged" if committed == fresh else "written"
    print(f"{SCHEMA_SQL.relative_to(REPO)} {state} ({len(fresh.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
