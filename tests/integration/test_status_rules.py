"""Status rules through the daemon: 410 Gone disables the webhook (Standard Webhooks);
Retry-After as delay-seconds or as an HTTP date, capped by the org's max delay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import hostdb
import pytest
from support.receiver import Reply


async def test_410_gone_disables_the_webhook(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    gone = await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["*"])
    other = await hostdb.create_webhook(conn, org, receiver.url("/ok"), ["*"])
    receiver.respond("/gone", Reply(410, b"this endpoint was removed"))
    await start_daemon()

    await hostdb.publish(conn, "job.created", {"n": 1}, org)
    [row] = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'failed'", 1, (gone["id"],)
    )
    assert row["response_status"] == 410 and row["attempt_number"] == 1
    assert row["next_retry_at"] is None and row["delivered_at"] is not None
    assert "the endpoint is gone: webhook disabled" in row["error_message"]
    assert row["response_body"] == "this endpoint was removed"
    # The webhook's counters follow the outcome in a statement of their own: wait for them.
    hook = await hostdb.wait_webhook(conn, gone["id"], lambda h: h["status"] != "active")
    assert hook["status"] == "disabled"
    assert hook["consecutive_failures"] == 1

    # Later events are not sent to it but held (no row); the other webhook is unaffected
    # (subscribed to everything, it also gets the gone webhook's webhook.disabled event).
    later = await hostdb.publish(conn, "job.created", {"n": 2}, org)
    await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND event_id = %s AND status = 'success'", 1, (other["id"], later)
    )
    cur = await conn.execute(
        "SELECT event_id FROM dispatcher.held WHERE webhook_id = %s", (gone["id"],)
    )
    assert [r["event_id"] for r in await cur.fetchall()] == [later]
    assert len(await hostdb.deliveries(conn, "webhook_id = %s", (gone["id"],))) == 1
    assert len(receiver.requests_for("/gone")) == 1


async def test_410_does_not_re_enable_an_inactive_webhook(conn, receiver, start_daemon):
    """The host's admin switched it off meanwhile: 'inactive' (a person's choice) stays."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["*"])
    receiver.respond("/gone", Reply(410, delay=0.5))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    await receiver.wait_for(1)
    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hook["id"],))
    await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    assert (await hostdb.webhook(conn, hook["id"]))["status"] == "inactive"


def _wait(row) -> float:
    return (row["next_retry_at"] - row["created_at"]).total_seconds()


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_seconds(conn, receiver, start_daemon, status):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=60, enable_jitter=False
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(status, headers={"Retry-After": "2"}), Reply(200))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'retrying'", 1)
    assert 1.9 <= _wait(row) <= 4.0, f"Retry-After: 2 should replace the 60 s policy: {row}"
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert row["attempt_number"] == 2


async def test_retry_after_http_date(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=60, enable_jitter=False
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    when = datetime.now(UTC) + timedelta(seconds=5)
    receiver.respond(
        "/hook",
        Reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)}),
        Reply(200),
    )
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'retrying'", 1)
    # The date has one-second resolution; the retry is due at that date.
    due = row["next_retry_at"]
    assert when - timedelta(seconds=1.5) <= due <= when + timedelta(seconds=1.5), (due, when)
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1, timeout=20)
    assert row["attempt_number"] == 2


@pytest.mark.parametrize(
    ("header", "low", "high"),
    [
        ("100000", 2.9, 4.5),  # capped by max_delay_seconds = 3
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0, 1.5),  # in the past: at once
        ("soon", 59.0, 61.5),  # unparseable: the policy's delay
        ("-5", 59.0, 61.5),
    ],
)
async def test_retry_after_edge_values(conn, receiver, start_daemon, header, low, high):
    org = await hostdb.create_org(conn)
    max_delay = 3 if header == "100000" else 3600
    await hostdb.set_retry_config(
        conn,
        org,
        retry_strategy="fixed",
        base_delay_seconds=60,
        max_delay_seconds=max_delay,
        enable_jitter=False,
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(429, headers={"Retry-After": header}), Reply(200))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    rows = await hostdb.wait_deliveries(conn, "status IN ('retrying', 'success')", 1)
    if rows[0]["status"] == "retrying":
        assert low <= _wait(rows[0]) <= high, (header, _wait(rows[0]))
    else:  # retried at once and already delivered
        assert high < 2
