"""The daemon's dispatch loop and recorder running in the test's own event loop, for tests that
hold or patch `Dispatcher`'s methods (a statement held before it runs, deterministically)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import hostdb

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


async def assert_stopped_cleanly_then_delivered_once(
    conn: Any,
    receiver: Any,
    start_daemon: Any,
    *,
    unsent_event: Any,
    sent: dict[str, int],
) -> None:
    """After a stop() that raced a doorbell's fan-out: nothing is left leased, the event whose
    row was leased while stopping is `pending` (given back unsent), and a later daemon (the
    test's patches undone first) delivers every event once: `sent` is requests per receiver
    path in the end, each with its own webhook-id."""
    leased = await hostdb.deliveries(
        conn, "status IN ('pending', 'retrying') AND next_retry_at > now()"
    )
    assert leased == [], "rows left leased after stop"
    rows = await hostdb.deliveries(conn, "event_id = %s", (unsent_event,))
    assert len(rows) == 1 and rows[0]["status"] == "pending", rows
    await start_daemon(per_webhook_concurrency=4)
    await hostdb.wait_deliveries(conn, "status = 'success'", sum(sent.values()), timeout=60)
    for path, n in sent.items():
        ids = [r.headers["webhook-id"] for r in receiver.requests_for(path)]
        assert len(ids) == len(set(ids)) == n, path
