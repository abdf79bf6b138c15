"""bench/per_event.py's loop instrumentation counts what it says: tasks by coroutine, the
selector's returns by the ready descriptor's callback, scheduled callbacks and timers, and
nothing while it is off."""

from __future__ import annotations

import asyncio
import socket

from bench.per_event import Counts, instrument_loop


async def _child() -> None:
    await asyncio.sleep(0)


def test_tasks_wake_ups_and_timers_are_counted_only_while_on() -> None:
    loop = asyncio.new_event_loop()
    counts = Counts()
    instrument_loop(loop, counts)
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)

    async def scenario() -> None:
        await loop.create_task(_child())  # before counting: not counted
        counts.on = True
        await loop.create_task(_child())
        got: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            if not got.done():
                got.set_result(a.recv(10))

        loop.add_reader(a.fileno(), readable)
        b.send(b"x")
        assert await got == b"x"
        loop.remove_reader(a.fileno())
        handle = loop.call_later(60, lambda: None)
        handle.cancel()
        counts.on = False
        await loop.create_task(_child())

    try:
        loop.run_until_complete(scenario())
    finally:
        a.close()
        b.close()
        loop.close()
    c = counts.c
    assert c["task _child"] == 1
    assert c["loop add_reader int"] == 1
    assert c["loop call_later int"] == 1
    assert c["loop wake-ups (select returned events)"] >= 1
    assert any(k.startswith("fd ready -> ") and k.endswith("readable") for k in c)
