"""Per-webhook endpoint health: the view dispatcher.webhook_health (0028_webhook_health.sql)
read for operators (`dispatcher webhooks health`) and, bounded, for /metrics.

/metrics carries the health of at most N webhooks (DISPATCHER_METRICS_WEBHOOKS_TOP), those
with the largest due backlog, then held events: the label sets are rebuilt on every refresh,
so a webhook that leaves the top N leaves /metrics, and the series never exceed N per gauge
and label value.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Gauge

from dispatcher.queries import query

LABELS = ("webhook_id", "org_id")
WINDOWS = ("1h", "24h")
QUANTILES = (("0.5", "p50"), ("0.95", "p95"))


class WebhookHealthGauges:
    """The dispatcher_webhook_* gauges, labelled by webhook (and its organization)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.due = Gauge(
            "dispatcher_webhook_due_deliveries",
            "Deliveries due now for this webhook (its backlog)",
            LABELS,
            registry=r,
        )
        self.in_flight = Gauge(
            "dispatcher_webhook_in_flight_deliveries",
            "First attempts being sent to this webhook (pending rows under a lease)",
            LABELS,
            registry=r,
        )
        self.retry_waiting = Gauge(
            "dispatcher_webhook_retry_waiting_deliveries",
            "Retrying deliveries of this webhook not due yet (waiting, or being retried)",
            LABELS,
            registry=r,
        )
        self.held = Gauge(
            "dispatcher_webhook_held_events",
            "Events held for this webhook while it is disabled",
            LABELS,
            registry=r,
        )
        self.consecutive_failures = Gauge(
            "dispatcher_webhook_consecutive_failures",
            "The webhook's consecutive_failures",
            LABELS,
            registry=r,
        )
        self.attempts = Gauge(
            "dispatcher_webhook_recent_attempts",
            "Attempts made to this webhook in the window (1h, 24h), by every replica",
            [*LABELS, "window"],
            registry=r,
        )
        self.success_ratio = Gauge(
            "dispatcher_webhook_success_ratio",
            "Share of the window's attempts that succeeded (absent without attempts)",
            [*LABELS, "window"],
            registry=r,
        )
        self.response_seconds = Gauge(
            "dispatcher_webhook_response_seconds",
            "Response time of the window's attempts at a quantile (0.5, 0.95)",
            [*LABELS, "window", "quantile"],
            registry=r,
        )
        self.disabled_since = Gauge(
            "dispatcher_webhook_disabled_since_timestamp_seconds",
            "When the webhook was disabled (only for disabled webhooks)",
            LABELS,
            registry=r,
        )
        self._all = (
            self.due,
            self.in_flight,
            self.retry_waiting,
            self.held,
            self.consecutive_failures,
            self.attempts,
            self.success_ratio,
            self.response_seconds,
            self.disabled_since,
        )

    def clear(self) -> None:
        for gauge in self._all:
            gauge.clear()

    def update(self, rows: Sequence[dict[str, Any]]) -> None:
        """Replace every series by those of `rows` (gauges_webhook_health_top's)."""
        self.clear()
        for row in rows:
            hook = (str(row["webhook_id"]), str(row["org_id"]))
            self.due.labels(*hook).set(row["due"])
            self.in_flight.labels(*hook).set(row["in_flight"])
            self.retry_waiting.labels(*hook).set(row["retry_waiting"])
            self.held.labels(*hook).set(row["held"])
            self.consecutive_failures.labels(*hook).set(row["consecutive_failures"])
            if row["disabled_since"] is not None:
                self.disabled_since.labels(*hook).set(float(row["disabled_since"]))
            for window in WINDOWS:
                self.attempts.labels(*hook, window).set(row[f"attempts_{window}"])
                rate = row[f"success_rate_{window}"]
                if rate is not None:
                    self.success_ratio.labels(*hook, window).set(float(rate))
                for quantile, column in QUANTILES:
                    ms = row[f"{column}_ms_{window}"]
                    if ms is not None:
                        self.response_seconds.labels(*hook, window, quantile).set(ms / 1000)


async def refresh(conn: psycopg.AsyncConnection[Any], gauges: WebhookHealthGauges, top: int) -> int:
    """Read the health of the `top` webhooks with the largest backlog into `gauges`;
    returns how many webhooks /metrics now carries."""
    if top <= 0:
        gauges.clear()
        return 0
    cur = await conn.execute(query("gauges_webhook_health_top"), {"top": top})
    rows = await cur.fetchall()
    gauges.update(rows)
    return len(rows)
