"""A scriptable webhook receiver: a real aiohttp server on 127.0.0.1 in the test's loop.

receiver.respond("/hook", Reply(500), Reply(500), Reply(200))  # last step repeats
... daemon delivers ...
[first, *_] = await receiver.wait_for(3, path="/hook")
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .net import LOOPBACK, bound_socket, set_linger_zero


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    method: str
    headers: CIMultiDictProxy[str]
    body: bytes
    received_at: float
    query: str = ""


@dataclass(frozen=True)
class Reply:
    """Answer with this status/body/headers, after ``delay`` seconds."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Hang:
    """Never answer; the request is released only when the receiver closes."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection with a TCP RST without answering."""


Step = Reply | Hang | Reset
DEFAULT_STEP: Step = Reply(204)


class Receiver:
    def __init__(self) -> None:
        self.requests: list[ReceivedRequest] = []
        self._scripts: dict[str, list[Step]] = defaultdict(list)
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.ServerRunner | None = None
        self.port = 0
        # requests being handled now, and the most ever at once, per path
        self.concurrent: dict[str, int] = defaultdict(int)
        self.max_concurrent: dict[str, int] = defaultdict(int)

    async def start(self) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        server = web.Server(self._handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def respond(self, path: str, *steps: Step) -> None:
        """Script the answers for ``path``: consumed in order, the last one repeats."""
        if not steps:
            raise ValueError("respond() needs at least one step")
        self._scripts[path] = list(steps)

    def requests_for(self, path: str) -> list[ReceivedRequest]:
        return [r for r in self.requests if r.path == path]

    async def wait_for(
        self, count: int, path: str | None = None, timeout: float = 10.0
    ) -> list[ReceivedRequest]:
        """At least ``count`` requests (for ``path``, or all) — the matching ones, in order."""

        def matching() -> list[ReceivedRequest]:
            return self.requests if path is None else self.requests_for(path)

        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(matching()) >= count)
            except TimeoutError:
                where = "in total" if path is None else f"for {path!r}"
                raise AssertionError(
                    f"receiver: expected at least {count} request(s) {where} within "
                    f"{timeout}s, got {len(matching())} (all paths: {self._summary()})"
                ) from None
            return list(matching())

    def _summary(self) -> str:
        counts: dict[str, int] = defaultdict(int)
        for r in self.requests:
            counts[r.path] += 1
        return repr(dict(counts))

    def _next_step(self, path: str) -> Step:
        script = self._scripts.get(path)
        if not script:
            return DEFAULT_STEP
        return script.pop(0) if len(script) > 1 else script[0]

    async def _record(self, request: web.BaseRequest) -> None:
        body = await request.read()
        received = ReceivedRequest(
            path=request.path,
            method=request.method,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            body=body,
            received_at=time.time(),
            query=request.query_string,
        )
        async with self._changed:
            self.requests.append(received)
            self._changed.notify_all()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        self.concurrent[path] += 1
        self.max_concurrent[path] = max(self.max_concurrent[path], self.concurrent[path])
        try:
            return await self._answer(request)
        finally:
            self.concurrent[path] -= 1

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        await self._record(request)
        step = self._next_step(request.path)
        if isinstance(step, Reply):
            if step.delay:
                await asyncio.sleep(step.delay)
            return web.Response(status=step.status, body=step.body, headers=step.headers)
        if isinstance(step, Hang):
            await self._closing.wait()
        _abort(request)
        raise asyncio.CancelledError  # nothing to send; aiohttp drops the request quietly


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is None:
        return
    set_linger_zero(transport.get_extra_info("socket"))
    transport.abort()
