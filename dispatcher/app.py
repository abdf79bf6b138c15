"""The supervisor: owns every long-lived task in one TaskGroup and shuts down cleanly.

Start: open and check the pool, refuse a schema that is behind, LISTEN, then
tell systemd READY. Stop (SIGTERM/SIGINT): stop claiming, give in-flight
attempts the grace period, record their outcomes, release what was not
finished, exit 0. A second signal exits at once (leases cover the rest). A task
that dies unexpectedly takes the process down with a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
from typing import Any

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher import __version__, migrations, webhook_health
from dispatcher.coordination import Coordinator
from dispatcher.db import Pool, open_pool
from dispatcher.dispatch import Dispatcher
from dispatcher.errors import ExitCode
from dispatcher.intake import check_intake
from dispatcher.integrations import stats as integration_stats
from dispatcher.integrations.worker import IntegrationsWorker
from dispatcher.listener import Listener
from dispatcher.metrics import Metrics
from dispatcher.preflight import check_privileges
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import Recorder
from dispatcher.retention import Retention
from dispatcher.sdnotify import Notifier
from dispatcher.sender import Sender
from dispatcher.settings import Settings, split_address
from dispatcher.status_server import StatusServer
from dispatcher.tracing import Tracing
from dispatcher.tracing import from_env as tracing_from_env

log = structlog.get_logger("dispatcher.app")


class App:
    def __init__(
        self,
        settings: Settings,
        *,
        notifier: Notifier | None = None,
        install_signals: bool = True,
        tracing: Tracing | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing  # None: from the OTEL_* variables when the daemon starts
        self._install_signal_handlers = install_signals
        self.metrics = Metrics(
            collectors=[integration_stats.Counters()],
            integration_events_not_published=integration_stats.events_not_published,
        )
        self.notifier = notifier or Notifier()
        self.stop_requested = asyncio.Event()
        self.ready = asyncio.Event()
        self.pool: Pool | None = None
        self.dispatcher: Dispatcher | None = None
        self.coordinator: Coordinator | None = None
        self.listener: Listener | None = None
        self.recorder: Recorder | None = None
        self.health: StatusServer | None = None
        self._signals = 0
        self._db_ok = False
        self._lifecycle_refused: dict[str, int] = {}  # by event type, last gauges read

    # -- public -------------------------------------------------------------------
    def request_stop(self) -> None:
        self.stop_requested.set()

    async def run(self) -> ExitCode:
        s = self.settings
        log.info("starting", version=__version__, settings=s.summary())
        if self.tracing is None:
            self.tracing = tracing_from_env()
        self.pool = await open_pool(s)
        try:
            async with self.pool.connection() as conn:
                # Privileges first: without USAGE on schema dispatcher the schema check
                # itself would fail with a raw error instead of naming the missing grant.
                await check_privileges(conn, integrations=self.settings.integrations_enabled)
                await migrations.check_current(conn)
                await check_intake(conn)
            return await self._supervise()
        finally:
            await self.pool.close()

    # -- internals ----------------------------------------------------------------
    async def _supervise(self) -> ExitCode:
        s = self.settings
        assert self.pool is not None
        sender = Sender(s)
        await sender.start()
        self.recorder = Recorder(self.pool, deadline=s.statement_timeout_ms / 1000 + 10)
        limits = RateLimits()
        self.coordinator = Coordinator(self.pool, s.instance_name, limits)
        self.dispatcher = Dispatcher(
            s, self.pool, sender, self.recorder, self.metrics, limits, self.tracing
        )
        self.listener = Listener(s, self.dispatcher.wake, self.metrics)
        if self._install_signal_handlers:
            self._install_signals()
        try:
            if s.metrics_address:
                host, port = split_address(s.metrics_address)
                self.health = StatusServer(host, port, self.metrics, self._alive, self._ready)
                await self.health.start()
                log.info("health_listening", address=f"{host}:{self.health.port}")
            async with asyncio.TaskGroup() as tg:
                background = [
                    tg.create_task(self.listener.run(), name="listener"),
                    tg.create_task(self.recorder.run(), name="recorder"),
                    tg.create_task(self._gauges_loop(), name="gauges"),
                    tg.create_task(self._watchdog_loop(), name="watchdog"),
                    tg.create_task(self.coordinator.run(), name="coordination"),
                    tg.create_task(IntegrationsWorker(s, self.pool).run(), name="integrations"),
                    tg.create_task(
                        Retention(
                            self.pool, days=s.delivery_retention_days, interval=s.retention_interval
                        ).run(),
                        name="retention",
                    ),
                ]
                dispatch = tg.create_task(self.dispatcher.run(), name="dispatch")
                await self._wait_listening()
                if not self.stop_requested.is_set():
                    self._db_ok = True
                    self.ready.set()
                    self.metrics.up.set(1)
                    self.notifier.ready()
                    # Everything allocated so far lives as long as the process: keep the
                    # cyclic collector from rescanning it, and collect young objects less often.
                    gc.freeze()
                    gc.set_threshold(20_000, 50, 100)
                    log.info("ready", concurrency=s.concurrency)
                await self._wait_stop_or_crash(dispatch)
                self.ready.clear()
                self.metrics.up.set(0)
                self.notifier.stopping()
                log.info(
                    "stopping", inflight=self.dispatcher.inflight, grace_seconds=s.shutdown_grace
                )
                await self.dispatcher.stop(s.shutdown_grace)
                await dispatch
                if not await self.recorder.drain(timeout=max(5.0, s.shutdown_grace)):
                    log.warning(
                        "outcomes_unwritten",
                        outcomes=self.recorder.backlog,
                        note="their deliveries are attempted again after the lease",
                    )
                for task in background:
                    task.cancel()
        finally:
            await sender.close()
            if self.tracing is not None:
                self.tracing.shutdown()  # flushes the spans of the last attempts
            if self.health is not None:
                await self.health.close()
        log.info("stopped", recorded=self.recorder.written)
        return ExitCode.OK

    async def _wait_listening(self) -> None:
        assert self.listener is not None
        stop = asyncio.ensure_future(self.stop_requested.wait())
        conn = asyncio.ensure_future(self.listener.connected.wait())
        await asyncio.wait([stop, conn], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        conn.cancel()

    async def _wait_stop_or_crash(self, dispatch: asyncio.Task[None]) -> None:
        stop = asyncio.ensure_future(self.stop_requested.wait())
        await asyncio.wait([stop, dispatch], return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if dispatch.done() and not self.stop_requested.is_set():
            dispatch.result()  # re-raise: the group takes the process down
            raise RuntimeError("dispatch loop ended without a stop request")

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("signal_received", signal=sig.name, action="graceful stop")
            self.request_stop()
        else:
            log.warning("signal_received", signal=sig.name, action="exit now")
            os._exit(ExitCode.INTERRUPTED)

    def _alive(self) -> tuple[bool, str]:
        return True, "alive"

    def _ready(self) -> tuple[bool, str]:
        if not self.ready.is_set():
            return False, "not ready: starting or stopping"
        if self.listener is None or not self.listener.connected.is_set():
            return False, "not ready: LISTEN connection is down (database unreachable?)"
        if not self._db_ok:
            return False, "not ready: database queries are failing"
        unreadable = self.dispatcher.unreadable if self.dispatcher is not None else 0
        if unreadable:
            return False, (
                f"degraded: {unreadable} event(s) in the outbox cannot be read by this "
                "database role (row-level security on public.events?); they are kept"
            )
        return True, "ready"

    async def _gauges_loop(self, every: float = 10.0) -> None:
        assert self.pool is not None
        while True:
            try:
                async with self.pool.connection(timeout=5) as conn:
                    cur = await conn.execute(query("gauges_queue"))
                    row = await cur.fetchone()
                self._db_ok = True
                if row:
                    m = self.metrics
                    m.deliveries_due.set(row["due"])
                    m.oldest_due_seconds.set(float(row["oldest_due_seconds"] or 0))
                    m.deliveries.labels(status="pending").set(row["pending"])
                    m.deliveries.labels(status="retrying").set(row["retrying"])
                    m.deliveries.labels(status="dlq").set(row["dlq"])
                    m.dlq_size.set(row["dlq"])
                    m.outbox_backlog.set(row["outbox"])
                    m.webhooks_disabled.set(row["webhooks_disabled"])
                    m.held.set(row["held"])
                    await self._more_gauges(conn)
                async with self.pool.connection(timeout=5) as conn:
                    cur = await conn.execute(query("intake_health"))
                    stuck = await cur.fetchone()
                if stuck and self.dispatcher is not None:
                    self.metrics.outbox_unreadable.set(stuck["unreadable"])
                    self.metrics.quarantined.set(stuck["quarantined"])
                    self.dispatcher.unreadable = int(stuck["unreadable"])
                await self._release_orphan_holds()
            except (psycopg.Error, PoolTimeout) as exc:
                self._db_ok = False
                log.warning("gauges_failed", error=type(exc).__name__)
            await self._webhook_gauges()
            if self.dispatcher is not None:
                self.metrics.inflight.set(self.dispatcher.inflight)
            for reason, lost in (self.recorder.lost if self.recorder else {}).items():
                self.metrics.outcomes_lost.labels(reason=reason).set(lost)
            await asyncio.sleep(every)

    async def _more_gauges(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Outbox age and, when integrations run, their health (dispatcher/sql/gauges.sql)."""
        m = self.metrics
        cur = await conn.execute(query("gauges_outbox_age"))
        row = await cur.fetchone()
        m.outbox_oldest_seconds.set(float(row["oldest_seconds"]) if row else 0.0)
        await self._lifecycle_gauges(conn)
        if not self.settings.integrations_enabled:
            return
        cur = await conn.execute(query("gauges_integrations"))
        row = await cur.fetchone()
        if row is None:
            return
        for health in ("healthy", "degraded", "unhealthy", "unknown"):
            m.integrations.labels(health_status=health).set(row[health])
        m.integrations_in_error.set(row["in_error"])
        m.oauth_tokens_failing.set(row["tokens_failing"])
        m.oauth_tokens_expired.set(row["tokens_expired"])

    async def _webhook_gauges(self) -> None:
        """Per-webhook health of the top N by backlog (dispatcher/webhook_health.py). Its own
        statement: a failure here (statement_timeout) leaves the other gauges fresh."""
        assert self.pool is not None
        try:
            async with self.pool.connection(timeout=5) as conn:
                await webhook_health.refresh(
                    conn, self.metrics.webhooks, self.settings.metrics_webhooks_top
                )
        except (psycopg.Error, PoolTimeout) as exc:
            log.warning("webhook_gauges_failed", error=type(exc).__name__)

    async def _lifecycle_gauges(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Lifecycle events refused or rate-limited (0026); a warning when refusals grew."""
        cur = await conn.execute(query("gauges_lifecycle"))
        for row in await cur.fetchall():
            event_type = str(row["event_type"])
            refused = int(row["not_published"])
            self.metrics.lifecycle_not_published.labels(event_type=event_type).set(refused)
            self.metrics.lifecycle_suppressed.labels(event_type=event_type).set(row["suppressed"])
            seen = self._lifecycle_refused.get(event_type)
            if seen is not None and refused > seen:
                log.warning(
                    "lifecycle_event_not_published",
                    event_type=event_type,
                    refused=refused - seen,
                    total=refused,
                    note="the host's publish_event refused it; see the PostgreSQL log",
                )
            self._lifecycle_refused[event_type] = refused

    async def _release_orphan_holds(self) -> None:
        """Queue events held for webhooks that are active again (a fan-out raced the enable)."""
        assert self.pool is not None
        async with self.pool.connection(timeout=5) as conn:
            cur = await conn.execute(query("delivery_release_orphan_holds"))
            rows = await cur.fetchall()
        for row in rows:
            self.metrics.holds_released.inc(row["released"])
            log.info(
                "hold_released",
                webhook_id=str(row["webhook_id"]),
                released=row["released"],
                expired=row["expired"],
                via="sweep",
            )

    async def _watchdog_loop(self) -> None:
        interval = self.notifier.watchdog_interval
        if interval is None:
            return
        last = -1
        while True:
            progress = self.dispatcher.progress if self.dispatcher else 0
            if progress != last:
                self.notifier.watchdog()
                last = progress
            await asyncio.sleep(min(interval, 10.0))
