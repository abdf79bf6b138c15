"""Every doorbell that rings while the loop's due scan runs is answered beside it, one
doorbell fan-out at a time, not only the first (`_claim_due_hearing_doorbell`, issue 12,
branch doorbells): two events published one after the other to a quiet webhook are both
delivered while the scan is still held. And stop() during the second doorbell's fan-out:
nothing it leased is sent, nothing stays leased, a later daemon delivers every event once.

The loop runs in this process on a real pool, sender and recorder; the due scan (and, in
the stop test, the second fan-out) is held before its statement, as in
test_doorbell_during_due_scan.py. Nothing about speed is asserted."""

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


class _Holds:
    """The loop's own due scan held once `hold_scan` is set; the doorbell fan-outs (nested
    passes) counted, and the one numbered `hold_fan_out` held, until `go`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hold_scan = False
        self.hold_fan_out = 0
        self.fan_outs = 0
        self.scan_held, self.fan_out_held, self.go = (
            asyncio.Event(),
            asyncio.Event(),
            asyncio.Event(),
        )
        claim_due, fan_out = Dispatcher._claim_due, Dispatcher._fan_out
        holds = self

        async def held_claim_due(
            self: Dispatcher, c: Conn, params: dict[str, Any], limit: int
        ) -> list[Claimed]:
            if holds.hold_scan and self._passes == 1:  # the loop's own scan
                holds.hold_scan = False
                holds.scan_held.set()
                await holds.go.wait()
            return await claim_due(self, c, params, limit)

        async def held_fan_out(
            self: Dispatcher, c: Conn, params: dict[str, Any], events_wanted: int, claim: int
        ) -> tuple[int, list[Claimed]]:
            if self._passes > 1:  # a doorbell's fan-out, beside the held scan
                holds.fan_outs += 1
                if holds.fan_outs == holds.hold_fan_out:
                    holds.fan_out_held.set()
                    await holds.go.wait()
            return await fan_out(self, c, params, events_wanted, claim)

        monkeypatch.setattr(Dispatcher, "_claim_due", held_claim_due)
        monkeypatch.setattr(Dispatcher, "_fan_out", held_fan_out)


async def _hot_and_quiet(conn: hostdb.Conn, receiver: Receiver) -> Any:
    hot_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, hot_org, receiver.url("/hot"), ["*"])
    receiver.respond("/hot", Reply(204, delay=0.05))
    quiet_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, quiet_org, receiver.url("/quiet"), ["*"])
    await hostdb.insert_events_directly(conn, hot_org, "job.created", HOT)
    return quiet_org


async def test_two_doorbells_during_a_held_scan_are_both_delivered_before_it_ends(
    conn: hostdb.Conn, db_dsn: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    quiet_org = await _hot_and_quiet(conn, receiver)
    holds = _Holds(monkeypatch)
    async with running_dispatcher(db_dsn, per_webhook_concurrency=4) as (dispatcher, _, _):
        try:
            await receiver.wait_for(4, "/hot", timeout=20)  # draining by refills
            holds.hold_scan = True
            await asyncio.wait_for(holds.scan_held.wait(), 20)
            first = await hostdb.publish(conn, "order.paid", {"n": 1}, org=quiet_org)
            dispatcher.wake()  # the NOTIFY
            await receiver.wait_for(1, "/quiet", timeout=10)
            second = await hostdb.publish(conn, "order.paid", {"n": 2}, org=quiet_org)
            dispatcher.wake()  # after the first doorbell's fan-out ended
            got = await receiver.wait_for(2, "/quiet", timeout=10)
            assert not holds.go.is_set()  # both while the scan is still held
            bodies = [r.body.decode() for r in got]
            assert str(first) in bodies[0] and str(second) in bodies[1]
            assert holds.fan_outs == 2
        finally:
            holds.go.set()
        await hostdb.wait_deliveries(conn, "status = 'success'", HOT + 2, timeout=30)
    for path, n in (("/hot", HOT), ("/quiet", 2)):
        ids = [r.headers["webhook-id"] for r in receiver.requests_for(path)]
        assert len(ids) == len(set(ids)) == n, path


async def test_stop_during_the_second_doorbells_fan_out_sends_nothing_it_leased(
    conn: hostdb.Conn,
    db_dsn: str,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    start_daemon: Any,
) -> None:
    quiet_org = await _hot_and_quiet(conn, receiver)
    holds = _Holds(monkeypatch)
    holds.hold_fan_out = 2
    daemon = running_dispatcher(db_dsn, per_webhook_concurrency=4)
    async with daemon as (dispatcher, loop, recorder):
        try:
            await receiver.wait_for(4, "/hot", timeout=20)
            holds.hold_scan = True
            await asyncio.wait_for(holds.scan_held.wait(), 20)
            await hostdb.publish(conn, "order.paid", {"n": 1}, org=quiet_org)
            dispatcher.wake()
            await receiver.wait_for(1, "/quiet", timeout=10)  # the first fan-out, not held
            second = await hostdb.publish(conn, "order.paid", {"n": 2}, org=quiet_org)
            dispatcher.wake()  # the second doorbell's fan-out, held before its statement
            await asyncio.wait_for(holds.fan_out_held.wait(), 20)
            stopping = asyncio.create_task(dispatcher.stop(5))
            await asyncio.sleep(0.2)  # stop() is waiting for the pass
            assert not stopping.done()
            holds.go.set()  # both statements run now, after the stop began
            await asyncio.wait_for(stopping, 30)
            await asyncio.wait_for(loop, 10)
            await recorder.drain(5)
        finally:
            holds.go.set()

    assert len(receiver.requests_for("/quiet")) == 1, "the second doorbell's row was sent"
    monkeypatch.undo()
    await assert_stopped_cleanly_then_delivered_once(
        conn, receiver, start_daemon, unsent_event=second, sent={"/hot": HOT, "/quiet": 2}
    )
