"""The daemon's dispatch loop and recorder running in the test's own event loop, for tests that
hold or patch `Dispatcher`'s methods (a statement held before it runs, deterministically)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from dispatcher.db import open_pool
from dispatcher.dispatch import Dispatcher
from dispatcher.metrics import Metrics
from dispatcher.recorder import Recorder
from dispatcher.sender import Sender
from dispatcher.settings import load_settings


@asynccontextmanager
async def running_dispatcher(
    db_dsn: str, **overrides: Any
) -> AsyncIterator[tuple[Dispatcher, asyncio.Task[None], Recorder]]:
    """A real pool, sender, recorder and `Dispatcher.run()` on `db_dsn`, loopback targets
    allowed, no poll for a minute (only doorbells and refills wake the loop) and four pool
    connections open from the start, as a busy daemon's pool has grown to (so a doorbell's
    fan-out beside a due scan finds an idle one); `overrides` are further settings. Yields
    (dispatcher, its loop's task, recorder); on the way out stops the loop unless the test
    did, drains the recorder and closes everything."""
    settings = load_settings(
        **{
            "database_url": db_dsn,
            "allowed_target_networks": "127.0.0.1/32",
            "poll_interval": 60.0,
            "pool_min_size": 4,
            **overrides,
        }
    )
    pool = await open_pool(settings)
    sender = Sender(settings)
    await sender.start()
    recorder = Recorder(pool)
    recording = asyncio.create_task(recorder.run())
    dispatcher = Dispatcher(settings, pool, sender, recorder, Metrics())
    loop = asyncio.create_task(dispatcher.run())
    try:
        yield dispatcher, loop, recorder
    finally:
        if not loop.done():
            await dispatcher.stop(5)
            await asyncio.wait_for(loop, 10)
        await recorder.drain(5)
        recording.cancel()
        await asyncio.gather(recording, return_exceptions=True)
        await sender.close()
        await pool.close()
