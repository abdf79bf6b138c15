"""Admission: how many more attempts each webhook may start in this process, right now.

The one place that decides which webhooks may be claimed. Its answer (`room()`) goes to the
claim statements as parameters, and the statements apply it as given:

- at most `cap` attempts in flight per webhook in this process;
- rate limits (token buckets, shared across replicas by `coordination.py`);
- a webhook failing here and now (FAILING_AFTER consecutive counted failures seen by this
  process, before the database has the outcomes) gets one probe at a time, spaced by
  `probe_delay`; a webhook the database already calls failing (claimed with `failing`) has
  its one probe in flight and nothing more until it ends.

The database-side half of the same rule, for failures other processes saw, is
`dispatcher.webhook_claimable_v1()` with `dispatcher.probe_delay_v1()` (migration 0022),
with the same FAILING_AFTER and the same spacing:
`probe_delay` here and the SQL function are tested against each other.

Claim-ahead: a webhook held back by its cap also gets up to `ahead` rows leased beyond
it, kept here in a small FIFO queue; when one of its attempts ends, the next queued row
starts at once (no claim round trip between an attempt's end and the next one), and the
loop refills the queue in the background once it has run down to half (`refill_wanted`):
one claim statement then leases many rows (up to `cap + ahead` of one webhook per
statement, `hook_cap`), instead of one statement per few attempts ended. The queue never
raises what is in flight (the cap still bounds it), is bounded (a replica never hoards a
webhook's backlog: others claim the rest), and is offered only to webhooks free of rate
limits and failures; a queued row that may no longer start (the webhook began failing, a
limit appeared) is handed back for release, never sent early.

Shared depth: a webhook with a backlog here (held back by the last claim, or with rows
queued ahead) may have at most `shared_depth` attempts in flight, instead of its cap, while
another webhook without a backlog (not held, nothing queued, no more than the shared depth
in flight) has started an attempt within the last SHARE_WINDOW seconds. A hot webhook's
~cap attempts' callbacks then no longer sit in every loop iteration ahead of the quiet
webhooks' events; when the quiet traffic stops, the hot webhook is back at its cap within
SHARE_WINDOW. Alone, or among webhooks that all have a backlog or are busier than the shared
depth, a webhook keeps its cap. The rows it does not start stay leased ahead in its queue
(refilled as before). Each process decides for itself, from its own starts.

Pure apart from the clock (injectable).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar
from uuid import UUID

from dispatcher.backoff import RetryPolicy
from dispatcher.ratelimit import RateLimits

FAILING_AFTER = 3  # consecutive failures after which a webhook gets one probe at a time
# how long a start of a webhook without a backlog keeps the webhooks with one at the shared
# depth (seconds)
SHARE_WINDOW = 1.0

T = TypeVar("T")


def probe_delay(policy: RetryPolicy, streak: int) -> float:
    """Seconds between probes of a webhook with `streak` consecutive failures
    (the same schedule as dispatcher.probe_delay_v1() in SQL)."""
    if streak < FAILING_AFTER:
        return 0.0
    step = policy.base_delay_seconds * 2.0 ** min(streak - FAILING_AFTER, 20)
    return float(min(step, policy.max_delay_seconds))


class Admission(Generic[T]):
    """Per-webhook room in this process: in-flight counts, rate limits, failing probes,
    and the rows leased ahead for webhooks held back by their cap (`T`: a leased row)."""

    def __init__(
        self,
        cap: int,
        limits: RateLimits,
        clock: Callable[[], float] = time.monotonic,
        ahead: int | None = None,
        shared_depth: int = 0,
    ) -> None:
        self.cap = cap
        # a backlogged webhook's depth while others without a backlog have work (0 or at
        # least the cap: off)
        self.shared_depth = shared_depth if 0 < shared_depth < cap else 0
        # the latest start of a webhook without a backlog (webhook, when), and the latest
        # of any other such webhook: "someone else is quiet" for every webhook in O(1)
        self._quiet_last: tuple[UUID | None, float] = (None, -1e18)
        self._quiet_prev = -1e18
        # rows leased ahead per capped webhook (default twice the cap, none for a cap of
        # one; 0: off); the queue is refilled when it has run down to `refill_at`
        self.ahead = max(0, (2 * cap if cap > 1 else 0) if ahead is None else ahead)
        self.refill_at = self.ahead // 2
        self._queued: dict[UUID, collections.deque[T]] = {}
        self.dequeued = 0  # rows started from the queue (each saved a claim round trip)
        # failing per the database (its probe came while we were at the cap): nothing
        # leased ahead until one of our attempts succeeds
        self._db_failing: set[UUID] = set()
        self.limits = limits
        self._clock = clock
        self._inflight: collections.Counter[UUID] = collections.Counter()
        self._probing: set[UUID] = set()  # failing (per the database) with a probe in flight
        # consecutive counted failures seen by this process, and when the next probe may go
        self._streak: dict[UUID, tuple[int, float]] = {}
        # webhooks the last claim held back: rows of theirs may be waiting
        self._held: set[UUID] = set()
        # failing webhooks whose due probe a due scan offered and found no row for (all of
        # their rows final, or the webhook disabled by a 410): their probe no longer arms
        # the loop's timer (next_probe_in); doorbells and polls find new work as for any
        # webhook, and a row of theirs claimed or an outcome of theirs clears the mark
        self._probe_idle: set[UUID] = set()
        self._asked: dict[UUID, int] = {}  # the room the last claim statement was given

    # -- the rule ---------------------------------------------------------------------
    def room(self) -> dict[UUID, int]:
        """How many more attempts each webhook we know about may start now.

        Webhooks not listed have the full cap (and no limit of their own)."""
        cap = self.cap
        room = {k: max(cap - n, 0) for k, n in self._inflight.items() if n > 0}
        if self.shared_depth:
            for hook in self._sharing():
                room[hook] = max(self.shared_depth - self._inflight.get(hook, 0), 0)
        for hook in self.limits.limited():
            room[hook] = min(room.get(hook, cap), self.limits.room(hook) or 0)
        now = self._clock()
        for hook, (streak, quiet_until) in self._streak.items():
            if streak >= FAILING_AFTER:
                probe = 0 if self._inflight[hook] or now < quiet_until else 1
                room[hook] = min(room.get(hook, cap), probe)
        for hook in self._probing:
            room[hook] = 0
        return room

    def room_of(self, hook: UUID, depth: int | None = None) -> int:
        """How many more attempts this webhook may start now (room() for one webhook);
        `depth`: its depth() as the caller already read it (one clock reading for both)."""
        room = (self.depth(hook) if depth is None else depth) - self._inflight.get(hook, 0)
        limit = self.limits.room(hook)
        if limit is not None:
            room = min(room, limit)
        streak, quiet_until = self._streak.get(hook, (0, 0.0))
        if streak >= FAILING_AFTER:
            probe = 0 if self._inflight.get(hook) or self._clock() < quiet_until else 1
            room = min(room, probe)
        if hook in self._probing:
            room = 0
        return max(room, 0)

    def ahead_room(self, hook: UUID) -> int:
        """How many more rows may be leased ahead for this webhook: only for one held back
        by its cap (at the cap, or given all its room by the last claim), with no rate
        limit, not failing; at most `ahead` queued."""
        if (
            self.ahead <= 0
            or hook in self._probing
            or hook in self._db_failing
            or self._streak.get(hook, (0, 0.0))[0] >= FAILING_AFTER
            or self.limits.room(hook) is not None
            or not (hook in self._held or self._inflight.get(hook, 0) >= self.depth(hook))
        ):
            return 0
        return max(self.ahead - len(self._queued.get(hook, ())), 0)

    def claim_room(self) -> dict[UUID, int]:
        """room() plus what may be leased ahead (at most cap + ahead per statement)."""
        room = self.room()
        for hook in {*room, *self._queued}:
            extra = self.ahead_room(hook)
            if extra:
                room[hook] = room.get(hook, self.cap) + extra
        return room

    def refill_wanted(self, hook: UUID) -> bool:
        """After an attempt of a held-back webhook ended (and its next queued row, if any,
        started): claim for it now only once its queue has run down to `refill_at`, so
        that one statement leases many rows rather than one per attempt ended."""
        return len(self._queued.get(hook, ())) <= self.refill_at

    def claim_params(self) -> dict[str, Any]:
        """The room as the claim statements' parameters (with claim-ahead).

        room_ids/room_left: how many more rows each listed webhook may be leased;
        full_ids: those with none (not even scanned); hook_cap: the most one statement
        leases of one webhook, and the room of the others (cap + ahead: an unlisted
        webhook with more due than its cap starts the cap and queues the rest, as a
        webhook at its cap would); failing_after for the database's own count of
        consecutive failures."""
        room = self._asked = self.claim_room()
        return {
            "room_ids": list(room),
            "room_left": list(room.values()),
            "full_ids": [k for k, n in room.items() if n <= 0],
            "hook_cap": self.cap + self.ahead,
            "failing_after": FAILING_AFTER,
        }

    def note_held(
        self,
        claimed: Iterable[UUID],
        asked: dict[UUID, int] | None = None,
        *,
        keep: bool = False,
    ) -> None:
        """After a claim statement started its attempts (`claimed`: one webhook id per
        attempt): remember the webhooks it held back, so that `ended` reports when an
        attempt of one of them ends. Held back: a webhook that got all the room the
        statement was given (`asked`, default the last claim_params()'s: attempts that
        ended while it ran freed more, and its further rows are still due), or that has
        no room now. `keep`: another claim statement is still running, so the webhooks
        already held stay held (its answer may still hold them back)."""
        got = collections.Counter(claimed)
        held = {k for k, n in (self._asked if asked is None else asked).items() if got[k] >= n}
        held.update(k for k, n in got.items() if n >= self.cap)
        held.update(k for k, n in self.room().items() if n <= 0)
        self._held = self._held | held if keep else held
        if self.shared_depth:
            # the webhooks it started without a backlog, and with no more than the shared
            # depth in flight (a trickle, not a drain spread over many webhooks by the
            # global concurrency): the others share while they have work
            now = self._clock()
            share = self.shared_depth
            for hook in got:
                if (
                    hook not in self._held
                    and hook not in self._queued
                    and self._inflight.get(hook, 0) <= share
                ):
                    self._quiet_started(hook, now)

    # -- shared depth -------------------------------------------------------------------
    def _quiet_started(self, hook: UUID, now: float) -> None:
        last, when = self._quiet_last
        if hook != last:
            self._quiet_prev = when
        self._quiet_last = (hook, now)

    def _others_quiet(self, hook: UUID) -> bool:
        """Has a webhook other than `hook`, without a backlog, started within SHARE_WINDOW?"""
        last, when = self._quiet_last
        if last == hook:
            when = self._quiet_prev
        return self._clock() - when < SHARE_WINDOW

    def _sharing(self) -> list[UUID]:
        """The webhooks at the shared depth now: a backlog here, and others quiet."""
        return [hook for hook in {*self._held, *self._queued} if self._others_quiet(hook)]

    def depth(self, hook: UUID) -> int:
        """The most attempts of this webhook in flight now: its cap, or the shared depth
        while it has a backlog here and another webhook without one has work."""
        if (
            self.shared_depth
            and (hook in self._held or hook in self._queued)
            and self._others_quiet(hook)
        ):
            return self.shared_depth
        return self.cap

    # -- claim-ahead queue ----------------------------------------------------------------
    def can_start(self, hook: UUID) -> bool:
        return self.room_of(hook) > 0

    def failing_elsewhere(self, hook: UUID) -> None:
        """The database calls this webhook failing (a probe row came back while it was at
        its cap here): lease nothing ahead for it until one of our attempts succeeds."""
        self._db_failing.add(hook)

    def enqueue(self, hook: UUID, row: T) -> bool:
        """Keep a leased row that cannot start yet; False (not kept) when the webhook may
        not queue ahead or its queue is full: the caller releases the row."""
        if self.ahead_room(hook) <= 0:
            return False
        self._queued.setdefault(hook, collections.deque()).append(row)
        return True

    def next_queued(self, hook: UUID) -> tuple[T | None, list[T]]:
        """After an attempt of `hook` ended: its oldest queued row if it may start now,
        and the queued rows to release because they may not start at all now (the
        webhook is failing or rate-limited: they are due again for whoever claims them)."""
        queue = self._queued.get(hook)
        if not queue:
            return None, []
        # one reading of the depth for both tests below: the shared depth's window ending
        # between them would otherwise read as "no room, and under its depth" (handed back)
        depth = self.depth(hook)
        room = self.room_of(hook, depth)
        if room > 0:
            row = queue.popleft()
            self.dequeued += 1
            if not queue:
                del self._queued[hook]
            return row, []
        if room <= 0 and self._inflight.get(hook, 0) < depth:
            # held back by something other than its depth (the cap or the shared depth):
            # no end of an attempt will start them
            del self._queued[hook]
            return None, list(queue)
        return None, []

    def queued(self, hook: UUID | None = None) -> int:
        if hook is not None:
            return len(self._queued.get(hook, ()))
        return sum(len(q) for q in self._queued.values())

    def take_queued(self) -> list[T]:
        """Every queued row (stop: released, never sent)."""
        rows = [row for q in self._queued.values() for row in q]
        self._queued.clear()
        return rows

    # -- what happens -------------------------------------------------------------------
    def started(self, webhook_id: UUID, *, active: bool, failing: bool) -> None:
        self._inflight[webhook_id] += 1
        if active:
            self.limits.take(webhook_id)
        if failing:
            self._probing.add(webhook_id)

    def ended(self, webhook_id: UUID) -> bool:
        """One attempt of this webhook ended; True when the webhook was held back at its
        limit by the last claim (so rows of it may be waiting for this slot: claim now)."""
        n = self._inflight[webhook_id]
        if n <= 1:
            self._inflight.pop(webhook_id, None)
            self._probing.discard(webhook_id)
        else:
            self._inflight[webhook_id] = n - 1
        return webhook_id in self._held

    def outcome(
        self,
        webhook_id: UUID,
        policy: RetryPolicy,
        *,
        success: bool,
        counts: bool,
        gone: bool = False,
    ) -> None:
        """An attempt's outcome: a success ends a streak, a counted failure extends it. A
        410 (`gone`: the webhook is being disabled) makes it failing at once: its queued
        rows go back unsent and it is not claimed again before a probe, which finds it
        disabled (or enabled again, and then a success ends the streak)."""
        if self._probe_idle:
            self._probe_idle.discard(webhook_id)
        if success:
            # both are empty while every webhook succeeds: no lookup (UUID.__hash__ is Python)
            if self._streak:
                self._streak.pop(webhook_id, None)
            if self._db_failing:
                self._db_failing.discard(webhook_id)
        elif counts or gone:
            streak = self._streak.get(webhook_id, (0, 0.0))[0] + 1
            if gone:
                streak = max(streak, FAILING_AFTER)
            self._streak[webhook_id] = (streak, self._clock() + probe_delay(policy, streak))

    def inflight(self, webhook_id: UUID) -> int:
        return self._inflight.get(webhook_id, 0)

    def next_probe_in(self) -> float | None:
        """Seconds until the earliest held-back probe of a failing webhook may go, if any.

        A probe a due scan already offered and found no row for (`due_scanned`) does not
        count: with nothing of that webhook's due, a timer at 0 s would have the loop scan
        again every millisecond for as long as the process lives (a webhook gone with 410,
        or three final failures and no row left)."""
        now = self._clock()
        waits = [
            until - now
            for hook, (streak, until) in self._streak.items()
            if streak >= FAILING_AFTER
            and not self._inflight.get(hook)
            and hook not in self._probe_idle
        ]
        return max(0.0, min(waits)) if waits else None

    def due_scanned(self, started: float, claimed: Iterable[UUID], full: bool) -> None:
        """A due scan that began at `started` (this clock) leased rows of the `claimed`
        webhooks; `full`: it reached its limit (rows of others may simply not have fit). A
        failing webhook whose probe was already due when it began, and of which it leased
        nothing, is marked idle (next_probe_in); one it leased a row of is not."""
        if not self._streak:
            return
        got = set(claimed)
        self._probe_idle -= got
        if full:
            return
        for hook, (streak, until) in self._streak.items():
            if (
                streak >= FAILING_AFTER
                and until <= started
                and hook not in got
                and not self._inflight.get(hook)
            ):
                self._probe_idle.add(hook)
