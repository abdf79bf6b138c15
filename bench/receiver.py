"""The benchmark's webhook receiver, in its own process.

    python -m bench.receiver          # prints "PORT <n>" once listening on 127.0.0.1

Every request outside ``/_bench/`` is read whole and answered ``204``; its arrival time
(``time.time()`` once the body is read) is recorded with its ``X-InTime-Delivery`` header (the
delivery row id; ``webhook-id`` is one per event and webhook, not per row). Under
``/slow/`` the answer comes ``SLOW_SECONDS`` after the body was read (a slow endpoint).
Control endpoints (JSON):

- ``GET /_bench/stats``: ``{"count", "first", "last", "bytes", "connections", "open",
  "open_max", "head_bytes", "close_asked"}``: ``connections`` the TCP connections accepted,
  ``open_max`` the most open at once, ``head_bytes`` the requests' header bytes (names and
  values as received, plus ": " and CRLF per line), ``close_asked`` the requests that asked
  for ``Connection: close`` (keep-alive off); control requests excluded from all but the
  connection figures
- ``GET /_bench/arrivals``: ``{"ids": [...], "times": [...], "signed": [...]}`` in arrival
  order (``signed``: the request's ``X-InTime-Timestamp``, when the sender signed it, in ms)
- ``GET /_bench/trace``: every ``/slow/`` request stamped, in the order answered:
  ``[path, client port, entered, body read, sleep returned, response written, delivery id,
  X-InTime-Timestamp]`` (``time.time()``; bench/slow_timeline.py reads them)
- ``POST /_bench/reset``: forget everything recorded

``ReceiverProcess`` starts it and talks to the control endpoints.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

CONTROL = "/_bench/"
SLOW = "/slow/"
SLOW_SECONDS = 0.05


class Recorder:
    def __init__(self) -> None:
        self.ids: list[str] = []
        self.times: list[float] = []
        self.signed: list[str] = []  # X-InTime-Timestamp: when the sender signed (ms)
        self.bytes = 0
        self.connections = 0  # accepted since the last reset
        self.open = 0  # open now
        self.open_max = 0  # most open at once since the last reset
        self.head_bytes = 0
        self.close_asked = 0
        self.trace: list[tuple[str, int, float, float, float, float, str, str]] = []  # /slow/

    def opened(self) -> None:
        self.connections += 1
        self.open += 1
        self.open_max = max(self.open_max, self.open)

    def closed(self) -> None:
        self.open -= 1

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return self.control(request)
        entered = time.time()
        body = await request.read()
        read = time.time()
        delivery = request.headers.get("X-InTime-Delivery", "")
        signed = request.headers.get("X-InTime-Timestamp", "")
        self.times.append(read)
        self.ids.append(delivery)
        self.signed.append(signed)
        self.bytes += len(body)
        self.head_bytes += sum(len(k) + len(v) + 4 for k, v in request.raw_headers)
        if not request.keep_alive:
            self.close_asked += 1
        if not request.path.startswith(SLOW):
            return web.Response(status=204)
        await asyncio.sleep(SLOW_SECONDS)
        woke = time.time()
        resp = web.Response(status=204)
        await resp.prepare(request)  # written here, to stamp when (the server's is a no-op)
        await resp.write_eof()
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = int(peer[1]) if peer else 0
        self.trace.append((request.path, port, entered, read, woke, time.time(), delivery, signed))
        return resp

    def control(self, request: web.BaseRequest) -> web.StreamResponse:
        action = request.path[len(CONTROL) :]
        if action == "stats":
            data: dict[str, Any] = {
                "count": len(self.times),
                "first": self.times[0] if self.times else None,
                "last": self.times[-1] if self.times else None,
                "bytes": self.bytes,
                "connections": self.connections,
                "open": self.open,
                "open_max": self.open_max,
                "head_bytes": self.head_bytes,
                "close_asked": self.close_asked,
            }
        elif action == "arrivals":
            data = {"ids": self.ids, "times": self.times, "signed": self.signed}
        elif action == "trace":
            return web.Response(body=json.dumps(self.trace), content_type="application/json")
        elif action == "reset" and request.method == "POST":
            self.ids, self.times, self.signed, self.bytes = [], [], [], 0
            self.connections, self.open_max = 0, self.open
            self.head_bytes = self.close_asked = 0
            self.trace = []
            data = {"ok": True}
        else:
            return web.Response(status=404)
        return web.Response(body=json.dumps(data), content_type="application/json")


class CountingServer(web.Server):
    """aiohttp's low-level server, counting the connections it accepts and loses."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(recorder.handle, access_log=None)
        self.recorder = recorder

    def connection_made(self, handler: Any, transport: Any) -> None:
        super().connection_made(handler, transport)
        self.recorder.opened()

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self.recorder.closed()


async def serve() -> None:
    recorder = Recorder()
    server = CountingServer(recorder)
    runner = web.ServerRunner(server, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"PORT {port}", flush=True)
    await asyncio.Event().wait()


def event_loop_name() -> str:
    try:
        import uvloop  # noqa: F401  (only whether it imports)
    except ImportError:
        return "asyncio"
    return "uvloop"


def run_loop(coro: Any) -> Any:
    """Run with uvloop when installed (as the daemon does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


class ReceiverProcess:
    """The receiver subprocess and a client for its control endpoints."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self._session: aiohttp.ClientSession | None = None

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.receiver"],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and not line.startswith("PORT "):
            line = self.proc.stdout.readline()
            if not line and self.proc.poll() is not None:
                break
        if not line.startswith("PORT "):
            raise RuntimeError(f"benchmark receiver did not start (exit {self.proc.poll()})")
        self.port = int(line.split()[1])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _get(self, method: str, action: str) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.request(method, self.url(CONTROL + action)) as resp:
            resp.raise_for_status()
            data: dict[str, Any] = await resp.json()
            return data

    async def stats(self) -> dict[str, Any]:
        return await self._get("GET", "stats")

    async def arrivals(self) -> dict[str, Any]:
        return await self._get("GET", "arrivals")

    async def trace(self) -> list[list[Any]]:
        """The ``/slow/`` requests stamped (``GET /_bench/trace``)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        async with self._session.get(self.url(CONTROL + "trace")) as resp:
            resp.raise_for_status()
            rows: list[list[Any]] = await resp.json()
            return rows

    async def reset(self) -> None:
        await self._get("POST", "reset")

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()  # the "PORT" pipe


if __name__ == "__main__":
    try:
        run_loop(serve())
    except KeyboardInterrupt:
        pass
