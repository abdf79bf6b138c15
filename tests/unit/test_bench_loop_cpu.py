"""bench/loop_cpu.py drives the daemon's real loop as drain1 does: every delivery's outcome
reaches the recorder, and all but the first cap's worth start from the claim-ahead queue."""

from __future__ import annotations

from bench.loop_cpu import measure
from dispatcher.settings import Settings


async def test_every_delivery_is_recorded_and_most_start_from_the_queue() -> None:
    cap = Settings(database_url="postgresql://localhost/none").per_webhook_concurrency
    res = await measure(deliveries=500, rounds=2, log_level="warning")
    assert res["written"] == res["starts"] == 1000
    assert res["dequeued"] == 1000 - 2 * cap  # each round starts its first cap at once
    assert len(res["us_per_delivery"]) == 2
