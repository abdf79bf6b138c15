"""Claimed rows as the claim statements return them, for tests that start attempts
themselves (no database): one webhook's defaults, any field overridden by name."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from dispatcher.backoff import RetryPolicy
from dispatcher.claims import Claimed
from dispatcher.request import NO_CUSTOM_HEADERS


def claimed(**fields: Any) -> Claimed:
    """A first attempt of a `job.created` event to https://example.com/hook, leased now;
    `fields` replace any of it (webhook_id, claim, attempt, sent_at...)."""
    row: dict[str, Any] = {
        "id": uuid.uuid4(),
        "org_id": uuid.uuid4(),
        "webhook_id": uuid.uuid4(),
        "event_id": uuid.uuid4(),
        "event_type": "job.created",
        "request_body": "{}",
        "attempt": 1,
        "max_attempts": 3,
        "claim": datetime.now(UTC),
        "url": "https://example.com/hook",
        "secrets": ("s" * 32,),
        "headers": NO_CUSTOM_HEADERS,
        "active": True,
        "policy": RetryPolicy(),
    }
    row.update(fields)
    return Claimed(**row)
