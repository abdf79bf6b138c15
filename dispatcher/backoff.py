"""Retry policy and retry delays (docs/host-contract.md, "Retry policy").

``RetryPolicy.from_row`` turns an ``integration_retry_config`` row (or None: defaults) into a
policy, clamping every value to the host UI's range and reporting what it changed. The ranges
(``RANGES``), the strategies (``STRATEGIES``) and the defaults (``RetryPolicy()``) are written
here once for Python; their SQL twin is ``dispatcher.retry_policy_v1``
(sql/migrations/0037_retry_policy.sql), held to this one by tests/integration/test_rules_sql.py.
``retry_delay`` computes the wait before the next attempt; ``parse_retry_after`` reads a
``Retry-After`` header.

Pure functions, no I/O.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from types import MappingProxyType
from typing import Any, Literal, cast

__all__ = [
    "RANGES",
    "STRATEGIES",
    "RetryPolicy",
    "RetryStrategy",
    "parse_retry_after",
    "retry_delay",
]

RetryStrategy = Literal["exponential", "linear", "fixed"]
STRATEGIES: tuple[RetryStrategy, ...] = ("exponential", "linear", "fixed")

JITTER_LOW = 0.8
JITTER_HIGH = 1.2

# column -> (low, high): the host admin UI's ranges for integration_retry_config.
RANGES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {
        "max_retries": (1, 10),
        "base_delay_seconds": (1, 60),
        "max_delay_seconds": (1, 3600),
        "dlq_retention_days": (1, 90),
    }
)
_BOOL_FIELDS = ("enable_jitter", "enable_dlq")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-organisation retry settings; defaults are the host's column defaults."""

    max_retries: int = 3
    retry_strategy: RetryStrategy = "exponential"
    base_delay_seconds: int = 5
    max_delay_seconds: int = 300
    enable_jitter: bool = True
    enable_dlq: bool = True
    dlq_retention_days: int = 30

    @property
    def max_attempts(self) -> int:
        """Total attempts: the first one plus ``max_retries`` retries."""
        return self.max_retries + 1

    @classmethod
    def from_row(cls, row: Mapping[str, Any] | None) -> tuple[RetryPolicy, list[str]]:
        """Build a policy from an ``integration_retry_config`` row, with warnings.

        ``None`` (no row) gives the defaults silently; a missing key gives that field's default
        silently. A NULL, a value of the wrong type, an out-of-range number or an unknown
        strategy is replaced (clamped to the range, or the default) and described in a warning,
        e.g. ``"max_retries=0 out of range 1-10, using 1"``. Extra keys are ignored.
        """
        default = cls()
        if row is None:
            return default, []
        warnings: list[str] = []
        ints: dict[str, int] = {}
        for name, (low, high) in RANGES.items():
            fallback: int = getattr(default, name)
            ints[name] = _int_field(row, name, low, high, fallback, warnings)
        bools: dict[str, bool] = {}
        for name in _BOOL_FIELDS:
            fallback_bool: bool = getattr(default, name)
            bools[name] = _bool_field(row, name, fallback_bool, warnings)
        strategy = default.retry_strategy
        if "retry_strategy" in row:
            raw = row["retry_strategy"]
            if raw in STRATEGIES:
                strategy = cast(RetryStrategy, raw)
            else:
                warnings.append(
                    f"retry_strategy={raw!r} is not one of {', '.join(STRATEGIES)}, "
                    f"using {default.retry_strategy}"
                )
        policy = cls(
            max_retries=ints["max_retries"],
            retry_strategy=strategy,
            base_delay_seconds=ints["base_delay_seconds"],
            max_delay_seconds=ints["max_delay_seconds"],
            enable_jitter=bools["enable_jitter"],
            enable_dlq=bools["enable_dlq"],
            dlq_retention_days=ints["dlq_retention_days"],
        )
        return policy, warnings


def _int_field(
    row: Mapping[str, Any], name: str, low: int, high: int, fallback: int, warnings: list[str]
) -> int:
    if name not in row:
        return fallback
    raw = row[name]
    value: int | None = None
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    elif isinstance(raw, float | Decimal) and math.isfinite(raw) and raw == int(raw):
        value = int(raw)
    if value is None:
        what = "is NULL" if raw is None else "is not an integer"
        warnings.append(f"{name}={raw!r} {what}, using {fallback}")
        return fallback
    clamped = min(max(value, low), high)
    if clamped != value:
        warnings.append(f"{name}={value} out of range {low}-{high}, using {clamped}")
    return clamped


def _bool_field(row: Mapping[str, Any], name: str, fallback: bool, warnings: list[str]) -> bool:
    if name not in row:
        return fallback
    raw = row[name]
    if isinstance(raw, bool):
        return raw
    what = "is NULL" if raw is None else "is not a boolean"
    warnings.append(f"{name}={raw!r} {what}, using {str(fallback).lower()}")
    return fallback


def retry_delay(
    policy: RetryPolicy,
    attempt: int,
    rng: Callable[[], float] = random.random,
    retry_after: float | None = None,
) -> float:
    """Seconds to wait before the next attempt, after attempt number ``attempt`` failed.

    ``attempt`` is 1-based (values below 1 count as 1). Strategies: exponential
    ``min(base * 2**(attempt-1), max)``, linear ``min(base * attempt, max)``, fixed
    ``min(base, max)``. With jitter the delay is multiplied by ``0.8 + 0.4 * rng()`` (a factor in
    [0.8, 1.2) for ``rng()`` in [0, 1)) and then capped again, so it never exceeds
    ``max_delay_seconds``. A ``retry_after`` (from a 429/503 ``Retry-After``) replaces the computed
    delay: ``min(max(retry_after, 0), max_delay_seconds)``, without jitter; NaN is ignored.
    The result is never negative.
    """
    cap = float(max(policy.max_delay_seconds, 0))
    if retry_after is not None and not math.isnan(retry_after):
        return min(max(retry_after, 0.0), cap)
    n = max(attempt, 1)
    base = float(max(policy.base_delay_seconds, 0))
    if policy.retry_strategy == "linear":
        delay = base * n
    elif policy.retry_strategy == "fixed":
        delay = base
    else:
        # 2.0**1023 is the largest finite power; beyond it the product is past any cap anyway.
        delay = base * math.ldexp(1.0, min(n - 1, 1023))
    delay = min(delay, cap)
    if policy.enable_jitter:
        r = min(max(rng(), 0.0), math.nextafter(1.0, 0.0))
        delay = min(delay * (JITTER_LOW + (JITTER_HIGH - JITTER_LOW) * r), cap)
    return max(delay, 0.0)


_SECONDS_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Parse a ``Retry-After`` header into seconds from ``now`` (never negative).

    Accepts delay-seconds (``120``, also decimals like ``1.5``) or an HTTP-date
    (``Wed, 21 Oct 2015 07:28:00 GMT``; a date in the past gives 0). Returns None when the value
    is absent or unparseable. A naive ``now`` (or date) is taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS_RE.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)
