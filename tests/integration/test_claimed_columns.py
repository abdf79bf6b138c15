"""`Claimed.from_row` reads the rows of the real delivery_fan_out and delivery_claim_due statements.

The row is a dict keyed by column name: a column renamed or dropped in
dispatcher/sql/delivery.sql, or a key misspelt in dispatcher/claims.py, would fail at the
first claim (a required key) or silently read None (an optional one, `row.get`). Both
statements run here on a migrated database, and every key from_row reads is checked
against the columns each returns; then the claimed delivery built from each real row is
checked field by field.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import hostdb

from dispatcher.admission import Admission
from dispatcher.backoff import RetryPolicy
from dispatcher.claims import Claimed
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits

LEASE = 60.0
# Columns from_row reads with row.get() that a statement leaves out on purpose: a fan-out
# creates its deliveries (created_at: now) and never claims a failing webhook's row.
NOT_FROM_FAN_OUT = {"created_at", "failing"}


class Reading(dict[str, Any]):
    """A row that remembers which keys were read, and how."""

    def __init__(self, row: dict[str, Any]) -> None:
        super().__init__(row)
        self.required: set[str] = set()
        self.optional: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.required.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.optional.add(key)
        return super().get(key, default)


def _params() -> dict[str, Any]:
    admission: Admission[Claimed] = Admission(4, RateLimits())
    return {**admission.claim_params(), "lease": LEASE}


async def _columns_and_rows(
    conn: hostdb.Conn, name: str, params: dict[str, Any]
) -> tuple[set[str], list[dict[str, Any]]]:
    cur = await conn.execute(query(name), params)
    assert cur.description is not None
    return {c.name for c in cur.description}, [r for r in await cur.fetchall() if r["id"]]


def _check(claimed: Claimed, hook: dict[str, Any], org: UUID, event: UUID) -> None:
    assert claimed.org_id == org and claimed.webhook_id == hook["id"]
    assert claimed.event_id == event and claimed.event_type == "job.created"
    assert '"job.created"' in claimed.request_body
    assert claimed.url == hook["url"] and claimed.secrets == (hook["secret"],)
    assert claimed.headers.as_dict() == {"X-Team": "a"}
    assert claimed.active and not claimed.failing
    assert claimed.attempt == 1 and claimed.max_attempts == 3  # max_retries 2, plus one
    assert claimed.policy == RetryPolicy(max_retries=2, base_delay_seconds=7)
    assert claimed.sequence is not None and claimed.sequence >= 1


async def test_from_row_reads_only_columns_the_claim_statements_return(conn: hostdb.Conn) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, max_retries=2, base_delay_seconds=7)
    hook = await hostdb.create_webhook(
        conn, org, "http://127.0.0.1:9/hook", ["job.*"], headers={"X-Team": "a"}
    )
    [event] = await hostdb.insert_events_directly(conn, org, "job.created", 1)

    fan_cols, fanned = await _columns_and_rows(
        conn, "delivery_fan_out", {**_params(), "batch": 10, "claim": 10, "only": None}
    )
    assert len(fanned) == 1, fanned
    now = datetime.now(UTC)
    row = Reading(fanned[0])
    _check(Claimed.from_row(row, now), hook, org, event)
    assert row.required <= fan_cols, sorted(row.required - fan_cols)
    assert row.optional - fan_cols == NOT_FROM_FAN_OUT

    # due again at once (as if its lease had run out): delivery_claim_due leases the same row
    await conn.execute(
        "UPDATE webhook_deliveries SET next_retry_at = now() - interval '1 second' WHERE id = %s",
        (fanned[0]["id"],),
    )
    due_cols, due = await _columns_and_rows(
        conn, "delivery_claim_due", {**_params(), "limit": 10, "scan": 40}
    )
    assert [r["id"] for r in due] == [fanned[0]["id"]]
    row = Reading(due[0])
    claimed = Claimed.from_row(row, now)
    _check(claimed, hook, org, event)
    assert claimed.created_at is not None and claimed.created_at < now + timedelta(seconds=1)
    assert claimed.created_at != now  # the row's own, not the fallback
    assert row.required <= due_cols, sorted(row.required - due_cols)
    assert row.optional <= due_cols, sorted(row.optional - due_cols)
    # the lease token is the statement's next_retry_at, a lease from now
    assert claimed.claim > now + timedelta(seconds=LEASE - 10)
