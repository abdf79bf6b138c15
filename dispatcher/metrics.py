"""Prometheus metrics of one daemon, in a registry of its own.

The wings' own readings come in at wiring time (dispatcher/app.py): `collectors` are
registered after the core's gauges, `integration_events_not_published` is read when
scraped (dispatcher/integrations/stats.py provides both), so this module imports no wing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.registry import Collector

from dispatcher.webhook_health import WebhookHealthGauges

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)


class Metrics:
    def __init__(
        self,
        *,
        collectors: Sequence[Collector] = (),
        integration_events_not_published: Callable[[], float] | None = None,
    ) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.attempts = Counter(
            "dispatcher_attempts",
            "Delivery attempts by outcome "
            "(delivered, retryable, permanent, gone, refused, not_active)",
            ["outcome"],
            registry=r,
        )
        self.attempt_seconds = Histogram(
            "dispatcher_attempt_duration_seconds",
            "Duration of HTTP attempts",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.events_fanned_out = Counter(
            "dispatcher_events_fanned_out", "Events taken from the outbox and matched", registry=r
        )
        self.db_errors = Counter(
            "dispatcher_database_errors", "Database errors met by the dispatch loop", registry=r
        )
        self.listener_connected = Gauge(
            "dispatcher_listener_connected", "1 while the LISTEN connection is up", registry=r
        )
        self.listener_reconnects = Counter(
            "dispatcher_listener_reconnects", "LISTEN connection re-establishments", registry=r
        )
        self.inflight = Gauge("dispatcher_inflight_attempts", "Attempts in flight", registry=r)
        self.deliveries_due = Gauge(
            "dispatcher_deliveries_due", "Deliveries due now (pending or retrying)", registry=r
        )
        self.oldest_due_seconds = Gauge(
            "dispatcher_oldest_due_age_seconds", "Age of the oldest due delivery", registry=r
        )
        self.deliveries = Gauge(
            "dispatcher_deliveries", "Deliveries by status", ["status"], registry=r
        )
        self.dlq_size = Gauge(
            "dispatcher_dlq_size", "Deliveries in the dead-letter queue", registry=r
        )
        self.outbox_backlog = Gauge(
            "dispatcher_outbox_backlog", "Events waiting in the outbox", registry=r
        )
        self.webhooks_disabled = Gauge(
            "dispatcher_webhooks_disabled", "Webhooks disabled automatically", registry=r
        )
        self.outcomes_lost = Gauge(
            "dispatcher_outcomes_lost",
            "Attempt outcomes not recorded because the claim was lost, since start, by reason "
            "(lease_retaken, changed_by_another_writer, deleted)",
            ["reason"],
            registry=r,
        )
        self.integration_events_not_published = Gauge(
            "dispatcher_integration_events_not_published",
            "Integration events the host's publish_event refused since start "
            "(the health log, status or failover they announce was still recorded)",
            registry=r,
        )
        if integration_events_not_published is not None:
            self.integration_events_not_published.set_function(integration_events_not_published)
        self.lifecycle_not_published = Gauge(
            "dispatcher_lifecycle_events_not_published",
            "Lifecycle events (webhook.disabled, webhook.recovered, delivery.dead_lettered) the "
            "host's publish_event refused, ever, by type (the change itself was committed)",
            ["event_type"],
            registry=r,
        )
        self.lifecycle_suppressed = Gauge(
            "dispatcher_lifecycle_events_suppressed",
            "Lifecycle events held back by the per-webhook rate limit, not yet reported in a "
            "published one, by type",
            ["event_type"],
            registry=r,
        )
        self.fanout_timeouts = Counter(
            "dispatcher_fanout_timeouts",
            "Fan-out passes cancelled by statement_timeout (the next one is smaller)",
            registry=r,
        )
        self.events_quarantined = Counter(
            "dispatcher_events_quarantined",
            "Events moved to dispatcher.quarantine: they could not be fanned out alone",
            registry=r,
        )
        self.quarantined = Gauge(
            "dispatcher_quarantined_events", "Events in dispatcher.quarantine", registry=r
        )
        self.events_unreadable = Counter(
            "dispatcher_events_unreadable",
            "Outbox events a fan-out could not read (row-level security?); they stay",
            registry=r,
        )
        self.outbox_unreadable = Gauge(
            "dispatcher_outbox_unreadable",
            "Outbox events this role could not read so far (they wait in the outbox)",
            registry=r,
        )
        self.held = Gauge(
            "dispatcher_held_events",
            "Events held for webhooks disabled automatically (delivered when re-enabled)",
            registry=r,
        )
        self.holds_released = Counter(
            "dispatcher_held_events_released",
            "Held events queued by the daemon's hold sweep (missed by an enable's release)",
            registry=r,
        )
        self.up = Gauge("dispatcher_ready", "1 while the daemon is ready", registry=r)
        self.delivery_latency = Histogram(
            "dispatcher_delivery_latency_seconds",
            "From a delivery's creation (the fan-out of its event, normally milliseconds after "
            "the commit) to its successful attempt, retries included",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.outbox_oldest_seconds = Gauge(
            "dispatcher_outbox_oldest_age_seconds",
            "Age of the oldest event not yet fanned out (commit to fan-out)",
            registry=r,
        )
        self.integrations = Gauge(
            "dispatcher_integrations",
            "Active integrations by health_status (healthy, degraded, unhealthy, unknown)",
            ["health_status"],
            registry=r,
        )
        self.integrations_in_error = Gauge(
            "dispatcher_integrations_in_error",
            "Integrations in status error (failed refresh, undecryptable secret, ...)",
            registry=r,
        )
        self.oauth_tokens_failing = Gauge(
            "dispatcher_oauth_tokens_refresh_failing",
            "Active OAuth tokens whose last refresh attempt failed",
            registry=r,
        )
        self.oauth_tokens_expired = Gauge(
            "dispatcher_oauth_tokens_expired",
            "OAuth tokens expired for good (re-authentication needed)",
            registry=r,
        )
        for collector in collectors:
            r.register(collector)
        self.webhooks = WebhookHealthGauges(r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
