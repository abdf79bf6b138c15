"""Health checks: statuses, logs and events for healthy, slow, failing and timing-out endpoints;
scheduling; retention; the operator commands."""

from __future__ import annotations

import asyncio
import json

import hostdb
from support.integrations import (
    FAST,
    create_integration,
    create_token,
    events_of,
    health_logs,
    integration,
    one,
    run_cli,
)
from support.oauth_server import Answer, Hang, OAuthServer, Proceed

pytest_plugins = ("support.integration_fixtures",)


async def health_integration(conn, oauth: OAuthServer, path="/health/a", **config):
    org = await hostdb.create_org(conn)
    integ = await create_integration(
        conn,
        org,
        provider="sendgrid",
        type="email",
        name="Mail",
        config={"health_check_url": oauth.url(path), "api_key": "SG.secret-api-key", **config},
    )
    return org, integ


async def test_healthy_endpoint(conn, make_worker, oauth):
    org, integ = await health_integration(conn, oauth)
    worker = await make_worker()
    assert (await worker.run_once()).checks == 1
    [log] = await health_logs(conn, integ)
    assert log["check_type"] == "scheduled" and log["status"] == "success"
    assert log["org_id"] == org and log["error_message"] is None
    assert log["response_time_ms"] is not None and log["response_time_ms"] >= 0
    row = await integration(conn, integ)
    assert row["health_status"] == "healthy" and row["status"] == "active"
    assert row["last_health_check"] is not None and row["error_count"] == 0
    assert await events_of(conn, integ) == []  # unknown -> healthy is not news
    # not due again before its interval
    assert (await worker.run_once()).checks == 0
    assert len(await health_logs(conn, integ)) == 1


async def test_slow_endpoint_is_degraded(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth)
    oauth.script_health("/health/a", Answer(200, delay=0.5))
    worker = await make_worker(health_check_slow_ms=300)
    rec = await worker.check(integ, "scheduled")
    assert rec is not None and rec.health_status == "degraded"
    [log] = await health_logs(conn, integ)
    assert log["status"] == "success" and log["response_time_ms"] >= 300
    assert log["details"]["degraded_reason"] == "slow"
    row = await integration(conn, integ)
    assert row["health_status"] == "degraded" and row["status"] == "active"
    [event] = await events_of(conn, integ)
    assert event["event_type"] == "integration.health.degraded"
    assert event["payload"]["health_status"] == "degraded"
    assert event["payload"]["previous_health_status"] == "unknown"


async def test_failing_endpoint_degrades_then_unhealthy_then_recovers(conn, make_worker, oauth):
    _org, integ = await health_integration(conn, oauth)
    oauth.script_health(
        "/health/a", Answer(200), Answer(500), Answer(503), Answer(500), Answer(200)
    )
    worker = await make_worker(health_unhealthy_after=2)
    statuses = []
    for _ in range(5):
        rec = await worker.check(integ, "scheduled")
        statuses.append(rec.health_status)
    assert statuses == ["healthy", "degraded", "unhealthy", "unhealthy", "healthy"]
    logs = await health_logs(conn, integ)
    assert [x["status"] for x in logs] == ["success", "failure", "failure", "failure", "success"]
    assert [x["error_code"] for x in logs] == [None, "http_500", "http_503", "http_500", None]
    assert "HTTP 500" in logs[1]["error_message"]
    types = [e["event_type"] for e in await events_of(conn, integ)]
    assert types == [
        "integration.health.degraded",
        "integration.health.unhealthy",
        "integration.health.recovered",
    ]
    row = await integration(conn, integ)
    assert row["status"] == "active" and row["error_count"] == 0 and row["error_message"] is None


async def test_unhealthy_marks_integration_error(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth)
    oauth.script_health("/health/a", Answer(500))
    worker = await make_worker(health_unhealthy_after=2)
    await worker.check(integ, "scheduled")
    row = await integration(conn, integ)
    assert row["status"] == "active" and row["error_count"] == 1  # degraded only
    await worker.check(integ, "scheduled")
    row = await integration(conn, integ)
    assert row["status"] == "error" and row["health_status"] == "unhealthy"
    assert row["error_count"] == 2 and "HTTP 500" in row["error_message"]


async def test_timeout_is_logged_as_timeout(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth)
    oauth.script_health("/health/a", Hang())
    worker = await make_worker(health_check_timeout_seconds=0.5)
    rec = await worker.check(integ, "scheduled")
    assert rec.result.status == "timeout"
    [log] = await health_logs(conn, integ)
    assert log["status"] == "timeout" and log["error_code"] == "timeout"
    assert "0.5 s" in log["error_message"]


async def test_per_integration_timeout_override(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth, health_check_timeout_seconds=2.0)
    oauth.script_health("/health/a", Answer(200, delay=0.7))
    worker = await make_worker(health_check_timeout_seconds=0.3, health_check_slow_ms=5000)
    rec = await worker.check(integ, "scheduled")
    assert rec.result.status == "success" and rec.health_status == "healthy"


async def test_intermittent_failures_are_degraded(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth)
    oauth.script_health(
        "/health/a", Answer(200), Answer(500), Answer(200), Answer(500), Answer(200)
    )
    worker = await make_worker(health_unhealthy_after=3)
    statuses = [(await worker.check(integ, "scheduled")).health_status for _ in range(5)]
    # one failure run then success: recovered; a second failure run: flapping = degraded
    assert statuses == ["healthy", "degraded", "healthy", "degraded", "degraded"]
    last = (await health_logs(conn, integ))[-1]
    assert last["status"] == "success" and last["details"]["degraded_reason"] == "intermittent"


async def test_refused_target_without_allow_list(conn, make_worker, oauth):
    _, integ = await health_integration(conn, oauth)
    worker = await make_worker(allowed_target_networks="")
    rec = await worker.check(integ, "scheduled")
    assert rec.result.error_code == "target_refused"
    assert oauth.other_requests == []


async def test_oauth_integration_checks_token_and_userinfo(conn, make_worker, oauth):
    org = await hostdb.create_org(conn)
    oauth.add_client("c", "client-secret-c")
    access, refresh = oauth.issue("c")
    integ = await create_integration(
        conn,
        org,
        config={
            "client_id": "c",
            "client_secret": "client-secret-c",
            "token_url": oauth.token_url,
            "userinfo_url": oauth.url("/userinfo"),
        },
    )
    tok = await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=3600)
    worker = await make_worker()
    rec = await worker.check(integ, "scheduled")
    assert rec.result.status == "success", rec.result
    assert oauth.other_requests == [("/userinfo", f"Bearer {access}")]
    row = await one(conn, "SELECT last_used_at FROM integration_oauth_tokens WHERE id = %s", (tok,))
    assert row["last_used_at"] is not None
    oauth.revoke(refresh)
    rec = await worker.check(integ, "scheduled")
    assert rec.result.status == "failure" and rec.result.error_code == "http_401"
    assert "userinfo" in rec.result.error_message


async def test_oauth_integration_without_active_token_fails(conn, make_worker, oauth):
    org = await hostdb.create_org(conn)
    integ = await create_integration(conn, org, config={"client_id": "c"})
    await create_token(conn, org, integ, access="at-1", refresh="rt-1", status="expired")
    other = await create_integration(conn, org, config={"client_id": "c"})
    await create_token(conn, org, other, access="at-2", refresh=None, expires_in=-60)
    worker = await make_worker(oauth_refresh_lead_seconds=0)
    rec = await worker.check(integ, "scheduled")
    assert rec.result.error_code == "no_active_token"
    assert "re-authenticate" in rec.result.error_message
    rec = await worker.check(other, "scheduled")
    assert rec.result.error_code == "token_expired"


async def test_nothing_to_probe_is_skipped(conn, make_worker):
    org = await hostdb.create_org(conn)
    integ = await create_integration(conn, org, provider="sendgrid", config={"api_key": "x"})
    worker = await make_worker()
    assert await worker.check(integ, "scheduled") is None
    assert await health_logs(conn, integ) == []
    assert (await integration(conn, integ))["health_status"] == "unknown"


async def test_schedule_interval_override_inactive_and_deleted(conn, make_worker, oauth):
    _, fast = await health_integration(conn, oauth, "/health/fast", health_check_interval_seconds=1)
    _, slow = await health_integration(conn, oauth, "/health/slow")
    _, off = await health_integration(conn, oauth, "/health/off")
    _, gone = await health_integration(conn, oauth, "/health/gone")
    await conn.execute("UPDATE integrations SET status = 'inactive' WHERE id = %s", (off,))
    await conn.execute("UPDATE integrations SET deleted_at = now() WHERE id = %s", (gone,))
    worker = await make_worker(health_check_interval_seconds=300)
    assert (await worker.check_due()) == 2
    state = await one(
        conn,
        "SELECT next_check_at - now() AS wait FROM dispatcher.integration_health_state "
        "WHERE integration_id = %s",
        (slow,),
    )
    assert 250 < state["wait"].total_seconds() <= 300
    await asyncio.sleep(1.1)  # let the 1-second interval pass (the condition under test)
    assert (await worker.check_due()) == 1
    assert len(await health_logs(conn, fast)) == 2
    assert len(await health_logs(conn, slow)) == 1
    assert await health_logs(conn, off) == [] and await health_logs(conn, gone) == []


async def test_two_workers_check_each_integration_once(conn, make_worker, oauth):
    integs = [(await health_integration(conn, oauth, f"/health/{n}"))[1] for n in range(12)]
    for n in range(12):
        oauth.script_health(f"/health/{n}", Proceed(delay=0.1))
    a, b = await make_worker(), await make_worker()
    results = await asyncio.gather(a.check_due(), b.check_due())
    assert sum(results) == 12
    for integ in integs:
        assert len(await health_logs(conn, integ)) == 1
    assert len(oauth.other_requests) == 12


async def test_health_log_retention_purges_in_batches(conn, make_worker, oauth):
    org, integ = await health_integration(conn, oauth)
    await conn.execute(
        "INSERT INTO integration_health_logs (org_id, integration_id, check_type, status, "
        "created_at) SELECT %s, %s, 'scheduled', 'success', now() - interval '40 days' "
        "FROM generate_series(1, 2500)",
        (org, integ),
    )
    await conn.execute(
        "INSERT INTO integration_health_logs (org_id, integration_id, check_type, status, "
        "created_at) VALUES (%s, %s, 'scheduled', 'success', now() - interval '10 days')",
        (org, integ),
    )
    worker = await make_worker(health_log_retention_days=30)
    assert await worker.purge_health_logs() == 2500
    assert len(await health_logs(conn, integ)) == 1
    assert await worker.purge_health_logs() == 0


async def test_cli_check_and_list(conn, db_dsn, oauth):
    _, integ = await health_integration(conn, oauth)
    oauth.script_health("/health/a", Answer(200), Answer(500))
    code, out, err = await run_cli(
        db_dsn, "integrations", "check", str(integ), keys=FAST["encryption_keys"]
    )
    assert code == 0, err
    assert "success" in out and "-> healthy" in out
    code, out, _ = await run_cli(db_dsn, "integrations", "check", str(integ), "--json")
    assert code == 1
    result = json.loads(out)
    assert result["status"] == "failure" and result["error_code"] == "http_500"
    assert result["events"] == ["integration.health.degraded"]
    logs = await health_logs(conn, integ)
    assert [x["check_type"] for x in logs] == ["manual", "manual"]
    code, out, _ = await run_cli(db_dsn, "integrations", "list")
    assert code == 0 and str(integ) in out and "degraded" in out
    code, out, _ = await run_cli(db_dsn, "integrations", "list", "--json")
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["id"] == str(integ) and row["health_status"] == "degraded"
    code, _, err = await run_cli(
        db_dsn, "integrations", "check", "00000000-0000-0000-0000-00000000abcd"
    )
    assert code == 1 and "no integration" in err
