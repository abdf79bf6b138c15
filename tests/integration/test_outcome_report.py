"""delivery_record_outcomes' report of the outcomes it could not record (issue 12).

One batch, six outcomes of rows leased by delivery_claim_due, each row then in a different
state when the statement runs: locked FOR UPDATE by another open transaction (`busy`: not
written, not lost, for the recorder to try again); deleted (lost, `deleted`); due again and
leased anew at the same attempt (lost, `lease_retaken`); finished by another writer (lost,
`changed_by_another_writer`); and two still held by our claim (recorded: one failure with
its attempt history, one first-attempt success without). The sets are checked exactly, and
the rows not recorded are checked untouched. On the standalone schema and the host's.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import hostdb
import pytest

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import OutcomeRow, outcomes_json

LEASE = 60.0
ROLES = ("busy", "deleted", "retaken", "changed", "failed", "succeeded")


def _params(limit: int) -> dict[str, Any]:
    admission: Admission[Claimed] = Admission(4, RateLimits())
    return {**admission.claim_params(), "lease": LEASE, "limit": limit, "scan": limit * 4}


async def _claim(conn: hostdb.Conn, limit: int) -> dict[UUID, Claimed]:
    """Lease the due rows as the daemon does (delivery_claim_due)."""
    cur = await conn.execute(query("delivery_claim_due"), _params(limit))
    now = datetime.now(UTC)
    return {r["id"]: Claimed.from_row(r, now) for r in await cur.fetchall() if r["id"]}


def _outcome(d: Claimed, *, success: bool) -> OutcomeRow:
    """What the recorder writes for `d`'s attempt: a 204, or a 503 to retry in a minute."""
    now = datetime.now(UTC)
    return OutcomeRow(
        id=d.id,
        webhook_id=d.webhook_id,
        org_id=d.org_id,
        claim=d.claim,
        status="success" if success else "retrying",
        outcome="delivered" if success else "retryable",
        attempt=d.attempt,
        attempt_number=d.attempt if success else d.attempt + 1,
        retry_in=None if success else 60.0,
        final=success,
        counts=not success,
        success=success,
        gone=False,
        request_url=d.url,
        request_headers={"content-type": "application/json"},
        response_status=204 if success else 503,
        response_headers={"x-receiver": "test"},
        response_body="" if success else "busy, try later",
        duration_ms=5,
        error_message=None if success else "HTTP 503",
        error_code=None if success else "http_503",
        started_at=now - timedelta(milliseconds=5),
        ended_at=now,
    )


async def _row(conn: hostdb.Conn, delivery: UUID) -> dict[str, Any] | None:
    cur = await conn.execute("SELECT * FROM webhook_deliveries WHERE id = %s", (delivery,))
    row = await cur.fetchone()
    return dict(row) if row else None


async def _history(conn: hostdb.Conn) -> list[tuple[UUID, int, str, int | None, str | None]]:
    cur = await conn.execute(
        "SELECT delivery_id, attempt_number, outcome, response_status, error_message"
        " FROM dispatcher.attempts ORDER BY delivery_id, attempt_number"
    )
    return [
        (
            r["delivery_id"],
            r["attempt_number"],
            r["outcome"],
            r["response_status"],
            r["error_message"],
        )
        for r in await cur.fetchall()
    ]


@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
async def test_busy_and_lost_outcomes_are_reported_exactly(
    request: pytest.FixtureRequest, database: str
) -> None:
    dsn = request.getfixturevalue(database)
    conn = await hostdb.connect(dsn)
    locker = await hostdb.connect(dsn)
    try:
        org = await hostdb.create_org(conn)
        ids: dict[str, UUID] = {}
        for role in ROLES:  # one webhook each: no per-webhook cap in the way of the claim
            hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", name=role)
            cur = await conn.execute(
                "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload,"
                " request_url, request_headers, request_body, status)"
                " VALUES (%s, %s, 'job.created', '{}', 'https://example.com/hook', '{}', '{}',"
                " 'pending') RETURNING id",
                (org, hook["id"]),
            )
            got = await cur.fetchone()
            assert got is not None
            ids[role] = got["id"]
        claimed = await _claim(conn, len(ROLES))
        assert set(claimed) == set(ids.values())
        batch = [_outcome(claimed[ids[r]], success=r != "failed") for r in ROLES]
        for seq, out in enumerate(batch, 1):
            out.seq = seq

        # deleted while it was being sent
        await conn.execute("DELETE FROM webhook_deliveries WHERE id = %s", (ids["deleted"],))
        # its lease ran out and it was leased again (another claim token, same attempt)
        await conn.execute(
            "UPDATE webhook_deliveries SET next_retry_at = now() - interval '1 second'"
            " WHERE id = %s",
            (ids["retaken"],),
        )
        again = await _claim(conn, len(ROLES))
        assert set(again) == {ids["retaken"]}
        retaken = again[ids["retaken"]]
        assert retaken.claim != claimed[ids["retaken"]].claim
        assert retaken.attempt == claimed[ids["retaken"]].attempt
        # another writer (the host's edge function) sent it itself and finished it
        await conn.execute(
            "UPDATE webhook_deliveries SET status = 'success', next_retry_at = NULL,"
            " response_status = 200, delivered_at = now() WHERE id = %s",
            (ids["changed"],),
        )
        before = {r: await _row(conn, ids[r]) for r in ("busy", "retaken", "changed")}

        # a statement that waited on the lock would fail here rather than hang the test
        await conn.execute("SET lock_timeout = '5s'")
        async with locker.transaction():
            # still our claim, but locked by another transaction
            await locker.execute(
                "SELECT 1 FROM webhook_deliveries WHERE id = %s FOR UPDATE", (ids["busy"],)
            )
            cur = await conn.execute(
                query("delivery_record_outcomes"), {"rows": outcomes_json(batch)}
            )
            got = await cur.fetchone()
        assert got is not None

        assert got["recorded"] == 2
        assert set(got["busy"]) == {ids["busy"]}
        assert len(got["busy"]) == 1
        assert sorted((UUID(x["id"]), x["reason"]) for x in got["lost"]) == sorted(
            [
                (ids["deleted"], "deleted"),
                (ids["retaken"], "lease_retaken"),
                (ids["changed"], "changed_by_another_writer"),
            ]
        )

        # the rows not recorded are as they were: busy waits for the recorder's retry
        for role, was in before.items():
            assert await _row(conn, ids[role]) == was, role
        assert await _row(conn, ids["deleted"]) is None

        # the two still held are written
        failed = await _row(conn, ids["failed"])
        assert failed is not None
        assert (failed["status"], failed["attempt_number"], failed["response_status"]) == (
            "retrying",
            claimed[ids["failed"]].attempt + 1,
            503,
        )
        assert (failed["error_message"], failed["response_body"]) == (
            "HTTP 503",
            "busy, try later",
        )
        assert failed["delivered_at"] is None
        retry_at = failed["next_retry_at"]
        assert retry_at is not None and retry_at > datetime.now(UTC) + timedelta(seconds=30)
        succeeded = await _row(conn, ids["succeeded"])
        assert succeeded is not None
        assert (succeeded["status"], succeeded["response_status"]) == ("success", 204)
        assert succeeded["next_retry_at"] is None and succeeded["delivered_at"] is not None
        # attempt history: the failure only (a first attempt that succeeded is the row itself)
        attempt = claimed[ids["failed"]].attempt
        assert await _history(conn) == [(ids["failed"], attempt, "retryable", 503, "HTTP 503")]

        # the lock gone, the recorder's retry of the busy outcome is recorded
        busy = [r for r in batch if r.id == ids["busy"]]
        cur = await conn.execute(query("delivery_record_outcomes"), {"rows": outcomes_json(busy)})
        again_got = await cur.fetchone()
        assert again_got is not None
        assert (again_got["recorded"], again_got["busy"], again_got["lost"]) == (1, [], [])
        done = await _row(conn, ids["busy"])
        assert done is not None and (done["status"], done["response_status"]) == ("success", 204)
    finally:
        await locker.close()
        await conn.close()
