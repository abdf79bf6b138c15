"""The LISTEN connection: a doorbell for the dispatch loop, never the record.

Dedicated (not from the pool), autocommit, health-checked by a round trip
whenever it has been quiet, and re-established with capped, jittered backoff.
Every (re)connect rings the bell, because anything published while we were
away is waiting in the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import psycopg
import structlog

from dispatcher.db import connect_kwargs
from dispatcher.metrics import Metrics
from dispatcher.retrying import LISTENER, Backoff, Policy
from dispatcher.settings import Settings

log = structlog.get_logger("dispatcher.listener")

CHANNEL = "dispatcher_v1"


class Listener:
    def __init__(
        self,
        settings: Settings,
        on_wake: Callable[[], None],
        metrics: Metrics,
        *,
        check_interval: float = 5.0,
        check_timeout: float = 5.0,
        backoff: Policy = LISTENER,
    ) -> None:
        self._s = settings
        self._on_wake = on_wake
        self._metrics = metrics
        self._check_interval = check_interval
        self._check_timeout = check_timeout
        self._backoff = backoff
        self.connected = asyncio.Event()
        self.notifications = 0
        self.progress = 0

    async def run(self) -> None:
        """Listen for ever, reconnecting as needed; returns only when cancelled."""
        backoff = Backoff(self._backoff)
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._s.dsn(), **{**connect_kwargs(self._s), "row_factory": None}
                )
            except psycopg.OperationalError as exc:
                delay = backoff.failed(
                    log,
                    "listener_connect_failed",
                    error=str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                )
                await asyncio.sleep(delay)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                backoff.recovered(log, "listener_recovered")
                if not first:
                    self._metrics.listener_reconnects.inc()
                log.info("listener_connected", channel=CHANNEL, reconnect=not first)
                first = False
                self.connected.set()
                self._metrics.listener_connected.set(1)
                self._on_wake()  # catch up on whatever happened while away
                await self._listen(conn)
            except (psycopg.OperationalError, TimeoutError) as exc:
                log.warning(
                    "listener_lost",
                    error=type(exc).__name__,
                    detail=str(exc).splitlines()[0][:200] if str(exc) else None,
                )
            finally:
                self.connected.clear()
                self._metrics.listener_connected.set(0)
                try:
                    await asyncio.wait_for(conn.close(), 2)
                except Exception:
                    pass

    async def _listen(self, conn: psycopg.AsyncConnection[object]) -> None:
        while True:
            self.progress += 1
            got = 0
            async for _ in conn.notifies(timeout=self._check_interval, stop_after=256):
                got += 1
                self.notifications += 1
                self._on_wake()
            if got == 0:
                # Quiet for a while: prove the connection still answers (half-open links).
                await asyncio.wait_for(conn.execute("SELECT 1"), self._check_timeout)
