"""Health verdicts, transition events, refresh backoff and failover eligibility (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from dispatcher.integrations.failover import backup_problem
from dispatcher.integrations.token_refresh import backoff_seconds
from dispatcher.integrations.verdict import (
    CheckResult,
    HealthState,
    assess,
    failure_runs,
    transition_event,
)

NOW = datetime(2025, 12, 5, 14, 0, tzinfo=UTC)
OK = CheckResult("success", 120)
SLOW = CheckResult("success", 3500)
FAIL = CheckResult("failure", 10, "HTTP 500", "http_500")
TIMEOUT = CheckResult("timeout", 10000, "no answer", "timeout")


def run(results: list[CheckResult], unhealthy_after: int = 2) -> list[str]:
    state, out = HealthState(), list[str]()
    for r in results:
        status, state = assess(state, r, now=NOW, slow_ms=3000, unhealthy_after=unhealthy_after)
        out.append(status)
    return out


def test_healthy_and_slow() -> None:
    assert run([OK, OK]) == ["healthy", "healthy"]
    assert run([SLOW, OK]) == ["degraded", "healthy"]
    assert run([CheckResult("success", 3000)]) == ["healthy"]  # "slower than 3 s"


def test_failures_degrade_then_unhealthy_and_timeouts_count() -> None:
    assert run([FAIL, FAIL, FAIL]) == ["degraded", "unhealthy", "unhealthy"]
    assert run([FAIL, TIMEOUT], unhealthy_after=2) == ["degraded", "unhealthy"]
    assert run([FAIL, FAIL, FAIL], unhealthy_after=3) == ["degraded", "degraded", "unhealthy"]
    assert run([FAIL], unhealthy_after=1) == ["unhealthy"]


def test_one_outage_recovers_but_flapping_stays_degraded() -> None:
    assert run([OK, FAIL, FAIL, OK]) == ["healthy", "degraded", "unhealthy", "healthy"]
    assert run([OK, FAIL, OK, FAIL, OK]) == [
        "healthy",
        "degraded",
        "healthy",
        "degraded",
        "degraded",
    ]
    # once the older failure run leaves the window (10 results), healthy again
    assert run([FAIL, OK, FAIL] + [OK] * 9)[-1] == "healthy"
    assert failure_runs("sffsfsf") == 3 and failure_runs("") == 0


def test_state_tracks_failures_and_healthy_since() -> None:
    _, s = assess(HealthState(), FAIL, now=NOW, slow_ms=3000, unhealthy_after=2)
    assert s.consecutive_failures == 1 and s.healthy_since is None and s.recent == "f"
    _, s = assess(s, OK, now=NOW, slow_ms=3000, unhealthy_after=2)
    assert s.consecutive_failures == 0 and s.healthy_since == NOW
    later = NOW + timedelta(minutes=5)
    _, s = assess(s, OK, now=later, slow_ms=3000, unhealthy_after=2)
    assert s.healthy_since == NOW  # kept while healthy
    _, s = assess(s, SLOW, now=later, slow_ms=3000, unhealthy_after=2)
    assert s.healthy_since is None  # degraded is not healthy


@pytest.mark.parametrize(
    ("previous", "new", "event"),
    [
        ("unknown", "healthy", None),
        (None, "healthy", None),
        ("healthy", "healthy", None),
        ("healthy", "degraded", "integration.health.degraded"),
        ("unknown", "degraded", "integration.health.degraded"),
        ("degraded", "unhealthy", "integration.health.unhealthy"),
        ("healthy", "unhealthy", "integration.health.unhealthy"),
        ("unhealthy", "degraded", "integration.health.degraded"),
        ("unhealthy", "healthy", "integration.health.recovered"),
        ("degraded", "healthy", "integration.health.recovered"),
        ("unhealthy", "unhealthy", None),
    ],
)
def test_transition_events(previous, new, event) -> None:
    assert transition_event(previous, new) == event


def test_backoff_grows_caps_and_stays_before_expiry() -> None:
    assert backoff_seconds(1, 10, 300, None, rand=0.5) == 10
    assert backoff_seconds(3, 10, 300, None, rand=0.5) == 40
    assert backoff_seconds(20, 10, 300, None, rand=1.0) == 300  # capped after jitter
    assert backoff_seconds(5, 10, 300, 60, rand=0.5) == 30  # half the time left
    assert backoff_seconds(5, 10, 300, 4, rand=0.5) == 10  # never below the base
    assert backoff_seconds(5, 10, 300, -100, rand=0.5) == 160  # already expired: plain backoff
    for attempt in range(1, 12):
        assert 0.1 <= backoff_seconds(attempt, 10, 300, None) <= 300


def test_backup_problem() -> None:
    ok = {"deleted_at": None, "status": "active", "health_status": "healthy"}
    assert backup_problem(ok) is None
    assert backup_problem({**ok, "health_status": "unknown"}) is None
    assert backup_problem({**ok, "health_status": "degraded"}) is None
    assert "itself unhealthy" in str(backup_problem({**ok, "health_status": "unhealthy"}))
    assert "inactive" in str(backup_problem({**ok, "status": "inactive"}))
    assert "error" in str(backup_problem({**ok, "status": "error"}))
    assert "deleted" in str(backup_problem({**ok, "deleted_at": NOW}))
    assert "does not exist" in str(backup_problem(None))
