"""Counts of integration upkeep in this process, for /metrics (dispatcher/metrics.py).

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

TOKEN_REFRESH_OUTCOMES = ("refreshed", "retry", "expired", "failed", "error")
HEALTH_CHECK_STATUSES = ("success", "failure", "timeout")

TOKEN_REFRESHES: Counter[str] = Counter()
HEALTH_CHECKS: Counter[str] = Counter()
