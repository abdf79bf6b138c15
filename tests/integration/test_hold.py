"""Switched-off webhooks (issue 11 item 4), through the daemon on a real database.

inactive / soft-deleted: nothing. disabled: events are held (dispatcher.held, no host
row) and delivered, with the failing streak's DLQ rows, when the webhook is enabled
again; held events older than the org's dlq_retention_days are dropped and counted;
an operator can discard the hold; `webhooks show` and /metrics count it.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta
from typing import Any

import hostdb
from support.net import reserved_port
from support.receiver import Reply
from test_cli import run  # noqa: F401  (the CLI fixture)
from test_health import eventually, get, sample

from dispatcher.admin import api as admin
from dispatcher.request import message_id

Conn = hostdb.Conn


async def one(conn: Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def count(conn: Conn, sql: str, params: Any = ()) -> int:
    return int((await one(conn, f"SELECT count(*) AS n FROM {sql}", params))["n"])


async def wait_outbox_empty(conn: Conn, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while await count(conn, "dispatcher.outbox"):
        assert time.monotonic() < deadline, "fan-out did not take the events within the deadline"
        await conn.execute("SELECT pg_sleep(0.05)")


async def wait_held(conn: Conn, webhook: uuid.UUID, n: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := await count(conn, "dispatcher.held WHERE webhook_id = %s", (webhook,))) < n:
        assert time.monotonic() < deadline, f"{got} held events, expected {n}"
        await conn.execute("SELECT pg_sleep(0.05)")


async def disabled_hook(conn: Conn, org: uuid.UUID, url: str) -> dict[str, Any]:
    """A webhook the host's trigger disabled: 10 consecutive failures, last success 1 h ago."""
    hook = await hostdb.create_webhook(conn, org, url, ["job.*"])
    await conn.execute(
        "UPDATE webhooks SET last_success_at = now() - interval '1 hour' WHERE id = %s",
        (hook["id"],),
    )
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = 10, status = 'disabled' WHERE id = %s",
        (hook["id"],),
    )
    return hook


async def old_delivery(
    conn: Conn,
    org: uuid.UUID,
    hook: dict[str, Any],
    status: str,
    *,
    age: timedelta,
    error: str | None = None,
) -> uuid.UUID:
    """A finished delivery of an earlier event, as the daemon left it `age` ago."""
    event = uuid.uuid4()
    body = json.dumps({"id": str(event), "event": "job.created", "data": {"old": str(age)}})
    row = await one(
        conn,
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, event_id, payload,"
        " request_url, request_headers, request_body, attempt_number, max_attempts, status,"
        " error_message, delivered_at, created_at)"
        " VALUES (%s, %s, 'job.created', %s, %s::jsonb, %s, '{}', %s, 4, 4, %s, %s,"
        " now() - %s, now() - %s - interval '1 minute') RETURNING id",
        (org, hook["id"], event, body, hook["url"], body, status, error, age, age),
    )
    return uuid.UUID(str(row["id"]))


def event_ids(requests: list[Any]) -> list[str]:
    return [json.loads(r.body)["id"] for r in requests]


# -- inactive and soft-deleted: nothing ------------------------------------------------------


async def test_inactive_and_soft_deleted_webhooks_get_nothing(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    on = await hostdb.create_webhook(conn, org, receiver.url("/on"), ["job.*"])
    await hostdb.create_webhook(conn, org, receiver.url("/off"), ["job.*"], status="inactive")
    gone = await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["job.*"])
    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (gone["id"],))
    await start_daemon()
    for n in range(3):
        await hostdb.publish(conn, "job.created", {"n": n}, org)
    await hostdb.wait_deliveries(conn, "webhook_id = %s AND status = 'success'", 3, (on["id"],))
    await wait_outbox_empty(conn)

    assert await hostdb.deliveries(conn, "webhook_id <> %s", (on["id"],)) == []
    assert await count(conn, "dispatcher.held") == 0
    assert receiver.requests_for("/off") == receiver.requests_for("/gone") == []


# -- disabled: held, then delivered with the streak on re-enable ---------------------------------


async def test_enable_delivers_held_events_oldest_first_with_the_streak(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, dlq_retention_days=30)
    hook = await disabled_hook(conn, org, receiver.url("/back"))
    h = timedelta(hours=1)
    # Before the last success: an earlier outage, not this streak's.
    before = await old_delivery(conn, org, hook, "dlq", age=2 * h)
    # The streak: DLQ'd after the last success, and one in flight when it was disabled.
    streak_1 = await old_delivery(conn, org, hook, "dlq", age=timedelta(minutes=40))
    streak_2 = await old_delivery(conn, org, hook, "dlq", age=timedelta(minutes=30))
    cut_off = await old_delivery(
        conn, org, hook, "failed", age=timedelta(minutes=20), error="Webhook is not active"
    )
    refused = await old_delivery(  # a final 422: not retried
        conn, org, hook, "failed", age=timedelta(minutes=25), error="HTTP 422"
    )
    await start_daemon(per_webhook_concurrency=1)

    # Held while disabled: no host row, nothing sent. The old event is within the org's
    # 30 days while held (retention keeps it), past 7 when the webhook is enabled.
    expired = await one(
        conn,
        "INSERT INTO events (event_type, event_category, payload, org_id, created_at)"
        " VALUES ('job.created', 'job', '{}', %s, now() - interval '20 days') RETURNING id",
        (org,),
    )
    published = [await hostdb.publish(conn, "job.created", {"n": n}, org) for n in range(3)]
    await wait_held(conn, hook["id"], 4)
    await wait_outbox_empty(conn)
    assert await hostdb.deliveries(conn, "created_at > now() - interval '10 minutes'") == []
    assert receiver.requests_for("/back") == []
    shown = await admin.get_webhook(conn, hook["id"])
    assert shown["hold"]["held"] == 4 and shown["hold"]["streak_rows"] == 3

    # The host's button: status first, the count reset in a second UPDATE.
    await hostdb.set_retry_config(conn, org, dlq_retention_days=7)
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    await conn.execute("UPDATE webhooks SET consecutive_failures = 0 WHERE id = %s", (hook["id"],))

    got = await receiver.wait_for(6, path="/back", timeout=30)
    streak = await hostdb.deliveries(conn, "id = ANY(%s)", ([streak_1, streak_2, cut_off],))
    expected = [json.loads(d["request_body"])["id"] for d in streak] + [str(e) for e in published]
    assert event_ids(got) == expected, "oldest first: the streak, then the held events in order"
    # A streak delivery keeps its row, so receivers see the webhook-id they saw before (one
    # per event and webhook, request.message_id), and its X-InTime-Delivery is the same row.
    assert [r.headers["webhook-id"] for r in got[:3]] == [
        message_id(d["event_id"], d["webhook_id"], d["id"]) for d in streak
    ]
    assert [r.headers["x-intime-delivery"] for r in got[:3]] == [str(d["id"]) for d in streak]
    await hostdb.wait_deliveries(conn, "webhook_id = %s AND status = 'success'", 6, (hook["id"],))
    assert await count(conn, "dispatcher.held") == 0
    rows = await hostdb.deliveries(conn, "id = ANY(%s)", ([before, refused],))
    assert sorted(r["status"] for r in rows) == ["dlq", "failed"], "outside the streak: kept"
    log = await one(conn, "SELECT * FROM dispatcher.hold_log WHERE webhook_id = %s", (hook["id"],))
    assert (log["action"], log["released"], log["requeued"], log["expired"]) == (
        "released",
        3,
        3,
        1,
    )
    assert not await hostdb.deliveries(conn, "event_id = %s", (expired["id"],))
    # Nothing is sent twice, whatever ran meanwhile.
    await hostdb.publish(conn, "job.created", {"n": "after"}, org)
    await receiver.wait_for(7, path="/back")
    assert len(set(event_ids(receiver.requests_for("/back")))) == 7


async def test_a_webhook_disabled_by_its_failures_holds_then_delivers(conn, receiver, start_daemon):
    """The whole path through the daemon: 410 disables it, events are held, enable sends."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/flaky"), ["job.*"])
    receiver.respond("/flaky", Reply(410), Reply(200))
    await start_daemon()
    first = await hostdb.publish(conn, "job.created", {"n": 0}, org)
    await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    await hostdb.wait_webhook(conn, hook["id"], lambda w: w["status"] == "disabled")
    held = [await hostdb.publish(conn, "job.updated", {"n": n}, org) for n in (1, 2)]
    await wait_held(conn, hook["id"], 2)
    await wait_outbox_empty(conn)
    assert len(await hostdb.deliveries(conn)) == 1

    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    got = await receiver.wait_for(3, path="/flaky", timeout=30)
    assert event_ids(got)[0] == str(first)
    assert sorted(event_ids(got)[1:]) == sorted(str(e) for e in held)
    await hostdb.wait_deliveries(conn, "status = 'success'", 2)


# -- discard -------------------------------------------------------------------------------------


async def test_discard_drops_the_hold_and_the_streak(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/gone"))
    streak = await old_delivery(conn, org, hook, "dlq", age=timedelta(minutes=30))
    await start_daemon()
    for n in range(2):
        await hostdb.publish(conn, "job.created", {"n": n}, org)
    await wait_held(conn, hook["id"], 2)

    got = await one(conn, "SELECT dispatcher.discard_hold(%s, %s) AS n", (org, hook["id"]))
    assert got["n"] == 2
    assert await count(conn, "dispatcher.held") == 0
    shown = await admin.get_webhook(conn, hook["id"])
    assert shown["hold"]["held"] == 0 and shown["hold"]["streak_rows"] == 0
    assert shown["hold"]["last_action"] == "discarded" and shown["hold"]["last_discarded"] == 2

    await conn.execute(
        "UPDATE webhooks SET status = 'active', consecutive_failures = 0 WHERE id = %s",
        (hook["id"],),
    )
    marker = await hostdb.publish(conn, "job.created", {"n": "after"}, org)
    [sent] = await receiver.wait_for(1, path="/gone")
    assert event_ids([sent]) == [str(marker)]
    [row] = await hostdb.deliveries(conn, "id = %s", (streak,))
    assert row["status"] == "dlq", "a discarded streak stays in the DLQ"


async def test_switching_a_disabled_webhook_off_by_hand_discards_its_hold(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/off"))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    await wait_held(conn, hook["id"], 1)
    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hook["id"],))
    assert await count(conn, "dispatcher.held") == 0
    await hostdb.publish(conn, "job.created", {}, org)  # inactive: nothing
    await wait_outbox_empty(conn)
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    assert await hostdb.deliveries(conn) == []


# -- races: a fan-out that read 'disabled' before the enable committed ---------------------------


async def test_an_event_held_after_the_release_is_delivered_by_the_sweep(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/late"))
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    [event] = await hostdb.insert_events_directly(conn, org, "job.created", 1)
    # What a replica's fan-out writes when its snapshot still saw the webhook disabled.
    await conn.execute("DELETE FROM dispatcher.outbox")
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " SELECT %s, id, org_id, created_at FROM events WHERE id = %s",
        (hook["id"], event),
    )
    await start_daemon()
    [sent] = await receiver.wait_for(1, path="/late", timeout=30)
    assert event_ids([sent]) == [str(event)]
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert await count(conn, "dispatcher.held") == 0


# -- counts: show and metrics --------------------------------------------------------------------


async def test_metrics_count_held_events(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/m"))
    port = reserved_port()
    await start_daemon(metrics_address=f"127.0.0.1:{port}")
    for n in range(3):
        await hostdb.publish(conn, "job.created", {"n": n}, org)
    await wait_held(conn, hook["id"], 3)

    async def three_held() -> bool:
        _, text = await get(port, "/metrics")
        return sample(text, "dispatcher_held_events") == 3.0

    await eventually(three_held, "dispatcher_held_events == 3", 30)


async def test_cli_shows_enables_and_discards_the_hold(conn, receiver, start_daemon, run):  # noqa: F811  # `run` is the fixture imported above
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/cli"))
    other = await disabled_hook(conn, org, receiver.url("/cli-other"))
    await old_delivery(conn, org, hook, "dlq", age=timedelta(minutes=30))
    await start_daemon()
    for n in range(2):
        await hostdb.publish(conn, "job.created", {"n": n}, org)
    await wait_held(conn, hook["id"], 2)
    await wait_held(conn, other["id"], 2)

    r = await run("webhooks", "show", str(hook["id"]))
    assert r.code == 0, r.err
    assert "held events:          2" in r.out and "streak to requeue:    1" in r.out
    r = await run("webhooks", "show", str(hook["id"]), "--json")
    assert r.json()["hold"]["held"] == 2

    r = await run("webhooks", "discard-hold", str(other["id"]))
    assert r.code == 0 and "discarded 2 held event(s)" in r.out
    (await run("webhooks", "discard-hold", str(uuid.UUID(int=1)))).refused(1, "does not exist")

    r = await run("webhooks", "enable", str(hook["id"]))
    assert r.code == 0, r.err
    assert "2 held event(s) queued, 1 streak delivery(ies) back to pending, 0 dropped" in r.out
    await receiver.wait_for(3, path="/cli", timeout=30)
    assert (await hostdb.webhook(conn, hook["id"]))["consecutive_failures"] == 0
    r = await run("webhooks", "show", str(hook["id"]))
    assert "held events:          0" in r.out and "last hold:" in r.out and "released" in r.out

    r = await run("webhooks", "enable", str(other["id"]), "--json")
    assert r.code == 0 and r.json()["hold"]["released"] == 0
    assert receiver.requests_for("/cli-other") == []

    # A person switching off a disabled webhook discards its hold.
    third = await disabled_hook(conn, org, receiver.url("/cli-third"))
    await hostdb.publish(conn, "job.created", {"n": 3}, org)
    await wait_held(conn, third["id"], 1)
    r = await run("webhooks", "disable", str(third["id"]))
    assert r.code == 0 and "its hold was discarded: 1 held event(s) discarded" in r.out
    assert await count(conn, "dispatcher.held WHERE webhook_id = %s", (third["id"],)) == 0


async def test_enable_during_fan_out_by_two_replicas_loses_and_doubles_nothing(
    conn, db_dsn, receiver, start_daemon
):
    """Events keep coming while the host enables the webhook: each is sent exactly once."""
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, receiver.url("/race"))
    await start_daemon()
    await start_daemon()
    published: list[uuid.UUID] = []
    async with await hostdb.connect(db_dsn) as publisher:
        for batch in range(30):
            published += await hostdb.insert_events_directly(publisher, org, "job.created", 5)
            await publisher.execute("NOTIFY dispatcher_v1, 'o'")
            if batch == 10:
                await conn.execute(
                    "UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],)
                )
                await conn.execute(
                    "UPDATE webhooks SET consecutive_failures = 0 WHERE id = %s", (hook["id"],)
                )
            await publisher.execute("SELECT pg_sleep(0.02)")

    got = await receiver.wait_for(150, path="/race", timeout=60)
    await hostdb.wait_deliveries(conn, "status = 'success'", 150, timeout=30)
    assert await count(conn, "dispatcher.held") == 0
    assert sorted(event_ids(got)) == sorted(str(e) for e in published)
    assert len(await hostdb.deliveries(conn)) == 150


async def test_a_host_role_without_rights_on_our_schema_releases_by_enabling(conn):
    """The host's button runs as its own role: the trigger needs no grant on `dispatcher`."""
    org = await hostdb.create_org(conn)
    hook = await disabled_hook(conn, org, "https://93.184.216.34/hook")
    [event] = await hostdb.insert_events_directly(conn, org, "job.created", 1)
    await conn.execute("DELETE FROM dispatcher.outbox")
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " SELECT %s, id, org_id, created_at FROM events WHERE id = %s",
        (hook["id"], event),
    )
    role = f"host_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        await conn.execute(f"GRANT SELECT, UPDATE ON webhooks TO {role}")
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    finally:
        await conn.execute(f"REVOKE ALL ON webhooks FROM {role}")
        await conn.execute(f"DROP ROLE {role}")
    [row] = await hostdb.deliveries(conn, "webhook_id = %s", (hook["id"],))
    assert row["event_id"] == event and row["status"] == "pending"
    assert await count(conn, "dispatcher.held") == 0


async def test_an_outage_end_to_end_loses_nothing_after_enable(conn, receiver, start_daemon):
    """10 failures put 5 deliveries in the DLQ and disable the webhook; 2 more events are held;
    the endpoint comes back and the host enables it: all 7 are delivered, once each."""
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        max_retries=1,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        enable_jitter=False,
    )
    hook = await hostdb.create_webhook(conn, org, receiver.url("/outage"), ["job.*"])
    receiver.respond("/outage", Reply(503))
    # One attempt at a time: attempts that overlap count as one step of the streak
    # (docs/architecture.md), and the host's trigger disables at 10 steps.
    await start_daemon(per_webhook_concurrency=1)
    first = [await hostdb.publish(conn, "job.created", {"n": n}, org) for n in range(5)]
    await hostdb.wait_deliveries(conn, "status = 'dlq'", 5, timeout=60)

    async def disabled_after_ten() -> bool:
        # The webhook's counters follow the outcomes (apply_webhook_counters), a moment later.
        w = await hostdb.webhook(conn, hook["id"])
        return bool(w["status"] == "disabled" and w["consecutive_failures"] == 10)

    await eventually(disabled_after_ten, "disabled after 10 failures in a row", 15)
    later = [await hostdb.publish(conn, "job.updated", {"n": n}, org) for n in range(2)]
    await wait_held(conn, hook["id"], 2)
    assert len(receiver.requests_for("/outage")) == 10

    receiver.respond("/outage", Reply(200))
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    await conn.execute("UPDATE webhooks SET consecutive_failures = 0 WHERE id = %s", (hook["id"],))
    await hostdb.wait_deliveries(conn, "status = 'success'", 7, timeout=30)
    delivered = event_ids(receiver.requests_for("/outage")[10:])
    assert sorted(delivered) == sorted(str(e) for e in first + later)
    assert await hostdb.deliveries(conn, "status <> 'success'") == []
