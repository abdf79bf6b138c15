"""The recorder's linger (issue 12): under load (the previous batch held LINGER_AFTER outcomes
or more) a batch waits up to LINGER for LINGER_TARGET outcomes, so a backlog's outcomes go in
fuller statements; an idle recorder writes an outcome at once, an ordered key's outcome is never
held back (its next delivery waits for it), and drain() ends a linger.

The writes are a stand-in (no database): each takes 1 ms and counts its batch, as
Recorder.batches does. LINGER is raised to seconds so that the batch sizes do not depend on
the machine's speed; the only timings asserted are generous upper bounds ("well before the
linger would have ended")."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any, cast
from uuid import uuid4

import pytest
from support.outcomes import delivered

from dispatcher import recorder as recorder_module
from dispatcher.recorder import OutcomeRow, Recorder


class _Recorder(Recorder):
    def __init__(self) -> None:
        super().__init__(cast(Any, None))
        self.sizes: list[int] = []
        self.hold = asyncio.Event()  # cleared: writes wait until it is set again
        self.hold.set()

    async def _write(self, batch: list[OutcomeRow]) -> None:
        await self.hold.wait()
        await asyncio.sleep(0.001)
        self.sizes.append(len(batch))
        self.batches += 1
        self.written += len(batch)

    async def _apply_counters(self) -> None:
        self._counters_due = False


def _row(keyed: bool = False) -> OutcomeRow:
    return delivered(uuid4(), uuid4(), uuid4(), datetime.now(UTC), keyed=keyed)


async def _until(cond: Any, bound: float) -> float:
    """Seconds until cond() held; fails past `bound`."""
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < bound, "not written in time"
        await asyncio.sleep(0.001)
    return time.monotonic() - start


@pytest.fixture
def long_linger(monkeypatch: pytest.MonkeyPatch) -> float:
    # raising=False: the same test runs (and fails on the batch count) without a linger
    monkeypatch.setattr(recorder_module, "LINGER", 5.0, raising=False)
    return 5.0


async def _burst(rec: _Recorder, n: int, *, keyed: bool = False) -> None:
    """n outcomes, 10 at a time with a pause between, as attempts end in a backlog."""
    for i in range(0, n, 10):
        for _ in range(min(10, n - i)):
            rec.put(_row(keyed))
        await asyncio.sleep(0.001)


async def test_a_backlog_goes_in_full_batches(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _burst(rec, 640)
        await _until(lambda: rec.written == 640, 3 * long_linger)
    finally:
        task.cancel()
    # Without a linger each write takes what 1-2 pauses queued (~10-20 outcomes, 30+ writes);
    # with it, after the first batches every one fills to LINGER_TARGET (64).
    assert rec.batches <= 14, rec.sizes
    assert rec.lingered > 0


async def test_an_idle_recorder_writes_an_outcome_at_once(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        for i in range(1, 4):
            rec.put(_row())
            took = await _until(lambda n=i: rec.written == n, long_linger / 2)
            assert took < long_linger / 2
            await asyncio.sleep(0.005)
        assert rec.sizes == [1, 1, 1]
        assert getattr(rec, "lingered", 0) == 0
    finally:
        task.cancel()


async def test_an_ordered_keys_outcome_is_not_held_back(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _burst(rec, 200)  # under load: the next batch would linger
        await asyncio.sleep(0.003)  # a linger in progress, waiting for more
        rec.put(_row(keyed=True))  # ends it
        await _until(lambda: rec.written == 201, long_linger / 2)
        await _burst(rec, 200, keyed=True)  # never lingers over keyed outcomes
        await _until(lambda: rec.written == 401, long_linger / 2)
    finally:
        task.cancel()


async def test_drain_does_not_wait_for_a_linger(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _burst(rec, 200)
        await asyncio.sleep(0.003)
        rec.put(_row())
        start = time.monotonic()
        assert await rec.drain(timeout=2 * long_linger)
        assert time.monotonic() - start < long_linger / 2
        assert rec.written == 201
    finally:
        task.cancel()


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _written_while_held(rec: _Recorder, n: int) -> None:
    """n outcomes taken into a batch whose write waits on `rec.hold` (cleared)."""
    rec.hold.clear()
    for _ in range(n):
        rec.put(_row())
    await _until(lambda: rec.backlog == 0, 1.0)  # all taken: the write is held


async def test_a_lone_outcome_after_a_busy_spell_is_written_at_once(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _burst(rec, 200)
        assert await rec.drain(timeout=2 * long_linger)  # ends the last batch's linger
        assert rec.written == 200 and rec.lingered > 0
        await asyncio.sleep(0.02)  # idle: the writer waits for its next outcome
        rec.put(_row())
        await _until(lambda: rec.written == 201, long_linger / 2)
        assert rec.sizes[-1] == 1
    finally:
        await _stop(task)


async def test_a_keyed_outcome_waiting_alone_under_load_is_not_held_back(
    long_linger: float,
) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _written_while_held(rec, 20)  # under load: the next batch could linger
        rec.put(_row(keyed=True))  # waiting when that batch begins, and nothing after it
        rec.hold.set()
        await _until(lambda: rec.written == 21, long_linger / 2)
        assert rec.sizes == [20, 1]
    finally:
        await _stop(task)


async def test_no_linger_starts_while_drain_waits(long_linger: float) -> None:
    rec = _Recorder()
    task = asyncio.create_task(rec.run())
    try:
        await _written_while_held(rec, 20)
        rec.put(_row())  # waiting when the next batch begins, after drain() started
        drained = asyncio.create_task(rec.drain(timeout=2 * long_linger))
        await asyncio.sleep(0)
        start = time.monotonic()
        rec.hold.set()
        assert await drained
        assert time.monotonic() - start < long_linger / 2
        assert rec.written == 21
    finally:
        await _stop(task)
