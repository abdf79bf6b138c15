"""A receiver's wake-ups per request when a client sends a burst of POSTs (issue 12, py312).

aiohttp writes a request's body from a new task on Python 3.11 and from an eager task on
3.12+ (``aiohttp/client_reqrep.py``). A burst of requests started in one event-loop pass (a
claim batch) then leaves together on 3.11 and request by request on 3.12+: the receiver is
woken more often per request. This measures it without the daemon or PostgreSQL:

    python -m bench.eager_write [--bursts 300] [--lazy] PYTHON [PYTHON...]

starts an aiohttp receiver on this interpreter, then for each PYTHON a client (``python -m
bench.eager_write client PORT PID``) that sends ``--bursts`` bursts of 32 HMAC-signed 1 KB
POSTs over 32 connections, and prints the receiver's scheduling slices (wake-ups, from
``/proc/<pid>/task/*/schedstat``) and CPU per request, and the client's CPU per request.
``--lazy`` forces aiohttp's 3.11 write path in the client (a diagnostic patch of aiohttp's
module globals). Linux only; run it under the benchmark lock.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

BURST = 32
BODY = b"x" * 1000
KEY = b"k" * 32
WARMUP_BURSTS = 20


@dataclass(frozen=True)
class Sample:
    """One client run: per request, the receiver's wake-ups and CPU, the client's CPU."""

    python: str
    lazy: bool
    requests: int
    receiver_wakeups: float
    receiver_cpu_ms: float
    client_cpu_ms: float

    def line(self) -> str:
        path = ", aiohttp's 3.11 write path" if self.lazy else ""
        return (
            f"client {self.python}{path}: receiver wake-ups/request {self.receiver_wakeups:.3f}, "
            f"receiver CPU ms/request {self.receiver_cpu_ms:.4f}, "
            f"client CPU ms/request {self.client_cpu_ms:.4f} ({self.requests} requests)"
        )


def sched(pid: int) -> tuple[float, int]:
    """(seconds on a CPU, scheduling slices) summed over the threads of process `pid`."""
    cpu_ns = slices = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        on_cpu, _, count = (task / "schedstat").read_text().split()[:3]
        cpu_ns += int(on_cpu)
        slices += int(count)
    return cpu_ns / 1e9, slices


def force_deferred_write() -> None:
    """aiohttp's Python-3.11 body write (a new task) on 3.12+: its module reads
    ``sys.version_info`` for that choice and for ``>= (3, 11)`` checks only."""
    import aiohttp.client_reqrep as reqrep

    reqrep.sys = types.SimpleNamespace(  # type: ignore[attr-defined,assignment]
        version_info=(3, 11, 99), _getframe=sys._getframe
    )


async def start_receiver(
    on_body: Callable[[bytes], None] | None = None,
) -> tuple[web.AppRunner, int]:
    """An aiohttp receiver on a free loopback port answering every POST /h with 200 "ok" once
    its body is read (`on_body` sees each body): its runner, to clean up, and its port."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.read()
        if on_body is not None:
            on_body(body)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/h", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def serve() -> None:
    _, port = await start_receiver()
    print("PORT", port, flush=True)
    await asyncio.Event().wait()


async def bursts(port: int, receiver_pid: int, count: int, lazy: bool) -> Sample:
    if lazy:
        force_deferred_write()
    url = f"http://127.0.0.1:{port}/h"
    connector = aiohttp.TCPConnector(limit=BURST)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            signature = hmac.new(KEY, BODY + str(i).encode(), hashlib.sha256).hexdigest()
            async with session.post(url, data=BODY, headers={"webhook-signature": signature}) as r:
                await r.read()

        for _ in range(WARMUP_BURSTS):
            await asyncio.gather(*(one(i) for i in range(BURST)))
        cpu0, (rcpu0, rslices0) = time.process_time(), sched(receiver_pid)
        for _ in range(count):
            await asyncio.gather(*(one(i) for i in range(BURST)))
        cpu1, (rcpu1, rslices1) = time.process_time(), sched(receiver_pid)
    n = count * BURST
    return Sample(
        python=sys.version.split()[0],
        lazy=lazy,
        requests=n,
        receiver_wakeups=(rslices1 - rslices0) / n,
        receiver_cpu_ms=(rcpu1 - rcpu0) / n * 1000,
        client_cpu_ms=(cpu1 - cpu0) / n * 1000,
    )


def run_loop(coro: object) -> object:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]
    return uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.eager_write", description=__doc__)
    p.add_argument("--bursts", type=int, default=300, help="measured bursts (default 300)")
    p.add_argument("--lazy", action="store_true", help="force aiohttp's 3.11 write path")
    p.add_argument("pythons", nargs="+", help="client interpreters ('client PORT PID': one run)")
    args = p.parse_args(argv)
    if args.pythons[0] == "serve":
        run_loop(serve())
        return 0
    if args.pythons[0] == "client":
        port, pid = int(args.pythons[1]), int(args.pythons[2])
        sample = run_loop(bursts(port, pid, args.bursts, args.lazy))
        assert isinstance(sample, Sample)
        print(sample.line(), flush=True)
        return 0
    root = Path(__file__).resolve().parent.parent
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    }
    receiver = subprocess.Popen(
        [sys.executable, "-m", "bench.eager_write", "serve"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline().split()[1])
        for python in args.pythons:
            extra = ["--lazy"] if args.lazy else []
            cmd = [python, "-m", "bench.eager_write", "--bursts", str(args.bursts), *extra]
            subprocess.run([*cmd, "client", str(port), str(receiver.pid)], check=True, env=env)
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
