"""stop() while the doorbell's fan-out on a second pool connection is in flight beside a held
due scan (`_claim_due_hearing_doorbell`, issue 12): both statements run only after the stop
began, so every row they lease is leased while stopping. None may be sent, none may stay
leased, and a later daemon delivers every event once (branch breakit: checked sound; kept as
a regression test). The statements are held before they run (deterministic, like
test_doorbell_during_due_scan.py); nothing about speed is asserted."""

from __future__ import annotations

import asyncio
from typing import Any

import hostdb
import pytest
from support.in_process import assert_stopped_cleanly_then_delivered_once, running_dispatcher
from support.receiver import Receiver, Reply

from dispatcher.claims import Claimed
from dispatcher.db import Conn
from dispatcher.dispatch import Dispatcher

HOT = 40


async def test_stop_during_the_doorbells_fan_out_sends_nothing_it_leased(
    conn: hostdb.Conn,
    db_dsn: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    start_daemon: Any,
) -> None:
    hot_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, hot_org, receiver.url("/hot"), ["*"])
    receiver.respond("/hot", Reply(204, delay=0.05))
    quiet_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, quiet_org, receiver.url("/quiet"), ["*"])
    await hostdb.insert_events_directly(conn, hot_org, "job.created", HOT)

    hold_scan = False
    scan_held, fan_out_held, go = asyncio.Event(), asyncio.Event(), asyncio.Event()
    claim_due, fan_out = Dispatcher._claim_due, Dispatcher._fan_out

    async def held_claim_due(
        self: Dispatcher, c: Conn, params: dict[str, Any], limit: int
    ) -> list[Claimed]:
        nonlocal hold_scan
        if hold_scan and self._passes == 1:  # the loop's own scan
            hold_scan = False
            scan_held.set()
            await go.wait()
        return await claim_due(self, c, params, limit)

    async def held_fan_out(
        self: Dispatcher, c: Conn, params: dict[str, Any], events_wanted: int, claim: int
    ) -> tuple[int, list[Claimed]]:
        if self._passes > 1:  # the doorbell's fan-out, beside the held scan
            fan_out_held.set()
            await go.wait()
        return await fan_out(self, c, params, events_wanted, claim)

    monkeypatch.setattr(Dispatcher, "_claim_due", held_claim_due)
    monkeypatch.setattr(Dispatcher, "_fan_out", held_fan_out)
    daemon = running_dispatcher(db_dsn, per_webhook_concurrency=4)
    async with daemon as (dispatcher, loop, recorder):
        try:
            await receiver.wait_for(4, "/hot", timeout=20)  # draining by refills
            hold_scan = True
            await asyncio.wait_for(scan_held.wait(), 20)
            event = await hostdb.publish(conn, "order.paid", {"n": 1}, org=quiet_org)
            dispatcher.wake()  # the NOTIFY: a fan-out on a second connection, held too
            await asyncio.wait_for(fan_out_held.wait(), 20)
            stopping = asyncio.create_task(dispatcher.stop(5))
            await asyncio.sleep(0.2)  # stop() is waiting for the pass
            assert not stopping.done()
            go.set()  # both statements run now, after the stop began
            await asyncio.wait_for(stopping, 30)
            await asyncio.wait_for(loop, 10)
            await recorder.drain(5)
        finally:
            go.set()

    assert receiver.requests_for("/quiet") == [], "the doorbell's row was sent while stopping"
    monkeypatch.undo()
    await assert_stopped_cleanly_then_delivered_once(
        conn, receiver, start_daemon, unsent_event=event, sent={"/hot": HOT, "/quiet": 1}
    )
