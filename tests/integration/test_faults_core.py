"""Issue 10 items 1-3 and 14, issue 11 item 6: duplicates and miscounts under real faults.

Slow claims are made with a real lock held by a test transaction (dispatcher.held, which
the fan-out statement names, locked ACCESS EXCLUSIVE as a long migration would; a webhook
row held FOR UPDATE no longer slows a fan-out: test_fanout_locks.py); the daemon is a real
one, the receivers real HTTP servers on loopback.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import hostdb
import psycopg
import pytest
from psycopg.rows import dict_row
from support.daemon import daemon_env
from support.receiver import Hang, Reply

from dispatcher.claims import DEFAULT_POLICY, Claimed
from dispatcher.request import NO_CUSTOM_HEADERS


async def _hold_webhook(dsn: str, webhook_id: uuid.UUID) -> psycopg.AsyncConnection[Any]:
    """A host transaction holding the webhook row FOR UPDATE (an admin editing it)."""
    holder = await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row)
    await holder.execute("SELECT * FROM webhooks WHERE id = %s FOR UPDATE", (webhook_id,))
    return holder


async def _slow_fan_outs(dsn: str) -> psycopg.AsyncConnection[Any]:
    """A transaction holding a table the fan-out statement names (a long migration): every
    fan-out waits for it, with the rows it picked locked."""
    holder = await psycopg.AsyncConnection.connect(dsn, row_factory=dict_row)
    await holder.execute("LOCK TABLE dispatcher.held IN ACCESS EXCLUSIVE MODE")
    return holder


async def _wait_lock_waiter(conn: hostdb.Conn, needle: str, timeout: float = 15.0) -> None:
    """Until a backend whose query contains `needle` waits on a lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await conn.execute(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{needle}%",),
        )
        row = await cur.fetchone()
        if row and row["n"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"no backend waited on a lock running {needle!r} within {timeout}s")


async def _wait_until(conn: hostdb.Conn, sql: str, params: Any = (), timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cur = await conn.execute(sql, params)
        row = await cur.fetchone()
        if row and next(iter(row.values())):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {sql}")


def _ids(requests: list[Any]) -> collections.Counter[str]:
    return collections.Counter(r.headers["webhook-id"] for r in requests)


LEASED = (
    "SELECT count(*) AS n FROM webhook_deliveries"
    " WHERE status IN ('pending', 'retrying') AND next_retry_at > now()"
)


# -- item 1 ---------------------------------------------------------------------------


async def test_sigterm_during_a_claim_leaves_nothing_leased_and_sends_once(
    conn, receiver, db_dsn, daemon_factory
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(200, delay=1.0))
    env = daemon_env(db_dsn, DISPATCHER_SHUTDOWN_GRACE="10", DISPATCHER_LEASE_SECONDS="40")
    daemon = daemon_factory(env)
    await daemon.wait_for_log("ready", timeout=20)

    holder = await _slow_fan_outs(db_dsn)
    try:
        for i in range(5):
            await hostdb.publish(conn, "job.created", {"n": i}, org)
        await _wait_lock_waiter(conn, "outbox")  # the fan-out waits on the lock
        daemon.terminate()
        await daemon.wait_for_log("signal_received", timeout=10)
        await asyncio.sleep(0.5)  # the stop has begun while the claim still waits
    finally:
        await holder.commit()
        await holder.close()
    assert await daemon.wait_exit(30) == 0
    cur = await conn.execute(LEASED)
    assert (await cur.fetchone())["n"] == 0, "a row of the pass in flight stayed leased"

    # Whatever was not delivered is due now: a second daemon sends it, each id once.
    second = daemon_factory(env)
    await hostdb.wait_deliveries(conn, "status = 'success'", 5, timeout=30)
    await asyncio.sleep(1.5)
    second.terminate()
    assert await second.wait_exit(20) == 0
    ids = _ids(receiver.requests_for("/hook"))
    assert len(ids) == 5 and set(ids.values()) == {1}, ids


# -- item 14: our own abort -----------------------------------------------------------


async def test_shutdown_abort_is_logged_as_ours_and_released(
    conn, receiver, db_dsn, daemon_factory
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Hang())
    env = daemon_env(db_dsn, DISPATCHER_SHUTDOWN_GRACE="1")
    daemon = daemon_factory(env)
    await daemon.wait_for_log("ready", timeout=20)
    await hostdb.publish(conn, "job.created", {}, org)
    [request] = await receiver.wait_for(1, path="/hook", timeout=15)
    daemon.terminate()
    assert await daemon.wait_exit(20) == 0
    [aborted] = daemon.events("attempt_aborted")
    assert aborted["delivery_id"] == request.headers["x-intime-delivery"]
    assert "receiver closed" not in daemon.text()
    [row] = await hostdb.deliveries(conn)
    assert row["status"] == "pending" and row["next_retry_at"] is None  # released, due now
    assert row["error_message"] is None


# -- item 14: in-flight count ---------------------------------------------------------


async def test_inflight_counts_a_reclaimed_row_of_this_process_twice(receiver, start_daemon):
    receiver.respond("/slow", Reply(204, delay=1.0))
    running = await start_daemon()
    dispatcher = running.app.dispatcher
    assert dispatcher is not None
    delivery = uuid.uuid4()

    def claimed(claim: datetime) -> Claimed:
        return Claimed(
            id=delivery,
            org_id=uuid.uuid4(),
            webhook_id=uuid.uuid4(),
            event_id=None,
            event_type="job.created",
            request_body="{}",
            attempt=1,
            max_attempts=2,
            claim=claim,
            url=receiver.url("/slow"),
            secrets=("s",),
            headers=NO_CUSTOM_HEADERS,
            active=True,
            policy=DEFAULT_POLICY,
        )

    # The lease ran out while the first attempt was in flight and this process took the
    # row again: two attempts of one delivery id are in flight.
    dispatcher._start(claimed(datetime(2030, 1, 1, tzinfo=UTC)))
    dispatcher._start(claimed(datetime(2030, 1, 1, 0, 1, tzinfo=UTC)))
    await receiver.wait_for(2, path="/slow", timeout=10)
    assert dispatcher.inflight == 2
    deadline = time.monotonic() + 15
    while dispatcher.inflight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert dispatcher.inflight == 0


# -- item 2 ---------------------------------------------------------------------------


async def test_a_locked_webhook_row_holds_up_no_other_webhook(conn, receiver, db_dsn, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        max_retries=3,
        enable_jitter=False,
    )
    a = await hostdb.create_webhook(conn, org, receiver.url("/a"), ["a.*"], name="a")
    b = await hostdb.create_webhook(conn, org, receiver.url("/b"), ["b.*"], name="b")
    receiver.respond("/a", Reply(500))
    await start_daemon(http_timeout=1.0, lease_seconds=11.0)
    await hostdb.publish(conn, "a.happened", {}, org)
    await receiver.wait_for(1, path="/a", timeout=15)
    await _wait_until(
        conn, "SELECT consecutive_failures = 1 FROM webhooks WHERE id = %s", (a["id"],)
    )

    holder = await _hold_webhook(db_dsn, a["id"])
    try:
        for i in range(4):
            await hostdb.publish(conn, "b.happened", {"n": i}, org)
            await asyncio.sleep(0.5)
        # B's outcomes are written while A's row is still locked ...
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 4, (b["id"],), timeout=15
        )
        # ... A's attempts go on and their delivery rows are written too ...
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status IN ('dlq', 'failed')", 1, (a["id"],), timeout=20
        )
        # ... and B's leases (11 s) run out with A's row still locked: nothing is sent twice.
        await asyncio.sleep(12.5)
        ids = _ids(receiver.requests_for("/b"))
        assert len(ids) == 4 and set(ids.values()) == {1}, ids
        assert (await hostdb.webhook(conn, a["id"]))["consecutive_failures"] == 1
    finally:
        await holder.commit()
        await holder.close()
    # A's counters are written once the lock goes, exactly: 4 sequential failures.
    await _wait_until(
        conn, "SELECT consecutive_failures = 4 FROM webhooks WHERE id = %s", (a["id"],)
    )
    assert len(receiver.requests_for("/a")) == 4


# -- item 3 ---------------------------------------------------------------------------


async def test_a_claim_slowed_by_a_lock_does_not_send_twice(conn, receiver, db_dsn, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(200, delay=1.5))
    await start_daemon(http_timeout=2.0, lease_seconds=12.0)
    holder = await _slow_fan_outs(db_dsn)
    try:
        await hostdb.publish(conn, "job.created", {}, org)
        await _wait_lock_waiter(conn, "outbox")
        await asyncio.sleep(10.5)  # most of the 12 s lease goes by inside the claim
    finally:
        await holder.commit()
        await holder.close()
    await hostdb.wait_deliveries(conn, "status = 'success'", 1, timeout=20)
    await asyncio.sleep(2.0)
    ids = _ids(receiver.requests_for("/hook"))
    assert len(ids) == 1 and set(ids.values()) == {1}, ids


# -- issue 11 item 6 ------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [1, 2])
async def test_a_blip_under_load_is_one_step_of_the_streak(conn, receiver, start_daemon, replicas):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        max_retries=3,
        enable_jitter=False,
    )
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    # The endpoint fails for about a second while 32 attempts are in flight.
    receiver.respond("/hook", *([Reply(500, delay=1.0)] * 32), Reply(204))
    # With two replicas each takes half: the streak rule is decided in the database.
    daemons = [await start_daemon(per_webhook_concurrency=32 // replicas) for _ in range(replicas)]
    await hostdb.insert_events_directly(conn, org, "job.created", 32)
    await receiver.wait_for(32, path="/hook", timeout=20)
    await hostdb.wait_deliveries(conn, "status = 'success'", 32, timeout=40)
    w = await hostdb.webhook(conn, hook["id"])
    assert w["status"] == "active", w
    await _wait_until(
        conn, "SELECT consecutive_failures = 0 FROM webhooks WHERE id = %s", (hook["id"],)
    )
    cur = await conn.execute(
        "SELECT count(*) AS n FROM webhook_deliveries WHERE attempt_number > 1"
    )
    assert (await cur.fetchone())["n"] >= 1  # the blip really failed attempts
    assert all(d.app.recorder is not None and d.app.recorder.written for d in daemons)
