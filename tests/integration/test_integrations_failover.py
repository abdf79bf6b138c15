"""Failover to the backup after failover_threshold failures, never to an unhealthy backup, and
recovery to the primary with their events."""

from __future__ import annotations

import json

import hostdb
from support.integrations import (
    create_failover,
    create_integration,
    events_of,
    failover_config,
)
from support.oauth_server import Answer, OAuthServer

pytest_plugins = ("support.integration_fixtures",)


async def pair(conn, oauth: OAuthServer, **failover_values):
    org = await hostdb.create_org(conn)
    primary = await create_integration(
        conn,
        org,
        provider="zoom",
        type="video",
        name="Zoom",
        config={"health_check_url": oauth.url("/health/primary")},
    )
    backup = await create_integration(
        conn,
        org,
        provider="microsoft",
        type="video",
        name="Teams",
        config={"health_check_url": oauth.url("/health/backup")},
    )
    cfg = await create_failover(conn, org, "video", primary, backup, **failover_values)
    return org, primary, backup, cfg


async def test_failover_after_threshold_consecutive_failures(conn, make_worker, oauth):
    org, primary, backup, cfg = await pair(conn, oauth, failover_threshold=3)
    oauth.script_health("/health/primary", Answer(500))
    worker = await make_worker(health_unhealthy_after=2)
    for n in range(2):
        await worker.check(primary, "scheduled")
        assert (await failover_config(conn, cfg))["current_active"] == "primary", n
    rec = await worker.check(primary, "scheduled")
    assert rec.failover == ["integration.failover"]
    row = await failover_config(conn, cfg)
    assert row["current_active"] == "backup" and row["failover_count"] == 1
    assert row["last_failover_at"] is not None
    [event] = [
        e for e in await events_of(conn, primary) if e["event_type"] == "integration.failover"
    ]
    assert event["org_id"] == org
    assert event["payload"]["backup_integration_id"] == str(backup)
    assert event["payload"]["current_active"] == "backup"
    assert event["payload"]["consecutive_failures"] == 3
    # more failures do not fail over again
    await worker.check(primary, "scheduled")
    assert (await failover_config(conn, cfg))["failover_count"] == 1


async def test_no_failover_to_unhealthy_backup(conn, make_worker, oauth, captured_logs):
    _, primary, backup, cfg = await pair(conn, oauth, failover_threshold=2)
    await conn.execute(
        "UPDATE integrations SET health_status = 'unhealthy' WHERE id = %s", (backup,)
    )
    oauth.script_health("/health/primary", Answer(500))
    worker = await make_worker()
    for _ in range(4):
        await worker.check(primary, "scheduled")
    row = await failover_config(conn, cfg)
    assert row["current_active"] == "primary" and row["failover_count"] == 0
    skipped = [
        e
        for e in await events_of(conn, primary)
        if e["event_type"] == "integration.failover.skipped"
    ]
    assert len(skipped) == 1  # once per outage
    assert "itself unhealthy" in skipped[0]["payload"]["reason"]
    lines = [json.loads(x) for x in captured_logs.getvalue().splitlines() if x.startswith("{")]
    [line] = [x for x in lines if x["event"] == "failover_skipped"]
    assert "itself unhealthy" in line["reason"] and line["primary_integration_id"] == str(primary)
    # the backup recovers: the next failing check fails over
    await conn.execute("UPDATE integrations SET health_status = 'healthy' WHERE id = %s", (backup,))
    rec = await worker.check(primary, "scheduled")
    assert rec.failover == ["integration.failover"]
    assert (await failover_config(conn, cfg))["current_active"] == "backup"


async def test_auto_failover_off(conn, make_worker, oauth):
    _, primary, _, cfg = await pair(conn, oauth, failover_threshold=1, auto_failover=False)
    oauth.script_health("/health/primary", Answer(500))
    worker = await make_worker()
    for _ in range(2):
        await worker.check(primary, "scheduled")
    assert (await failover_config(conn, cfg))["current_active"] == "primary"


async def test_recovery_after_primary_healthy_for_interval(conn, make_worker, oauth):
    _, primary, _, cfg = await pair(
        conn, oauth, failover_threshold=1, auto_recovery=True, recovery_check_interval_minutes=30
    )
    oauth.script_health("/health/primary", Answer(500), Answer(200))
    worker = await make_worker()
    await worker.check(primary, "scheduled")
    assert (await failover_config(conn, cfg))["current_active"] == "backup"
    rec = await worker.check(primary, "scheduled")
    assert rec.health_status == "healthy" and rec.failover == []
    assert (await failover_config(conn, cfg))["current_active"] == "backup"  # not 30 min yet
    await conn.execute(
        "UPDATE dispatcher.integration_health_state "
        "SET healthy_since = healthy_since - interval '31 minutes' WHERE integration_id = %s",
        (primary,),
    )
    rec = await worker.check(primary, "scheduled")
    assert rec.failover == ["integration.recovered"]
    row = await failover_config(conn, cfg)
    assert row["current_active"] == "primary" and row["last_recovery_at"] is not None
    types = [e["event_type"] for e in await events_of(conn, primary)]
    assert types == [
        "integration.health.degraded",
        "integration.failover",
        "integration.health.recovered",
        "integration.recovered",
    ]


async def test_no_recovery_without_auto_recovery_or_while_degraded(conn, make_worker, oauth):
    _, primary, _, cfg = await pair(
        conn, oauth, failover_threshold=1, auto_recovery=False, recovery_check_interval_minutes=0
    )
    _, primary2, _, cfg2 = await pair(
        conn, oauth, failover_threshold=1, auto_recovery=True, recovery_check_interval_minutes=0
    )
    await conn.execute(
        "UPDATE integrations SET config = jsonb_build_object('health_check_url', %s::text) "
        "WHERE id = %s",
        (oauth.url("/health/primary2"), primary2),
    )
    oauth.script_health("/health/primary", Answer(500), Answer(200))
    oauth.script_health("/health/primary2", Answer(500), Answer(200, delay=0.5), Answer(200))
    worker = await make_worker(health_check_slow_ms=300)
    for _ in range(2):
        await worker.check(primary, "scheduled")
        await worker.check(primary2, "scheduled")
    assert (await failover_config(conn, cfg))["current_active"] == "backup"
    assert (await failover_config(conn, cfg2))["current_active"] == "backup"  # slow: degraded
    rec = await worker.check(primary2, "scheduled")
    assert rec.failover == ["integration.recovered"]
    assert (await failover_config(conn, cfg2))["current_active"] == "primary"
