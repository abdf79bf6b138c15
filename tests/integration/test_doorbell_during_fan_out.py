"""A doorbell heard while the loop's own fan-out statement runs is answered at once by a
fan-out on a second pool connection, not after that statement (issue 12: at 200 events/s,
21 % of the doorbells rang during the previous event's fan-out, and 39 of the 40 slowest
waits from NOTIFY to a fan-out were those).

The loop runs in this process, on a real pool, sender and recorder; the first fan-out is held
back before its statement (a slow statement, made deterministic), and nothing about speed is
asserted: only that the second event is delivered while the first fan-out still waits.

The two fan-outs divide each webhook's room (dispatcher/admission.py, reserve): together they
never lease a webhook beyond its cap and claim-ahead queue, so no leased row goes back unsent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hostdb
import pytest
from support.receiver import Receiver, Reply

from dispatcher.claims import Claimed
from dispatcher.db import Conn, open_pool
from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import load_settings


async def test_a_doorbell_during_a_fan_out_gets_its_own_fan_out_at_once(
    conn: hostdb.Conn, db_dsn: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/hook"))
    calls = 0
    first_may_run = asyncio.Event()
    original = Dispatcher._fan_out

    async def fan_out(
        self: Dispatcher, c: Conn, params: dict[str, Any], events_wanted: int, claim: int
    ) -> tuple[int, list[Claimed]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            await first_may_run.wait()  # the loop's first fan-out: its statement is slow
        return await original(self, c, params, events_wanted, claim)

    monkeypatch.setattr(Dispatcher, "_fan_out", fan_out)
    settings = load_settings(
        database_url=db_dsn, allowed_target_networks="127.0.0.0/8", poll_interval=30.0
    )
    pool = await open_pool(settings)
    sender = Sender(settings)
    await sender.start()
    recorder = Recorder(pool)
    recording = asyncio.create_task(recorder.run())
    dispatcher = Dispatcher(settings, pool, sender, recorder, Metrics())
    loop = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            while calls == 0:  # the first pass's fan-out is under way (and held)
                await asyncio.sleep(0.01)
        event = await hostdb.publish(conn, "order.paid", {"n": 1}, org=org)
        dispatcher.wake()  # what the listener does on the NOTIFY
        got = await receiver.wait_for(1, "/hook", timeout=10)
        assert not first_may_run.is_set()  # delivered while the first fan-out still waits
        assert str(event) in got[0].body.decode()
        assert calls == 2
    finally:
        first_may_run.set()
        await dispatcher.stop(5)
        await asyncio.wait_for(loop, 10)
        await recorder.drain(5)
        recording.cancel()
        await asyncio.gather(recording, return_exceptions=True)
        await sender.close()
        await pool.close()


async def test_two_fan_outs_side_by_side_lease_no_more_than_the_cap_and_queue(
    conn: hostdb.Conn, db_dsn: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cap 4, 2 rows leased ahead. The loop's fan-out is given its room and held before its
    statement; a doorbell's fan-out runs meanwhile and takes 10 events of the webhook; 10
    more are then published and the loop's fan-out runs. Given the same room (the reverted
    fa180d9), each would lease 6 rows: the second statement's 6 found the cap and the queue
    full and went back unsent. Divided, they lease 6 together: none is released unsent,
    and the receiver never sees more than 4 requests at once."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/capped"), ["*"])
    receiver.respond("/capped", Reply(204, delay=0.3))
    calls = done = 0
    first_may_run = asyncio.Event()
    original = Dispatcher._fan_out_rows

    async def fan_out_rows(self: Dispatcher, *args: Any) -> tuple[int, list[Claimed]]:
        nonlocal calls, done
        calls += 1
        if calls == 1:
            await first_may_run.wait()  # the loop's fan-out: its room given, statement held
        try:
            return await original(self, *args)
        finally:
            done += 1

    monkeypatch.setattr(Dispatcher, "_fan_out_rows", fan_out_rows)
    settings = load_settings(
        database_url=db_dsn,
        allowed_target_networks="127.0.0.0/8",
        poll_interval=30.0,
        per_webhook_concurrency=4,
        claim_ahead=2,
    )
    pool = await open_pool(settings)
    sender = Sender(settings)
    await sender.start()
    recorder = Recorder(pool)
    recording = asyncio.create_task(recorder.run())
    dispatcher = Dispatcher(settings, pool, sender, recorder, Metrics())
    loop = asyncio.create_task(dispatcher.run())
    try:
        async with asyncio.timeout(10):
            while calls == 0:  # the loop's fan-out holds its room
                await asyncio.sleep(0.01)
        await hostdb.insert_events_directly(conn, org, "job.created", 10)
        dispatcher.wake()  # the doorbell's fan-out runs beside the held one
        async with asyncio.timeout(10):
            while done == 0:
                await asyncio.sleep(0.01)
        assert not first_may_run.is_set()
        await hostdb.insert_events_directly(conn, org, "job.created", 10)
        first_may_run.set()
        await hostdb.wait_deliveries(conn, "status = 'success'", 20, timeout=60)
        assert dispatcher.released_unsent == 0
        assert receiver.max_concurrent["/capped"] <= 4
        ids = [r.headers["webhook-id"] for r in receiver.requests_for("/capped")]
        assert len(ids) == len(set(ids)) == 20
    finally:
        first_may_run.set()
        await dispatcher.stop(5)
        await asyncio.wait_for(loop, 10)
        await recorder.drain(5)
        recording.cancel()
        await asyncio.gather(recording, return_exceptions=True)
        await sender.close()
        await pool.close()
