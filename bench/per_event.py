"""What the daemon does per event at a low rate, counted (issue 12; docs/performance.md,
"the daemon's Python per event (branch pyevent)").

Not a scenario and not a timing: one throwaway PostgreSQL (bench/infra.py), the bench's
receiver in its own process, one webhook, and the daemon (`dispatcher.app.App`) in THIS
process on a plain asyncio loop, so that its loop can be instrumented. Events are
published one per transaction from a thread (its own connection), at `--rate` per second,
like the `latency` scenario; after a warm-up, over `--events` events it counts, per
delivery:

- tasks created on the daemon's loop, by coroutine;
- the loop's wake-ups (selector returns with at least one event), callbacks scheduled
  (call_soon) and timers (call_later/call_at), file-descriptor registrations;
- statements by name (pg_stat_statements of the daemon's role, when the server has it);
- metric updates (prometheus_client), log calls (structlog, by level: a call filtered
  out by the level still counts), orjson/json encodes and decodes.

Counts are structural: they do not depend on the machine's speed, only on how events
arrive (one NOTIFY per event here, each handled before the next). uvloop schedules a few
callbacks differently from asyncio's own loop; the daemon's own code is the same.

    python -m bench.per_event [--events 400] [--rate 100] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

sys.path.insert(0, os.getcwd())  # the tree under test, also when run by path from another

import orjson
import psycopg

from bench.drain import _name
from bench.infra import DAEMON_ROLE, BenchCluster, q
from bench.receiver import ReceiverProcess
from bench.workload import EVENT_TYPE, PAYLOAD, create_webhooks


class Counts:
    def __init__(self) -> None:
        self.on = False
        self.c: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        if self.on:
            self.c[key] += n


def _wrap(owner: Any, attr: str, counts: Counts, key: str | Callable[..., str]) -> None:
    original = getattr(owner, attr)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts.add(key(*args, **kwargs) if callable(key) else key)
        return original(*args, **kwargs)

    setattr(owner, attr, wrapper)


def _coro_name(coro: Any) -> str:
    code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
    name = getattr(code, "co_qualname", None) or getattr(coro, "__qualname__", None)
    return str(name or type(coro).__name__)


def _cb_name(cb: Any) -> str:
    while hasattr(cb, "func"):  # functools.partial
        cb = cb.func
    self = getattr(cb, "__self__", None)
    if self is not None and hasattr(self, "get_coro"):  # a task's step
        return f"step of {_coro_name(self.get_coro())}"
    return str(getattr(cb, "__qualname__", type(cb).__name__))


def instrument_loop(loop: asyncio.AbstractEventLoop, counts: Counts) -> None:
    def factory(lp: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        counts.add(f"task {_coro_name(coro)}")
        return asyncio.Task(coro, loop=lp, **kwargs)

    loop.set_task_factory(factory)
    for attr in ("call_soon", "call_later", "call_at", "add_reader", "add_writer"):
        _wrap(loop, attr, counts, lambda cb, *a, _attr=attr, **k: f"loop {_attr} {_cb_name(cb)}")
    selector = loop._selector  # type: ignore[attr-defined]
    select = selector.select

    def counted_select(timeout: float | None = None) -> Any:
        ready = select(timeout)
        if ready:
            counts.add("loop wake-ups (select returned events)")
            for key, _mask in ready:
                for handle in key.data or ():
                    if handle is not None:
                        counts.add(f"fd ready -> {_cb_name(handle._callback)}")
        return ready

    selector.select = counted_select


def instrument_libraries(counts: Counts) -> None:
    import prometheus_client.metrics as pm
    import structlog._config as sc

    for cls, attr in (
        (pm.Counter, "inc"),
        (pm.Gauge, "set"),
        (pm.Gauge, "inc"),
        (pm.Gauge, "dec"),
        (pm.Histogram, "observe"),
    ):
        _wrap(cls, attr, counts, f"metric {cls.__name__}.{attr}")
    _wrap(pm.MetricWrapperBase, "labels", counts, "metric labels() lookup")
    getattr_ = sc.BoundLoggerLazyProxy.__getattr__

    def proxy_getattr(self: Any, name: str) -> Any:
        if name in ("debug", "info", "warning", "error", "exception", "critical", "msg"):
            counts.add(f"log call .{name}()")
        return getattr_(self, name)

    sc.BoundLoggerLazyProxy.__getattr__ = proxy_getattr  # type: ignore[method-assign]
    for name in ("dumps", "loads"):
        _wrap(orjson, name, counts, f"orjson.{name}")
        _wrap(json, name, counts, f"json.{name}")


class PublisherThread(threading.Thread):
    """One event per transaction at `rate` per second, on a connection of its own (no
    adapter that encodes JSON in this process: the payload goes as text)."""

    def __init__(self, dsn: str, org: Any, rate: float, count: int) -> None:
        super().__init__(daemon=True)
        self.dsn, self.org, self.rate, self.count = dsn, org, rate, count
        self.done = 0

    def run(self) -> None:
        payload = json.dumps(PAYLOAD)
        statement = q("publish_one").replace("%(payload)s::jsonb", "%(payload)s::text::jsonb")
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            start = time.monotonic()
            for i in range(self.count):
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                with conn.transaction():
                    conn.execute(
                        statement, {"event_type": EVENT_TYPE, "payload": payload, "org": self.org}
                    )
                self.done += 1


async def _delivered(dsn: str) -> int:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM webhook_deliveries WHERE status='success'")
        row = await cur.fetchone()
        return int(row[0]) if row else 0


async def _wait_delivered(dsn: str, n: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = await _delivered(dsn)
        if got >= n:
            return got
        await asyncio.sleep(0.1)
    raise RuntimeError(f"only {got} of {n} deliveries succeeded within {timeout:g} s")


@contextmanager
def _cluster() -> Iterator[BenchCluster]:
    cluster = BenchCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.cleanup()


async def measure(cluster: BenchCluster, receiver: ReceiverProcess, args: Any) -> dict[str, Any]:
    from dispatcher.app import App
    from dispatcher.logs import configure_logging
    from dispatcher.settings import load_settings

    configure_logging("warning", "json")

    db = cluster.fresh_database("perevent")
    bench_dsn = cluster.dsn(db)
    async with await psycopg.AsyncConnection.connect(bench_dsn, autocommit=True) as conn:
        hooks = await create_webhooks(conn, receiver.url("/hook"), orgs=1, per_org=1)
    counts = Counts()
    instrument_loop(asyncio.get_running_loop(), counts)
    instrument_libraries(counts)
    settings = load_settings(
        database_url=cluster.dsn(db, DAEMON_ROLE),
        metrics_address="",
        log_level="warning",
        log_format="json",
        allowed_target_networks="127.0.0.0/8",
    )
    app = App(settings, install_signals=False)
    task = asyncio.create_task(app.run())
    await asyncio.wait_for(app.ready.wait(), 30)
    warm = PublisherThread(bench_dsn, hooks.orgs[0], args.rate, args.warmup)
    warm.start()
    await asyncio.to_thread(warm.join)
    await _wait_delivered(bench_dsn, args.warmup)
    await asyncio.sleep(0.5)
    cluster.set_statement_tracking(True)
    with cluster.admin() as admin:
        admin.execute("SELECT pg_stat_statements_reset()")
    pub = PublisherThread(bench_dsn, hooks.orgs[0], args.rate, args.events)
    counts.on = True
    pub.start()
    await asyncio.to_thread(pub.join)
    await _wait_delivered(bench_dsn, args.warmup + args.events)
    counts.on = False
    cluster.set_statement_tracking(False)
    n = args.events
    with cluster.admin() as admin:
        rows = admin.execute(q("statements_by_daemon"), {"db": db, "role": DAEMON_ROLE}).fetchall()
    statements: collections.Counter[str] = collections.Counter()
    for r in rows:
        statements[_name(r["query"])] += int(r["calls"])
    app.request_stop()
    await asyncio.wait_for(task, 30)
    per = {k: round(v / n, 3) for k, v in sorted(counts.c.items())}
    per.update({f"statement {k}": round(v / n, 3) for k, v in sorted(statements.items())})
    tasks = sum(v for k, v in counts.c.items() if k.startswith("task "))
    return {
        "events": n,
        "rate_per_s": args.rate,
        "tasks_per_delivery": round(tasks / n, 3),
        "statements_per_delivery": round(sum(statements.values()) / n, 3),
        "per_delivery": per,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    receiver = ReceiverProcess()
    receiver.start()
    try:
        with _cluster() as cluster:
            result = asyncio.run(measure(cluster, receiver, args))
    finally:
        receiver.stop()
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{result['events']} events at {result['rate_per_s']:g}/s, one webhook; per delivery:")
    print(f"  tasks {result['tasks_per_delivery']}, statements {result['statements_per_delivery']}")
    for key, value in result["per_delivery"].items():
        print(f"  {value:8.3f}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
