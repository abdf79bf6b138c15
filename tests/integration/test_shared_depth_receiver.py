"""Shared depth (issue 12): a webhook draining a backlog yields depth to webhooks without
one while they get events, and is back at its cap once they stop. Real PostgreSQL, a
real loopback receiver: what is asserted is the receiver-side concurrency of the hot
webhook, and that everything is delivered once. No timing is asserted; every wait has a
generous deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import hostdb
from support.receiver import Reply

from dispatcher import admission

HOT, QUIET = 400, "/quiet"


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        await asyncio.sleep(0.005)


async def test_a_hot_webhook_runs_at_the_shared_depth_while_a_quiet_one_gets_events(
    conn, db_dsn, receiver, start_daemon, monkeypatch
):
    # A window long enough that a loaded machine's pause between two quiet starts cannot end
    # the sharing mid-test; shortened again below for the recovery.
    monkeypatch.setattr(admission, "SHARE_WINDOW", 60.0)
    hot_org, quiet_org = await hostdb.create_org(conn, "Hot"), await hostdb.create_org(conn)
    hot = (await hostdb.create_webhook(conn, hot_org, receiver.url("/hot"), ["*"]))["id"]
    await hostdb.create_webhook(conn, quiet_org, receiver.url(QUIET), ["*"])
    receiver.respond("/hot", Reply(204, delay=0.03))
    receiver.respond(QUIET, Reply(204))
    daemon = await start_daemon(per_webhook_concurrency=8, shared_depth=2)
    dispatcher = daemon.app.dispatcher
    assert dispatcher is not None

    quiet_sent = 0
    flowing = True

    async def quiet_traffic() -> None:
        """One quiet event every 20 ms, each in its own transaction, while `flowing`."""
        nonlocal quiet_sent
        async with await hostdb.connect(db_dsn) as pub:
            while flowing:
                await hostdb.publish(pub, "quiet.ping", {"n": quiet_sent}, org=quiet_org)
                quiet_sent += 1
                await asyncio.sleep(0.02)

    publisher = asyncio.create_task(quiet_traffic())
    try:
        await receiver.wait_for(1, QUIET, timeout=30)
        await hostdb.insert_events_directly(conn, hot_org, "job.created", HOT)
        # Its first claim may start up to its cap (it was not known to have a backlog);
        # once it is held back, it drains down to the shared depth and stays there.
        await receiver.wait_for(8, "/hot", timeout=30)
        await _wait(
            lambda: dispatcher.admission.inflight(hot) <= 2 and receiver.concurrent["/hot"] <= 2,
            60,
            "the hot one down to 2 in flight",
        )
        # ... while it still has most of its backlog
        assert len(receiver.requests_for("/hot")) < HOT // 3, "never down to 2 in its drain"
        receiver.max_concurrent["/hot"] = receiver.concurrent["/hot"]
        while len(receiver.requests_for("/hot")) < HOT // 3:
            assert not publisher.done()
            await asyncio.sleep(0.05)
        shared_max = receiver.max_concurrent["/hot"]
        assert len(receiver.requests_for(QUIET)) > 10  # the quiet one had work throughout
    finally:
        flowing = False
        with contextlib.suppress(Exception):
            await publisher
    assert shared_max == 2, f"the hot webhook had {shared_max} in flight while another had work"

    # The quiet traffic stopped: once the window has passed it is back to its cap.
    monkeypatch.setattr(admission, "SHARE_WINDOW", 0.2)
    receiver.max_concurrent["/hot"] = receiver.concurrent["/hot"]
    await hostdb.wait_deliveries(conn, "status = 'success'", HOT + quiet_sent, timeout=120)
    assert receiver.max_concurrent["/hot"] == 8, "the hot webhook never got its cap back"
    assert dispatcher.released_unsent == 0  # its queue was never handed back
    for path, n in (("/hot", HOT), (QUIET, quiet_sent)):
        ids = [r.headers["webhook-id"] for r in receiver.requests_for(path)]
        assert len(ids) == len(set(ids)) == n, path
