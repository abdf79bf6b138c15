"""Prometheus metrics of one daemon, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
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

    def render(self) -> bytes:
        return generate_latest(self.registry)
