"""Integration events, published through the host's ``publish_event()`` (6-argument form).

Types: ``integration.oauth.expired``, ``integration.health.degraded|unhealthy|recovered``,
``integration.failover``, ``integration.failover.skipped`` and ``integration.recovered``. The
payload names the integration (id, org, type, provider, name) plus what happened; never a token
or a secret. Call inside the transaction that makes the change, so both commit together.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

from dispatcher.queries import query

OAUTH_EXPIRED = "integration.oauth.expired"
HEALTH_DEGRADED = "integration.health.degraded"
HEALTH_UNHEALTHY = "integration.health.unhealthy"
HEALTH_RECOVERED = "integration.health.recovered"
FAILOVER = "integration.failover"
FAILOVER_SKIPPED = "integration.failover.skipped"
RECOVERED = "integration.recovered"


def describe(row: dict[str, Any]) -> dict[str, Any]:
    """The integration part of a payload, from a row with id/org_id/type/provider/name."""
    return {
        "integration_id": str(row["id"]),
        "org_id": str(row["org_id"]),
        "integration_type": row.get("type"),
        "provider": row.get("provider"),
        "name": row.get("name"),
    }


async def publish(
    conn: psycopg.AsyncConnection[Any],
    event_type: str,
    *,
    org_id: UUID,
    aggregate_id: UUID,
    payload: dict[str, Any],
) -> UUID:
    cur = await conn.execute(
        query("integ_publish_event"),
        {
            "type": event_type,
            "aggregate_id": aggregate_id,
            "payload": Jsonb(payload),
            "org_id": org_id,
        },
    )
    row = await cur.fetchone()
    assert row is not None
    return UUID(str(row["event_id"]))


async def mark_error(
    conn: psycopg.AsyncConnection[Any], integration_id: UUID, message: str
) -> bool:
    """Set the integration `error` with ``message``; False when it already said exactly that."""
    cur = await conn.execute(
        query("integ_integration_error"), {"integration_id": integration_id, "message": message}
    )
    return await cur.fetchone() is not None
