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

import json

import hostdb
import pytest
from support.integrations import create_integration, events_of, health_logs, integration
from support.oauth_server import Answer

from dispatcher import integration_events

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
