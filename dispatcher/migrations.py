"""Numbered, forward-only SQL migrations, applied under an advisory lock.

Files `sql/migrations/NNNN_name.sql` ship inside the package. Each is applied
in its own transaction and recorded in `dispatcher.schema_migrations`; running
`migrate` twice changes nothing, and concurrent runs wait on one another. Locks on
the host's tables are taken with a short lock_timeout and retried a few times, so an
open host transaction makes `migrate` fail clearly instead of queueing the host behind it.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from dispatcher.errors import InvalidIndex, MigrationBlocked, SchemaBehind
from dispatcher.queries import query

LOCK_KEY = 0x64697370  # "disp": the advisory lock serialising migrations

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


# `CREATE INDEX IF NOT EXISTS <name>`: an index a migration ships that an operator may have
# built beforehand with CREATE INDEX CONCURRENTLY, as the migration's header suggests.
_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?IF\s+NOT\s+EXISTS\s+([a-z_][a-z0-9_]*)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def indexes(self) -> list[str]:
        """Names of the indexes this migration creates with IF NOT EXISTS."""
        return [m.group(1) for m in _INDEX.finditer(self.sql)]


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


# How long one migration statement may wait for a lock before it gives up (the host's
# publishers queue behind a waiting ALTER TABLE, so it must never wait long), and how many
# times a blocked migration is tried again, with a growing pause, before `migrate` fails.
LOCK_TIMEOUT_MS = 2000
LOCK_ATTEMPTS = 5
RETRY_PAUSE = 0.5  # seconds, doubled after each blocked try


async def apply_migrations(
    conninfo: str,
    *,
    lock_timeout_ms: int = LOCK_TIMEOUT_MS,
    attempts: int = LOCK_ATTEMPTS,
    retry_pause: float = RETRY_PAUSE,
) -> list[str]:
    """Apply every pending migration; returns the names applied (empty when current).

    Each migration takes its locks with a short ``lock_timeout``: when another transaction
    holds a lock it needs (an open host transaction on ``events``...), it gives up at once
    instead of queueing every ``publish_event()`` behind it, and is tried again up to
    ``attempts`` times; then MigrationBlocked says which migration and what to do.
    """
    applied: list[str] = []
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        # Concurrent `migrate` runs wait on one another here (they block no host statement).
        await conn.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        try:
            await conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(lock_timeout_ms)}ms"))
            )
            await _in_turns(conn, _BOOKKEEPING, None, lock_timeout_ms, attempts, retry_pause)
            for mig in await pending(conn):
                await _in_turns(conn, mig.sql, mig, lock_timeout_ms, attempts, retry_pause)
                applied.append(f"{mig.version:04d}_{mig.name}")
        finally:
            await conn.execute("RESET lock_timeout")
            await conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    return applied


async def _in_turns(
    conn: psycopg.AsyncConnection[Any],
    text: str,
    mig: Migration | None,
    lock_timeout_ms: int,
    attempts: int,
    pause: float,
) -> None:
    """Run one migration in its own transaction, again after a pause when a lock was busy."""
    what = f"migration {mig.version:04d}_{mig.name}" if mig else "the migrations table"
    for attempt in range(1, max(attempts, 1) + 1):
        try:
            async with conn.transaction():
                await conn.execute(sql.SQL(text))  # type: ignore[arg-type,unused-ignore]  # our own file's text, not a LiteralString
                if mig is not None:
                    # IF NOT EXISTS skipped an invalid index of that name: not recorded, so
                    # `migrate` builds it once the operator has dropped or rebuilt it.
                    await _check_indexes(conn, mig.indexes, mig)
                    await conn.execute(
                        "INSERT INTO dispatcher.schema_migrations (version, name) VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
            return
        except psycopg.errors.LockNotAvailable as exc:
            if attempt >= attempts:
                detail = (exc.diag.context or "").strip().splitlines()
                where = f" ({detail[-1].strip()})" if detail else ""
                raise MigrationBlocked(
                    f"{what} could not take its locks: another transaction held them past "
                    f"lock_timeout ({lock_timeout_ms} ms) in each of {attempts} tries{where}. "
                    "Nothing of it was applied and the host was not kept waiting. Find the "
                    "holder with pg_stat_activity / pg_locks (a long or idle-in-transaction "
                    "session), let it finish, then run `dispatcher migrate` again"
                ) from None
            await asyncio.sleep(pause)
            pause *= 2


async def _invalid(
    conn: psycopg.AsyncConnection[Any], names: list[str]
) -> list[tuple[str, str, bool]]:
    """(index, table, still being built) for each of `names` PostgreSQL marks invalid."""
    if not names:
        return []
    cur = conn.cursor(row_factory=tuple_row)
    await cur.execute(query("db_invalid_indexes"), {"names": names})
    return [(str(r[0]), str(r[1]), bool(r[2])) for r in await cur.fetchall()]


def _describe(bad: list[tuple[str, str, bool]], drop_also: bool) -> str:
    parts = []
    for index, table, building in bad:
        if building:
            parts.append(
                f"{index} (on {table}) is still being built by a CREATE INDEX CONCURRENTLY: "
                "let it finish"
            )
        else:
            fix = f"REINDEX INDEX CONCURRENTLY {index}"
            if drop_also:
                fix += f" (or DROP INDEX CONCURRENTLY {index}, and `migrate` builds it)"
            parts.append(
                f"{index} (on {table}) is invalid: a CREATE INDEX CONCURRENTLY of that name "
                f"failed or was interrupted, and no query uses it; rebuild it without blocking "
                f"writes: {fix}"
            )
    return "; ".join(parts)


async def _check_indexes(
    conn: psycopg.AsyncConnection[Any], names: list[str], mig: Migration
) -> None:
    """Raise InvalidIndex when an index `mig` creates IF NOT EXISTS exists but is invalid:
    the statement skipped it, so recording the migration would leave it so for good."""
    bad = await _invalid(conn, names)
    if bad:
        raise InvalidIndex(
            f"migration {mig.version:04d}_{mig.name} was not applied: index "
            f"{_describe(bad, drop_also=True)}; then run `dispatcher migrate` again"
        )


async def invalid_index_warnings(conninfo: str) -> list[str]:
    """One line per index of an applied migration that PostgreSQL marks invalid (left so by
    an interrupted CREATE INDEX CONCURRENTLY, or still being built by one), with its fix.
    Queries work without it, only slower: `migrate` prints these as warnings."""
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
        done = await applied_versions(conn)
        names = [i for m in available() if m.version in done for i in m.indexes]
        return [f"index {_describe([b], drop_also=False)}" for b in await _invalid(conn, names)]
