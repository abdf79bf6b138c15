"""The dispatch loop: claim due work, attempt it, hand outcomes to the recorder.

The loop wakes on a NOTIFY (doorbell), on the poll interval, when attempt slots
free up, or on stop. Each pass first fans out the outbox (creating deliveries,
the first ones already leased to us) and then claims due deliveries, until
nothing is due or every slot is busy. No transaction is open across an HTTP call.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.backoff import RetryPolicy
from dispatcher.claims import Claimed
from dispatcher.db import Pool
from dispatcher.delivery import AttemptResult, Sender, Target
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Outcome
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import OutcomeRow, Recorder
from dispatcher.settings import Settings
from dispatcher.tracing import Tracing
from dispatcher.transitions import NOT_ACTIVE, after_attempt, not_active

log = structlog.get_logger("dispatcher.dispatch")

FAILING_AFTER = 3  # consecutive failures after which a webhook gets one probe at a time
# Bounds of the fan-out factor: a pass takes at most 4x its free slots in events (events
# that match nothing are cheap) and at least one event.
MIN_FACTOR, MAX_FACTOR = 0.25, 1000.0
CLAIM_DUE_EVERY = 0.05  # seconds: at least this often a pass scans due work first


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        sender: Sender,
        recorder: Recorder,
        metrics: Metrics,
        tracing: Tracing | None = None,
    ) -> None:
        self._s = settings
        self._tracing = tracing or Tracing()
        self._pool = pool
        self._sender = sender
        self._recorder = recorder
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._hook_room = asyncio.Event()  # a webhook at its limit has room for a batch again
        self._inflight: dict[UUID, tuple[asyncio.Task[None], Claimed]] = {}
        self._stopping = False
        self._stop_ev = asyncio.Event()
        self.progress = 0  # bumped on every loop pass; the watchdog reads it
        self._min_batch = max(1, settings.concurrency // 8)
        self._refill_at = max(1, settings.per_webhook_concurrency // 4)
        # Client-side bound on one claim pass: a half-open connection never answers.
        self._deadline = (
            settings.statement_timeout_ms / 1000 + 10 if settings.statement_timeout_ms else 60
        )
        self._per_hook: collections.Counter[UUID] = collections.Counter()
        self._failing: set[UUID] = set()  # failing webhooks with a probe in flight
        # consecutive failures seen by this process, and when the next probe may go
        self._streak: dict[UUID, tuple[int, float]] = {}
        self._held_back = False  # the last claim skipped webhooks that had no room
        # Deliveries per event in recent fan-outs: a pass takes about free-slots / this many
        # events, so that what it creates can start at once instead of waiting as pending rows.
        self.fanout_factor = 1.0
        self._due_scanned = 0.0  # monotonic time of the last claim_due
        self.limits = RateLimits()
        self.replica_id = uuid.uuid4()
        self.replicas = 1
        # per attempt: a line only when it is emitted, a metric child looked up once
        self._log_attempts = settings.log_level in ("debug", "info")
        self._attempts_counter: dict[str, Any] = {}

    # -- doorbell ---------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Claim and start attempts until stop() is called."""
        backoff = 0.2
        while not self._stopping:
            self.progress += 1
            free = self._s.concurrency - len(self._inflight)
            if free < min(self._min_batch, self._s.concurrency):
                self._slot_freed.clear()
                await self._wait([self._slot_freed], self._s.poll_interval)
                continue
            self._wake.clear()
            self._slot_freed.clear()
            self._hook_room.clear()
            try:
                async with asyncio.timeout(self._deadline):
                    more = await self._claim_and_start(free)
                backoff = 0.2
            except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
                # Connection trouble, or a row changed under the statement (a webhook
                # hard-deleted mid-fan-out violates the delivery's foreign key): nothing
                # was committed; log and try again after a pause. Never take the loop down.
                log.warning(
                    "claim_failed",
                    error=type(exc).__name__,
                    detail=str(exc)[:200],
                    retry_in=round(backoff, 2),
                )
                self._metrics.db_errors.inc()
                await self._wait([], backoff * (0.8 + random.random() * 0.4))
                backoff = min(backoff * 2, 5.0)
                continue
            if more:
                continue
            # Work held back by a per-webhook limit resumes as soon as one of its attempts ends.
            events = [self._wake, self._hook_room] if self._held_back else [self._wake]
            await self._wait(events, self._s.poll_interval)

    async def _wait(self, events: list[asyncio.Event], timeout: float) -> None:
        if self._stopping:
            return
        waiters = [asyncio.ensure_future(e.wait()) for e in [*events, self._stop_ev]]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()

    def _room(self) -> dict[UUID, int]:
        """How many more attempts each webhook we know about may start in this process.

        Bounded by the per-webhook cap, by rate tokens, and for a webhook failing
        here and now (before the database has the outcomes) by one probe at a time.
        Webhooks not listed have the full cap.
        """
        cap = self._s.per_webhook_concurrency
        room = {k: max(cap - n, 0) for k, n in self._per_hook.items() if n > 0}
        for hook in self.limits.limited():
            room[hook] = min(room.get(hook, cap), self.limits.room(hook) or 0)
        now = time.monotonic()
        for hook, (streak, quiet_until) in self._streak.items():
            if streak >= FAILING_AFTER:
                probe = 0 if self._per_hook[hook] or now < quiet_until else 1
                room[hook] = min(room.get(hook, cap), probe)
        for hook in self._failing:
            room[hook] = 0
        return room

    async def _claim_and_start(self, free: int) -> bool:
        """One pass; True when there may be more work right now.

        Usually the fan-out first: the deliveries it creates start before the second
        query runs, so a fresh event costs one round trip between NOTIFY and the POST.
        The scan for other due work (retries, rows held back by a per-webhook limit,
        rows the host inserted) follows when the fan-out left slots free; while the
        outbox keeps every pass full, a pass at least every CLAIM_DUE_EVERY seconds
        scans due work first, so a backlog of new events never starves retries.
        """
        batch = min(free, self._s.batch_size)
        params: dict[str, Any] = {
            "lease": self._s.lease_seconds,
            "hook_cap": self._s.per_webhook_concurrency,
            "failing_after": FAILING_AFTER,
        }
        self._held_back = False
        async with self._pool.connection() as conn:
            due_first = time.monotonic() - self._due_scanned >= CLAIM_DUE_EVERY
            due = await self._claim_due(conn, params, batch) if due_first else []
            room_for_new = batch - len(due)
            events_wanted = max(1, round(room_for_new / self.fanout_factor))
            events, claimed = 0, list[Claimed]()
            if room_for_new > 0:
                events, claimed = await self._fan_out(conn, params, events_wanted, room_for_new)
            left = room_for_new - len(claimed)
            outbox_busy = events >= events_wanted and left * 4 < room_for_new
            if not due_first and left > 0 and not outbox_busy:
                due = await self._claim_due(conn, params, left)
        due_full = bool(due) and len(due) >= (batch if due_first else left)
        return events >= events_wanted or due_full or len(claimed) >= room_for_new > 0

    async def _fan_out(
        self, conn: Any, params: dict[str, Any], events_wanted: int, claim: int
    ) -> tuple[int, list[Claimed]]:
        """Take up to `events_wanted` events from the outbox; start the up to `claim`
        deliveries created leased to us. Returns (events taken, deliveries started)."""
        room = self._room()
        cur = await conn.execute(
            query("fan_out"),
            {**params, **_room_params(room), "batch": events_wanted, "claim": claim},
        )
        rows = await cur.fetchall()
        events = int(rows[-1]["events_claimed"]) if rows else 0
        if events:
            created = int(rows[-1]["deliveries_created"])
            per_event = min(max(created / events, MIN_FACTOR), MAX_FACTOR)
            self.fanout_factor = 0.7 * self.fanout_factor + 0.3 * per_event
            self._metrics.events_fanned_out.inc(events)
        claimed = self._start_rows([r for r in rows if r["id"] is not None])
        # A webhook at its limit may have more due work: look again when one of its
        # attempts ends. Decided right after starting (before any await lets one end).
        self._held_back = self._held_back or any(n <= 0 for n in self._room().values())
        return events, claimed

    async def _claim_due(self, conn: Any, params: dict[str, Any], limit: int) -> list[Claimed]:
        """Lease and start up to `limit` due deliveries, in the order they became due."""
        self._due_scanned = time.monotonic()
        room = self._room()
        full = [k for k, n in room.items() if n <= 0]
        # Webhooks with no room left in this process are not even scanned.
        cur = await conn.execute(
            query("claim_due"),
            {**params, **_room_params(room), "full_ids": full, "limit": limit, "scan": limit * 4},
        )
        due = self._start_rows(await cur.fetchall())
        self._held_back = (
            self._held_back or bool(full) or any(n <= 0 for n in self._room().values())
        )
        return due

    def _start_rows(self, rows: list[Any]) -> list[Claimed]:
        """Start an attempt for each leased row; returns what was started."""
        now = datetime.now(UTC)
        started = [Claimed.from_row(r, now) for r in rows]
        for d in started:
            self._start(d)
        return started

    def _start(self, d: Claimed) -> None:
        task = asyncio.create_task(self._deliver(d))
        self._inflight[d.id] = (task, d)
        self._per_hook[d.webhook_id] += 1
        if d.active:
            self.limits.take(d.webhook_id)
        if d.failing:
            self._failing.add(d.webhook_id)
        task.add_done_callback(functools.partial(self._done, d))

    def _done(self, d: Claimed, _: asyncio.Task[None]) -> None:
        self._inflight.pop(d.id, None)
        left = self._per_hook[d.webhook_id] - 1
        if left <= 0:
            del self._per_hook[d.webhook_id]
            self._failing.discard(d.webhook_id)
        else:
            self._per_hook[d.webhook_id] = left
        self._slot_freed.set()
        # Claim again for a capped webhook once a quarter of its cap is free (not per attempt).
        if left <= self._s.per_webhook_concurrency - self._refill_at:
            self._hook_room.set()

    async def _deliver(self, d: Claimed) -> None:
        if not d.active:
            self._record(d, None, not_active(d.attempt), NOT_ACTIVE)
            return
        span = None
        if self._tracing.enabled:
            span = self._tracing.start(
                delivery_id=str(d.id),
                webhook_id=str(d.webhook_id),
                event_id=str(d.event_id) if d.event_id else None,
                event_type=d.event_type,
                attempt=d.attempt,
                max_attempts=d.max_attempts,
                url=d.url,
                traceparent=d.traceparent,
            )
        traceparent = span.traceparent if span is not None else d.traceparent
        try:
            result = await self._sender.attempt(
                Target(
                    str(d.id),
                    d.event_type,
                    d.url,
                    d.request_body,
                    d.secrets,
                    d.headers,
                    traceparent,
                )
            )
        except BaseException as exc:  # cancelled at shutdown, or a bug: the span still ends
            self._tracing.fail(span, exc)
            raise
        t = after_attempt(
            outcome=result.outcome,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            policy=d.policy,
            retry_after=result.retry_after,
        )
        if span is not None:
            self._tracing.end(
                span,
                outcome=result.outcome.value,
                status=t.status,
                response_status=result.response_status,
                duration_ms=result.duration_ms,
                error_code=result.error_code,
            )
        self._record(d, result, t, result.error_message)

    def _record(self, d: Claimed, r: AttemptResult | None, t: Any, error: str | None) -> None:
        row = OutcomeRow(
            id=d.id,
            webhook_id=d.webhook_id,
            org_id=d.org_id,
            claim=d.claim,
            status=t.status,
            outcome=r.outcome.value if r else "not_active",
            attempt=d.attempt,
            attempt_number=t.attempt_number,
            retry_in=t.retry_in,
            final=t.final,
            counts=t.counts_as_failure,
            success=t.success,
            gone=t.gone,
        )
        if r is not None:
            row.request_url = d.url
            row.request_headers = r.request_headers
            row.response_status = r.response_status
            row.response_headers = r.response_headers
            row.response_body = r.response_body
            row.duration_ms = r.duration_ms
            row.error_code = r.error_code
            if r.outcome is Outcome.GONE:
                error = (error or "HTTP 410") + "; the endpoint is gone: webhook disabled"
            elif r.outcome is Outcome.RETRYABLE and t.status in ("dlq", "failed"):
                error = f"{error} (attempt {d.attempt} of {d.max_attempts}, no attempts left)"
        row.error_message = error
        self._recorder.put(row)
        if row.success:
            self._streak.pop(d.webhook_id, None)
        elif row.counts:
            streak = self._streak.get(d.webhook_id, (0, 0.0))[0] + 1
            self._streak[d.webhook_id] = (streak, time.monotonic() + probe_delay(d.policy, streak))
        outcome = row.outcome
        counter = self._attempts_counter.get(outcome)
        if counter is None:
            counter = self._attempts_counter[outcome] = self._metrics.attempts.labels(outcome)
        counter.inc()
        if r is not None and r.outcome is not Outcome.REFUSED:
            self._metrics.attempt_seconds.observe(r.duration_ms / 1000)
        if not self._log_attempts:
            return
        log.info(
            "delivery_attempt",
            delivery_id=d.id,
            webhook_id=d.webhook_id,
            event_id=d.event_id,
            org_id=d.org_id,
            event_type=d.event_type,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            outcome=outcome,
            status=t.status,
            response_status=r.response_status if r else None,
            duration_ms=r.duration_ms if r else None,
            retry_in=round(t.retry_in, 3) if t.retry_in is not None else None,
            error=error,
            notes=r.notes or None if r else None,
        )

    # -- replicas and shared limits -------------------------------------------------
    async def coordinate(self, every: float = 2.0) -> None:
        """Heartbeat this replica and refresh rate limits, until cancelled."""
        params = {
            "id": self.replica_id,
            "name": self._s.instance_name,
            "alive_within": max(every * 5, 10.0),
            "forget_after": 3600,
        }
        try:
            while True:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        cur = await conn.execute(query("replica_heartbeat"), params)
                        row = await cur.fetchone()
                    if row is not None:
                        self.replicas = int(row["live"])
                        self.limits.update(row["limits"] or {}, self.replicas)
                except (psycopg.Error, PoolTimeout) as exc:
                    log.warning("heartbeat_failed", error=type(exc).__name__)
                await asyncio.sleep(every)
        finally:
            with contextlib.suppress(Exception):
                async with self._pool.connection(timeout=2) as conn:
                    await conn.execute(query("replica_leave"), {"id": self.replica_id})

    # -- shutdown -----------------------------------------------------------------
    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight attempts `grace` seconds, then cancel and release."""
        self._stopping = True
        self._stop_ev.set()
        tasks = [t for t, _ in self._inflight.values()]
        if tasks:
            log.info("draining", inflight=len(tasks), grace_seconds=grace)
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                claims = [d for t, d in list(self._inflight.values()) if t in pending]
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                await self.release(claims)

    async def release(self, claims: list[Claimed]) -> None:
        if not claims:
            return
        rows = [{"id": str(c.id), "claim": c.claim.isoformat()} for c in claims]
        try:
            async with self._pool.connection(timeout=5) as conn:
                await conn.execute(query("release_claims"), {"rows": orjson.dumps(rows).decode()})
            log.info("claims_released", deliveries=len(rows))
        except Exception as exc:  # the lease covers it
            log.warning(
                "claims_not_released",
                deliveries=len(rows),
                error=type(exc).__name__,
                note="they become due again when their lease ends",
            )


def _room_params(room: dict[UUID, int]) -> dict[str, Any]:
    """A webhook -> room mapping as the claim statements' two parallel arrays."""
    return {"room_ids": list(room), "room_left": list(room.values())}


def probe_delay(policy: RetryPolicy, streak: int) -> float:
    """Seconds between probes of a failing webhook (mirrors the claim_due query)."""
    if streak < FAILING_AFTER:
        return 0.0
    step = policy.base_delay_seconds * 2.0 ** min(streak - FAILING_AFTER, 20)
    return float(min(step, policy.max_delay_seconds))
