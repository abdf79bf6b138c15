"""Per-webhook token buckets, shared across replicas by dividing the rate.

Each replica enforces rate/N for a webhook limited to `rate` requests per
second, where N is the number of live replicas (from heartbeats), so N
replicas together stay near the configured rate. Pure except for the clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from uuid import UUID


class TokenBucket:
    """Refills at `rate` tokens per second up to `burst`; `take()` may go into debt."""

    __slots__ = ("_clock", "_stamp", "burst", "rate", "tokens")

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate)
        self.tokens = self.burst
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.burst, self.tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def available(self) -> int:
        """Whole tokens available now (never negative)."""
        self._refill()
        return max(0, int(self.tokens))

    def take(self) -> None:
        self._refill()
        self.tokens -= 1.0

    def retune(self, rate: float) -> None:
        self._refill()
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = min(self.tokens, self.burst)


class RateLimits:
    """The limits in force in this replica: webhook id -> bucket."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[UUID, TokenBucket] = {}

    def update(self, limits: Mapping[str, float], replicas: int) -> None:
        """Apply the table's limits (webhook id -> requests/s) for `replicas` live replicas."""
        share = max(1, replicas)
        wanted = {UUID(k): float(v) / share for k, v in limits.items() if float(v) > 0}
        for hook in list(self._buckets):
            if hook not in wanted:
                del self._buckets[hook]
        for hook, rate in wanted.items():
            bucket = self._buckets.get(hook)
            if bucket is None:
                self._buckets[hook] = TokenBucket(rate, clock=self._clock)
            elif bucket.rate != rate:
                bucket.retune(rate)

    def room(self, webhook_id: UUID) -> int | None:
        """Attempts this webhook may start now, or None when it has no limit."""
        bucket = self._buckets.get(webhook_id)
        return None if bucket is None else bucket.available()

    def take(self, webhook_id: UUID) -> None:
        bucket = self._buckets.get(webhook_id)
        if bucket is not None:
            bucket.take()

    def limited(self) -> list[UUID]:
        return list(self._buckets)
