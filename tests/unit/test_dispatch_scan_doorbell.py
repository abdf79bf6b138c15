"""A due scan that hears the doorbell (Dispatcher._claim_due_hearing_doorbell): a doorbell
that rings while the scan runs gets its fan-out at once, beside the scan; without one the
scan's rows come back alone. At a steady low rate this runs every CLAIM_DUE_EVERY, so it
makes no task beyond the scan itself (and none at all when no second pass may open):
issue 12, docs/performance.md "pyevent". The statements are stood in for by the loop's own
methods (`_claim_due`, `_claim_and_start`): what crosses psycopg is not exercised here."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, cast

from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import Settings


class _Pool:
    def __init__(self, available: int = 4) -> None:
        self.available = available

    def get_stats(self) -> dict[str, int]:
        return {"pool_available": self.available}

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        yield _CONN


class _Scan:
    """Stands in for Dispatcher._claim_due: ends when `finish` is set; records calls."""

    def __init__(self) -> None:
        self.finish = asyncio.Event()
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, conn: Any, params: dict[str, Any], limit: int) -> Any:
        self.started.set()
        try:
            await self.finish.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return _ROWS * limit


def _dispatcher(pool: _Pool) -> tuple[Dispatcher, _Scan, list[tuple[int, bool, bool]]]:
    settings = Settings(database_url="postgresql://localhost/none")  # never connected
    fake = cast(Any, pool)
    d = Dispatcher(settings, fake, Sender(settings), Recorder(fake), Metrics())
    scan = _Scan()
    fan_outs: list[tuple[int, bool, bool]] = []

    async def claim_and_start(free: int, outbox: bool = True, scan: bool = True) -> bool:
        fan_outs.append((free, outbox, scan))
        return False

    d._claim_due = scan  # type: ignore[method-assign]
    d._claim_and_start = claim_and_start  # type: ignore[method-assign]
    d._passes = 1  # the outermost pass is running
    return d, scan, fan_outs


_CONN: Any = object()  # never used: the scan is stood in for
_ROWS: Any = ["row"]


def _new_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t not in before and not t.done()]


async def test_a_scan_without_a_doorbell_returns_its_rows_and_makes_only_the_scan_task() -> None:
    d, scan, fan_outs = _dispatcher(_Pool())
    before = set(asyncio.all_tasks())
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
    await asyncio.wait_for(scan.started.wait(), 5)
    # the call and its scan: no task waiting on the doorbell (the old code made one per scan)
    assert len(_new_tasks(before)) == 2
    scan.finish.set()
    rows, fanned = await asyncio.wait_for(call, 5)
    assert rows == _ROWS * 3 and fanned is False
    assert fan_outs == []
    assert d._waiter is None and d._waiting_for == ()


async def test_a_doorbell_during_the_scan_gets_its_fan_out_before_the_scan_ends() -> None:
    d, scan, fan_outs = _dispatcher(_Pool())
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
    await asyncio.wait_for(scan.started.wait(), 5)
    d.wake()
    for _ in range(100):
        if fan_outs:
            break
        await asyncio.sleep(0.01)
    assert fan_outs == [(d._s.concurrency - 3, True, False)]  # the slots the scan leaves
    assert not call.done() and not d._wake.is_set()  # the doorbell was taken
    scan.finish.set()
    rows, fanned = await asyncio.wait_for(call, 5)
    assert rows == _ROWS * 3 and fanned is False


async def test_a_doorbell_rung_before_the_scan_starts_its_fan_out_at_once() -> None:
    d, scan, fan_outs = _dispatcher(_Pool())
    d.wake()
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 2))
    for _ in range(100):
        if fan_outs:
            break
        await asyncio.sleep(0.01)
    assert len(fan_outs) == 1
    scan.finish.set()
    assert await asyncio.wait_for(call, 5) == (_ROWS * 2, False)


async def test_no_second_pass_possible_means_no_task_at_all() -> None:
    """Without an idle pool connection (or inside a nested pass, or with too few spare
    slots) the scan is simply awaited: no task of its own (the old code made one)."""
    for pool, passes in ((_Pool(available=0), 1), (_Pool(), 2)):
        d, scan, fan_outs = _dispatcher(pool)
        d._passes = passes
        before = set(asyncio.all_tasks())
        call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
        await asyncio.wait_for(scan.started.wait(), 5)
        assert _new_tasks(before) == [call]
        d.wake()  # heard by the pass that follows, not beside this scan
        await asyncio.sleep(0.01)
        assert fan_outs == []
        scan.finish.set()
        assert await asyncio.wait_for(call, 5) == (_ROWS * 3, False)
        assert d._wake.is_set()


async def test_cancelled_while_waiting_the_scan_is_cancelled_too_and_the_wait_is_cleared() -> None:
    d, scan, _ = _dispatcher(_Pool())
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
    await asyncio.wait_for(scan.started.wait(), 5)
    call.cancel()
    await asyncio.gather(call, return_exceptions=True)
    assert call.cancelled() and scan.cancelled
    assert d._waiter is None and d._waiting_for == ()
    # the idle wait works as before afterwards
    d.wake()
    assert await asyncio.wait_for(d._wait([d._wake], 60), 5) is True


async def _until(cond: Any) -> None:
    for _ in range(200):
        if cond():
            return
        await asyncio.sleep(0.01)


async def test_each_doorbell_during_the_scan_gets_a_fan_out_one_at_a_time() -> None:
    """A doorbell that rings after the first doorbell fan-out ended, while the scan still
    runs, gets its own; one that rings during a fan-out waits for it to end (never two at
    once), then gets the next (branch doorbells, issue 12)."""
    d, scan, fan_outs = _dispatcher(_Pool())
    running, release = 0, asyncio.Event()
    most = 0

    async def claim_and_start(free: int, outbox: bool = True, scan: bool = True) -> bool:
        nonlocal running, most
        fan_outs.append((free, outbox, scan))
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        release.clear()
        return len(fan_outs) == 2  # the second says more may be waiting

    d._claim_and_start = claim_and_start  # type: ignore[method-assign]
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
    await asyncio.wait_for(scan.started.wait(), 5)
    d.wake()
    await _until(lambda: len(fan_outs) == 1)
    d.wake()  # during the first fan-out: waits for it
    await asyncio.sleep(0.05)
    assert len(fan_outs) == 1
    release.set()
    await _until(lambda: len(fan_outs) == 2)
    assert len(fan_outs) == 2 and not call.done()
    release.set()
    await _until(lambda: running == 0)
    d.wake()  # after the second ended, the scan still running: a third
    await _until(lambda: len(fan_outs) == 3)
    assert len(fan_outs) == 3 and most == 1
    release.set()
    await _until(lambda: running == 0)
    scan.finish.set()
    rows, fanned = await asyncio.wait_for(call, 5)
    assert rows == _ROWS * 3 and fanned is True  # any fan-out's "more" is kept
    assert [f[1:] for f in fan_outs] == [(True, False)] * 3


async def test_no_further_fan_out_while_stopping_or_without_an_idle_connection() -> None:
    """The guard holds before each further doorbell fan-out, not only the first: stopping,
    or no idle pool connection, and the doorbell waits for the pass after the scan. (It
    passes on the code before branch doorbells too, which never opened a second one.)"""
    for stop in (True, False):
        pool = _Pool()
        d, scan, fan_outs = _dispatcher(pool)
        call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {}, 3))
        await asyncio.wait_for(scan.started.wait(), 5)
        d.wake()
        await _until(lambda f=fan_outs: len(f) == 1)
        if stop:
            d._stopping = True
        else:
            pool.available = 0
        d.wake()
        await asyncio.sleep(0.05)
        assert len(fan_outs) == 1 and not call.done()
        scan.finish.set()
        assert await asyncio.wait_for(call, 5) == (_ROWS * 3, False)
        assert d._wake.is_set()  # heard by the pass that follows


async def test_a_doorbells_pass_beside_a_slow_scan_scans_no_due_work_of_its_own() -> None:
    """A doorbell heard CLAIM_DUE_EVERY or more into a slow due scan: its pass (nested, on a
    second connection) is the fan-out alone. It used to run a due scan of its own too,
    before its fan-out when the outbox was busy: the fresh event waited behind a second scan
    and a capped webhook's rows were leased twice over (review of branch doorbells)."""
    d, scan, _ = _dispatcher(_Pool())
    del d._claim_and_start  # the real pass, with its statements stood in for below
    calls: list[tuple[str, int]] = []

    async def claim_due(conn: Any, params: dict[str, Any], limit: int) -> list[Any]:
        calls.append(("due", d._passes))
        if d._passes == 1:
            await scan.finish.wait()  # the loop's own scan, slow
        return []

    async def fan_out(
        conn: Any, params: dict[str, Any], events_wanted: int, claim: int
    ) -> tuple[int, list[Any]]:
        calls.append(("fan_out", d._passes))
        return 0, []

    d._claim_due = claim_due  # type: ignore[method-assign]
    d._fan_out = fan_out  # type: ignore[method-assign]
    d._outbox_busy = True  # the outbox held more: a due scan would go first
    call = asyncio.ensure_future(d._claim_due_hearing_doorbell(_CONN, {"lease": 30.0}, 3))
    await _until(lambda: calls == [("due", 1)])
    d._due_scanned = time.monotonic() - 1.0  # the doorbell comes long into the scan
    d.wake()
    await _until(lambda: ("fan_out", 2) in calls)
    scan.finish.set()
    await asyncio.wait_for(call, 5)
    assert calls == [("due", 1), ("fan_out", 2)]
