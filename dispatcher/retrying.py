"""One backoff for infrastructure retries: the database or the LISTEN connection away.

Two kinds of retry live in the dispatcher. The customer-facing schedule (an endpoint failed:
when to try it again) is durable, in the table (``backoff.py``, ``next_retry_at``). This module
is the other kind: a short in-process pause before trying our own infrastructure again. Four
loops use it, each with its policy below: the LISTEN connection (``listener.py``), the dispatch
loop's pass (``dispatch.py``), the outcome writer (``recorder.py``) and start-up's wait for the
database (``db.py``).

A ``Backoff`` doubles its delay from ``initial`` up to ``cap``, each sleep jittered by
``±jitter`` so replicas that lost the database together do not come back in step. A streak
of failures that goes on (``escalate_failures`` in a row, or ``escalate_seconds`` since the
first) is logged at error instead of warning; the first success after a streak logs one
recovery line. docs/operations.md ("The database is down or unreachable") reads these lines.

Pure: no I/O; the clock and the random source can be given (tests).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
from psycopg_pool import PoolTimeout

__all__ = [
    "DISPATCH",
    "LISTENER",
    "RECORDER",
    "STARTUP",
    "TRANSIENT_DB_ERRORS",
    "Backoff",
    "Policy",
]


@dataclass(frozen=True, slots=True)
class Policy:
    initial: float  # the first delay, seconds
    cap: float  # no delay beyond this (before jitter)
    jitter: float = 0.2  # each delay is multiplied by a uniform factor in [1 - jitter, 1 + jitter)
    escalate_failures: int = 10  # this many failures in a row are logged at error ...
    escalate_seconds: float = 30.0  # ... and so is any failure this long after the first

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.cap:
            raise ValueError("a backoff needs 0 < initial <= cap")
        if not 0 <= self.jitter < 1:
            raise ValueError("a backoff's jitter is a fraction in [0, 1)")


# The four loops' bounds, as they were before they shared this helper. The listener starts
# sooner (a lost LISTEN is a doorbell missing: the poll interval still finds the work) and
# spreads wider, because every replica loses it at the same instant when PostgreSQL restarts.
LISTENER = Policy(initial=0.1, cap=10.0, jitter=0.5)
DISPATCH = Policy(initial=0.2, cap=5.0)
RECORDER = Policy(initial=0.2, cap=5.0)
STARTUP = Policy(initial=0.5, cap=5.0)

# Database errors that mean "try again": the server or the link is away, the pool has no
# connection to give, or the statement lost a race that a retry wins. Anything else (a
# statement the database refuses) is not retried blindly.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError,
    psycopg.errors.DeadlockDetected,
    psycopg.errors.SerializationFailure,
    psycopg.errors.QueryCanceled,
    PoolTimeout,
    TimeoutError,  # no answer at all: a half-open connection
)


class _Log(Protocol):
    def info(self, event: str, **kw: Any) -> Any: ...
    def warning(self, event: str, **kw: Any) -> Any: ...
    def error(self, event: str, **kw: Any) -> Any: ...


class Backoff:
    """The delays of one retry loop, and how long it has been failing."""

    __slots__ = ("_clock", "_rand", "_since", "failures", "policy")

    def __init__(
        self,
        policy: Policy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._rand = rand
        self._since = 0.0
        self.failures = 0  # in a row, since the last success

    @property
    def upcoming(self) -> float:
        """The next delay before jitter."""
        p = self.policy
        return min(p.initial * 2.0 ** min(self.failures, 64), p.cap)

    def next_delay(self) -> float:
        """Count a failure; the seconds to wait before trying again."""
        base = self.upcoming
        if self.failures == 0:
            self._since = self._clock()
        self.failures += 1
        jitter = self.policy.jitter
        return base * (1 - jitter + 2 * jitter * self._rand())

    @property
    def failing_for(self) -> float:
        """Seconds since the first failure of the current streak (0 when there is none)."""
        return self._clock() - self._since if self.failures else 0.0

    @property
    def escalated(self) -> bool:
        """The streak has gone on long enough to be an error rather than a warning."""
        p = self.policy
        return self.failures >= p.escalate_failures or (
            self.failures > 0 and self.failing_for >= p.escalate_seconds
        )

    def reset(self) -> None:
        self.failures = 0

    def failed(self, log: _Log, event: str, *, delay: float | None = None, **fields: Any) -> float:
        """Count a failure (unless `delay` was already taken from next_delay) and log `event`:
        a warning, or an error once the streak has escalated. Returns the delay to wait."""
        if delay is None:
            delay = self.next_delay()
        emit = log.error if self.escalated else log.warning
        emit(
            event,
            **fields,
            retry_in=round(delay, 2),
            failures=self.failures,
            failing_for=round(self.failing_for, 1),
        )
        return delay

    def recovered(self, log: _Log, event: str, **fields: Any) -> None:
        """A success: after a streak of failures, log `event` once; then start afresh."""
        if self.failures:
            log.info(event, **fields, failures=self.failures, failed_for=round(self.failing_for, 1))
            self.failures = 0
