"""HTTP endpoints for operators: /healthz, /readyz and /metrics (Prometheus)."""

from __future__ import annotations

import errno
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from dispatcher.errors import AddressUnavailable
from dispatcher.metrics import Metrics

ADDRESS_HINT = {
    errno.EADDRINUSE: "already in use (another replica on this host? give each replica its own "
    "port, e.g. the systemd template unit dispatcher@.service; docs/operations.md)",
    errno.EADDRNOTAVAIL: "not an address of this host",
    errno.EACCES: "permission denied (ports below 1024 need privileges)",
}


class StatusServer:
    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        alive: Callable[[], tuple[bool, str]],
        ready: Callable[[], tuple[bool, str]],
    ) -> None:
        self._host, self._port = host, port
        self._metrics = metrics
        self._alive = alive
        self._ready = ready
        self._runner: web.AppRunner | None = None
        self.port = port

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics_view)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise self._unavailable(exc) from None
        server = site._server
        if server is not None and self._port == 0:
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]

    def _unavailable(self, exc: OSError) -> AddressUnavailable:
        reason = ADDRESS_HINT.get(exc.errno or 0) or exc.strerror or type(exc).__name__
        return AddressUnavailable(
            f"cannot listen on DISPATCHER_METRICS_ADDRESS {self._host}:{self._port}: {reason}"
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @staticmethod
    def _answer(result: tuple[bool, str]) -> web.Response:
        ok, text = result
        return web.Response(status=200 if ok else 503, text=text + "\n")

    async def _healthz(self, _: web.Request) -> web.Response:
        return self._answer(self._alive())

    async def _readyz(self, _: web.Request) -> web.Response:
        return self._answer(self._ready())

    async def _metrics_view(self, _: web.Request) -> web.Response:
        return web.Response(
            body=self._metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )
