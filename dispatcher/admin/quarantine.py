"""Events stuck before fan-out, for `dispatcher quarantine` (quarantine_cli.py): the queries
of sql/quarantine.sql over one connection."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from dispatcher.admin.api import Conn, Row
from dispatcher.queries import query


async def list_stuck(conn: Conn, *, limit: int) -> list[Row]:
    """Quarantined events, and outbox events the database role cannot read."""
    cur = await conn.execute(query("quarantine_list"), {"limit": limit})
    return [dict(r) for r in await cur.fetchall()]


async def retry(conn: Conn, ids: Sequence[UUID] | None) -> int:
    """Put quarantined events (`ids`, or all of them with None) back in the outbox."""
    cur = await conn.execute(query("quarantine_retry"), {"ids": ids})
    row = await cur.fetchone()
    return int(row["retried"]) if row else 0
