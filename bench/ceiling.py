"""The machine's ceilings, measured in the same run as the daemon.

HTTP: one Python process (``python -m bench.ceiling URL ...``, so nothing else shares its
event loop), one aiohttp session with a 64-connection keep-alive pool, 64 workers POSTing the
benchmark's ~1 KB body signed with ``dispatcher.request.build_request`` (a fresh id and
signatures per request, as the daemon does), reading each answer. Same event loop as the
daemon (uvloop when installed). Prints one JSON object. ``BENCH_CLIENT_TRACE=DIR``: also
stamp every request (``time.time()``: before the POST, headers back, body read) with its
delivery id and write them to ``DIR/client-<pid>.json`` (bench/slow_timeline.py).

PostgreSQL: one connection claiming 100 rows with ``FOR UPDATE SKIP LOCKED``, updating them
and inserting one row each, in one statement per batch (``pg_ceiling``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import aiohttp
import psycopg

from bench.infra import proc_sched, q
from bench.receiver import event_loop_name, run_loop
from bench.workload import EVENT_TYPE, sample_body
from dispatcher.request import build_request

SECRET = "5f" * 32
TRACE_DIR = os.environ.get("BENCH_CLIENT_TRACE", "")
# BENCH_CLIENT_STAGGER=S: worker i of n starts i * S / n seconds late (not in-step waves)
STAGGER = float(os.environ.get("BENCH_CLIENT_STAGGER", "0"))


async def http_ceiling(url: str, requests: int, warmup: int, concurrency: int) -> dict[str, Any]:
    body = sample_body()
    errors = 0
    left = 0
    trace: list[tuple[str, float, float, float]] = []  # (delivery id, sent, headers, read)

    async def worker(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal left, errors
        if STAGGER:
            await asyncio.sleep(i * STAGGER / concurrency)
        while left > 0:
            left -= 1
            delivery_id = str(uuid.uuid4())
            req = build_request(
                delivery_id=delivery_id,
                event_type=EVENT_TYPE,
                body=body,
                secrets=[SECRET],
            )
            sent = time.time()
            async with session.post(url, data=body, headers=req.headers) as resp:
                headers = time.time()
                await resp.read()
                if resp.status != 204:
                    errors += 1
            if TRACE_DIR:
                trace.append((delivery_id, sent, headers, time.time()))

    async def phase(session: aiohttp.ClientSession, n: int) -> None:
        nonlocal left
        left = n
        await asyncio.gather(*(worker(session, i) for i in range(concurrency)))

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await phase(session, warmup)
        trace.clear()
        cpu0, t0, wall0 = os.times(), time.perf_counter(), time.time()
        sched0 = proc_sched(os.getpid())
        await phase(session, requests)
        elapsed = time.perf_counter() - t0
        cpu1 = os.times()
        sched = proc_sched(os.getpid()) - sched0
    cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    if TRACE_DIR:
        write_trace({"start": wall0, "end": wall0 + elapsed, "trace": trace})
    return {
        "requests": requests,
        "seconds": elapsed,
        "requests_per_s": requests / elapsed,
        "client_cpu_s_per_1000": cpu / requests * 1000,
        "client_runq_wait_s_per_1000": sched.wait_s / requests * 1000,
        "errors": errors,
        "body_bytes": len(body),
        "concurrency": concurrency,
        "event_loop": event_loop_name(),
    }


def write_trace(data: dict[str, Any]) -> None:
    with open(os.path.join(TRACE_DIR, f"client-{os.getpid()}.json"), "w") as f:
        json.dump(data, f)


def run_http_ceiling(url: str, requests: int, warmup: int, concurrency: int = 64) -> dict[str, Any]:
    """Run the HTTP ceiling in its own process and return its figures."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.ceiling", url, str(requests), str(warmup), str(concurrency)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"HTTP ceiling failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def pg_ceiling(dsn: str, rows: int, batch: int = 100) -> dict[str, Any]:
    """Rows/s through claim (SKIP LOCKED) + update + insert, one statement per batch."""
    body = sample_body().decode()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(q("ceiling_setup"))
        conn.execute(q("ceiling_fill"), {"body": body, "rows": rows})
        conn.execute("VACUUM ANALYZE ceiling_queue")
        conn.execute("CHECKPOINT")
        statement = q("ceiling_batch")
        params = {"batch": batch}
        done = 0
        t0 = time.perf_counter()
        while True:
            cur = conn.execute(statement, params, prepare=True)
            if cur.rowcount <= 0:
                break
            done += cur.rowcount
        elapsed = time.perf_counter() - t0
    return {"rows": done, "batch": batch, "seconds": elapsed, "rows_per_s": done / elapsed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("requests", type=int)
    p.add_argument("warmup", type=int)
    p.add_argument("concurrency", type=int, nargs="?", default=64)
    a = p.parse_args(argv)
    print(json.dumps(run_loop(http_ceiling(a.url, a.requests, a.warmup, a.concurrency))))


if __name__ == "__main__":
    main()
