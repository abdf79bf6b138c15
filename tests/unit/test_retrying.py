"""Tests for dispatcher.retrying: the one backoff of infrastructure retries (delays, cap, jitter,
reset, the escalation from warning to error, the one recovery line)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest
import structlog
from structlog.testing import capture_logs

from dispatcher import retrying
from dispatcher.retrying import Backoff, Policy


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def steady(policy: Policy, clock: Clock | None = None) -> Backoff:
    """A backoff whose jitter factor is exactly 1 (rand = 0.5)."""
    return Backoff(policy, clock=clock or Clock(), rand=lambda: 0.5)


def test_delays_double_from_initial_up_to_the_cap() -> None:
    b = steady(Policy(initial=0.2, cap=5.0))
    assert [round(b.next_delay(), 6) for _ in range(8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5, 5, 5]
    assert b.failures == 8


def test_a_long_streak_stays_at_the_cap() -> None:
    b = steady(Policy(initial=0.1, cap=10.0))
    for _ in range(2000):
        delay = b.next_delay()
    assert delay == 10.0


@pytest.mark.parametrize(("rand", "factor"), [(0.0, 0.8), (0.5, 1.0), (0.999999, 1.2)])
def test_jitter_spreads_each_delay_within_its_bounds(rand: float, factor: float) -> None:
    b = Backoff(Policy(initial=1.0, cap=8.0, jitter=0.2), rand=lambda: rand)
    b.next_delay()
    assert b.next_delay() == pytest.approx(2.0 * factor, abs=1e-5)


def test_jitter_bounds_with_the_real_random_source() -> None:
    b = Backoff(retrying.LISTENER)  # jitter 0.5: each delay in [0.5, 1.5) of its base
    for _ in range(200):
        base = b.upcoming
        assert 0.5 * base <= b.next_delay() < 1.5 * base


def test_the_cap_is_applied_before_jitter() -> None:
    b = Backoff(Policy(initial=5.0, cap=5.0, jitter=0.2), rand=lambda: 0.999999)
    assert [b.next_delay() <= 6.0 for _ in range(5)] == [True] * 5


def test_reset_starts_again_from_the_initial_delay() -> None:
    b = steady(Policy(initial=0.5, cap=5.0))
    for _ in range(4):
        b.next_delay()
    b.reset()
    assert b.failures == 0
    assert b.failing_for == 0.0
    assert b.next_delay() == 0.5


@pytest.mark.parametrize(
    "kw",
    [
        dict(initial=0.0, cap=1.0),
        dict(initial=2.0, cap=1.0),
        dict(initial=0.1, cap=1.0, jitter=1.0),
        dict(initial=0.1, cap=1.0, jitter=-0.1),
    ],
)
def test_a_policy_out_of_range_is_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Policy(**kw)  # type: ignore[arg-type]


def test_the_four_loops_keep_their_bounds() -> None:
    assert (retrying.LISTENER.initial, retrying.LISTENER.cap, retrying.LISTENER.jitter) == (
        0.1,
        10.0,
        0.5,
    )
    for policy in (retrying.DISPATCH, retrying.RECORDER):
        assert (policy.initial, policy.cap, policy.jitter) == (0.2, 5.0, 0.2)
    assert (retrying.STARTUP.initial, retrying.STARTUP.cap) == (0.5, 5.0)


# --- escalation and recovery, as logged ----------------------------------------------------


def levels(logs: Sequence[Mapping[str, object]]) -> list[object]:
    return [line["log_level"] for line in logs]


def test_failures_escalate_from_warning_to_error_after_n_in_a_row() -> None:
    b = steady(Policy(initial=0.1, cap=1.0, escalate_failures=3, escalate_seconds=1e9))
    with capture_logs() as logs:
        log = structlog.get_logger("test")
        for _ in range(5):
            b.failed(log, "thing_failed", error="OperationalError")
    assert levels(logs) == ["warning", "warning", "error", "error", "error"]
    assert [line["failures"] for line in logs] == [1, 2, 3, 4, 5]
    assert logs[0]["error"] == "OperationalError"
    assert logs[0]["retry_in"] == 0.1


def test_failures_escalate_after_t_seconds_of_failing() -> None:
    clock = Clock()
    b = steady(Policy(initial=1.0, cap=10.0, escalate_failures=100, escalate_seconds=30), clock)
    with capture_logs() as logs:
        log = structlog.get_logger("test")
        b.failed(log, "thing_failed")
        clock.now += 29.9
        b.failed(log, "thing_failed")
        clock.now += 0.1
        b.failed(log, "thing_failed")
    assert levels(logs) == ["warning", "warning", "error"]
    assert [line["failing_for"] for line in logs] == [0.0, 29.9, 30.0]


def test_recovery_logs_once_with_the_streak_then_starts_afresh() -> None:
    clock = Clock()
    b = steady(Policy(initial=0.1, cap=1.0, escalate_failures=2), clock)
    with capture_logs() as logs:
        log = structlog.get_logger("test")
        for _ in range(3):
            b.failed(log, "thing_failed")
            clock.now += 2
        b.recovered(log, "thing_recovered", channel="c")
        b.recovered(log, "thing_recovered", channel="c")
        b.failed(log, "thing_failed")
    assert [(line["event"], line["log_level"]) for line in logs] == [
        ("thing_failed", "warning"),
        ("thing_failed", "error"),
        ("thing_failed", "error"),
        ("thing_recovered", "info"),
        ("thing_failed", "warning"),  # a new streak starts at warning, from the first delay
    ]
    assert logs[3]["failures"] == 3
    assert logs[3]["failed_for"] == 6.0
    assert logs[3]["channel"] == "c"
    assert logs[4]["retry_in"] == 0.1


def test_success_without_a_streak_logs_nothing() -> None:
    b = steady(retrying.DISPATCH)
    with capture_logs() as logs:
        b.recovered(structlog.get_logger("test"), "thing_recovered")
    assert logs == []


def test_a_delay_taken_beforehand_is_logged_and_not_counted_twice() -> None:
    b = steady(Policy(initial=0.5, cap=5.0))
    delay = b.next_delay()
    with capture_logs() as logs:
        assert b.failed(structlog.get_logger("test"), "db_down", delay=delay) == delay
    assert b.failures == 1
    assert logs[0]["retry_in"] == 0.5
    assert logs[0]["failures"] == 1


def test_transient_errors_name_the_database_being_away_not_refusals() -> None:
    import psycopg
    from psycopg_pool import PoolTimeout

    assert issubclass(psycopg.OperationalError, retrying.TRANSIENT_DB_ERRORS)
    assert issubclass(PoolTimeout, retrying.TRANSIENT_DB_ERRORS)
    assert issubclass(psycopg.errors.SerializationFailure, retrying.TRANSIENT_DB_ERRORS)
    assert not issubclass(psycopg.errors.UniqueViolation, retrying.TRANSIENT_DB_ERRORS)
    assert not issubclass(psycopg.errors.InvalidTextRepresentation, retrying.TRANSIENT_DB_ERRORS)
