"""Core delivery behaviour: matching, signing, recording, retries, DLQ, auto-disable."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from typing import Any

import hostdb
import pytest
from standardwebhooks.webhooks import Webhook
from support.receiver import Reply

from dispatcher.request import message_id


def whsec(secret: str) -> str:
    """The host's 64-hex secrets sign with their UTF-8 bytes: the whsec_ form of those bytes."""
    return "whsec_" + base64.b64encode(secret.encode()).decode()


def intime_signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


async def test_published_event_reaches_matching_webhooks_signed_both_ways(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    other_org = await hostdb.create_org(conn, "Other")
    jobs = await hostdb.create_webhook(
        conn, org, receiver.url("/jobs"), ["job.*"], headers={"X-Tenant": "acme"}
    )
    exact = await hostdb.create_webhook(conn, org, receiver.url("/exact"), ["job.created"])
    await hostdb.create_webhook(conn, org, receiver.url("/candidates"), ["candidate.*"])
    await hostdb.create_webhook(conn, other_org, receiver.url("/other"), ["*"])
    await start_daemon()

    event_id = await hostdb.publish(conn, "job.created", {"title": "Welder"}, org)

    await receiver.wait_for(2)
    rows = await hostdb.wait_deliveries(conn, "status = 'success'", 2)
    assert {r["webhook_id"] for r in rows} == {jobs["id"], exact["id"]}
    assert {r.path for r in receiver.requests} == {"/jobs", "/exact"}

    for req in receiver.requests:
        hook = jobs if req.path == "/jobs" else exact
        row = next(r for r in rows if r["webhook_id"] == hook["id"])
        # Standard Webhooks, verified by the official library as a receiver would.
        payload = Webhook(whsec(hook["secret"])).verify(req.body, dict(req.headers))
        assert payload["id"] == str(event_id)
        assert payload["type"] == payload["event"] == "job.created"
        assert payload["org_id"] == str(org)
        assert payload["data"] == {"title": "Welder"}
        # webhook-id: one per (event, webhook), stable across rows; X-InTime-Delivery: the row.
        assert req.headers["webhook-id"] == message_id(event_id, hook["id"], row["id"])
        assert req.headers["X-InTime-Delivery"] == str(row["id"])
        # The host's recipe, computed independently.
        ts = req.headers["X-InTime-Timestamp"]
        assert req.headers["X-InTime-Signature"] == intime_signature(hook["secret"], ts, req.body)
        assert datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert req.headers["X-InTime-Event"] == "job.created"
        assert req.headers["X-InTime-Delivery"] == str(row["id"])
        assert req.headers["Content-Type"] == "application/json"
        assert req.headers["User-Agent"].startswith("webhook-dispatcher/")
        # The exact bytes sent are recorded, with the attempt.
        assert row["request_body"].encode() == req.body
        assert row["event_id"] == event_id
        assert row["response_status"] == 204
        assert row["attempt_number"] == 1 and row["max_attempts"] == 4
        assert row["delivered_at"] is not None and row["duration_ms"] is not None
        assert row["request_headers"]["X-InTime-Delivery"] == str(row["id"])
        assert row["request_headers"]["webhook-id"] == message_id(
            event_id, row["webhook_id"], row["id"]
        )
    assert receiver.requests_for("/jobs")[0].headers["X-Tenant"] == "acme"
    # the counters follow the outcome in a second statement (hostdb.wait_webhook)
    hook = await hostdb.wait_webhook(conn, jobs["id"], lambda w: w["last_success_at"] is not None)
    assert hook["consecutive_failures"] == 0


async def test_custom_headers_never_replace_signature_headers(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(
        conn,
        org,
        receiver.url(),
        ["*"],
        headers={
            "webhook-signature": "v1,forged",
            "X-InTime-Signature": "forged",
            "Authorization": "Bearer sekrit-token",
        },
    )
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [req] = await receiver.wait_for(1)
    Webhook(whsec(hook["secret"])).verify(req.body, dict(req.headers))
    assert req.headers["Authorization"] == "Bearer sekrit-token"
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert "sekrit-token" not in json.dumps(row["request_headers"])


async def test_server_error_is_retried_with_backoff_then_succeeds(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(500), Reply(200))
    await start_daemon()

    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'retrying'", 1)
    assert row["response_status"] == 500 and row["attempt_number"] == 2
    assert row["error_message"].startswith("HTTP 500")
    # next_retry_at by the formula: fixed 1 s after the attempt, no jitter.
    wait = (row["next_retry_at"] - row["created_at"]).total_seconds()
    assert 0.9 <= wait <= 2.0, wait
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert row["attempt_number"] == 2 and row["response_status"] == 200
    reqs = await receiver.wait_for(2)
    assert (
        reqs[0].headers["webhook-id"]
        == reqs[1].headers["webhook-id"]
        == message_id(row["event_id"], row["webhook_id"], row["id"])
    )
    assert reqs[0].headers["X-InTime-Delivery"] == reqs[1].headers["X-InTime-Delivery"]
    cur = await conn.execute(
        "SELECT attempt_number, outcome, response_status FROM dispatcher.attempts "
        "WHERE delivery_id = %s ORDER BY id",
        (row["id"],),
    )
    assert [tuple(r.values()) for r in await cur.fetchall()] == [
        (1, "retryable", 500),
        (2, "delivered", 200),
    ]


async def test_client_error_fails_at_once(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(400))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    assert row["response_status"] == 400 and row["attempt_number"] == 1
    assert row["delivered_at"] is not None and row["next_retry_at"] is None
    assert len(receiver.requests) == 1
    w = await hostdb.wait_webhook(conn, hook["id"], lambda w: w["consecutive_failures"] == 1)
    assert w["last_failure_at"] is not None


async def test_exhausted_delivery_goes_to_dlq(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, max_retries=1, retry_strategy="fixed", base_delay_seconds=1
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(503))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'dlq'", 1)
    assert row["attempt_number"] == 2 and row["max_attempts"] == 2
    assert row["delivered_at"] is not None
    assert "no attempts left" in row["error_message"]
    assert len(receiver.requests) == 2


async def test_exhausted_delivery_fails_when_org_disabled_dlq(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, max_retries=1, retry_strategy="fixed", base_delay_seconds=1, enable_dlq=False
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(500))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    assert row["attempt_number"] == 2
    assert len(receiver.requests) == 2


async def test_429_retry_after_is_honoured(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=60, enable_jitter=False
    )
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(429, headers={"Retry-After": "1"}), Reply(200))
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'retrying'", 1)
    wait = (row["next_retry_at"] - row["created_at"]).total_seconds()
    assert 0.9 <= wait <= 3.0, f"Retry-After: 1 should win over the 60 s policy, got {wait}"
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)


async def test_ten_consecutive_failures_disable_the_webhook(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    # A failing endpoint is probed once per backoff step: keep the steps at 1 s here.
    await hostdb.set_retry_config(conn, org, base_delay_seconds=1, max_delay_seconds=1)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(422))
    # One attempt at a time: ten failures that did not overlap in time are ten steps of
    # the streak (overlapping ones count as one: test_faults_core.py).
    await start_daemon(per_webhook_concurrency=1)
    for i in range(10):
        await hostdb.publish(conn, "job.created", {"n": i}, org)
    await hostdb.wait_deliveries(conn, "status = 'failed'", 10, timeout=30)
    w = await _wait_webhook(conn, hook["id"], "status = 'disabled'")
    assert w["status"] == "disabled" and w["consecutive_failures"] == 10

    # Later events are held for it (dispatcher.held), not written as failed rows.
    later = await hostdb.publish(conn, "job.created", {"n": 10}, org)
    deadline = asyncio.get_running_loop().time() + 15
    while not (await (await conn.execute("SELECT event_id FROM dispatcher.held")).fetchall()):
        assert asyncio.get_running_loop().time() < deadline, "the event was not held"
        await asyncio.sleep(0.05)
    cur = await conn.execute(
        "SELECT event_id FROM dispatcher.held WHERE webhook_id = %s", (hook["id"],)
    )
    assert [r["event_id"] for r in await cur.fetchall()] == [later]
    assert len(await hostdb.deliveries(conn)) == 10
    assert len(receiver.requests) == 10


async def test_pending_row_of_a_disabled_webhook_is_not_sent(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["*"], status="inactive")
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body) VALUES (%s, %s, 'webhook.test', '{}', %s, '{}', '{}')",
        (org, hook["id"], receiver.url()),
    )
    await start_daemon()
    [row] = await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    assert row["error_message"] == "Webhook is not active"
    assert receiver.requests == []


async def test_host_test_ping_and_dlq_retry_are_delivered(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.created"])
    await start_daemon()
    body = json.dumps(
        {
            "event": "webhook.test",
            "test": True,
            "timestamp": "2025-12-05T14:08:26.123Z",
            "data": {"message": "hi"},
        }
    )
    # What the host's admin API does for "Send test webhook": a pending row.
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status) VALUES (%s, %s, 'webhook.test', %s::jsonb, %s,"
        " '{}', %s, 'pending')",
        (org, hook["id"], body, hook["url"], body),
    )
    [req] = await receiver.wait_for(1)
    assert req.body == body.encode()
    [ping] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    Webhook(whsec(hook["secret"])).verify(req.body, dict(req.headers))

    # A DLQ row set back to pending by the host's "retry" button.
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'dlq', attempt_number = 4 WHERE id = %s",
        (ping["id"],),
    )
    await conn.execute(
        "UPDATE webhook_deliveries SET status = 'pending', attempt_number = 1, "
        "next_retry_at = NULL WHERE id = %s",
        (ping["id"],),
    )
    await receiver.wait_for(2)
    [row] = await hostdb.wait_deliveries(conn, "status = 'success' AND id = %s", 1, (ping["id"],))
    assert row["attempt_number"] == 1


async def test_success_timestamps_of_a_healthy_webhook_are_written_at_most_once_a_second(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/h"), ["*"])
    await start_daemon()

    async def deliver(n: int, written: Any = lambda row: True) -> dict[str, Any]:
        """The webhook's row after the n-th success, once `written` holds: its counters
        follow the outcome in a statement of their own, so they are waited for."""
        await hostdb.publish(conn, "job.created", {"n": n}, org)
        await hostdb.wait_deliveries(conn, "status = 'success'", n)
        deadline = asyncio.get_running_loop().time() + 15
        while True:
            cur = await conn.execute(
                "SELECT xmin::text AS version, last_success_at, last_triggered_at,"
                " consecutive_failures, now() - last_success_at AS age FROM webhooks"
                " WHERE id = %s",
                (hook["id"],),
            )
            row = await cur.fetchone()
            if written(row) or asyncio.get_running_loop().time() > deadline:
                return row
            await asyncio.sleep(0.05)

    first = await deliver(1, lambda row: row["last_success_at"] is not None)
    assert first["last_success_at"] is not None and first["last_triggered_at"] is not None
    second = await deliver(2)
    if second["age"].total_seconds() < 0.9:  # recorded within the second: not written again
        assert second["version"] == first["version"]
        assert second["last_success_at"] == first["last_success_at"]
    await asyncio.sleep(1.2)
    third = await deliver(3, lambda row: row["last_success_at"] > first["last_success_at"])
    assert third["last_success_at"] > first["last_success_at"]
    assert third["last_triggered_at"] > first["last_triggered_at"]
    assert third["consecutive_failures"] == 0


async def _body_compression(conn, receiver, start_daemon, **settings) -> str | None:
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/big"), ["*"])
    await start_daemon(**settings)
    await hostdb.publish(conn, "job.created", {"notes": "lorem ipsum " * 600}, org)
    (row,) = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    cur = await conn.execute(
        "SELECT pg_column_compression(request_body) AS c FROM webhook_deliveries WHERE id = %s",
        (row["id"],),
    )
    return (await cur.fetchone())["c"]


async def _server_has_lz4(conn) -> bool:
    cur = await conn.execute(
        "SELECT 'lz4' = ANY (enumvals) AS lz4 FROM pg_settings"
        " WHERE name = 'default_toast_compression'"
    )
    return bool((await cur.fetchone())["lz4"])


async def test_wide_values_the_daemon_writes_are_compressed_with_lz4(conn, receiver, start_daemon):
    if not await _server_has_lz4(conn):
        pytest.skip("this PostgreSQL was built without lz4")
    assert await _body_compression(conn, receiver, start_daemon) == "lz4"


async def test_server_compression_setting_leaves_the_server_default(conn, receiver, start_daemon):
    cur = await conn.execute("SHOW default_toast_compression")
    default = (await cur.fetchone())["default_toast_compression"]
    found = await _body_compression(conn, receiver, start_daemon, toast_compression="server")
    assert found == default


async def _wait_webhook(conn, webhook_id, condition: str, timeout: float = 10.0):
    """The webhook row once `condition` holds (its counters are written just after the
    delivery rows, by a separate statement)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        cur = await conn.execute(
            f"SELECT * FROM webhooks WHERE id = %s AND {condition}", (webhook_id,)
        )
        row = await cur.fetchone()
        if row is not None or asyncio.get_running_loop().time() > deadline:
            return dict(row) if row is not None else await hostdb.webhook(conn, webhook_id)
        await asyncio.sleep(0.05)
