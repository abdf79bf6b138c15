"""The latency floor: the least any dispatcher must do for one event, in its own process.

    python -m bench.floor_latency DSN URL     # prints "READY" once listening

Per event: hear the NOTIFY on ``bench_floor`` (its payload is the event id, sent by the
benchmark's publisher inside the event's own transaction), write one delivery row (one
statement, the body built from the event by ``dispatcher.delivery_body_v1`` as the
daemon's fan-out builds it), POST the body signed with ``dispatcher.request.build_request``
through one aiohttp session to the receiver, record the outcome (one statement). No
outbox, no claim or lease, no admission, no batching, no retries: a lower bound for the
daemon's latency measured on the same machine in the same run, not a design.

The receiver sees ``X-InTime-Delivery: floor-<event id>``. Each row keeps when the NOTIFY
was heard and when the request was sent (``time.time()``), beside the insert's ``now()``
and the record's, so the benchmark splits the floor's own latency by stage. Same event
loop as the daemon (uvloop when installed); connects as the ``bench_floor`` role, so the
scheduling profile tells its PostgreSQL backends apart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

import aiohttp
import psycopg

from bench.infra import q
from bench.receiver import run_loop
from dispatcher.request import NO_CUSTOM_HEADERS, build_request, signer_for

CHANNEL = "bench_floor"
SECRET = "6a" * 32
CONNECTIONS = 4  # statements in flight at once (events arrive every 5-10 ms)


class Floor:
    def __init__(self, dsn: str, url: str) -> None:
        self.dsn = dsn
        self.url = url
        self.free: asyncio.Queue[psycopg.AsyncConnection[Any]] = asyncio.Queue()
        self.signer = signer_for((SECRET,), NO_CUSTOM_HEADERS)
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors = 0

    async def run(self) -> None:
        for _ in range(CONNECTIONS):
            conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
            self.free.put_nowait(conn)
        setup = await self.free.get()
        await setup.execute(q("latency_floor_setup"))
        self.free.put_nowait(setup)
        listen = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await listen.execute(f"LISTEN {CHANNEL}")
        connector = aiohttp.TCPConnector(limit=64)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            print("READY", flush=True)
            async for note in listen.notifies():
                heard = time.time()
                task = asyncio.create_task(self.deliver(session, note.payload, heard))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def deliver(self, session: aiohttp.ClientSession, event_id: str, heard: float) -> None:
        conn = await self.free.get()
        try:
            cur = await conn.execute(
                q("latency_floor_insert"), {"event": event_id, "heard": heard}, prepare=True
            )
            row = await cur.fetchone()
        finally:
            self.free.put_nowait(conn)
        if row is None:
            self.errors += 1
            return
        row_id, body_text = row
        body = body_text.encode()
        req = build_request(
            delivery_id=f"floor-{event_id}", event_type="floor", body=body, signer=self.signer
        )
        sent = time.time()
        try:
            async with session.post(self.url, data=body, headers=req.headers) as resp:
                await resp.read()
                status = "success" if 200 <= resp.status < 300 else "failed"
                code: int | None = resp.status
        except (aiohttp.ClientError, TimeoutError):
            status, code = "failed", None
            self.errors += 1
        conn = await self.free.get()
        try:
            await conn.execute(
                q("latency_floor_record"),
                {"id": row_id, "status": status, "code": code, "sent": sent},
                prepare=True,
            )
        finally:
            self.free.put_nowait(conn)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dsn")
    p.add_argument("url")
    a = p.parse_args(argv)
    try:
        run_loop(Floor(a.dsn, a.url).run())
    except KeyboardInterrupt:
        pass


class FloorProcess:
    """The floor pipeline as a subprocess of the benchmark."""

    def __init__(self, dsn: str, url: str) -> None:
        self.dsn = dsn
        self.url = url
        self.proc: Any = None

    def start(self, timeout: float = 20.0) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor_latency", self.dsn, self.url],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and line.strip() != "READY":
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
        if line.strip() != "READY":
            raise RuntimeError(f"floor pipeline did not start (exit {self.proc.poll()})")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return int(self.proc.pid)

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self) -> str:
        return "(the floor pipeline's output is not kept)"

    def stop(self) -> None:
        import subprocess

        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    main()
