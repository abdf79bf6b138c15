"""The dispatch loop: claim due work, attempt it, hand outcomes to the recorder.

The loop wakes on a NOTIFY (doorbell), on the poll interval, when attempt slots
free up, when an attempt of a webhook held back by its limit ends (refill), when a
failing webhook's next probe is due, or on stop. Each pass fans out the outbox
(creating deliveries, the first ones already leased to us) and claims due
deliveries, until nothing is due or every slot is busy. How many attempts each
webhook may start is `admission.py`'s answer; heartbeats and shared limits are
`coordination.py`'s. No transaction is open across an HTTP call.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.db import Pool
from dispatcher.delivery import AttemptResult, Sender, Target
from dispatcher.metrics import Metrics
from dispatcher.outcomes import Outcome
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import OutcomeRow, Recorder
from dispatcher.settings import Settings
from dispatcher.transitions import NOT_ACTIVE, after_attempt, not_active

log = structlog.get_logger("dispatcher.dispatch")

# Bounds of the fan-out factor: a pass takes at most 4x its free slots in events (events
# that match nothing are cheap) and at least one event.
MIN_FACTOR, MAX_FACTOR = 0.25, 1000.0
CLAIM_DUE_EVERY = 0.05  # seconds: at least this often a pass scans due work first
# Events per fan-out while the outbox holds a backlog for webhooks at their limit: what it
# creates waits as pending rows anyway, and fresh events behind it (to other webhooks)
# should not wait for that backlog to pass through in slot-sized batches.
HELD_BACK_EVENTS = 1000


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        sender: Sender,
        recorder: Recorder,
        metrics: Metrics,
        limits: RateLimits | None = None,
    ) -> None:
        self._s = settings
        self._pool = pool
        self._sender = sender
        self._recorder = recorder
        self._metrics = metrics
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        # an attempt of a webhook held back by its limit ended: claim for it again now
        self._hook_room = asyncio.Event()
        self._inflight: dict[UUID, tuple[asyncio.Task[None], Claimed]] = {}
        self._stopping = False
        self._stop_ev = asyncio.Event()
        self.progress = 0  # bumped on every loop pass; the watchdog reads it
        self._min_batch = max(1, settings.concurrency // 8)
        # Client-side bound on one claim pass: a half-open connection never answers.
        self._deadline = (
            settings.statement_timeout_ms / 1000 + 10 if settings.statement_timeout_ms else 60
        )
        self.admission = Admission(settings.per_webhook_concurrency, limits or RateLimits())
        # The last fan-out filled its batch (the outbox may hold more). Otherwise the
        # outbox is looked at again only on a doorbell or a poll, not on every refill.
        self._outbox_busy = True
        self._outbox_held = False  # ...and most of what it created could not start
        # Deliveries per event in recent fan-outs: a pass takes about free-slots / this many
        # events, so that what it creates can start at once instead of waiting as pending rows.
        self.fanout_factor = 1.0
        self._due_scanned = 0.0  # monotonic time of the last claim_due
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
        outbox = True  # look at the outbox in this pass
        while not self._stopping:
            self.progress += 1
            free = self._s.concurrency - len(self._inflight)
            if free < min(self._min_batch, self._s.concurrency):
                self._slot_freed.clear()
                await self._wait([self._slot_freed], self._s.poll_interval)
                continue
            outbox = outbox or self._wake.is_set() or self._outbox_busy
            self._wake.clear()
            self._slot_freed.clear()
            self._hook_room.clear()
            try:
                async with asyncio.timeout(self._deadline):
                    more = await self._claim_and_start(free, outbox)
                outbox = False
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
                outbox = True
                continue
            if more:
                continue
            # Idle until a doorbell, or an attempt of a webhook held back by its limit ends
            # (its rows are claimed at once: no wait for the poll), or a failing webhook's
            # next probe is due, or the poll interval: no spinning while nothing can start.
            timeout = self._s.poll_interval
            probe_in = self.admission.next_probe_in()
            if probe_in is not None:
                timeout = min(timeout, probe_in + 0.001)
            if not await self._wait([self._wake, self._hook_room], timeout):
                outbox = True  # a poll: the doorbell may have been missed

    async def _wait(self, events: list[asyncio.Event], timeout: float) -> bool:
        """Until one of `events` (True), stop, or `timeout` seconds (False)."""
        if self._stopping:
            return True
        waiters = [asyncio.ensure_future(e.wait()) for e in [*events, self._stop_ev]]
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
        return bool(done)

    async def _claim_and_start(self, free: int, outbox: bool = True) -> bool:
        """One pass; True when there may be more work right now.

        Usually the fan-out first: the deliveries it creates start before the second
        query runs, so a fresh event costs one round trip between NOTIFY and the POST.
        The scan for other due work (retries, rows held back by a per-webhook limit,
        rows the host inserted) follows when the fan-out left slots free; while the
        outbox keeps every pass full, a pass at least every CLAIM_DUE_EVERY seconds
        scans due work first, so a backlog of new events never starves retries.
        Without `outbox` (a refill: no doorbell since the outbox was last found
        drained) only due work is claimed.
        """
        batch = min(free, self._s.batch_size)
        params: dict[str, Any] = {"lease": self._s.lease_seconds}
        if not outbox:
            async with self._pool.connection() as conn:
                due = await self._claim_due(conn, params, batch)
            return len(due) >= batch
        async with self._pool.connection() as conn:
            due_first = time.monotonic() - self._due_scanned >= CLAIM_DUE_EVERY
            due = await self._claim_due(conn, params, batch) if due_first else []
            room_for_new = batch - len(due)
            events_wanted = max(1, round(room_for_new / self.fanout_factor))
            if self._outbox_held:
                events_wanted = max(events_wanted, HELD_BACK_EVENTS)
            events, claimed = 0, list[Claimed]()
            if room_for_new > 0:
                events, claimed = await self._fan_out(conn, params, events_wanted, room_for_new)
            left = room_for_new - len(claimed)
            self._outbox_busy = room_for_new > 0 and events >= events_wanted
            self._outbox_held = self._outbox_busy and len(claimed) * 2 < room_for_new
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
        cur = await conn.execute(
            query("fan_out"),
            {**params, **self.admission.claim_params(), "batch": events_wanted, "claim": claim},
        )
        rows = await cur.fetchall()
        events = int(rows[-1]["events_claimed"]) if rows else 0
        if events:
            created = int(rows[-1]["deliveries_created"])
            per_event = min(max(created / events, MIN_FACTOR), MAX_FACTOR)
            self.fanout_factor = 0.7 * self.fanout_factor + 0.3 * per_event
            self._metrics.events_fanned_out.inc(events)
        claimed = self._start_rows([r for r in rows if r["id"] is not None])
        return events, claimed

    async def _claim_due(self, conn: Any, params: dict[str, Any], limit: int) -> list[Claimed]:
        """Lease and start up to `limit` due deliveries, in the order they became due."""
        self._due_scanned = time.monotonic()
        # Webhooks with no room left in this process are not even scanned (full_ids).
        cur = await conn.execute(
            query("claim_due"),
            {**self.admission.claim_params(), **params, "limit": limit, "scan": limit * 4},
        )
        return self._start_rows(await cur.fetchall())

    def _start_rows(self, rows: list[Any]) -> list[Claimed]:
        """Start an attempt for each leased row; returns what was started."""
        now = datetime.now(UTC)
        started = [Claimed.from_row(r, now) for r in rows]
        for d in started:
            self._start(d)
        # Webhooks now at their limit may have more due work: claim again when one of
        # their attempts ends. Decided right after starting (before any await lets one end).
        self.admission.note_held(d.webhook_id for d in started)
        return started

    def _start(self, d: Claimed) -> None:
        task = asyncio.create_task(self._deliver(d))
        self._inflight[d.id] = (task, d)
        self.admission.started(d.webhook_id, active=d.active, failing=d.failing)
        task.add_done_callback(functools.partial(self._done, d))

    def _done(self, d: Claimed, _: asyncio.Task[None]) -> None:
        self._inflight.pop(d.id, None)
        self._slot_freed.set()
        if self.admission.ended(d.webhook_id):
            self._hook_room.set()

    async def _deliver(self, d: Claimed) -> None:
        if not d.active:
            self._record(d, None, not_active(d.attempt), NOT_ACTIVE)
            return
        result = await self._sender.attempt(
            Target(str(d.id), d.event_type, d.url, d.request_body, d.secrets, d.headers)
        )
        t = after_attempt(
            outcome=result.outcome,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            policy=d.policy,
            retry_after=result.retry_after,
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
        self.admission.outcome(d.webhook_id, d.policy, success=row.success, counts=row.counts)
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
