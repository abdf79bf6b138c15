"""A receiver that watches order: a real aiohttp server on loopback that records, per
aggregate_id (the ordering key), which messages arrived in which order, whether two of
one key were ever in flight at once, and the X-InTime-Sequence of every request.

Answers 204 after a small random delay (so out-of-order sends would show), or what
``fail`` says for a message: ``fail[n]`` = how many first attempts of the event whose
payload has ``{"n": n}`` get a 500.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from dataclasses import dataclass, field

from aiohttp import web

from .net import LOOPBACK, bound_socket


@dataclass
class Seen:
    key: str | None
    n: int | None
    event_id: str
    webhook_id_header: str
    sequence: int | None
    status: int


@dataclass
class OrderReceiver:
    max_delay: float = 0.03
    fail: dict[int, int] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    overlaps: list[str] = field(default_factory=list)  # keys seen twice in flight at once
    _in_flight: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _attempts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.ServerRunner | None = None
    port: int = 0

    async def __aenter__(self) -> OrderReceiver:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        self._runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def url(self, path: str = "/ordered") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        body = json.loads(await request.read())
        key = body.get("aggregate_id")
        n = (body.get("data") or {}).get("n")
        seq = request.headers.get("X-InTime-Sequence")
        event_id = str(body["id"])
        if key is not None:
            self._in_flight[key] += 1
            if self._in_flight[key] > 1:
                self.overlaps.append(key)
        try:
            await asyncio.sleep(random.uniform(0, self.max_delay))
            self._attempts[event_id] += 1
            status = (
                500 if n is not None and self._attempts[event_id] <= self.fail.get(n, 0) else 204
            )
        finally:
            if key is not None:
                self._in_flight[key] -= 1
        async with self._changed:
            self.seen.append(
                Seen(
                    key,
                    n,
                    event_id,
                    request.headers["webhook-id"],
                    None if seq is None else int(seq),
                    status,
                )
            )
            self._changed.notify_all()
        return web.Response(status=status)

    def delivered(self) -> list[Seen]:
        return [s for s in self.seen if s.status == 204]

    async def wait_delivered(self, count: int, timeout: float = 60.0) -> list[Seen]:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(self.delivered()) >= count)
            except TimeoutError:
                raise AssertionError(
                    f"order receiver: {len(self.delivered())} of {count} delivered "
                    f"within {timeout}s"
                ) from None
        return self.delivered()

    def order_by_key(self, delivered_only: bool = True) -> dict[str | None, list[int | None]]:
        """Per key, the payload numbers in the order they were first answered 204."""
        out: dict[str | None, list[int | None]] = defaultdict(list)
        done: set[str] = set()
        for s in self.delivered() if delivered_only else self.seen:
            if s.event_id in done:
                continue
            done.add(s.event_id)
            out[s.key].append(s.n)
        return dict(out)
