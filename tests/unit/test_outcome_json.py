"""The outcomes handed to delivery_record_outcomes: orjson writes the OutcomeRow dataclass itself,
and each object must carry what the former hand-built dict did, value for value (UUIDs as
their text, datetimes as isoformat(), long error texts cut)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from support.claimed import claimed as claimed_row

from dispatcher.claims import Claimed
from dispatcher.outcomes import Outcome
from dispatcher.recorder import OutcomeRow, outcome_row, outcomes_json
from dispatcher.sender import AttemptResult
from dispatcher.transitions import after_attempt


def former_json(row: OutcomeRow, seq: int) -> dict[str, Any]:
    """What recorder.OutcomeRow.as_json built before orjson wrote the dataclass."""
    return {
        "id": str(row.id),
        "webhook_id": str(row.webhook_id),
        "org_id": str(row.org_id),
        "claim": row.claim.isoformat(),
        "seq": seq,
        "status": row.status,
        "outcome": row.outcome,
        "attempt": row.attempt,
        "attempt_number": row.attempt_number,
        "retry_in": row.retry_in,
        "final": row.final,
        "counts": row.counts,
        "success": row.success,
        "gone": row.gone,
        "request_url": row.request_url,
        "request_headers": row.request_headers,
        "response_status": row.response_status,
        "response_headers": row.response_headers,
        "response_body": row.response_body,
        "duration_ms": row.duration_ms,
        "error_message": row.error_message[:2000] if row.error_message else None,
        "error_code": row.error_code[:50] if row.error_code else None,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "ended_at": row.ended_at.isoformat() if row.ended_at else None,
        # since issue 12's lean statements: which of them the recorder uses (the statement
        # reads no such column; jsonb_to_recordset ignores it)
        "keyed": row.keyed,
    }


def claimed(claim: datetime, attempt: int = 1) -> Claimed:
    return claimed_row(claim=claim, attempt=attempt, sent_at=claim - timedelta(microseconds=1))


CLAIMS = [
    datetime(2026, 11, 30, 7, 1, 2, 345678, tzinfo=UTC),
    datetime(2026, 11, 30, 7, 1, 2, tzinfo=UTC),  # no microseconds: isoformat leaves them out
    datetime(2026, 11, 30, 7, 1, 2, 5, tzinfo=ZoneInfo("Europe/Paris")),  # psycopg's zones
    datetime(2026, 11, 30, 7, 1, 2, 500000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
]
RESULTS = [
    AttemptResult(
        Outcome.DELIVERED,
        response_status=204,
        duration_ms=3,
        response_headers={"Date": "Mon, 30 Nov 2026 07:01:02 GMT", "Server": "x\u00e9"},
        response_body="",
        request_headers={"webhook-id": "m1", "Content-Type": "application/json"},
    ),
    AttemptResult(
        Outcome.RETRYABLE,
        response_status=503,
        duration_ms=1200,
        response_body='{"error": "busy \\ud83d"}',
        error_message="HTTP 503 Service Unavailable " + "x" * 3000,
        error_code="http_503" + "y" * 60,
        retry_after=2.5,
    ),
    AttemptResult(Outcome.GONE, response_status=410, error_message="HTTP 410 Gone"),
    AttemptResult(Outcome.REFUSED, error_code="", error_message=""),  # empty texts: null
]


@pytest.mark.parametrize("claim", CLAIMS)
def test_each_outcome_is_written_as_the_former_dict(claim: datetime) -> None:
    rows = []
    for attempt, result in enumerate([*RESULTS, None], start=1):
        d = claimed(claim, attempt)
        t = after_attempt(
            outcome=result.outcome if result else Outcome.REFUSED,
            attempt=d.attempt,
            max_attempts=d.max_attempts,
            policy=d.policy,
            retry_after=result.retry_after if result else None,
            rng=lambda: 0.5,
        )
        rows.append(outcome_row(d, result, t, result.error_message if result else "not active"))
    for seq, row in enumerate(rows, start=7):
        row.seq = seq
    written = orjson.loads(outcomes_json(rows))
    assert written == [former_json(row, seq) for seq, row in enumerate(rows, start=7)]
    assert written[0]["claim"] == claim.isoformat()


def test_long_error_texts_are_cut_when_the_row_is_built() -> None:
    d = claimed(CLAIMS[0])
    result = RESULTS[1]
    t = after_attempt(outcome=result.outcome, attempt=1, max_attempts=3, policy=d.policy)
    row = outcome_row(d, result, t, result.error_message)
    assert row.error_message is not None and len(row.error_message) == 2000
    assert row.error_code == ("http_503" + "y" * 60)[:50]
