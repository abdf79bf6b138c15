"""The daemon loop's own Python per delivery, with no HTTP and no SQL (issue 12; not a
scenario; docs/performance.md, "the daemon loop's Python per delivery (branch loopcost)").

One process, one event loop (uvloop when installed, as the daemon), no database, no
receiver: the tree's real `Dispatcher` (`_start`, the end of an attempt, admission and its
claim-ahead queue), `Attempts.deliver` and `_record` (the `Target`, `message_id`, the
transition, `outcome_row`, the three metric updates, the `delivery_attempt` line when the
level is info) and the `Recorder`'s queue, drained by its writer with the statement left
out. The sender is stood in for: it answers a 204 at once after one suspension, as a POST
suspends. Rows arrive as in drain1: one webhook at its cap, the rest leased ahead into its
queue as it runs down. Start-up objects are frozen out of the cyclic GC with the daemon's
thresholds (`App`). Process CPU per delivery, microseconds, per round::

    .venv/bin/python -m bench.loop_cpu [--deliveries 20000] [--rounds 5] [--log-level info]
    cd /old/tree && /path/to/venv/bin/python /new/tree/bench/loop_cpu.py

`--without metrics,message_id,outcome_row` replaces those pieces by no-ops (what they cost is
the difference). The machine's other work moves every figure: alternate trees, read the
minimum and the median of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

sys.path.insert(0, os.getcwd())  # the tree under test, also when run by path from another

import dispatcher
from dispatcher.backoff import RetryPolicy
from dispatcher.claims import Claimed
from dispatcher.dispatch import Dispatcher
from dispatcher.logs import configure_logging
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Outcome
from dispatcher.recorder import OutcomeRow, Recorder
from dispatcher.request import NO_CUSTOM_HEADERS
from dispatcher.sender import AttemptResult
from dispatcher.settings import Settings

ORG, HOOK = uuid.uuid4(), uuid.uuid4()
PIECES = ("metrics", "message_id", "outcome_row")


class _Sender:
    """A 204 after one suspension (a POST suspends several times)."""

    async def attempt(self, target: Any) -> AttemptResult:
        await asyncio.sleep(0)
        return AttemptResult(
            Outcome.DELIVERED,
            response_status=204,
            duration_ms=1,
            response_headers={"date": "x", "server": "y", "content-length": "0"},
            response_body="",
            request_headers={"content-type": "application/json"},
        )


class _Recorder(Recorder):
    """The recorder's queue and batching, the statement left out."""

    async def _write(self, batch: list[OutcomeRow]) -> None:
        for row in batch:
            self._seq += 1
            row.seq = self._seq
        self.written += len(batch)
        self.batches += 1

    async def _apply_counters(self) -> None:
        self._counters_due = False


def _row(now: datetime) -> Claimed:
    return Claimed(
        id=uuid.uuid4(),
        org_id=ORG,
        webhook_id=HOOK,
        event_id=uuid.uuid4(),
        event_type="job.created",
        request_body='{"id": 1}',
        attempt=1,
        max_attempts=5,
        claim=now,
        url="http://127.0.0.1:9/hook",
        secrets=("s" * 32,),
        headers=NO_CUSTOM_HEADERS,
        active=True,
        policy=RetryPolicy(),
        created_at=now - timedelta(seconds=1),
        keyed=False,
    )


def _without(pieces: set[str]) -> None:
    """Replace pieces by no-ops, in this process only."""
    import dispatcher.delivery as delivery

    if "metrics" in pieces:
        from prometheus_client import Counter, Histogram

        Histogram.observe = lambda *_, **__: None  # type: ignore[method-assign]
        Counter.inc = lambda *_, **__: None  # type: ignore[method-assign]
    if "message_id" in pieces:
        setattr(delivery, "message_id", lambda *_: "x")  # noqa: B010
    if "outcome_row" in pieces:
        made: list[OutcomeRow] = []
        real = getattr(delivery, "outcome_row")  # noqa: B009

        def once(*args: Any) -> OutcomeRow:
            if not made:
                made.append(real(*args))
            return made[0]

        setattr(delivery, "outcome_row", once)  # noqa: B010


async def measure(deliveries: int, rounds: int, log_level: str) -> dict[str, Any]:
    settings = Settings(database_url="postgresql://localhost/none", log_level=log_level)
    recorder = _Recorder(cast(Any, None))
    loop = Dispatcher(settings, cast(Any, None), cast(Any, _Sender()), recorder, Metrics())
    admission = loop.admission
    writer = asyncio.create_task(recorder.run())
    per_round: list[float] = []
    for _ in range(rounds):
        now = datetime.now(UTC)
        rows = [_row(now) for _ in range(deliveries)]
        for d in rows:
            d.lease_until = time.monotonic() + 60
        t0 = time.process_time()
        i = 0
        while i < deliveries or loop.inflight:
            while i < deliveries and admission.inflight(HOOK) < admission.cap:
                loop._start(rows[i])
                i += 1
            while (
                i < deliveries
                and admission.queued(HOOK) < admission.ahead
                and admission.enqueue(HOOK, rows[i])
            ):
                i += 1
            await asyncio.sleep(0)
        await recorder.drain(60)
        per_round.append((time.process_time() - t0) / deliveries * 1e6)
    writer.cancel()
    return {
        "tree": os.path.dirname(os.path.dirname(dispatcher.__file__)),
        "us_per_delivery": [round(x, 1) for x in per_round],
        "min": round(min(per_round), 1),
        "median": round(statistics.median(per_round), 1),
        "written": recorder.written,
        "dequeued": admission.dequeued,
        "starts": loop.starts,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--deliveries", type=int, default=20000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--log-level", choices=("info", "warning"), default="warning")
    p.add_argument("--without", default="", help=f"comma-separated, of {', '.join(PIECES)}")
    args = p.parse_args(argv)
    pieces = {x for x in args.without.split(",") if x}
    if pieces - set(PIECES):
        p.error(f"--without: unknown {sorted(pieces - set(PIECES))}")
    _without(pieces)
    configure_logging(args.log_level, "json", stream=open(os.devnull, "w"))
    gc.freeze()  # as App does once ready
    gc.set_threshold(20_000, 50, 100)
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        res = uvloop.run(measure(args.deliveries, args.rounds, args.log_level))
    except ImportError:
        res = asyncio.run(measure(args.deliveries, args.rounds, args.log_level))
    print(
        f"{res['tree']}: {' '.join(map(str, res['us_per_delivery']))} us per delivery "
        f"(min {res['min']}, median {res['median']}); written {res['written']}, "
        f"from the queue {res['dequeued']} of {res['starts']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
