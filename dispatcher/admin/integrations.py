"""The operator's actions on integrations and their encryption keys, for
`dispatcher keys|secrets|integrations` (integrations_cli.py): key checks, the queries, the
re-encryption and the manual health check. Secrets are never returned, only counts and
statuses (a new key is returned by `new_key`: printing it is its purpose)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from dispatcher import db
from dispatcher.crypto import KeyFormatError, Keyring, generate_key
from dispatcher.errors import ConfigError, InvalidInput, NotFound
from dispatcher.integrations.health_checks import Recorded
from dispatcher.integrations.reencrypt import Report, reencrypt
from dispatcher.integrations.worker import IntegrationsWorker, load_keyring
from dispatcher.progress import Progress
from dispatcher.queries import query
from dispatcher.settings import Settings

Row = dict[str, Any]


def new_key(key_id: str | None) -> str:
    """A new key entry `key-id:base64` (the id defaults to k<YYYYMMDD>)."""
    try:
        return generate_key(key_id or f"k{dt.datetime.now(dt.UTC):%Y%m%d}")
    except KeyFormatError as exc:
        raise InvalidInput(str(exc)) from None


def keyring(settings: Settings) -> Keyring:
    """The configured keys (possibly none); ConfigError when one does not parse."""
    try:
        return load_keyring(settings)
    except KeyFormatError as exc:
        raise ConfigError(str(exc)) from None


def required_keyring(settings: Settings) -> Keyring:
    """The configured keys; ConfigError when there are none."""
    keys = keyring(settings)
    if not keys:
        raise ConfigError(
            "no encryption key configured: set DISPATCHER_ENCRYPTION_KEYS "
            "(create one with `dispatcher keys generate`)"
        )
    return keys


async def reencrypt_all(
    settings: Settings,
    keys: Keyring,
    *,
    rotate: bool,
    batch: int,
    progress: Callable[[int | None], Progress] | None = None,
) -> Report:
    """Encrypt every plaintext secret (rotate: re-encrypt every one) under the primary key."""
    conn = await db.connect(settings)
    async with conn:
        return await reencrypt(conn, keys, rotate=rotate, batch=batch, progress=progress)


async def list_integrations(settings: Settings, org: uuid.UUID | None) -> list[Row]:
    """Integrations with their status, health, token and failover role (all, or one org's)."""
    conn = await db.connect(settings)
    async with conn:
        cur = await conn.execute(query("integ_list"), {"org_id": org})
        return [dict(r) for r in await cur.fetchall()]


async def check_now(settings: Settings, integration_id: uuid.UUID) -> tuple[Row, Recorded | None]:
    """Probe one integration now (recorded as manual): its row, and the recorded result (None
    when there is nothing to probe). NotFound for a missing or deleted integration."""
    keys = keyring(settings)
    pool = await db.open_pool(settings)
    try:
        async with pool.connection() as conn:
            cur = await conn.execute(
                query("integ_load_integration"), {"integration_id": integration_id}
            )
            row = await cur.fetchone()
        if row is None or row["deleted_at"] is not None:
            raise NotFound(f"no integration with id {integration_id}")
        async with IntegrationsWorker(settings, pool, keyring=keys) as worker:
            rec = await worker.check(integration_id, "manual")
    finally:
        await pool.close()
    return dict(row), rec
