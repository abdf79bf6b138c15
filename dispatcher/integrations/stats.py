"""Counts of integration upkeep in this process, for /metrics (dispatcher/metrics.py, wired
in dispatcher/app.py with `Counters` and `events_not_published`).

Plain counters the integrations worker bumps as it goes; the metrics registry reads them when
scraped, so the worker needs no reference to the registry. Labels are closed sets:

- ``TOKEN_REFRESHES`` by outcome: ``refreshed`` (new token stored), ``retry`` (transient
  failure, tried again with backoff), ``expired`` (the provider refused the refresh token, or
  there is none: re-authentication needed), ``failed`` (configuration, key or endpoint
  rejection: the integration is set to ``error``), ``error`` (an internal error, retried).
- ``HEALTH_CHECKS`` by the check's status: ``success``, ``failure``, ``timeout``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from dispatcher.integrations import events

TOKEN_REFRESH_OUTCOMES = ("refreshed", "retry", "expired", "failed", "error")
HEALTH_CHECK_STATUSES = ("success", "failure", "timeout")

TOKEN_REFRESHES: Counter[str] = Counter()
HEALTH_CHECKS: Counter[str] = Counter()


class Counters(Collector):
    """dispatcher_token_refreshes_total and dispatcher_integration_checks_total, read from
    the counters above when scraped (every label present from the start)."""

    def collect(self) -> Iterator[Metric]:
        refreshes = CounterMetricFamily(
            "dispatcher_token_refreshes",
            "OAuth token refresh attempts by outcome (refreshed, retry, expired, failed, error)",
            labels=["outcome"],
        )
        for outcome in TOKEN_REFRESH_OUTCOMES:
            refreshes.add_metric([outcome], TOKEN_REFRESHES[outcome])
        yield refreshes
        checks = CounterMetricFamily(
            "dispatcher_integration_checks",
            "Integration health checks by status (success, failure, timeout)",
            labels=["status"],
        )
        for status in HEALTH_CHECK_STATUSES:
            checks.add_metric([status], HEALTH_CHECKS[status])
        yield checks


def events_not_published() -> float:
    """Integration events the host's publish_event refused since start (all types)."""
    return float(sum(events.NOT_PUBLISHED.values()))
