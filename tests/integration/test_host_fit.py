"""Issue 11 on the real host's schema (tests/integration/host_schema.sql): every test of this
module runs on a database built from intime-v3's own SQL, migrated as its non-superuser owner.

- a health check's result is recorded even when the host's publish_event refuses its event;
- re-enabling a webhook (CLI, SQL admin API) resets consecutive_failures, which the host's
  trigger never does;
- rows the host inserts with the column default max_attempts = 3 get the org's policy;
- retention keeps `failed` rows (the host's cleared DLQ items) for dlq_retention_days;
- an outcome whose claim was lost because another writer changed the row is told apart.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import hostdb
import pytest
from support.integrations import (
    create_integration,
    events_of,
    health_logs,
    integration,
    run_cli,
)
from support.oauth_server import Answer
from support.receiver import Reply

from dispatcher.db import make_pool
from dispatcher.integrations import events as integration_events
from dispatcher.retention import Retention
from dispatcher.settings import load_settings

pytest_plugins = ("support.integration_fixtures",)


@pytest.fixture
def db_dsn(host_db_dsn: str) -> str:
    """Every fixture of this module (conn, make_worker, start_daemon) uses the host's schema."""
    return host_db_dsn


# A host-side fault that refuses integration events the way a missing grant does.
REFUSE_INTEGRATION_EVENTS = """
CREATE FUNCTION public.refuse_integration_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type LIKE 'integration.%' THEN
        RAISE EXCEPTION 'permission denied for table events' USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER refuse_integration_events BEFORE INSERT ON public.events
    FOR EACH ROW EXECUTE FUNCTION public.refuse_integration_events();
"""


async def test_health_check_is_recorded_when_its_event_cannot_be_published(
    conn, make_worker, oauth, captured_logs
):
    org = await hostdb.create_org(conn)
    integ = await create_integration(
        conn,
        org,
        provider="sendgrid",
        type="email",
        name="Mail",
        config={"health_check_url": oauth.url("/health/a"), "api_key": "SG.secret-api-key"},
    )
    await conn.execute(REFUSE_INTEGRATION_EVENTS)
    oauth.script_health("/health/a", Answer(200, delay=0.5))
    before = sum(integration_events.NOT_PUBLISHED.values())
    worker = await make_worker(health_check_slow_ms=300)

    rec = await worker.check(integ, "scheduled")

    assert rec is not None and rec.health_status == "degraded" and rec.event is None
    [log] = await health_logs(conn, integ)
    assert log["status"] == "success" and log["details"]["degraded_reason"] == "slow"
    assert (await integration(conn, integ))["health_status"] == "degraded"
    assert await events_of(conn, integ) == []
    assert sum(integration_events.NOT_PUBLISHED.values()) == before + 1
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line]
    [refused] = [x for x in lines if x.get("event") == "integration_event_not_published"]
    assert refused["event_type"] == "integration.health.degraded"
    assert refused["sqlstate"] == "42501"
    assert "SG.secret-api-key" not in captured_logs.getvalue()


# --- item 3: re-enabling resets consecutive_failures -------------------------------------


async def _auto_disabled_webhook(conn, url: str) -> dict[str, Any]:
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, url, ["job.*"])
    # Ten failures in a row: the host's own trigger disables it (and resets nothing).
    await conn.execute("UPDATE webhooks SET consecutive_failures = 10 WHERE id = %s", (hook["id"],))
    row = await hostdb.webhook(conn, hook["id"])
    assert (row["status"], row["consecutive_failures"]) == ("disabled", 10), "premise"
    return hook


async def test_cli_enable_resets_consecutive_failures(conn, db_dsn, receiver):
    hook = await _auto_disabled_webhook(conn, receiver.url())
    code, _out, err = await run_cli(db_dsn, "webhooks", "enable", str(hook["id"]))
    assert code == 0, err
    row = await hostdb.webhook(conn, hook["id"])
    assert (row["status"], row["consecutive_failures"]) == ("active", 0)
    # and the host's trigger can disable it again after ten new failures
    await conn.execute("UPDATE webhooks SET consecutive_failures = 10 WHERE id = %s", (hook["id"],))
    assert (await hostdb.webhook(conn, hook["id"]))["status"] == "disabled"


async def test_sql_admin_api_enable_resets_consecutive_failures(conn, receiver):
    hook = await _auto_disabled_webhook(conn, receiver.url())
    cur = await conn.execute(
        "SELECT * FROM dispatcher.enable_webhook(%s, %s)", (hook["org_id"], hook["id"])
    )
    assert await cur.fetchone() == {"id": hook["id"], "status": "active", "consecutive_failures": 0}
    row = await hostdb.webhook(conn, hook["id"])
    assert (row["status"], row["consecutive_failures"]) == ("active", 0)


# --- item 5: host-inserted rows get the org's max_attempts ---------------------------------

HOST_ROUTER_INSERT = """
INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,
                                request_headers, request_body, status)
VALUES (%s, %s, 'webhook.test', '{"event": "webhook.test"}', %s, '{}',
        '{"event": "webhook.test"}', 'pending')
RETURNING id, max_attempts
"""


async def test_rows_the_host_inserts_get_the_orgs_max_attempts(conn, receiver):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, max_retries=5)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    other = await hostdb.create_org(conn, "NoPolicy")
    other_hook = await hostdb.create_webhook(conn, other, receiver.url(), ["job.*"])
    # As the host's router does it: Supabase's service_role, no max_attempts (column default 3).
    await conn.execute("SET ROLE service_role")
    try:
        cur = await conn.execute(HOST_ROUTER_INSERT, (org, hook["id"], receiver.url()))
        assert (await cur.fetchone())["max_attempts"] == 6
        cur = await conn.execute(HOST_ROUTER_INSERT, (other, other_hook["id"], receiver.url()))
        assert (await cur.fetchone())["max_attempts"] == 4  # the host's default policy
    finally:
        await conn.execute("RESET ROLE")
    # What the daemon writes is left alone.
    cur = await conn.execute("SELECT dispatcher.send_test(%s, %s, NULL) AS id", (org, hook["id"]))
    test_id = (await cur.fetchone())["id"]
    cur = await conn.execute(
        "SELECT max_attempts FROM webhook_deliveries WHERE id = %s", (test_id,)
    )
    assert (await cur.fetchone())["max_attempts"] == 6


# --- item 7: retention keeps cleared DLQ items for dlq_retention_days ---------------------


async def test_retention_keeps_failed_rows_for_the_orgs_dlq_retention(conn, db_dsn):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, dlq_retention_days=60)
    hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])

    async def row(status: str, days: int) -> uuid.UUID:
        cur = await conn.execute(
            "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
            " request_headers, request_body, status, created_at, delivered_at)"
            " VALUES (%s, %s, 'job.created', '{}', 'http://x', '{}', '{}', %s,"
            " now() - make_interval(days => %s), now() - make_interval(days => %s)) RETURNING id",
            (org, hook["id"], status, days, days),
        )
        return (await cur.fetchone())["id"]

    cleared_recently = await row("failed", 20)  # a DLQ item the host cleared: audit, keep
    cleared_long_ago = await row("failed", 61)
    delivered = await row("success", 20)

    pool = make_pool(load_settings(database_url=db_dsn))
    await pool.open(wait=True)
    try:
        purged = await Retention(pool, days=7).run_once()
    finally:
        await pool.close()
    left = {r["id"] for r in await hostdb.deliveries(conn)}
    assert cleared_recently in left
    assert cleared_long_ago not in left and delivered not in left
    assert purged.finished == 2


# --- item 1: an outcome that lost its claim to another writer is told apart ----------------


async def test_outcome_lost_to_the_hosts_edge_function_is_told_apart(
    conn, start_daemon, receiver, captured_logs
):
    """The host's router inserts a test ping and its deliver-webhook edge function sends it
    itself and writes the row, while the daemon is sending it too: the daemon's outcome is not
    recorded, and it says why (another writer), so the operator can retire the edge function."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/slow"), ["job.*"])
    receiver.respond("/slow", Reply(200, delay=3.0))
    running = await start_daemon()
    cur = await conn.execute(HOST_ROUTER_INSERT, (org, hook["id"], receiver.url("/slow")))
    delivery = (await cur.fetchone())["id"]
    await receiver.wait_for(1, timeout=30)  # the daemon is sending it now
    # What the edge function writes after its own send succeeded.
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'success', response_status = 200,"
        " response_body = 'edge', delivered_at = now() WHERE id = %s",
        (delivery,),
    )
    async with asyncio.timeout(30):
        while running.app.recorder.lost["changed_by_another_writer"] < 1:
            await asyncio.sleep(0.05)
    assert running.app.recorder.lost["lease_retaken"] == 0
    [row] = await hostdb.deliveries(conn)
    assert (row["status"], row["response_body"]) == ("success", "edge"), "the other write stands"
    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line]
    [lost] = [x for x in lines if x.get("event") == "outcomes_not_recorded"]
    assert lost["reason"] == "changed_by_another_writer"
    assert lost["delivery_ids"] == [str(delivery)]
    assert "host-adoption.md" in lost["note"]
