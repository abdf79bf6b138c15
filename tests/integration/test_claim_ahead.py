"""Claim-ahead (issue 12): rows leased ahead for a webhook held back by its cap wait in a
bounded queue and start as its attempts end. What must still hold: the cap bounds the
requests in flight at the receiver, stop() gives queued rows back unsent (none left
leased, none sent twice), and two replicas share one webhook's backlog. Behaviour only:
no timing is asserted; every wait has a generous deadline."""

from __future__ import annotations

import asyncio
import time

import hostdb
from support.receiver import Hang, Reply


async def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.01)


async def test_the_cap_bounds_requests_in_flight_at_the_receiver_with_claim_ahead(
    conn, receiver, start_daemon
):
    """Cap 4, 2 rows leased ahead: the receiver never sees more than 4 requests at once,
    although rows were started from the queue (each the moment an attempt ended)."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/capped"), ["*"])
    receiver.respond("/capped", Reply(204, delay=0.03))
    await hostdb.insert_events_directly(conn, org, "job.created", 300)
    daemon = await start_daemon(per_webhook_concurrency=4, claim_ahead=2)
    await hostdb.wait_deliveries(conn, "status = 'success'", 300, timeout=120)
    dispatcher = daemon.app.dispatcher
    assert dispatcher is not None
    assert dispatcher.admission.dequeued > 0, "claim-ahead never started a queued row"
    assert dispatcher.released_unsent == 0
    assert receiver.max_concurrent["/capped"] == 4  # reached, never exceeded
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/capped")]
    assert len(ids) == len(set(ids)) == 300


async def test_stop_releases_queued_rows_never_sent(conn, receiver, start_daemon):
    """Rows waiting in the queue at stop are given back at once: none stays leased, none
    was sent, and a later daemon sends each event exactly once."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, receiver.url("/stop"), ["*"]))["id"]
    receiver.respond("/stop", Reply(204, delay=0.3))
    await hostdb.insert_events_directly(conn, org, "job.created", 40)
    daemon = await start_daemon(per_webhook_concurrency=2, claim_ahead=3, shutdown_grace=10.0)
    dispatcher = daemon.app.dispatcher
    assert dispatcher is not None
    await _wait(lambda: dispatcher.admission.queued(hook) == 3, 60, "3 queued rows")
    queued = [d.id for d in dispatcher.admission._queued[hook]]
    await daemon.stop()
    rows = {r["id"]: r for r in await hostdb.deliveries(conn)}
    for i in queued:
        assert rows[i]["status"] == "pending" and rows[i]["next_retry_at"] is None, rows[i]
    leased = await hostdb.deliveries(
        conn, "status IN ('pending', 'retrying') AND next_retry_at > now()"
    )
    assert leased == [], "rows left leased after stop"
    sent = {r.headers["x-intime-delivery"] for r in receiver.requests_for("/stop")}
    assert not sent & {str(i) for i in queued}, "a queued row was sent"
    # Another daemon delivers the rest; every event arrives exactly once.
    await start_daemon(per_webhook_concurrency=2, claim_ahead=3)
    await hostdb.wait_deliveries(conn, "status = 'success'", 40, timeout=120)
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/stop")]
    assert len(ids) == len(set(ids)) == 40


async def test_two_replicas_both_deliver_one_webhooks_backlog(conn, receiver, start_daemon):
    """Two replicas on one webhook's backlog each deliver a fair part of it, and no attempt
    is started twice: the replicas' starts add up to the 600 distinct webhook-ids.

    Whether a replica ever started a row from its claim-ahead queue (`dequeued`) is not
    part of the promise: it depends on how its claims interleave with the other's, so it
    is not asserted per replica. A fair part: a tenth of the backlog each (an even split
    is about 300 each; the margin holds on a loaded machine)."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/shared"), ["*"])
    receiver.respond("/shared", Reply(204, delay=0.02))
    first = await start_daemon(per_webhook_concurrency=4, instance_name="one")
    second = await start_daemon(per_webhook_concurrency=4, instance_name="two")
    await hostdb.insert_events_directly(conn, org, "job.created", 600)
    await hostdb.wait_deliveries(conn, "status = 'success'", 600, timeout=120)
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/shared")]
    assert len(ids) == len(set(ids)) == 600
    one, two = first.app.dispatcher, second.app.dispatcher
    assert one is not None and two is not None
    seen = {
        "one": (one.starts, one.admission.dequeued),
        "two": (two.starts, two.admission.dequeued),
    }  # (attempts started, of which from the queue)
    assert one.starts + two.starts == 600, seen
    assert one.starts >= 60 and two.starts >= 60, seen


async def test_a_replica_stuck_at_its_cap_leaves_the_rest_of_the_backlog_to_another(
    conn, receiver, start_daemon
):
    """A replica whose attempts hang holds no more of one webhook's backlog than its cap
    plus claim-ahead (4 + 8 here): a replica that joins later delivers all the rest."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, receiver.url("/stuck"), ["*"]))["id"]
    # The first 4 requests (the first replica's) never get an answer; the rest at once.
    receiver.respond("/stuck", Hang(), Hang(), Hang(), Hang(), Reply(204))
    first = await start_daemon(
        per_webhook_concurrency=4,
        instance_name="stuck",
        # the hangs outlast the whole test (its waits are at most 120 s)
        http_timeout=300.0,
        lease_seconds=320.0,
        shutdown_grace=0.5,
    )
    one = first.app.dispatcher
    assert one is not None
    await hostdb.insert_events_directly(conn, org, "job.created", 600)
    await receiver.wait_for(4, "/stuck", timeout=60)
    await _wait(lambda: one.admission.queued(hook) == 8, 60, "8 rows leased ahead")
    second = await start_daemon(per_webhook_concurrency=4, instance_name="late")
    two = second.app.dispatcher
    assert two is not None
    await hostdb.wait_deliveries(conn, "status = 'success'", 600 - 12, timeout=120)
    # (started, still queued) of the stuck replica; started by the late one
    assert (one.starts, one.admission.queued(hook), two.starts) == (4, 8, 600 - 12)
    ids = [r.headers["webhook-id"] for r in receiver.requests_for("/stuck")]
    assert len(ids) == len(set(ids)) == 600 - 8
