"""Failover between a primary and a backup integration (``integration_failover_config``).

Evaluated after every health check of a primary, inside the check's transaction (the config
row is locked, so replicas never flip it twice):

* ``current_active = 'primary'``, ``auto_failover`` on and the primary has failed
  ``failover_threshold`` consecutive checks: switch to the backup (``last_failover_at``,
  ``failover_count + 1``, event ``integration.failover``) - unless the backup is unusable
  (missing, deleted, inactive, status ``error`` or health ``unhealthy``): then stay, log
  ``failover_skipped`` and publish ``integration.failover.skipped`` once per outage (when the
  count reaches the threshold). A later check fails over as soon as the backup is usable.
* ``current_active = 'backup'``, ``auto_recovery`` on and the primary has been ``healthy``
  for ``recovery_check_interval_minutes``: back to the primary (``last_recovery_at``, event
  ``integration.recovered``).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from dispatcher.integrations import events
from dispatcher.queries import query

if TYPE_CHECKING:
    from dispatcher.integrations.verdict import HealthState

log = structlog.get_logger("dispatcher.integrations.failover")


def backup_problem(backup: dict[str, Any] | None) -> str | None:
    """Why the backup cannot take over, or None when it can (pure)."""
    if backup is None:
        return "the backup integration does not exist"
    if backup["deleted_at"] is not None:
        return "the backup integration is deleted"
    if backup["status"] == "inactive":
        return "the backup integration is inactive"
    if backup["status"] == "error":
        return "the backup integration is in error"
    if backup["health_status"] == "unhealthy":
        return "the backup integration is itself unhealthy"
    return None


async def evaluate(
    conn: psycopg.AsyncConnection[Any],
    primary: dict[str, Any],
    health_status: str,
    state: HealthState,
    now: datetime,
) -> list[str]:
    """Apply failover/recovery for every config whose primary is ``primary``; event types."""
    cur = await conn.execute(query("integ_failover_configs"), {"integration_id": primary["id"]})
    configs = await cur.fetchall()
    published: list[str] = []
    for cfg in configs:
        base = {
            **events.describe(primary),
            "failover_config_id": str(cfg["id"]),
            "failover_integration_type": cfg["integration_type"],
            "primary_integration_id": str(cfg["primary_integration_id"]),
            "backup_integration_id": (
                str(cfg["backup_integration_id"]) if cfg["backup_integration_id"] else None
            ),
            "consecutive_failures": state.consecutive_failures,
        }
        threshold = max(int(cfg["failover_threshold"] or 3), 1)

        if (
            cfg["current_active"] == "primary"
            and cfg["auto_failover"]
            and state.consecutive_failures >= threshold
        ):
            backup = None
            if cfg["backup_integration_id"] is not None:
                cur = await conn.execute(
                    query("integ_backup_status"), {"integration_id": cfg["backup_integration_id"]}
                )
                backup = await cur.fetchone()
            problem = backup_problem(backup)
            if problem is None:
                cur = await conn.execute(
                    query("integ_failover_to_backup"), {"config_id": cfg["id"]}
                )
                done = await cur.fetchone()
                if done is not None:
                    log.warning("failover", **_ids(cfg), failures=state.consecutive_failures)
                    extra = {"failover_count": done["failover_count"], "threshold": threshold}
                    payload = {**base, "current_active": "backup", **extra}
                    published.append(await _announce(conn, events.FAILOVER, cfg, primary, payload))
            elif state.consecutive_failures == threshold:
                log.warning("failover_skipped", **_ids(cfg), reason=problem)
                payload = {**base, "current_active": "primary", "reason": problem}
                payload["threshold"] = threshold
                published.append(
                    await _announce(conn, events.FAILOVER_SKIPPED, cfg, primary, payload)
                )
        elif (
            cfg["current_active"] == "backup"
            and cfg["auto_recovery"]
            and health_status == "healthy"
            and state.healthy_since is not None
        ):
            wait = timedelta(minutes=max(int(cfg["recovery_check_interval_minutes"] or 0), 0))
            if state.healthy_since + wait <= now:
                cur = await conn.execute(
                    query("integ_recover_to_primary"), {"config_id": cfg["id"]}
                )
                if await cur.fetchone() is not None:
                    log.info("failover_recovered", **_ids(cfg))
                    since = state.healthy_since.isoformat()
                    payload = {**base, "current_active": "primary", "healthy_since": since}
                    published.append(await _announce(conn, events.RECOVERED, cfg, primary, payload))
    return published


async def _announce(
    conn: psycopg.AsyncConnection[Any],
    kind: str,
    cfg: dict[str, Any],
    primary: dict[str, Any],
    payload: dict[str, Any],
) -> str:
    """Publish a failover event of ``kind`` about ``primary``; returns ``kind``."""
    await events.publish_or_log(
        conn, kind, org_id=cfg["org_id"], aggregate_id=primary["id"], payload=payload
    )
    return kind


def _ids(cfg: dict[str, Any]) -> dict[str, str]:
    return {
        "failover_config_id": str(cfg["id"]),
        "org_id": str(cfg["org_id"]),
        "primary_integration_id": str(cfg["primary_integration_id"]),
        "backup_integration_id": str(cfg["backup_integration_id"]),
    }
