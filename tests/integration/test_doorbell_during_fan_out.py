"""A doorbell heard while the loop's own fan-out statement runs is answered at once by a
fan-out on a second pool connection, not after that statement (issue 12: at 200 events/s,
21 % of the doorbells rang during the previous event's fan-out, and 39 of the 40 slowest
waits from NOTIFY to a fan-out were those).

The loop runs in this process, on a real pool, sender and recorder; the first fan-out is held
back before its statement (a slow statement, made deterministic), and nothing about speed is
asserted: only that the second event is delivered while the first fan-out still waits.
"""

from __future__ import annotations

import asyncio
from typing import Any

import hostdb
import pytest
from support.receiver import Receiver

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
