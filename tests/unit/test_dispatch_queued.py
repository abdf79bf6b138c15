"""Attempts of a webhook at its cap and the rows leased ahead for it (the claim-ahead queue):
when an attempt ends, the next queued row starts (in a task of its own: issue 12's
`loopcost` tried running it in the finishing attempt's task and it was reverted after an
end-to-end A/B, docs/performance.md "loopcost"). Each attempt is in flight, for the loop and
for admission, from its start to its end, never more than the cap at once; stop() starts no
queued row and gives every unsent one back; an attempt that raises does not lose the next
row. The attempt itself is stood in for (Attempts.deliver): nothing here crosses aiohttp or
psycopg."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, cast

from support.claimed import claimed

from dispatcher.claims import Claimed
from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import Settings

HOOK = uuid.uuid4()
CAP, AHEAD = 2, 4


def _row() -> Claimed:
    return claimed(webhook_id=HOOK)


class _Attempts:
    """Stands in for Attempts.deliver: records what ran, in which task, and what was in
    flight meanwhile; an attempt waits for `gate` (set: it ends at once) and raises for a
    row in `fail`."""

    def __init__(self, d: Dispatcher) -> None:
        self.d = d
        self.ran: list[tuple[Claimed, asyncio.Task[Any] | None, int, int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: set[uuid.UUID] = set()

    async def deliver(self, row: Claimed) -> None:
        self.ran.append(
            (row, asyncio.current_task(), self.d.inflight, self.d.admission.inflight(HOOK))
        )
        await asyncio.sleep(0)  # an attempt suspends at least once (its POST)
        await self.gate.wait()
        if row.id in self.fail:
            raise RuntimeError("a bug in an attempt")


def _dispatcher() -> tuple[Dispatcher, _Attempts, list[Claimed]]:
    settings = Settings(
        database_url="postgresql://localhost/none",  # never connected
        per_webhook_concurrency=CAP,
        claim_ahead=AHEAD,
    )
    fake = cast(Any, None)
    d = Dispatcher(settings, fake, Sender(settings), Recorder(fake), Metrics())
    attempts = _Attempts(d)
    d._attempts = cast(Any, attempts)
    released: list[Claimed] = []

    async def release(claims: list[Claimed]) -> None:
        released.extend(claims)

    d.release = release  # type: ignore[method-assign]
    return d, attempts, released


def _start_at_cap(d: Dispatcher, rows: list[Claimed]) -> None:
    """As a claim does for a webhook held back by its cap: the cap starts, the rest queue."""
    for row in rows[:CAP]:
        d._start(row)
    for row in rows[CAP:]:
        assert d.admission.enqueue(HOOK, row)


async def _until(cond: Any) -> None:
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("not reached")


async def test_queued_rows_start_in_lease_order_as_slots_free_never_above_the_cap() -> None:
    d, attempts, released = _dispatcher()
    rows = [_row() for _ in range(CAP + AHEAD)]
    _start_at_cap(d, rows)
    await _until(lambda: len(attempts.ran) == len(rows) and d.inflight == 0)
    assert [r for r, *_ in attempts.ran] == rows  # in the order they were leased
    # every attempt was in flight while it ran, and never more than the cap at once
    assert {(loop, hook) for *_, loop, hook in attempts.ran} == {(CAP, CAP)}
    assert d.admission.inflight(HOOK) == 0 and d.admission.queued(HOOK) == 0
    assert d.admission.dequeued == AHEAD and d.starts == CAP + AHEAD
    assert released == []


async def test_stop_starts_no_queued_row_and_gives_every_unsent_one_back() -> None:
    d, attempts, released = _dispatcher()
    rows = [_row() for _ in range(CAP + AHEAD)]
    attempts.gate.clear()  # the first attempts hang until the grace period ends
    _start_at_cap(d, rows)
    await _until(lambda: len(attempts.ran) == CAP)
    await asyncio.wait_for(d.stop(grace=0.05), 5)
    assert [r for r, *_ in attempts.ran] == rows[:CAP]  # no queued row was attempted
    assert sorted(r.id.int for r in released) == sorted(r.id.int for r in rows)
    assert d.inflight == 0 and d.admission.inflight(HOOK) == 0


async def test_attempts_that_end_while_stop_waits_for_a_claim_pass_start_no_queued_row() -> None:
    """stop() first waits for a claim statement in flight (the rows it leases are given
    back), and only then takes the queue: attempts ending meanwhile must not start queued
    rows."""
    d, attempts, released = _dispatcher()
    rows = [_row() for _ in range(CAP + AHEAD)]
    attempts.gate.clear()
    _start_at_cap(d, rows)
    await _until(lambda: len(attempts.ran) == CAP)
    d._pass_done.clear()  # a claim pass is in flight
    stopping = asyncio.ensure_future(d.stop(grace=5))
    await asyncio.sleep(0)
    attempts.gate.set()  # the attempts in flight end while stop waits for the pass
    await _until(lambda: d.inflight == 0)
    assert d.admission.queued(HOOK) == AHEAD  # still queued, not started
    d._pass_done.set()
    await asyncio.wait_for(stopping, 5)
    assert [r for r, *_ in attempts.ran] == rows[:CAP]
    assert sorted(r.id.int for r in released) == sorted(r.id.int for r in rows[CAP:])
    assert d.admission.inflight(HOOK) == 0


async def test_an_attempt_that_raises_does_not_lose_the_next_row() -> None:
    d, attempts, released = _dispatcher()
    rows = [_row() for _ in range(CAP + AHEAD)]
    attempts.fail = {rows[0].id}
    _start_at_cap(d, rows)
    await _until(lambda: len(attempts.ran) == len(rows) and d.inflight == 0)
    assert sorted(r.id.int for r, *_ in attempts.ran) == sorted(r.id.int for r in rows)
    assert d.admission.inflight(HOOK) == 0 and d.admission.queued(HOOK) == 0
    first = attempts.ran[0][1]
    assert first is not None and first.done()
    assert isinstance(first.exception(), RuntimeError)  # the bug is not swallowed
    assert released == []
