"""The verdict of an integration health check (no I/O).

``assess`` turns the previous state and a result into a health status:
failure -> ``degraded``, or ``unhealthy`` after ``unhealthy_after`` consecutive failures;
success -> ``degraded`` when slower than ``slow_ms`` or when the recent window holds two
separate failure runs (intermittent), else ``healthy``. ``transition_event`` names the
integration event a change of status announces. The probe and its recording:
health_checks.py; what a verdict does to failover: failover.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from dispatcher.integrations import events

CheckStatus = Literal["success", "failure", "timeout"]
HealthStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]
CheckType = Literal["scheduled", "manual", "auto"]

WINDOW = 10  # outcomes kept in integration_health_state.recent


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: CheckStatus
    response_time_ms: int | None = None
    error_message: str | None = None
    error_code: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status != "success"


@dataclass(frozen=True, slots=True)
class HealthState:
    consecutive_failures: int = 0
    recent: str = ""
    healthy_since: datetime | None = None


def failure_runs(recent: str) -> int:
    return sum(1 for i, c in enumerate(recent) if c == "f" and (i == 0 or recent[i - 1] != "f"))


def assess(
    previous: HealthState,
    result: CheckResult,
    *,
    now: datetime,
    slow_ms: int,
    unhealthy_after: int,
) -> tuple[HealthStatus, HealthState]:
    """The new health status and state after ``result`` (pure)."""
    recent = (previous.recent + ("f" if result.failed else "s"))[-WINDOW:]
    status: HealthStatus
    if result.failed:
        failures = previous.consecutive_failures + 1
        status = "unhealthy" if failures >= unhealthy_after else "degraded"
        return status, HealthState(failures, recent, None)
    slow = result.response_time_ms is not None and result.response_time_ms > slow_ms
    status = "degraded" if slow or failure_runs(recent) >= 2 else "healthy"
    since = (previous.healthy_since or now) if status == "healthy" else None
    return status, HealthState(0, recent, since)


def transition_event(previous: str | None, new: HealthStatus) -> str | None:
    if new == previous:
        return None
    if new == "degraded":
        return events.HEALTH_DEGRADED
    if new == "unhealthy":
        return events.HEALTH_UNHEALTHY
    if new == "healthy" and previous in ("degraded", "unhealthy"):
        return events.HEALTH_RECOVERED
    return None
