"""Lifecycle events (issue 13 item 3): webhook.disabled, webhook.recovered and
delivery.dead_lettered, published through the host's publish_event in the transaction of
the change, on a real database and real HTTP (0026_lifecycle_events.sql)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import hostdb
import psycopg
import pytest
from psycopg import sql
from support.net import reserved_port
from support.receiver import Reply
from test_health import eventually, get, sample

Conn = hostdb.Conn


@pytest.fixture(params=["standalone", "host"])
def db_dsn(request: pytest.FixtureRequest, db_dsn: str) -> str:
    """Every test on the standalone schema and on the host's (its real publish_event,
    triggers and row-level security: tests/integration/host_schema.sql)."""
    if request.param == "host":
        return str(request.getfixturevalue("host_db_dsn"))
    return db_dsn


LIFECYCLE = ("webhook.disabled", "webhook.recovered", "delivery.dead_lettered")


async def lifecycle_events(conn: Conn, event_type: str | None = None) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT * FROM events WHERE event_type = ANY(%s) ORDER BY created_at, id",
        ([event_type] if event_type else list(LIFECYCLE),),
    )
    return [dict(r) for r in await cur.fetchall()]


async def wait_events(conn: Conn, event_type: str, n: int, timeout: float = 30) -> None:
    async def enough() -> bool:
        return len(await lifecycle_events(conn, event_type)) >= n

    await eventually(enough, f"{n} {event_type} events", timeout)


async def wait_metric(port: int, name: str, value: float, **labels: str) -> None:
    async def shown() -> bool:
        return sample((await get(port, "/metrics"))[1], name, **labels) == value

    await eventually(shown, f"{name}{labels} == {value} in /metrics", 40)


async def fast_retries(conn: Conn, org: uuid.UUID) -> None:
    await hostdb.set_retry_config(
        conn,
        org,
        max_retries=1,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        enable_jitter=False,
    )


async def test_disabled_reaches_other_webhooks_once_and_not_the_failing_one(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    secret = uuid.uuid4().hex + uuid.uuid4().hex
    bad = await hostdb.create_webhook(
        conn, org, receiver.url("/bad") + "?token=qs-secret-77", ["*"], secret=secret, name="CRM"
    )
    watcher = await hostdb.create_webhook(conn, org, receiver.url("/watch"), ["webhook.*"])
    # One failure from the host's limit: the next failed attempt makes it 10 and the host's
    # trigger disables it; the attempt records the last error.
    await conn.execute("UPDATE webhooks SET consecutive_failures = 9 WHERE id = %s", (bad["id"],))
    receiver.respond("/bad", Reply(503, body=b"overloaded"))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {"password": "not-in-lifecycle"}, org)

    got = await receiver.wait_for(1, path="/watch", timeout=30)
    body = json.loads(got[0].body)
    assert body["event"] == "webhook.disabled"
    data = body["data"]
    assert data["webhook_id"] == str(bad["id"]) and data["webhook_name"] == "CRM"
    assert data["url_host"] == "127.0.0.1"
    assert data["reason"] == "consecutive_failures" and data["consecutive_failures"] == 10
    assert data["last_status"] == 503 and data["last_error"]
    assert (await hostdb.webhook(conn, bad["id"]))["status"] == "disabled"

    [event] = await lifecycle_events(conn)
    assert event["aggregate_id"] == bad["id"] and event["org_id"] == org
    assert event["metadata"]["dispatcher"] == {"lifecycle": True, "webhook_id": str(bad["id"])}
    # The failing webhook subscribes to everything, yet neither gets nor holds its own.
    assert not await hostdb.deliveries(
        conn, "webhook_id = %s AND event_id = %s", (bad["id"], event["id"])
    )
    cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.held")
    assert (await cur.fetchone())["n"] == 0
    # Ids, names and the URL's host: no secret, no query, no body.
    text = json.dumps([dict(e) for e in await lifecycle_events(conn)], default=str)
    text += got[0].body.decode()
    for leaked in (secret, "qs-secret-77", "not-in-lifecycle", "overloaded"):
        assert leaked not in text
    assert [
        r["webhook_id"] for r in await hostdb.deliveries(conn, "event_id = %s", (event["id"],))
    ] == [watcher["id"]]


async def test_gone_disables_with_reason_gone_and_the_switch_turns_it_off(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    gone = await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["job.*"])
    quiet = await hostdb.create_webhook(conn, org, receiver.url("/quiet"), ["job.*"])
    receiver.respond("/gone", Reply(410))
    receiver.respond("/quiet", Reply(410))
    daemon = await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    await wait_events(conn, "webhook.disabled", 2)
    reasons = {e["aggregate_id"]: e["payload"]["reason"] for e in await lifecycle_events(conn)}
    assert reasons == {gone["id"]: "gone", quiet["id"]: "gone"}
    await daemon.stop()

    # DISPATCHER_LIFECYCLE_EVENTS=false: this daemon's changes publish nothing.
    for hook in (gone, quiet):
        await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    await start_daemon(lifecycle_events=False)
    await hostdb.publish(conn, "job.updated", {}, org)

    async def disabled_again() -> bool:
        statuses = [(await hostdb.webhook(conn, h["id"]))["status"] for h in (gone, quiet)]
        return statuses == ["disabled", "disabled"]

    await eventually(disabled_again, "both disabled again", 30)
    assert len(await lifecycle_events(conn)) == 2


async def test_recovered_after_a_streak_of_three(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    shaky = await hostdb.create_webhook(conn, org, receiver.url("/shaky"), ["job.*"])
    short = await hostdb.create_webhook(conn, org, receiver.url("/short"), ["job.*"])
    watcher = await hostdb.create_webhook(conn, org, receiver.url("/watch"), ["webhook.*"])
    await conn.execute("UPDATE webhooks SET consecutive_failures = 3 WHERE id = %s", (shaky["id"],))
    await conn.execute("UPDATE webhooks SET consecutive_failures = 2 WHERE id = %s", (short["id"],))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)

    got = await receiver.wait_for(1, path="/watch", timeout=30)
    data = json.loads(got[0].body)["data"]
    assert json.loads(got[0].body)["event"] == "webhook.recovered"
    assert data["webhook_id"] == str(shaky["id"]) and data["failures_before"] == 3

    async def reset() -> bool:
        return (await hostdb.webhook(conn, short["id"]))["consecutive_failures"] == 0

    await eventually(reset, "the short streak reset", 30)
    [event] = await lifecycle_events(conn)  # a streak of 2 is not a recovery
    assert event["aggregate_id"] == shaky["id"]
    assert receiver.requests_for("/watch")[0].headers["webhook-id"]
    assert len(await hostdb.deliveries(conn, "webhook_id = %s", (watcher["id"],))) == 1


async def test_dead_lettered_is_rate_limited_per_webhook_with_the_suppressed_count(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    await fast_retries(conn, org)
    dead = await hostdb.create_webhook(conn, org, receiver.url("/dead"), ["job.*"])
    watcher = await hostdb.create_webhook(conn, org, receiver.url("/watch"), ["delivery.*"])
    receiver.respond("/dead", Reply(503))
    port = reserved_port()
    await start_daemon(metrics_address=f"127.0.0.1:{port}")
    for n in range(3):
        await hostdb.publish(conn, "job.created", {"n": n}, org)
    dlq = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'dlq'", 3, (dead["id"],), timeout=40
    )
    await wait_events(conn, "delivery.dead_lettered", 1)
    [first] = await lifecycle_events(conn)
    data = first["payload"]
    assert data["delivery_id"] in {str(d["id"]) for d in dlq}
    assert data["event_type"] == "job.created" and data["attempts"] == 2
    assert data["last_status"] == 503 and data["suppressed"] == 0
    assert data["webhook_id"] == str(dead["id"]) and first["aggregate_id"] == uuid.UUID(
        data["delivery_id"]
    )
    limit = await hostdb.deliveries(conn, "webhook_id = %s", (watcher["id"],))
    assert len(limit) == 1
    cur = await conn.execute(
        "SELECT suppressed FROM dispatcher.lifecycle_limits WHERE webhook_id = %s", (dead["id"],)
    )
    assert (await cur.fetchone())["suppressed"] == 2
    await wait_metric(
        port, "dispatcher_lifecycle_events_suppressed", 2, event_type="delivery.dead_lettered"
    )

    # A minute later (moved back instead of waited for), the next one carries the count.
    await conn.execute(
        "UPDATE dispatcher.lifecycle_limits SET last_published_at = now() - interval '61 s'"
    )
    await hostdb.publish(conn, "job.created", {"n": 3}, org)
    await wait_events(conn, "delivery.dead_lettered", 2)
    second = (await lifecycle_events(conn))[1]
    assert second["payload"]["suppressed"] == 2
    await receiver.wait_for(2, path="/watch", timeout=30)


async def test_a_dead_lettered_lifecycle_event_publishes_nothing(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await fast_retries(conn, org)
    dead = await hostdb.create_webhook(conn, org, receiver.url("/dead"), ["job.*"])
    watcher = await hostdb.create_webhook(conn, org, receiver.url("/watch"), ["delivery.*"])
    receiver.respond("/dead", Reply(503))
    receiver.respond("/watch", Reply(500))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    # The watcher's delivery of the lifecycle event is exhausted into the DLQ too.
    await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'dlq'", 1, (watcher["id"],), timeout=40
    )
    cur = await conn.execute(
        "SELECT count(*) AS n FROM dispatcher.attempts WHERE webhook_id = %s", (watcher["id"],)
    )
    assert (await cur.fetchone())["n"] == 2
    events = await lifecycle_events(conn)
    assert [(e["event_type"], e["payload"]["webhook_id"]) for e in events] == [
        ("delivery.dead_lettered", str(dead["id"]))
    ]


# -- in SQL: same transaction, rollback, refusal --------------------------------------------


async def test_published_in_the_transaction_of_the_change_and_rolled_back_with_it(conn, db_dsn):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])
    async with await hostdb.connect(db_dsn) as other:
        async with conn.transaction(force_rollback=True):
            await conn.execute(
                "UPDATE webhooks SET consecutive_failures = 10 WHERE id = %s", (hook["id"],)
            )
            assert len(await lifecycle_events(conn, "webhook.disabled")) == 1
            assert await lifecycle_events(other) == [], "not visible before the commit"
        assert await lifecycle_events(conn) == [] and await lifecycle_events(other) == []
        cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.outbox")
        assert (await cur.fetchone())["n"] == 0
        await conn.execute(
            "UPDATE webhooks SET consecutive_failures = 10 WHERE id = %s", (hook["id"],)
        )
        assert len(await lifecycle_events(other, "webhook.disabled")) == 1
        # Anything else that changes the row publishes nothing more.
        await conn.execute("UPDATE webhooks SET name = 'renamed' WHERE id = %s", (hook["id"],))
        await conn.execute(
            "UPDATE webhooks SET consecutive_failures = 11 WHERE id = %s", (hook["id"],)
        )
        assert len(await lifecycle_events(other)) == 1


async def test_url_host_keeps_only_the_host(conn):
    cases = {
        "https://user:pw@Hooks.Example.com:8443/x?token=1": "hooks.example.com",
        "http://127.0.0.1:8080/a#f": "127.0.0.1",
        "https://[::1]:443/": "[::1]",
        "https://example.org?x=1": "example.org",
        "not a url": None,
    }
    for url, host in cases.items():
        cur = await conn.execute("SELECT dispatcher.url_host_v1(%s) AS h", (url,))
        assert (await cur.fetchone())["h"] == host, url


@pytest.fixture
def refused_role(db_dsn: str, request: pytest.FixtureRequest) -> Any:
    """A member of the least-privilege `dispatcher` role that may not call publish_event
    (on the host with BYPASSRLS, as docs/host-adoption.md asks of the daemon's role)."""
    from importlib import resources

    script = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
    name = f"lc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(db_dsn, autocommit=True) as su:
        su.execute(script)
        su.execute(
            sql.SQL("CREATE ROLE {} NOLOGIN IN ROLE dispatcher").format(sql.Identifier(name))
        )
        if request.node.callspec.params["db_dsn"] == "host":
            su.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(name)))
        for who in ("dispatcher", "PUBLIC"):
            su.execute(
                "REVOKE EXECUTE ON FUNCTION public.publish_event(text, uuid, jsonb, uuid, jsonb,"
                f" uuid) FROM {who}"
            )
    yield name
    with psycopg.connect(db_dsn, autocommit=True) as su:
        su.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        su.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


async def test_a_refused_publish_is_logged_counted_and_the_change_commits(
    conn, refused_role, start_daemon
):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status) VALUES (%s, %s, 'job.created', '{}',"
        " 'http://127.0.0.1:9/x', '{}', '{}', 'retrying') RETURNING id",
        (org, hook["id"]),
    )
    delivery = (await cur.fetchone())["id"]
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(str(d.message_primary)))
    async with conn.transaction():
        await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(refused_role)))
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'dlq' WHERE id = %s", (delivery,)
        )
        cur = await conn.execute(
            "SELECT dispatcher.dead_lettered_v1(%s, %s, 4, 503, 'http_503', 'HTTP 503') AS id",
            (delivery, hook["id"]),
        )
        assert (await cur.fetchone())["id"] is None
    assert (await hostdb.deliveries(conn, "id = %s", (delivery,)))[0]["status"] == "dlq"
    assert await lifecycle_events(conn) == []
    assert any("delivery.dead_lettered" in n and "not published" in n for n in notices), notices
    cur = await conn.execute(
        "SELECT not_published FROM dispatcher.lifecycle_limits WHERE webhook_id = %s",
        (hook["id"],),
    )
    assert (await cur.fetchone())["not_published"] == 1
    port = reserved_port()
    await start_daemon(metrics_address=f"127.0.0.1:{port}")
    await wait_metric(
        port, "dispatcher_lifecycle_events_not_published", 1, event_type="delivery.dead_lettered"
    )
