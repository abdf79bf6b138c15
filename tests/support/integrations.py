"""Host-side helpers for the integration tests: integrations, tokens, failover configs, the
CLI as a subprocess. The fixtures are in ``support.integration_fixtures`` (a pytest plugin:
``pytest_plugins = ("support.integration_fixtures",)`` in the test module).
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

Conn = psycopg.AsyncConnection[Any]

KEY_1 = secrets.token_bytes(32)
KEY_2 = secrets.token_bytes(32)


def key_entry(kid: str, key: bytes) -> str:
    return f"{kid}:{base64.b64encode(key).decode()}"


KEYS_1 = key_entry("k1", KEY_1)
KEYS_2_1 = f"{key_entry('k2', KEY_2)},{KEYS_1}"

# Fast settings for tests: small intervals, short timeouts, loopback allowed (conftest).
FAST: dict[str, Any] = {
    "metrics_address": "",
    "log_format": "json",
    "encryption_keys": KEYS_1,
    "pool_min_size": 1,
    "pool_max_size": 4,
    "integrations_poll_seconds": 0.2,
    "integrations_http_timeout": 3.0,
    "oauth_retry_base_seconds": 0.2,
    "oauth_retry_max_seconds": 1.0,
    "health_check_interval_seconds": 300.0,
    "health_check_jitter": 0.0,
    "health_check_timeout_seconds": 1.0,
    "health_check_slow_ms": 300,
}


async def create_integration(
    conn: Conn,
    org: uuid.UUID,
    *,
    provider: str = "google",
    type: str = "calendar",
    name: str = "Calendar",
    config: dict[str, Any] | None = None,
    status: str = "active",
) -> uuid.UUID:
    cur = await conn.execute(
        "INSERT INTO integrations (org_id, type, provider, name, config, status) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (org, type, provider, name, Jsonb(config or {}), status),
    )
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


async def create_token(
    conn: Conn,
    org: uuid.UUID,
    integration_id: uuid.UUID,
    *,
    access: str,
    refresh: str | None,
    provider: str = "google",
    expires_in: float = 60.0,
    scope: str | None = "openid email",
    status: str = "active",
    refresh_expires_at: datetime | None = None,
) -> uuid.UUID:
    cur = await conn.execute(
        "INSERT INTO integration_oauth_tokens (org_id, integration_id, provider, access_token, "
        "refresh_token, scope, expires_at, status, refresh_expires_at) "
        "VALUES (%s, %s, %s, %s, %s, %s, now() + make_interval(secs => %s), %s, %s) RETURNING id",
        (
            org,
            integration_id,
            provider,
            access,
            refresh,
            scope,
            expires_in,
            status,
            refresh_expires_at,
        ),
    )
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


async def create_failover(
    conn: Conn,
    org: uuid.UUID,
    integration_type: str,
    primary: uuid.UUID,
    backup: uuid.UUID | None,
    **values: Any,
) -> uuid.UUID:
    cols = [
        "org_id",
        "integration_type",
        "primary_integration_id",
        "backup_integration_id",
        *values,
    ]
    params = [org, integration_type, primary, backup, *values.values()]
    cur = await conn.execute(
        f"INSERT INTO integration_failover_config ({', '.join(cols)}) "
        f"VALUES ({', '.join(['%s'] * len(cols))}) RETURNING id",
        params,
    )
    row = await cur.fetchone()
    assert row is not None
    return uuid.UUID(str(row["id"]))


async def one(conn: Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None, f"no row for {sql} {params}"
    return dict(row)


async def integration(conn: Conn, integration_id: uuid.UUID) -> dict[str, Any]:
    return await one(conn, "SELECT * FROM integrations WHERE id = %s", (integration_id,))


async def token(conn: Conn, token_id: uuid.UUID) -> dict[str, Any]:
    return await one(conn, "SELECT * FROM integration_oauth_tokens WHERE id = %s", (token_id,))


async def health_logs(conn: Conn, integration_id: uuid.UUID) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT * FROM integration_health_logs WHERE integration_id = %s ORDER BY created_at, id",
        (integration_id,),
    )
    return [dict(r) for r in await cur.fetchall()]


async def events_of(conn: Conn, aggregate_id: uuid.UUID | None = None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT * FROM events WHERE event_type LIKE 'integration.%%' "
        "AND (%s::uuid IS NULL OR aggregate_id = %s::uuid) ORDER BY created_at, ctid",
        (aggregate_id, aggregate_id),
    )
    return [dict(r) for r in await cur.fetchall()]


async def failover_config(conn: Conn, config_id: uuid.UUID) -> dict[str, Any]:
    return await one(conn, "SELECT * FROM integration_failover_config WHERE id = %s", (config_id,))


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float = 15.0, what: str = "condition"
) -> Any:
    """Poll ``check`` until it returns something truthy; AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout}s for {what}; last value: {value!r}")
        await asyncio.sleep(0.05)


async def run_cli(dsn: str, *args: str, keys: str | None = None) -> tuple[int, str, str]:
    """`python -m dispatcher ARGS` against ``dsn``: (exit code, stdout, stderr)."""
    env = {**os.environ, "DISPATCHER_DATABASE_URL": dsn, "DISPATCHER_LOG_FORMAT": "json"}
    if keys is not None:
        env["DISPATCHER_ENCRYPTION_KEYS"] = keys
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def in_past(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)
