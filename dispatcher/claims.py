"""A claimed delivery: what one row leased to this process carries, and its retry policy.

Built from the rows the delivery_fan_out and delivery_claim_due queries return. Pure apart from a
log line when an org's retry configuration had to be clamped.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import structlog

from dispatcher.backoff import RetryPolicy
from dispatcher.request import CustomHeaders, parse_custom_headers
from dispatcher.tracing import valid_traceparent

log = structlog.get_logger("dispatcher.claims")

_POLICY_KEYS = (
    "max_retries",
    "retry_strategy",
    "base_delay_seconds",
    "max_delay_seconds",
    "enable_jitter",
    "enable_dlq",
)
_policy_values = operator.itemgetter(*_POLICY_KEYS)  # row -> tuple of the policy's columns


@dataclass(slots=True)
class Claimed:
    """A delivery leased to this process; `claim` is the lease token."""

    id: UUID
    org_id: UUID
    webhook_id: UUID
    event_id: UUID | None
    event_type: str
    request_body: str
    attempt: int
    max_attempts: int
    claim: datetime
    url: str
    secrets: tuple[str, ...]  # current first, then one rotating out
    headers: CustomHeaders
    active: bool
    policy: RetryPolicy
    failing: bool = False
    # monotonic time until which the lease surely holds (the dispatcher sets it from when
    # the claim statement was sent; inf: not known, not checked), and when it was sent
    lease_until: float = float("inf")
    sent_at: datetime | None = None
    # monotonic time it entered the claim-ahead queue (None: started as claimed)
    queued_at: float | None = None
    # When the delivery row was created (fan-out); for /metrics' delivery latency.
    created_at: datetime | None = None
    traceparent: str | None = None  # the publisher's W3C trace context, validated
    sequence: int | None = None  # per-webhook sequence number (0032); None: not numbered
    # of an ordered key (0032): its outcome needs the full delivery_record_outcomes (True
    # when the claim statement did not say)
    keyed: bool = True

    @classmethod
    def from_row(cls, row: dict[str, Any], now: datetime) -> Claimed:
        policy = _policy(row["org_id"], _policy_values(row))
        secret = row["secret"] or ""
        previous = row["previous_secret"]
        if previous and (expires := row["previous_expires_at"]) and expires > now:
            secrets: tuple[str, ...] = (secret, previous)
        else:
            secrets = (secret,)
        return cls(
            id=row["id"],
            org_id=row["org_id"],
            webhook_id=row["webhook_id"],
            event_id=row["event_id"],
            event_type=full_event_type(row["event_type"] or "", row["request_body"]),
            request_body=row["request_body"] or "",
            attempt=max(int(row["attempt_number"]), 1),
            max_attempts=max(int(row["max_attempts"]), 1),
            claim=row["claim"],
            url=row["url"] or "",
            secrets=secrets,
            headers=parse_custom_headers(row["headers"]),
            active=row["webhook_status"] == "active" and row["webhook_deleted_at"] is None,
            policy=policy,
            failing=bool(row.get("failing")),
            created_at=row.get("created_at") or now,
            traceparent=valid_traceparent(row.get("traceparent")),
            sequence=row.get("sequence"),
            keyed=row.get("keyed") is not False,
        )


# webhook_deliveries.event_type is the host's varchar(100): longer types are cut there.
EVENT_TYPE_COLUMN_CHARS = 100


def full_event_type(stored: str, body: str | None) -> str:
    """The event's whole type for X-InTime-Event: the delivery row's column when it is
    shorter than the column's limit, else the ``type`` of the signed body when that
    continues what the row kept (the column is cut at 100 characters, the body is not)."""
    if len(stored) < EVENT_TYPE_COLUMN_CHARS or not body:
        return stored
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return stored
    full = data.get("type") if isinstance(data, dict) else None
    if isinstance(full, str) and len(full) > len(stored) and full.startswith(stored):
        return full
    return stored


@functools.lru_cache(maxsize=4096)
def _policy(org_id: UUID, values: tuple[Any, ...]) -> RetryPolicy:
    """The org's retry policy, clamped; warned about once per org and configuration."""
    if values[0] is None:  # no integration_retry_config row: the defaults
        return DEFAULT_POLICY
    policy, warnings = RetryPolicy.from_row(dict(zip(_POLICY_KEYS, values, strict=True)))
    if warnings:
        log.warning("retry_config_clamped", org_id=str(org_id), problems=warnings)
    return policy


DEFAULT_POLICY = RetryPolicy()
