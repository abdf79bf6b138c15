"""The fault test's receiver: one aiohttp server whose answer per path flaps at run time, and
which records for each request the (event, webhook) pair, the ids sent and which process sent
it (the owner of the client socket, found in /proc)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .net import bound_socket, set_linger_zero

# --- which process sent a request -----------------------------------------------------------


def socket_owner(peer_port: int, server_port: int, pids: list[int]) -> int | None:
    """The pid among ``pids`` owning the loopback client socket 127.0.0.1:peer_port that is
    connected to our server_port (from /proc/net/tcp and /proc/<pid>/fd)."""
    inode = None
    want_local, want_remote = f"{peer_port:04X}", f"{server_port:04X}"
    with contextlib.suppress(OSError), open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            parts = line.split()
            if (
                parts[1].endswith(":" + want_local)
                and parts[2].endswith(":" + want_remote)
                and parts[1].startswith("0100007F")
            ):
                inode = parts[9]
                break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                        return pid
    return None


def _number(header: str | None) -> int | None:
    return int(header) if header is not None and header.isdigit() else None


# --- receiver -------------------------------------------------------------------------------


@dataclass
class Receipt:
    path: str
    event_id: str
    webhook_id: str  # the webhook-id header
    delivery_id: str  # X-InTime-Delivery
    at: float
    sender: int | None
    status: int | None = None  # None: hung, reset or cut off
    event_type: str = ""  # X-InTime-Event
    sequence: int | None = None  # X-InTime-Sequence (the webhook's number of the message)


class FlappingReceiver:
    """One aiohttp server; per path a mode: ok (2xx at once), slow (2xx after 0.2-0.5 s),
    error (500), hang (no answer for longer than the daemon's timeout, then 500) or reset
    (TCP RST). A 2xx is only ever sent well within the daemon's timeout, so a 2xx receipt is
    an answer the daemon got."""

    def __init__(self, pids: Any, hang_for: float) -> None:
        self.receipts: list[Receipt] = []
        self.modes: dict[str, str] = defaultdict(lambda: "ok")
        self._pids = pids  # callable -> list of daemon pids alive or recently alive
        self.hang_for = hang_for  # longer than the daemon's HTTP timeout
        self._owners: dict[tuple[int, int], int | None] = {}
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def start(self) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        server = web.Server(self._handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=512).start()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _sender(self, request: web.BaseRequest) -> int | None:
        transport = request.transport
        if transport is None:
            return None
        peer = transport.get_extra_info("peername")
        key = (id(transport), peer[1] if peer else 0)
        owner = self._owners.get(key)
        if owner is None:  # looked up again while unknown: /proc can lag a new connection
            owner = socket_owner(key[1], self.port, self._pids())
            if owner is None:
                await asyncio.sleep(0.02)
                owner = socket_owner(key[1], self.port, self._pids())
            self._owners[key] = owner
        return owner

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        try:
            event_id = str(json.loads(body).get("id"))
        except ValueError:
            event_id = "?"
        receipt = Receipt(
            request.path,
            event_id,
            request.headers.get("webhook-id", "?"),
            request.headers.get("X-InTime-Delivery", "?"),
            time.monotonic(),
            await self._sender(request),
            event_type=request.headers.get("X-InTime-Event", ""),
            sequence=_number(request.headers.get("X-InTime-Sequence")),
        )
        self.receipts.append(receipt)
        mode = self.modes[request.path]
        if mode == "reset":
            transport = request.transport
            if transport is not None:
                set_linger_zero(transport.get_extra_info("socket"))
                transport.abort()
            raise asyncio.CancelledError
        if mode == "hang":
            await asyncio.sleep(self.hang_for)
            receipt.status = 500
            return web.Response(status=500)
        if mode == "error":
            receipt.status = 500
            return web.Response(status=500)
        if mode == "slow":
            await asyncio.sleep(0.2 + random.random() * 0.3)
        receipt.status = 204
        return web.Response(status=204)
