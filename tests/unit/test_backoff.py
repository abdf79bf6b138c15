"""Tests for dispatcher.backoff: policy clamping, delay strategies, jitter bounds, Retry-After."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.backoff import RetryPolicy, RetryStrategy, parse_retry_after, retry_delay

NO_JITTER = dict(enable_jitter=False)


def policy(**kw: Any) -> RetryPolicy:
    return RetryPolicy(**kw)


# --- RetryPolicy ---------------------------------------------------------------------------


def test_defaults() -> None:
    p = RetryPolicy()
    assert (p.max_retries, p.retry_strategy, p.base_delay_seconds, p.max_delay_seconds) == (
        3,
        "exponential",
        5,
        300,
    )
    assert (p.enable_jitter, p.enable_dlq, p.dlq_retention_days) == (True, True, 30)
    assert p.max_attempts == 4


def test_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().max_retries = 5  # type: ignore[misc]  # the point: it is frozen


def test_from_row_none_is_default_without_warnings() -> None:
    assert RetryPolicy.from_row(None) == (RetryPolicy(), [])


def test_from_row_valid_row() -> None:
    row = {
        "id": "ignored",
        "org_id": "ignored",
        "max_retries": 10,
        "retry_strategy": "linear",
        "base_delay_seconds": 60,
        "max_delay_seconds": 3600,
        "enable_jitter": False,
        "enable_dlq": False,
        "dlq_retention_days": 90,
    }
    p, warnings = RetryPolicy.from_row(row)
    assert warnings == []
    assert p == RetryPolicy(10, "linear", 60, 3600, False, False, 90)
    assert p.max_attempts == 11


def test_from_row_lower_bounds_and_missing_keys() -> None:
    p, warnings = RetryPolicy.from_row({"max_retries": 1, "base_delay_seconds": 1})
    assert warnings == []
    assert p == RetryPolicy(max_retries=1, base_delay_seconds=1)


@pytest.mark.parametrize(
    ("column", "value", "expected", "warning"),
    [
        ("max_retries", 0, 1, "max_retries=0 out of range 1-10, using 1"),
        ("max_retries", 11, 10, "max_retries=11 out of range 1-10, using 10"),
        ("max_retries", -5, 1, "max_retries=-5 out of range 1-10, using 1"),
        ("base_delay_seconds", 0, 1, "base_delay_seconds=0 out of range 1-60, using 1"),
        ("base_delay_seconds", 61, 60, "base_delay_seconds=61 out of range 1-60, using 60"),
        ("max_delay_seconds", 0, 1, "max_delay_seconds=0 out of range 1-3600, using 1"),
        ("max_delay_seconds", 3601, 3600, "max_delay_seconds=3601 out of range 1-3600, using 3600"),
        ("dlq_retention_days", 0, 1, "dlq_retention_days=0 out of range 1-90, using 1"),
        ("dlq_retention_days", 365, 90, "dlq_retention_days=365 out of range 1-90, using 90"),
        ("max_retries", None, 3, "max_retries=None is NULL, using 3"),
        ("max_retries", "5", 3, "max_retries='5' is not an integer, using 3"),
        ("max_retries", True, 3, "max_retries=True is not an integer, using 3"),
        ("max_retries", 2.5, 3, "max_retries=2.5 is not an integer, using 3"),
    ],
)
def test_from_row_clamps_int(column: str, value: object, expected: int, warning: str) -> None:
    p, warnings = RetryPolicy.from_row({column: value})
    assert getattr(p, column) == expected
    assert warnings == [warning]


def test_from_row_accepts_integral_float_and_decimal() -> None:
    p, warnings = RetryPolicy.from_row({"max_retries": 4.0, "base_delay_seconds": Decimal("7")})
    assert (p.max_retries, p.base_delay_seconds, warnings) == (4, 7, [])


@pytest.mark.parametrize("value", ["exponentiel", "EXPONENTIAL", "", None, 3])
def test_from_row_unknown_strategy(value: object) -> None:
    p, warnings = RetryPolicy.from_row({"retry_strategy": value})
    assert p.retry_strategy == "exponential"
    assert len(warnings) == 1
    assert warnings[0].startswith(f"retry_strategy={value!r} ")
    assert warnings[0].endswith("using exponential")


@pytest.mark.parametrize("value", ["exponential", "linear", "fixed"])
def test_from_row_known_strategy(value: RetryStrategy) -> None:
    assert RetryPolicy.from_row({"retry_strategy": value}) == (
        RetryPolicy(retry_strategy=value),
        [],
    )


def test_from_row_bools() -> None:
    p, warnings = RetryPolicy.from_row({"enable_jitter": None, "enable_dlq": "yes"})
    assert (p.enable_jitter, p.enable_dlq) == (True, True)
    assert warnings == [
        "enable_jitter=None is NULL, using true",
        "enable_dlq='yes' is not a boolean, using true",
    ]


def test_from_row_several_warnings() -> None:
    p, warnings = RetryPolicy.from_row(
        {"max_retries": 99, "retry_strategy": "random", "max_delay_seconds": 0}
    )
    assert p == RetryPolicy(max_retries=10, max_delay_seconds=1)
    assert len(warnings) == 3


# --- retry_delay -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 5), (2, 10), (3, 20), (4, 40), (5, 80), (6, 160), (7, 300), (8, 300), (50, 300)],
)
def test_exponential(attempt: int, expected: float) -> None:
    assert retry_delay(policy(**NO_JITTER), attempt) == expected


def test_exponential_huge_attempt_does_not_overflow() -> None:
    p = policy(base_delay_seconds=60, max_delay_seconds=3600, **NO_JITTER)
    assert retry_delay(p, 10**9) == 3600
    assert retry_delay(p, 1025) == 3600
    assert retry_delay(p, 2000) == 3600


@pytest.mark.parametrize(("attempt", "expected"), [(1, 7), (2, 14), (3, 21), (10, 70), (100, 100)])
def test_linear(attempt: int, expected: float) -> None:
    p = policy(retry_strategy="linear", base_delay_seconds=7, max_delay_seconds=100, **NO_JITTER)
    assert retry_delay(p, attempt) == expected


@pytest.mark.parametrize("attempt", [1, 2, 9, 1000])
def test_fixed(attempt: int) -> None:
    p = policy(retry_strategy="fixed", base_delay_seconds=12, **NO_JITTER)
    assert retry_delay(p, attempt) == 12


def test_fixed_capped_at_max() -> None:
    p = policy(retry_strategy="fixed", base_delay_seconds=60, max_delay_seconds=10, **NO_JITTER)
    assert retry_delay(p, 1) == 10


def test_attempt_below_one_counts_as_one() -> None:
    assert retry_delay(policy(**NO_JITTER), 0) == 5
    assert retry_delay(policy(**NO_JITTER), -3) == 5


def test_jitter_factor_bounds() -> None:
    p = policy(base_delay_seconds=10, max_delay_seconds=3600)
    assert retry_delay(p, 1, rng=lambda: 0.0) == pytest.approx(8.0)
    assert retry_delay(p, 1, rng=lambda: 0.5) == pytest.approx(10.0)
    assert retry_delay(p, 1, rng=lambda: 0.999999) == pytest.approx(11.999996)
    assert retry_delay(p, 2, rng=lambda: 0.25) == pytest.approx(18.0)


def test_jitter_never_exceeds_max_at_cap() -> None:
    p = policy(base_delay_seconds=5, max_delay_seconds=300)
    assert retry_delay(p, 20, rng=lambda: 0.99) == 300
    assert retry_delay(p, 20, rng=lambda: 0.0) == pytest.approx(240.0)
    # Just below the cap: 160 * 1.19 = 190.4 stays; 280 * 1.19 would exceed 300 and is capped.
    assert retry_delay(p, 6, rng=lambda: 0.975) == pytest.approx(190.4)
    p2 = policy(retry_strategy="fixed", base_delay_seconds=280, max_delay_seconds=300)
    assert retry_delay(p2, 1, rng=lambda: 0.975) == 300


def test_jitter_rng_out_of_range_is_clamped() -> None:
    p = policy(base_delay_seconds=10, max_delay_seconds=3600)
    assert retry_delay(p, 1, rng=lambda: -1.0) == pytest.approx(8.0)
    assert 11.99 < retry_delay(p, 1, rng=lambda: 5.0) <= 12.0


def test_jitter_off_ignores_rng() -> None:
    def boom() -> float:
        raise AssertionError("rng must not be called without jitter")

    assert retry_delay(policy(**NO_JITTER), 2, rng=boom) == 10


def test_retry_after_replaces_delay_without_jitter() -> None:
    p = policy(max_delay_seconds=300)
    assert retry_delay(p, 1, rng=lambda: 0.0, retry_after=42.5) == 42.5
    assert retry_delay(p, 1, retry_after=10_000) == 300
    assert retry_delay(p, 5, retry_after=0) == 0
    assert retry_delay(p, 5, retry_after=-7) == 0
    assert retry_delay(p, 1, retry_after=float("inf")) == 300


def test_retry_after_nan_is_ignored() -> None:
    assert retry_delay(policy(**NO_JITTER), 2, retry_after=float("nan")) == 10


@given(
    max_retries=st.integers(1, 10),
    strategy=st.sampled_from(["exponential", "linear", "fixed"]),
    base=st.integers(1, 60),
    cap=st.integers(1, 3600),
    jitter=st.booleans(),
    attempt=st.integers(-5, 10**6),
    r=st.floats(0.0, 1.0, exclude_max=True),
    retry_after=st.none() | st.floats(allow_nan=True),
)
def test_delay_bounds_property(
    max_retries: int,
    strategy: RetryStrategy,
    base: int,
    cap: int,
    jitter: bool,
    attempt: int,
    r: float,
    retry_after: float | None,
) -> None:
    p = RetryPolicy(max_retries, strategy, base, cap, jitter)
    d = retry_delay(p, attempt, rng=lambda: r, retry_after=retry_after)
    assert 0 <= d <= cap
    if retry_after is None and not jitter:
        n = max(attempt, 1)
        raw = {"exponential": base * 2 ** min(n - 1, 40), "linear": base * n, "fixed": base}
        assert d == min(raw[strategy], cap)
    if retry_after is None and jitter:
        unjittered = retry_delay(dataclasses.replace(p, enable_jitter=False), attempt)
        assert 0.8 * unjittered - 1e-9 <= d <= min(1.2 * unjittered, cap)


@given(
    row=st.dictionaries(
        st.sampled_from(
            ["max_retries", "base_delay_seconds", "max_delay_seconds", "dlq_retention_days"]
        ),
        st.integers(-(10**12), 10**12),
    )
)
def test_from_row_always_in_range(row: dict[str, int]) -> None:
    p, warnings = RetryPolicy.from_row(row)
    assert 1 <= p.max_retries <= 10
    assert 1 <= p.base_delay_seconds <= 60
    assert 1 <= p.max_delay_seconds <= 3600
    assert 1 <= p.dlq_retention_days <= 90
    ranges = {
        "max_retries": (1, 10),
        "base_delay_seconds": (1, 60),
        "max_delay_seconds": (1, 3600),
        "dlq_retention_days": (1, 90),
    }
    expected_warnings = sum(1 for k, v in row.items() if not ranges[k][0] <= v <= ranges[k][1])
    assert len(warnings) == expected_warnings


# --- parse_retry_after -----------------------------------------------------------------------

NOW = datetime(2025, 12, 5, 14, 8, 26, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("0", 0.0),
        ("  30 ", 30.0),
        ("1.5", 1.5),
        ("Fri, 05 Dec 2025 14:10:26 GMT", 120.0),
        ("Fri, 05 Dec 2025 14:00:00 GMT", 0.0),
        ("Friday, 05-Dec-25 14:09:26 GMT", 60.0),
        ("Fri Dec  5 14:08:36 2025", 10.0),
    ],
)
def test_parse_retry_after(value: str, expected: float) -> None:
    assert parse_retry_after(value, NOW) == expected


@pytest.mark.parametrize(
    "value", [None, "", "   ", "-5", "soon", "1e3", "12abc", ".5", "5.", "0x10"]
)
def test_parse_retry_after_unparseable(value: str | None) -> None:
    assert parse_retry_after(value, NOW) is None


def test_parse_retry_after_now_in_other_zone_and_naive() -> None:
    now_plus2 = NOW.astimezone(timezone(timedelta(hours=2)))
    assert parse_retry_after("Fri, 05 Dec 2025 14:10:26 GMT", now_plus2) == 120.0
    assert parse_retry_after("Fri, 05 Dec 2025 14:10:26 GMT", NOW.replace(tzinfo=None)) == 120.0


@given(st.text(max_size=40))
def test_parse_retry_after_never_negative_or_raises(value: str) -> None:
    result = parse_retry_after(value, NOW)
    assert result is None or result >= 0
