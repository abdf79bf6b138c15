"""Integration events, published through the host's ``publish_event()`` (6-argument form).

Types: ``integration.oauth.expired``, ``integration.health.degraded|unhealthy|recovered``,
``integration.failover``, ``integration.failover.skipped`` and ``integration.recovered``. The
payload names the integration (id, org, type, provider, name) plus what happened; never a token
or a secret. Call inside the transaction that makes the change, so both commit together.

``publish_or_log`` is what the workers call: the event goes out in a savepoint, so when the
host's ``publish_event`` fails (a missing grant, a host trigger, a constraint) the change it
announces (a health log, a status, a failover) still commits; the lost event is logged
(``integration_event_not_published``) and counted (``NOT_PUBLISHED``, exported as the metric
``dispatcher_integration_events_not_published``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.types.json import Jsonb

from dispatcher.queries import query

OAUTH_EXPIRED = "integration.oauth.expired"
HEALTH_DEGRADED = "integration.health.degraded"
HEALTH_UNHEALTHY = "integration.health.unhealthy"
HEALTH_RECOVERED = "integration.health.recovered"
FAILOVER = "integration.failover"
FAILOVER_SKIPPED = "integration.failover.skipped"
RECOVERED = "integration.recovered"

log = structlog.get_logger("dispatcher.integrations.events")

# Events the host's publish_event refused, by event type, since the process started.
NOT_PUBLISHED: Counter[str] = Counter()


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


async def publish_or_log(
    conn: psycopg.AsyncConnection[Any],
    event_type: str,
    *,
    org_id: UUID,
    aggregate_id: UUID,
    payload: dict[str, Any],
) -> UUID | None:
    """``publish`` in a savepoint of the caller's transaction; None (logged, counted) when the
    host's publish_event fails, leaving the caller's transaction usable."""
    try:
        async with conn.transaction():
            return await publish(
                conn, event_type, org_id=org_id, aggregate_id=aggregate_id, payload=payload
            )
    except psycopg.Error as exc:
        NOT_PUBLISHED[event_type] += 1
        log.warning(
            "integration_event_not_published",
            event_type=event_type,
            integration_id=str(aggregate_id),
            org_id=str(org_id),
            error=type(exc).__name__,
            sqlstate=exc.sqlstate,
            reason=exc.diag.message_primary,
        )
        return None


async def mark_error(
    conn: psycopg.AsyncConnection[Any], integration_id: UUID, message: str
) -> bool:
    """Set the integration `error` with ``message``; False when it already said exactly that."""
    cur = await conn.execute(
        query("integ_integration_error"), {"integration_id": integration_id, "message": message}
    )
    return await cur.fetchone() is not None
