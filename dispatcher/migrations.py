"""Numbered, forward-only SQL migrations, applied under an advisory lock.

Files `sql/migrations/NNNN_name.sql` ship inside the package. Each is applied
in its own transaction and recorded in `dispatcher.schema_migrations`; running
`migrate` twice changes nothing, and concurrent runs wait on one another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from dispatcher.errors import SchemaBehind

LOCK_KEY = 0x64697370  # "disp": the advisory lock serialising migrations

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in order."""
    folder = resources.files("dispatcher").joinpath("sql/migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda mig: mig.version)
    versions = [mig.version for mig in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {versions}")
    return found


_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS dispatcher;
CREATE TABLE IF NOT EXISTS dispatcher.schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


async def applied_versions(conn: psycopg.AsyncConnection[Any]) -> set[int]:
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute("SELECT to_regclass('dispatcher.schema_migrations') IS NOT NULL")
    row = await cur.fetchone()
    if not row or not row[0]:
        return set()
    await cur.execute("SELECT version FROM dispatcher.schema_migrations")
    return {int(r[0]) for r in await cur.fetchall()}


async def pending(conn: psycopg.AsyncConnection[Any]) -> list[Migration]:
    done = await applied_versions(conn)
    return [m for m in available() if m.version not in done]


async def check_current(conn: psycopg.AsyncConnection[Any]) -> None:
    """Raise SchemaBehind naming the pending migrations, if any."""
    todo = await pending(conn)
    if todo:
        names = ", ".join(f"{m.version:04d}_{m.name}" for m in todo)
        raise SchemaBehind(
            f"the database schema is behind ({len(todo)} pending migration(s): {names}); "
            "run `dispatcher migrate` first"
        )


async def apply_migrations(conninfo: str) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when current)."""
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            async with conn.transaction():
                await conn.execute(_BOOKKEEPING)
            for mig in await pending(conn):
                async with conn.transaction():
                    await conn.execute(sql.SQL(mig.sql))  # type: ignore[arg-type,unused-ignore]
                    await conn.execute(
                        "INSERT INTO dispatcher.schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
                applied.append(f"{mig.version:04d}_{mig.name}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied
