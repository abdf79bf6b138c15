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
`dispatcher.probe_due()` (migration 0022), with the same FAILING_AFTER and the same spacing:
`probe_delay` here and that function are tested against each other.

Pure apart from the clock (injectable).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

from dispatcher.backoff import RetryPolicy
from dispatcher.ratelimit import RateLimits

FAILING_AFTER = 3  # consecutive failures after which a webhook gets one probe at a time


def probe_delay(policy: RetryPolicy, streak: int) -> float:
    """Seconds between probes of a webhook with `streak` consecutive failures
    (the same schedule as dispatcher.probe_due() in SQL)."""
    if streak < FAILING_AFTER:
        return 0.0
    step = policy.base_delay_seconds * 2.0 ** min(streak - FAILING_AFTER, 20)
    return float(min(step, policy.max_delay_seconds))


class Admission:
    """Per-webhook room in this process: in-flight counts, rate limits, failing probes."""

    def __init__(
        self, cap: int, limits: RateLimits, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cap = cap
        self.limits = limits
        self._clock = clock
        self._inflight: collections.Counter[UUID] = collections.Counter()
        self._probing: set[UUID] = set()  # failing (per the database) with a probe in flight
        # consecutive counted failures seen by this process, and when the next probe may go
        self._streak: dict[UUID, tuple[int, float]] = {}
        # webhooks the last claim held back: rows of theirs may be waiting
        self._held: set[UUID] = set()
        self._asked: dict[UUID, int] = {}  # the room the last claim statement was given

    # -- the rule ---------------------------------------------------------------------
    def room(self) -> dict[UUID, int]:
        """How many more attempts each webhook we know about may start now.

        Webhooks not listed have the full cap (and no limit of their own)."""
        cap = self.cap
        room = {k: max(cap - n, 0) for k, n in self._inflight.items() if n > 0}
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

    def claim_params(self) -> dict[str, Any]:
        """The room as the claim statements' parameters.

        room_ids/room_left: how many more each listed webhook may start; full_ids: those
        with none (not even scanned); hook_cap for the others; failing_after for the
        database's own count of consecutive failures."""
        room = self._asked = self.room()
        return {
            "room_ids": list(room),
            "room_left": list(room.values()),
            "full_ids": [k for k, n in room.items() if n <= 0],
            "hook_cap": self.cap,
            "failing_after": FAILING_AFTER,
        }

    def note_held(self, claimed: Iterable[UUID]) -> None:
        """After a claim statement started its attempts (`claimed`: one webhook id per
        attempt): remember the webhooks it held back, so that `ended` reports when an
        attempt of one of them ends. Held back: a webhook that got all the room the
        statement was given (attempts that ended while it ran freed more, and its further
        rows are still due), or that has no room now."""
        got = collections.Counter(claimed)
        self._held = {k for k, n in self._asked.items() if got[k] >= n}
        self._held.update(k for k, n in got.items() if n >= self.cap)
        self._held.update(k for k, n in self.room().items() if n <= 0)

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
        self, webhook_id: UUID, policy: RetryPolicy, *, success: bool, counts: bool
    ) -> None:
        """An attempt's outcome: a success ends a streak, a counted failure extends it."""
        if success:
            self._streak.pop(webhook_id, None)
        elif counts:
            streak = self._streak.get(webhook_id, (0, 0.0))[0] + 1
            self._streak[webhook_id] = (streak, self._clock() + probe_delay(policy, streak))

    def inflight(self, webhook_id: UUID) -> int:
        return self._inflight.get(webhook_id, 0)

    def next_probe_in(self) -> float | None:
        """Seconds until the earliest held-back probe of a failing webhook may go, if any."""
        now = self._clock()
        waits = [
            until - now
            for hook, (streak, until) in self._streak.items()
            if streak >= FAILING_AFTER and not self._inflight.get(hook)
        ]
        return max(0.0, min(waits)) if waits else None
