"""A doorbell heard during the loop's due scan (Dispatcher._claim_due_hearing_doorbell):
its fan-out starts from wake() itself, one event-loop iteration after the doorbell (issue
12, hotq: while a hot webhook drains, every hop through the loop waits behind its attempts'
callbacks), and no doorbell is lost on any path: the scan ends first, the guards refuse a
second pass, the scan fails, the pass is cancelled, a second doorbell rings meanwhile.

The statements are stand-ins (the scan waits for an asyncio.Event, the fan-out records its
call): what is tested is the loop's orchestration, not PostgreSQL (test_refill.py and
test_claim_ahead.py run the loop against a real server). Iterations are counted with
asyncio.sleep(0), which yields exactly one pass of the event loop."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import psycopg
import pytest

from dispatcher.claims import Claimed
from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import Settings


class _Pool:
    """Only what the guards read: how many idle connections the pool has."""

    def __init__(self, available: int) -> None:
        self.available = available

    def get_stats(self) -> dict[str, int]:
        return {"pool_available": self.available}


class _Loop:
    """A dispatcher whose due scan blocks until `scan_done` and whose doorbell fan-out
    (the nested _claim_and_start) is recorded and ends when `fan_out_done` is set."""

    def __init__(self, available: int = 1, **settings: Any) -> None:
        s = Settings(database_url="postgresql://localhost/none", **settings)
        pool = cast(Any, _Pool(available))
        self.d = Dispatcher(s, pool, Sender(s), Recorder(pool), Metrics())
        self.scan_done = asyncio.Event()
        self.scan_started = asyncio.Event()
        self.scan_error: BaseException | None = None
        self.fan_out_done = asyncio.Event()
        self.fan_out_error: BaseException | None = None
        self.fan_outs: list[dict[str, Any]] = []
        self.fan_out_cancelled = False
        self.d._claim_due = self._claim_due  # type: ignore[method-assign]
        self.d._claim_and_start = self._claim_and_start  # type: ignore[method-assign]

    async def _claim_due(self, conn: Any, params: dict[str, Any], limit: int) -> list[Claimed]:
        self.scan_started.set()
        await self.scan_done.wait()
        if self.scan_error is not None:
            raise self.scan_error
        return []

    async def _claim_and_start(self, free: int, outbox: bool = True, scan: bool = True) -> bool:
        self.fan_outs.append({"free": free, "outbox": outbox, "scan": scan})
        try:
            await self.fan_out_done.wait()
        except asyncio.CancelledError:
            self.fan_out_cancelled = True
            raise
        if self.fan_out_error is not None:
            raise self.fan_out_error
        return True

    def hearing(self) -> asyncio.Future[tuple[list[Claimed], bool]]:
        return asyncio.ensure_future(self.d._claim_due_hearing_doorbell(cast(Any, None), {}, 64))


async def _scan_running(t: _Loop) -> None:
    await asyncio.wait_for(t.scan_started.wait(), 5)


async def test_a_doorbell_during_the_scan_starts_its_fan_out_one_iteration_later() -> None:
    """Fails on the version before hotq: its doorbell went through a task waiting for the
    doorbell, asyncio.wait's callback and a task for the fan-out (three iterations)."""
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    await asyncio.sleep(0)
    assert t.fan_outs == [{"free": 256 - 64, "outbox": True, "scan": False}]
    assert not t.d._wake.is_set()  # answered, not left for the next pass as well
    t.fan_out_done.set()
    t.scan_done.set()
    assert await asyncio.wait_for(pass_, 5) == ([], True)
    assert t.d._hearing is None


async def test_a_doorbell_rung_before_the_scan_starts_its_fan_out_beside_it() -> None:
    t = _Loop()
    t.d.wake()  # during this pass's own fan-out
    pass_ = t.hearing()
    await _scan_running(t)
    assert len(t.fan_outs) == 1
    t.fan_out_done.set()
    t.scan_done.set()
    assert await asyncio.wait_for(pass_, 5) == ([], True)


async def test_without_a_doorbell_the_scan_alone_runs_and_nothing_stays_listening() -> None:
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.scan_done.set()
    assert await asyncio.wait_for(pass_, 5) == ([], False)
    assert t.fan_outs == []
    assert t.d._hearing is None
    t.d.wake()  # after the scan: an ordinary doorbell for the next pass, not lost
    assert t.d._wake.is_set()


@pytest.mark.parametrize(
    "loop_kwargs",
    [
        {"available": 0},  # no idle connection: never wait for one while holding one
        {"concurrency": 64},  # no slots beside the scan's
    ],
)
async def test_when_no_second_pass_may_open_the_doorbell_waits_for_the_next_pass(
    loop_kwargs: dict[str, Any],
) -> None:
    t = _Loop(**loop_kwargs)
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    await asyncio.sleep(0)
    assert t.fan_outs == []
    assert t.d._wake.is_set()  # kept for the pass that follows: not lost
    t.scan_done.set()
    assert await asyncio.wait_for(pass_, 5) == ([], False)


async def test_a_second_doorbell_during_the_doorbell_fan_out_is_kept_for_the_next_pass() -> None:
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    t.d.wake()  # the fan-out just started may have read the outbox before this event
    assert len(t.fan_outs) <= 1
    await asyncio.sleep(0)
    assert len(t.fan_outs) == 1
    assert t.d._wake.is_set()
    t.fan_out_done.set()
    t.scan_done.set()
    await asyncio.wait_for(pass_, 5)


async def test_a_failing_scan_lets_the_doorbell_fan_out_finish_then_fails_the_pass() -> None:
    """The rows the doorbell's fan-out leased are being started: it is not cancelled
    because the loop's statement failed (a defect of the reverted `quiet` branch)."""
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    await asyncio.sleep(0)
    t.scan_error = psycopg.OperationalError("server closed the connection")
    t.scan_done.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert not pass_.done()  # still waiting for the doorbell's fan-out
    t.fan_out_done.set()
    with pytest.raises(psycopg.OperationalError):
        await asyncio.wait_for(pass_, 5)
    assert not t.fan_out_cancelled
    assert t.d._hearing is None


async def test_a_failing_doorbell_fan_out_rings_the_doorbell_again() -> None:
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    await asyncio.sleep(0)
    t.fan_out_error = psycopg.OperationalError("no connection")
    t.fan_out_done.set()
    t.scan_done.set()
    assert await asyncio.wait_for(pass_, 5) == ([], False)
    assert t.d._wake.is_set()  # its pass follows


async def test_a_cancelled_pass_cancels_the_doorbell_fan_out_and_stops_listening() -> None:
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    t.d.wake()
    await asyncio.sleep(0)
    pass_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pass_, 5)
    assert t.fan_out_cancelled
    assert t.d._hearing is None
    t.d.wake()
    assert t.d._wake.is_set()  # a later doorbell is not swallowed by a stale listener


async def test_a_pass_cancelled_before_any_doorbell_leaves_no_listener() -> None:
    t = _Loop()
    pass_ = t.hearing()
    await _scan_running(t)
    pass_.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pass_, 5)
    assert t.d._hearing is None
    t.d.wake()
    assert t.d._wake.is_set()
    assert t.fan_outs == []
