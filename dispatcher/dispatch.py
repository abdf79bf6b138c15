"""The dispatch loop: claim due work and start its attempts (delivery.py runs each one).

The loop wakes on a NOTIFY (doorbell), on the poll interval, when attempt slots
free up, when an attempt of a webhook held back by its limit ends (refill), when a
failing webhook's next probe is due, or on stop. Each pass fans out the outbox
(creating deliveries, the first ones already leased to us) and claims due
deliveries, until nothing is due or every slot is busy. How many attempts each
webhook may start is `admission.py`'s answer; heartbeats and shared limits are
`coordination.py`'s. No transaction is open across an HTTP call.

Claim-ahead: rows leased for a webhook already at its cap wait in admission's bounded
queue; when one of its attempts ends, the next one starts in the done callback, with no
round trip, and the loop refills the queue once it has run down to half, in one statement
for many rows. Queued rows were never sent: stop()
releases them, and so does a webhook that may no longer start them (it began failing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import psycopg
import structlog
from psycopg.rows import DictRow
from psycopg_pool import PoolTimeout

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.db import Conn, Pool
from dispatcher.delivery import Attempts
from dispatcher.intake import Intake
from dispatcher.metrics import Metrics
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import Recorder
from dispatcher.retrying import DISPATCH, Backoff
from dispatcher.sender import Sender
from dispatcher.settings import Settings
from dispatcher.tracing import Tracing

log = structlog.get_logger("dispatcher.dispatch")

# Bounds of the fan-out factor: a pass takes at most 4x its free slots in events (events
# that match nothing are cheap) and at least one event.
MIN_FACTOR, MAX_FACTOR = 0.25, 1000.0
CLAIM_DUE_EVERY = 0.05  # seconds: at least this often a pass scans due work first
# Events per fan-out while the outbox holds a backlog for webhooks at their limit: what it
# creates waits as pending rows anyway, and fresh events behind it (to other webhooks)
# should not wait for that backlog to pass through in slot-sized batches.
HELD_BACK_EVENTS = 1000
# Events a fan-out left in the outbox (a webhook row they need is held by another
# transaction) are due again this many seconds later (sql/delivery.sql, delivery_fan_out).
DEFER_SECONDS = 1.0
# While some webhook is ordered, fan-outs use the full delivery_fan_out statement; the lean
# one (no ordered-key parts, issue 12), which refuses to act while one is, is tried again
# this many seconds after it last refused.
FULL_FAN_OUT_SECONDS = 30.0


def _wake_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class _Signal(asyncio.Event):
    """An asyncio.Event that also calls `ring` with itself when set: the idle loop waits
    for any of its signals on one future (Dispatcher._wait) instead of a task per signal."""

    def __init__(self, ring: Callable[[asyncio.Event], None]) -> None:
        super().__init__()
        self._ring = ring

    def set(self) -> None:
        super().set()
        self._ring(self)


class Dispatcher:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        sender: Sender,
        recorder: Recorder,
        metrics: Metrics,
        limits: RateLimits | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._s = settings
        self._pool = pool
        self._metrics = metrics
        # What the idle loop waits on (_wait): resolved by the signals it waits for.
        self._waiter: asyncio.Future[None] | None = None
        self._waiting_for: tuple[asyncio.Event, ...] = ()
        self._wake = _Signal(self._ring)
        self._slot_freed = _Signal(self._ring)
        # an attempt of a webhook held back by its limit ended: claim for it again now
        self._hook_room = _Signal(self._ring)
        # keyed per start, not per delivery id: this process may re-claim its own row
        self._inflight: dict[int, tuple[asyncio.Task[None], Claimed]] = {}
        self._starts = 0
        self._unsent: list[Claimed] = []  # leased while stopping: released, never sent
        self._pass_done = asyncio.Event()  # no claim pass in flight
        self._pass_done.set()
        self._stopping = False
        self._stop_ev = _Signal(self._ring)
        self.progress = 0  # bumped on every loop pass; the watchdog reads it
        self._min_batch = max(1, settings.concurrency // 8)
        # Client-side bound on one claim pass: a half-open connection never answers.
        self._deadline = (
            settings.statement_timeout_ms / 1000 + 10 if settings.statement_timeout_ms else 60
        )
        self.admission: Admission[Claimed] = Admission(
            settings.per_webhook_concurrency,
            limits or RateLimits(),
            ahead=settings.claim_ahead,
            shared_depth=settings.shared_depth,
        )
        self._attempts = Attempts(
            settings,
            pool,
            sender,
            recorder,
            metrics,
            self.admission,
            tracing or Tracing(),
            release_soon=self._release_soon,
            set_aside=lambda d: self._unsent.append(d),
            stopping=lambda: self._stopping,
        )
        self._releases: set[asyncio.Task[None]] = set()  # queued rows being given back
        self.released_unsent = 0  # leased rows given back unsent while running
        # The last fan-out filled its batch (the outbox may hold more). Otherwise the
        # outbox is looked at again only on a doorbell or a poll, not on every refill.
        self._outbox_busy = True
        self._outbox_held = False  # ...and most of what it created could not start
        # Deliveries per event in recent fan-outs: a pass takes about free-slots / this many
        # events, so that what it creates can start at once instead of waiting as pending rows.
        self.fanout_factor = 1.0
        self._due_scanned = 0.0  # monotonic time of the last claim_due
        self._due_full = False  # the last pass's due scan filled its limit: more is due
        self._passes = 0  # claim passes running (a refill and a doorbell's fan-out at most)
        self._intake = Intake(settings.batch_size, metrics)
        self._retry_now = False  # a fan-out timed out: the next pass, smaller, at once
        self._deferred = False  # the last fan-out left events for a held webhook row
        self._full_fan_out_until = 0.0  # monotonic: the full fan-out until then (ordered)

    @property
    def unreadable(self) -> int:
        """Outbox events this role could not read, as last known (0: none)."""
        return self._intake.unreadable_count

    @unreadable.setter
    def unreadable(self, n: int) -> None:
        self._intake.unreadable_count = n

    # -- doorbell ---------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def starts(self) -> int:
        """Attempts started by this process so far."""
        return self._starts

    # -- loop ---------------------------------------------------------------------
    async def run(self) -> None:
        """Claim and start attempts until stop() is called."""
        backoff = Backoff(DISPATCH)
        outbox = True  # look at the outbox in this pass
        due = True  # scan due work in this pass, whatever CLAIM_DUE_EVERY says
        while not self._stopping:
            self.progress += 1
            free = self._s.concurrency - len(self._inflight)
            if free < min(self._min_batch, self._s.concurrency):
                self._slot_freed.clear()
                await self._wait([self._slot_freed], self._s.poll_interval)
                due = True  # rows may have waited for these slots
                continue
            outbox = outbox or self._wake.is_set() or self._outbox_busy
            # A refill (an attempt of a held-back webhook ended) needs the due scan; a bare
            # doorbell does not: its pass is the fan-out alone, so the next fresh event
            # does not wait behind a due scan that finds nothing (issue 12, latency tail).
            due = due or self._hook_room.is_set()
            self._wake.clear()
            self._slot_freed.clear()
            self._hook_room.clear()
            self._pass_done.clear()
            try:
                async with asyncio.timeout(self._deadline):
                    more = await self._claim_and_start(free, outbox, due)
                outbox = False
                due = self._due_full
                backoff.recovered(log, "claim_recovered")
            except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
                # Connection trouble, or a row changed under the statement (a webhook
                # hard-deleted mid-fan-out violates the delivery's foreign key): nothing
                # was committed; log and try again after a pause. Never take the loop down.
                delay = backoff.failed(
                    log, "claim_failed", error=type(exc).__name__, detail=str(exc)[:200]
                )
                self._metrics.db_errors.inc()
                await self._wait([], delay)
                outbox = due = True
                continue
            finally:
                self._pass_done.set()
            if more:
                continue
            # Idle until a doorbell, or an attempt of a webhook held back by its limit ends
            # (its rows are claimed at once: no wait for the poll), or a failing webhook's
            # next probe is due, or the poll interval: no spinning while nothing can start.
            timeout = self._s.poll_interval
            probe_in = self.admission.next_probe_in()
            if probe_in is not None:
                timeout = min(timeout, probe_in + 0.001)
            if self._deferred:  # events left for a held webhook row: back in DEFER_SECONDS
                timeout = min(timeout, DEFER_SECONDS)
            if not await self._wait([self._wake, self._hook_room], timeout):
                # a poll (the doorbell may have been missed), a probe or deferred events
                outbox = due = True

    async def _wait(self, events: list[asyncio.Event], timeout: float) -> bool:
        """Until one of `events` (True), stop, or `timeout` seconds (False).

        One future and one timer per wait, whichever signal ends it (a _Signal it waits
        for resolves `_waiter`). This runs once per idle pass, about once per event at a
        steady rate: a task per signal and asyncio.wait cost ~19 us a wait, this ~5 us
        (issue 12; docs/performance.md, "pycpu")."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._stop_ev.is_set() or any(e.is_set() for e in events):
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            waiter = self._waiter = loop.create_future()
            self._waiting_for = (*events, self._stop_ev)
            timer = loop.call_later(left, _wake_up, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
                self._waiting_for = ()

    def _ring(self, signal: asyncio.Event) -> None:
        """`signal` was set: wake the idle loop if it waits for that one (a slot freed
        while it waits for a doorbell does not wake it: once per attempt)."""
        waiter = self._waiter
        if waiter is not None and signal in self._waiting_for and not waiter.done():
            waiter.set_result(None)

    async def _claim_and_start(self, free: int, outbox: bool = True, scan: bool = True) -> bool:
        """One pass; True when there may be more work right now.

        Usually the fan-out first: the deliveries it creates start before the second
        query runs, so a fresh event costs one round trip between NOTIFY and the POST.
        The scan for other due work (retries, rows held back by a per-webhook limit,
        rows the host inserted) follows when the fan-out left slots free and the pass
        has a reason to scan (`scan`: a refill, a poll, a probe, slots freed after the
        loop was full, the last scan was full) or CLAIM_DUE_EVERY has passed; a bare
        doorbell's pass is the fan-out alone. While the outbox keeps every pass full, a
        pass at least every CLAIM_DUE_EVERY seconds scans due work first, so a backlog
        of new events never starves retries. Without `outbox` (a refill: no doorbell
        since the outbox was last found drained) only due work is claimed.
        """
        self._passes += 1
        try:
            return await self._one_pass(free, outbox, scan)
        finally:
            self._passes -= 1

    async def _one_pass(self, free: int, outbox: bool, scan: bool) -> bool:
        batch = min(free, self._s.batch_size)
        params: dict[str, Any] = {"lease": self._s.lease_seconds}
        self._due_full = False
        if not outbox:
            async with self._pool.connection() as conn:
                due, fanned = await self._claim_due_hearing_doorbell(conn, params, batch)
            # A nested pass (the doorbell's fan-out) may have found a full due scan too.
            self._due_full = len(due) >= batch or self._due_full
            return self._due_full or fanned
        async with self._pool.connection() as conn:
            # A doorbell's pass beside a due scan (nested: _passes > 1) never scans due work
            # itself: the scan it runs beside is one, and a fresh event must not wait behind
            # a second (which would also lease a capped webhook's rows twice over).
            scan_due = self._passes == 1 and (
                scan or time.monotonic() - self._due_scanned >= CLAIM_DUE_EVERY
            )
            due_first = scan_due and self._outbox_busy
            due = await self._claim_due(conn, params, batch) if due_first else []
            room_for_new = batch - len(due)
            events_wanted = max(1, round(room_for_new / self.fanout_factor))
            if self._outbox_held:
                events_wanted = max(events_wanted, HELD_BACK_EVENTS)
            events, claimed = 0, list[Claimed]()
            if room_for_new > 0:
                events, claimed = await self._fan_out(conn, params, events_wanted, room_for_new)
            left = room_for_new - len(claimed)
            if room_for_new > 0:
                # Only a fan-out that ran says whether the outbox holds more: a due scan
                # that filled the pass (rows it leased ahead count) leaves it as it was, or
                # a backlog still in the outbox would wait for the next doorbell or poll.
                self._outbox_busy = events >= events_wanted
                self._outbox_held = self._outbox_busy and len(claimed) * 2 < room_for_new
            outbox_busy = events >= events_wanted and left * 4 < room_for_new
            fanned = False
            if scan_due and not due_first and left > 0 and not outbox_busy:
                due, fanned = await self._claim_due_hearing_doorbell(conn, params, left)
        due_full = bool(due) and len(due) >= (batch if due_first else left)
        self._due_full = due_full or self._due_full
        if fanned:
            return True
        if self._retry_now:  # a narrowed fan-out: the outbox again at once, smaller
            self._retry_now = False
            self._outbox_busy = True
            return True
        return events >= events_wanted or due_full or len(claimed) >= room_for_new > 0

    async def _fan_out(
        self, conn: Conn, params: dict[str, Any], events_wanted: int, claim: int
    ) -> tuple[int, list[Claimed]]:
        """Take up to `events_wanted` events from the outbox; start the up to `claim`
        deliveries created leased to us. Returns (events taken, deliveries started).

        A pass that exceeds statement_timeout halves the next one, down to one event;
        an event that times out alone twice is quarantined (intake.py)."""
        wanted = events_wanted
        events_wanted, only = await self._intake.narrow(conn, wanted)
        if events_wanted == 0:
            return 0, []
        sent = time.monotonic()
        room = self.admission.claim_params()
        args = {**params, **room, "batch": events_wanted, "claim": claim, "only": only}
        try:
            rows: list[DictRow] = []
            if sent >= self._full_fan_out_until:
                cur = await conn.execute(query("delivery_fan_out_lean"), args)
                rows = await cur.fetchall()
            if not rows or rows[-1]["ordered_refused"] is not False:
                # Some webhook is ordered (the lean statement did nothing): the full one,
                # from now on for a while.
                if rows:
                    self._full_fan_out_until = sent + FULL_FAN_OUT_SECONDS
                cur = await conn.execute(query("delivery_fan_out"), args)
                rows = await cur.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            if not await self._intake.timed_out(conn, exc, events_wanted, only):
                raise
            self._retry_now = True  # at once, with the smaller batch
            return 0, []
        events = int(rows[-1]["events_claimed"]) if rows else 0
        # Events left in the outbox because a webhook row they need is held by another
        # transaction (sql/delivery.sql, delivery_fan_out): they were taken too, so the pass may
        # have been full and more may be waiting behind them.
        deferred = int(rows[-1]["events_deferred"]) if rows else 0
        taken = events + deferred
        self._deferred = deferred > 0
        self._intake.succeeded(taken)
        if events_wanted < wanted and taken >= events_wanted:
            self._retry_now = True  # a narrowed pass was full: more is waiting
        if rows and rows[-1]["events_unreadable"]:
            self._intake.unreadable(rows[-1]["events_unreadable"])
        if deferred:
            self._intake.deferred(deferred)
        if events:
            created = int(rows[-1]["deliveries_created"])
            per_event = min(max(created / events, MIN_FACTOR), MAX_FACTOR)
            self.fanout_factor = 0.7 * self.fanout_factor + 0.3 * per_event
            self._metrics.events_fanned_out.inc(events)
        claimed = self._start_rows([r for r in rows if r["id"] is not None], sent, room)
        # A pass that only deferred (every event behind a held webhook row, or ordered keys
        # behind another replica's fan-out still in progress) is not "full": it waits for the
        # next doorbell, DEFER_SECONDS or the poll rather than spin while the rows are held.
        return events + (deferred if events else 0), claimed

    async def _claim_due_hearing_doorbell(
        self, conn: Conn, params: dict[str, Any], limit: int
    ) -> tuple[list[Claimed], bool]:
        """`_claim_due`, and each doorbell that rings while it runs (or rang during this
        pass's fan-out) answered at once by a fan-out on a second connection, with the slots
        neither takes, rather than after the scan: a fresh event does not queue behind a
        due scan, such as the refills of a hot webhook at its cap (issue 12). One doorbell
        fan-out at a time: when one ends while the scan still runs and the doorbell rang
        again, the next starts, after the same guard (`_spare_beside_scan`). Returns
        (rows started by the scan, whether such a fan-out says more may be waiting).

        The two statements may lease rows of one webhook beyond its cap: the extra ones
        wait in its claim-ahead queue or are released unsent, as for any claim."""
        if self._spare_beside_scan(limit) is None:
            return await self._claim_due(conn, params, limit), False  # no task of its own
        scan = asyncio.ensure_future(self._claim_due(conn, params, limit))
        fan_out: asyncio.Future[bool] | None = None
        fanned = due_full = False
        try:
            while True:
                if not self._wake.is_set():
                    await self._scan_or_doorbell(scan)
                # The guard again before each fan-out: rows started by an earlier one
                # count while in flight; stopping means no further statement.
                spare = None if scan.done() else self._spare_beside_scan(limit)
                if spare is None:
                    break  # the doorbell's pass (if it rang) follows the scan at once
                self._wake.clear()
                fan_out = asyncio.ensure_future(
                    self._claim_and_start(spare, outbox=True, scan=False)
                )
                (more,) = await asyncio.gather(fan_out, return_exceptions=True)
                fan_out = None
                if isinstance(more, BaseException):
                    # The scan's rows start; only the doorbell's fan-out failed (no
                    # connection came, or its statement failed): not this pass's failure.
                    # Its pass follows the scan.
                    log.warning("doorbell_fan_out_failed", error=type(more).__name__)
                    self._wake.set()
                    break
                fanned = fanned or more
                # each nested pass starts by clearing it: keep what an earlier one found
                due_full = due_full or self._due_full
            rows = await scan
        except BaseException:
            # Cancelled (the pass's deadline, stop): both statements end before this
            # pass gives its connection back, so rows the scan leased are not orphaned
            # on a connection the pool closes.
            children: list[asyncio.Future[Any]] = [scan] if fan_out is None else [scan, fan_out]
            for child in children:
                child.cancel()
            await asyncio.gather(*children, return_exceptions=True)
            raise
        self._due_full = due_full or self._due_full
        return rows, fanned

    def _spare_beside_scan(self, limit: int) -> int | None:
        """The slots a doorbell's fan-out beside a due scan of `limit` rows may take, or
        None when none may open now: too few spare slots (rows started by an earlier
        doorbell fan-out count while in flight), stopping, a nested pass, or no idle pool
        connection."""
        spare = self._s.concurrency - len(self._inflight) - limit
        if (
            spare < min(self._min_batch, self._s.concurrency)
            or self._stopping
            # Only the outermost pass opens a second one: a nested pass's count of free
            # slots would not see the outer scan's rows, leased but not started yet.
            or self._passes > 1
            # Never wait for a second connection while holding this one (a pool of one
            # would stall until its timeout): without an idle one, the doorbell's pass
            # simply follows the scan.
            or self._pool.get_stats().get("pool_available", 0) < 1
        ):
            return None
        return spare

    async def _scan_or_doorbell(self, scan: asyncio.Future[list[Claimed]]) -> None:
        """Until `scan` ends or the doorbell rings: one future, resolved by the scan's done
        callback or by _ring, rather than a task waiting on the doorbell and asyncio.wait
        (issue 12, "pyevent": once per due scan, every CLAIM_DUE_EVERY at a steady low
        rate). The idle wait is not running now."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self._waiting_for = (self._wake,)

        def scan_ended(_: object) -> None:
            _wake_up(waiter)

        scan.add_done_callback(scan_ended)
        try:
            await waiter
        finally:
            scan.remove_done_callback(scan_ended)
            self._waiter = None
            self._waiting_for = ()

    async def _claim_due(self, conn: Conn, params: dict[str, Any], limit: int) -> list[Claimed]:
        """Lease and start up to `limit` due deliveries, in the order they became due."""
        self._due_scanned = time.monotonic()
        # Webhooks with no room left in this process are not even scanned (full_ids).
        sent = time.monotonic()
        room = self.admission.claim_params()
        cur = await conn.execute(
            query("delivery_claim_due"), {**room, **params, "limit": limit, "scan": limit * 4}
        )
        started = self._start_rows(await cur.fetchall(), sent, room)
        # a failing webhook's due probe that found nothing stops arming the idle timer
        self.admission.due_scanned(
            sent, (d.webhook_id for d in started), full=len(started) >= limit
        )
        return started

    def _start_rows(self, rows: list[Any], sent: float, room: dict[str, Any]) -> list[Claimed]:
        """Start an attempt for each leased row; returns what was started. `sent` is when
        the claim statement was sent (monotonic): its leases end no earlier than `sent`
        plus the lease, however long the statement waited on a lock; `room` is what
        admission gave the statement (its claim_params())."""
        now = datetime.now(UTC)
        started = [Claimed.from_row(r, now) for r in rows]
        admission = self.admission
        spare: list[Claimed] = []
        for d in started:
            d.lease_until = sent + self._s.lease_seconds
            # Never more than the cap in flight: a row leased ahead for a webhook at its
            # cap waits in the queue; one that may not wait there (the queue is full, or
            # it is the database's probe of a failing webhook) goes back unsent.
            if d.active and not admission.can_start(d.webhook_id):
                if d.failing:
                    admission.failing_elsewhere(d.webhook_id)
                    spare.append(d)
                elif admission.enqueue(d.webhook_id, d):
                    d.queued_at = time.monotonic()
                else:
                    spare.append(d)
                continue
            self._start(d)
        if spare:
            self._release_soon(spare)
        # Webhooks now at their limit may have more due work: claim again when one of
        # their attempts ends. Decided right after starting (before any await lets one end).
        self.admission.note_held(
            (d.webhook_id for d in started),
            dict(zip(room["room_ids"], room["room_left"], strict=True)),
            keep=self._passes > 1,
        )
        return started

    def _start(self, d: Claimed) -> None:
        task = asyncio.create_task(self._attempts.deliver(d))
        self._starts += 1
        key = self._starts
        self._inflight[key] = (task, d)
        self.admission.started(d.webhook_id, active=d.active, failing=d.failing)
        task.add_done_callback(functools.partial(self._done, key, d))

    def _done(self, key: int, d: Claimed, _: asyncio.Task[None]) -> None:
        self._inflight.pop(key, None)
        held = self.admission.ended(d.webhook_id)
        if not self._stopping:
            queued, give_back = self.admission.next_queued(d.webhook_id)
            if queued is not None:
                self._start(queued)  # the slot is taken again at once: no claim between
            # more when its depth grew back (the shared depth's window ended), while the
            # process has room: the claim loop may have given the other freed slots away.
            # Without a shared depth the depth never grows: no second look per attempt.
            while (
                queued is not None
                and self.admission.shared_depth
                and len(self._inflight) < self._s.concurrency
            ):
                queued, give_back = self.admission.next_queued(d.webhook_id)
                if queued is not None:
                    self._start(queued)
            if give_back:
                self._release_soon(give_back)
        if held and self.admission.refill_wanted(d.webhook_id):
            self._hook_room.set()  # claim for it again now (refills its queue)
        self._slot_freed.set()

    def _release_soon(self, claims: list[Claimed]) -> None:
        """Give back leased rows that will not be sent here, in the background."""
        self.released_unsent += len(claims)
        task = asyncio.create_task(self.release(claims))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    # -- shutdown -----------------------------------------------------------------
    async def stop(self, grace: float) -> None:
        """Stop claiming; give in-flight attempts `grace` seconds, then cancel and release.

        A claim statement in flight when stop is called is waited for first (it is
        bounded by the loop's deadline): the rows it leases are released unsent.
        """
        started = time.monotonic()
        self._stopping = True
        self._stop_ev.set()
        if not self._pass_done.is_set():
            log.info("stop_waits_for_claim", note="rows it leases are released, not sent")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pass_done.wait(), self._deadline)
        # Rows leased ahead were never sent: give them back now, for other replicas.
        await self.release(self.admission.take_queued())
        tasks = [t for t, _ in self._inflight.values()]
        claims: list[Claimed] = []
        if tasks:
            log.info("draining", inflight=len(tasks), grace_seconds=grace)
            left = max(grace - (time.monotonic() - started), 0.0)
            _, pending = await asyncio.wait(tasks, timeout=left) if left else (set(), set(tasks))
            if pending:
                claims = [d for t, d in list(self._inflight.values()) if t in pending]
                for t in pending:
                    t.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        claims.extend(self._unsent)
        claims.extend(self.admission.take_queued())  # none expected: nothing queues now
        self._unsent = []
        await self.release(claims)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)

    async def release(self, claims: list[Claimed]) -> None:
        if not claims:
            return
        rows = [{"id": str(c.id), "claim": c.claim.isoformat()} for c in claims]
        try:
            async with self._pool.connection(timeout=5) as conn:
                await conn.execute(
                    query("delivery_release_claims"), {"rows": orjson.dumps(rows).decode()}
                )
            log.info("claims_released", deliveries=len(rows))
        except Exception as exc:  # the lease covers it
            log.warning(
                "claims_not_released",
                deliveries=len(rows),
                error=type(exc).__name__,
                note="they become due again when their lease ends",
            )
