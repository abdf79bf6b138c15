"""Hostile checks of issue 12's delivery loop (branch breakit): faults while rows wait in a
claim-ahead queue. Behaviour only: no timing is asserted; every wait has a generous deadline
(a settle window is a pause in which nothing more may happen, never a bound on speed)."""

from __future__ import annotations

import asyncio

import hostdb
import pytest
from support.receiver import Reply

from dispatcher.recorder import LINGER_TARGET


async def test_a_410_sends_no_queued_row_to_the_gone_endpoint(conn, receiver, start_daemon):
    """410 Gone disables the webhook. Rows leased ahead behind the two attempts that got the
    410 must not be sent to the gone endpoint afterwards: each would end `failed` with its
    410, a final 4xx that re-enabling the webhook does not requeue, where a row not sent ends
    `failed` 'Webhook is not active' (or stays pending) and is delivered after the enable.

    Before the fix the queue kept starting rows until the process's own streak reached
    FAILING_AFTER (a 410 counted as one failure like any other), and the refill of the
    held-back webhook leased more meanwhile: 4 requests reached the gone endpoint, 2 of
    them after its first 410, and those 2 events were never delivered after the enable."""
    org = await hostdb.create_org(conn)
    # a short probe spacing, so that the re-enabled webhook is tried again soon
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    hook = (await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["*"]))["id"]
    receiver.respond("/gone", Reply(410, delay=0.3))
    await hostdb.insert_events_directly(conn, org, "job.created", 20)
    daemon = await start_daemon(per_webhook_concurrency=2, claim_ahead=4)
    dispatcher = daemon.app.dispatcher
    assert dispatcher is not None
    await receiver.wait_for(2, "/gone", timeout=30)
    await hostdb.wait_webhook(conn, hook, lambda h: h["status"] == "disabled", timeout=30)
    await asyncio.sleep(1.5)  # settle: anything still queued would have been sent by now
    gone = receiver.requests_for("/gone")
    assert len(gone) == 2, f"{len(gone)} requests reached the gone endpoint, 2 were in flight"

    # Enabled again (the host's button), the endpoint is back: every other event arrives.
    receiver.respond("/gone", Reply(204))
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook,))
    await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'success'", 18, (hook,), timeout=60
    )
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/gone")]
    assert len(ids) == len(set(ids)) == 20


@pytest.mark.parametrize("status", [410, 400])
async def test_a_failing_webhook_with_nothing_left_to_send_does_not_make_the_loop_spin(
    conn, receiver, start_daemon, status
):
    """A webhook gone with 410 (disabled), or one whose last three rows ended in final 4xx
    failures, has a probe due that no row can fill. The loop's idle timer armed for that
    probe fired at once, forever: ~700 passes a second, each a fan-out and a due scan, for
    as long as the process lived (review of branch breakit). Now the scan that finds no row
    for the probe leaves the loop to its doorbells and polls: a handful of passes a second."""
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        retry_strategy="fixed",
        base_delay_seconds=1,
        enable_jitter=False,
        max_retries=0,
    )
    hook = (await hostdb.create_webhook(conn, org, receiver.url("/fails"), ["*"]))["id"]
    receiver.respond("/fails", Reply(status))
    await hostdb.insert_events_directly(conn, org, "job.created", 3)
    daemon = await start_daemon(per_webhook_concurrency=1, poll_interval=1.0)
    dispatcher = daemon.app.dispatcher
    assert dispatcher is not None
    await hostdb.wait_deliveries(
        conn,
        "webhook_id = %s AND status = 'failed'",
        3 if status == 400 else 1,
        (hook,),
        timeout=30,
    )
    await asyncio.sleep(2.5)  # past the probe's spacing (1 s): the probe is due, no row for it
    before = dispatcher.progress
    await asyncio.sleep(2.0)
    passes = dispatcher.progress - before
    assert passes < 40, f"{passes} loop passes in 2 s with nothing to do"


async def test_a_row_whose_lease_ran_out_in_the_queue_is_sent_once_by_whoever_took_it(
    conn, receiver, start_daemon
):
    """Replica A leases 11 rows of one slow webhook (cap 1, 10 leased ahead, lease 12 s,
    1.4 s per attempt): its last queued rows wait past their lease's end, and replica B,
    polling, takes them over. When A's queue reaches them, A must not send them (its lease
    extension finds the claim token changed): every event reaches the receiver once.
    Checked sound (branch breakit): no fix needed; kept as a regression test."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/slowq"), ["*"])
    receiver.respond("/slowq", Reply(204, delay=1.4))
    await hostdb.insert_events_directly(conn, org, "job.created", 11)
    first = await start_daemon(
        per_webhook_concurrency=1,
        claim_ahead=10,
        http_timeout=2.0,
        lease_seconds=12.0,
        poll_interval=30.0,  # A claims again only when its attempts end: B polls first
        instance_name="a",
    )
    one = first.app.dispatcher
    assert one is not None
    await receiver.wait_for(1, "/slowq", timeout=30)
    assert one.admission.queued() == 10, "premise: A leased every row, 10 of them ahead"
    second = await start_daemon(per_webhook_concurrency=4, instance_name="b")
    two = second.app.dispatcher
    assert two is not None
    await hostdb.wait_deliveries(conn, "status = 'success'", 11, timeout=90)
    await asyncio.sleep(2 * 1.4)  # settle: a row A still held would have been sent by now
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/slowq")]
    assert len(ids) == len(set(ids)) == 11
    assert two.starts >= 1, "premise: B took over rows whose lease ran out in A's queue"


async def test_postgresql_down_while_the_recorder_lingers_loses_no_outcome(
    conn, receiver, start_daemon, db_dsn, pg_cluster, monkeypatch
):
    """PostgreSQL stopped (fast) while the recorder lingers with a batch of outcomes in hand,
    and started again 3 s later: the batch's write waits for a connection (or fails and is
    retried) and lands once the database is back; each delivery ends `success` once, and no
    outcome is reported lost. The linger is stretched (2 s, or 64 outcomes) so the stop
    surely lands inside one.
    Checked sound (branch breakit): no fix needed; kept as a regression test."""
    import dispatcher.recorder as recorder_module

    monkeypatch.setattr(recorder_module, "LINGER", 2.0)
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/linger"), ["*"])
    receiver.respond("/linger", Reply(204, delay=0.05))
    await hostdb.insert_events_directly(conn, org, "job.created", 400)
    daemon = await start_daemon(per_webhook_concurrency=16)
    recorder = daemon.app.recorder
    assert recorder is not None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while not (recorder._want and recorder.written >= 40):  # a linger in progress
        assert loop.time() < deadline, "premise: the recorder never lingered"
        await asyncio.sleep(0.001)
    held = LINGER_TARGET - recorder._want
    written, batches = recorder.written, recorder.batches
    await asyncio.to_thread(pg_cluster.stop, "fast")
    try:
        await asyncio.sleep(3.0)  # the linger ends meanwhile: its write finds no database
        assert recorder.batches == batches, "premise: the lingering batch was not written"
    finally:
        await asyncio.to_thread(pg_cluster.start)
    async with await hostdb.connect(db_dsn) as again:
        await hostdb.wait_deliveries(again, "status = 'success'", 400, timeout=120)
    assert held > 0 and recorder.written >= written + held
    assert recorder.lost == {}, recorder.lost
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/linger")]
    assert len(ids) == len(set(ids)) == 400
