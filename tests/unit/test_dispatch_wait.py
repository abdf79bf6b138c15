"""The dispatch loop's idle wait (Dispatcher._wait): it ends on any of the signals it was
given, on stop, or at its timeout, and costs one future and one timer whichever ends it:
no task per signal (issue 12: it runs about once per event at a steady rate). No timing is
asserted beyond "ended" / "not ended yet"; every wait has a generous bound."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import Settings


def _dispatcher() -> Dispatcher:
    settings = Settings(database_url="postgresql://localhost/none")  # never connected
    pool = cast(Any, None)
    return Dispatcher(settings, pool, Sender(settings), Recorder(pool), Metrics())


def _extra_tasks(before: set[asyncio.Task[Any]]) -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t not in before and not t.done()]


async def test_a_signal_set_before_the_wait_ends_it_at_once() -> None:
    d = _dispatcher()
    d.wake()
    assert await asyncio.wait_for(d._wait([d._wake, d._hook_room], 60), 5) is True


async def test_the_timeout_ends_the_wait_with_false() -> None:
    d = _dispatcher()
    assert await asyncio.wait_for(d._wait([d._wake], 0.01), 5) is False


async def test_each_signal_waited_for_ends_the_wait_and_no_task_is_made_for_it() -> None:
    d = _dispatcher()
    for signal in (d._wake, d._hook_room):
        d._wake.clear()
        d._hook_room.clear()
        before = set(asyncio.all_tasks())
        waiting = asyncio.ensure_future(d._wait([d._wake, d._hook_room], 60))
        await asyncio.sleep(0.01)
        assert not waiting.done()
        # only the wait itself: no task per signal (the old wait made one per event)
        assert _extra_tasks(before) == [waiting]
        signal.set()
        assert await asyncio.wait_for(waiting, 5) is True


async def test_a_signal_not_waited_for_does_not_end_the_wait() -> None:
    """The loop waiting for a free slot is not ended by a doorbell (it would spin: no
    slot is free); the doorbell is still set for the pass that follows."""
    d = _dispatcher()
    waiting = asyncio.ensure_future(d._wait([d._slot_freed], 60))
    await asyncio.sleep(0.01)
    waiter = d._waiter
    d.wake()
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert d._wake.is_set()
    assert d._waiter is waiter and waiter is not None and not waiter.done()  # not even woken
    d._slot_freed.set()
    assert await asyncio.wait_for(waiting, 5) is True


async def test_stop_ends_any_wait() -> None:
    d = _dispatcher()
    waiting = asyncio.ensure_future(d._wait([], 60))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    await asyncio.wait_for(d.stop(0), 5)
    assert await asyncio.wait_for(waiting, 5) is True
