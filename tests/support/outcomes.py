"""Outcome rows as the recorder writes them, for tests that write outcomes themselves."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from dispatcher.recorder import OutcomeRow


def delivered(
    id: UUID, webhook_id: UUID, org_id: UUID, claim: datetime, *, attempt: int = 1, **extra: Any
) -> OutcomeRow:
    """A delivered attempt (success, final, not counted as a failure); `extra` sets the rest
    of the row (response, timings, keyed, seq...)."""
    return OutcomeRow(
        id=id,
        webhook_id=webhook_id,
        org_id=org_id,
        claim=claim,
        status="success",
        outcome="delivered",
        attempt=attempt,
        attempt_number=attempt,
        retry_in=None,
        final=True,
        counts=False,
        success=True,
        gone=False,
        **extra,
    )
