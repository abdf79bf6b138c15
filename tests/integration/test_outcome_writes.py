"""What delivery_record_outcomes writes beside the delivery rows: a webhook's streak row only when
the outcomes change something (issue 12: PostgreSQL cost per delivery)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hostdb
import orjson
import pytest

from dispatcher.queries import query


async def _webhook_with_clean_streak(conn: hostdb.Conn, success_ago: float) -> dict[str, Any]:
    """A healthy webhook whose counters were last written `success_ago` seconds ago, with a
    streak row that has nothing pending (what delivery_apply_webhook_counters leaves behind)."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = 0,"
        " last_success_at = now() - make_interval(secs => %(ago)s),"
        " last_triggered_at = now() - make_interval(secs => %(ago)s) WHERE id = %(id)s",
        {"ago": success_ago, "id": hook["id"]},
    )
    await conn.execute(
        "INSERT INTO dispatcher.webhook_streaks (webhook_id) VALUES (%s)", (hook["id"],)
    )
    return {**hook, "org_id": org}


async def _record(conn: hostdb.Conn, hook: dict[str, Any], **outcome: Any) -> dict[str, Any]:
    """Lease a fresh delivery row of `hook` and record one outcome for it."""
    out = _out(hook, await _leased(conn, hook), 1, outcome.get("success", True))
    cur = await conn.execute(
        query("delivery_record_outcomes"), {"rows": orjson.dumps([out]).decode()}
    )
    got = await cur.fetchone()
    assert got is not None and got["recorded"] == 1
    return got


async def _streak_version(conn: hostdb.Conn, hook: dict[str, Any]) -> tuple[str, bool]:
    cur = await conn.execute(
        "SELECT xmin::text AS v, pending FROM dispatcher.webhook_streaks WHERE webhook_id = %s",
        (hook["id"],),
    )
    row = await cur.fetchone()
    assert row is not None
    return row["v"], row["pending"]


async def test_successes_to_a_healthy_webhook_write_no_streak_row(conn):
    # Counters written "now" as far as the statement can tell, however slowly the set-up
    # transactions run (the rule looks back one second): stamped an hour ahead.
    hook = await _webhook_with_clean_streak(conn, success_ago=-3600)
    before = await _streak_version(conn, hook)
    got = await _record(conn, hook)
    assert got["webhooks"] == 0, "nothing changes: no webhook noted, no counters to apply"
    assert await _streak_version(conn, hook) == before


@pytest.mark.parametrize(
    ("success_ago", "success"),
    [
        (5, True),  # counters older than a second: the timestamps are due again
        (0, False),  # a failure always counts
    ],
)
async def test_outcomes_that_change_something_are_noted(conn, success_ago, success):
    hook = await _webhook_with_clean_streak(conn, success_ago=success_ago)
    before = await _streak_version(conn, hook)
    got = await _record(conn, hook, success=success)
    assert got["webhooks"] == 1
    version, pending = await _streak_version(conn, hook)
    assert version != before[0] and pending, "the change waits for delivery_apply_webhook_counters"


async def test_a_success_after_a_counted_failure_is_noted(conn):
    hook = await _webhook_with_clean_streak(conn, success_ago=0)
    await _record(conn, hook, success=False)
    await conn.execute(query("delivery_apply_webhook_counters"))
    w = await hostdb.webhook(conn, hook["id"])
    assert w["consecutive_failures"] == 1
    got = await _record(conn, hook)
    assert got["webhooks"] == 1, "the streak ends: the count goes back to 0"
    await conn.execute(query("delivery_apply_webhook_counters"))
    w = await hostdb.webhook(conn, hook["id"])
    assert w["consecutive_failures"] == 0


async def test_a_batch_that_notes_nothing_still_says_another_replicas_counters_wait(conn):
    """Replica A noted a failure and stopped before writing the counters; replica B records
    only successes to a healthy webhook (nothing noted): its statement still says counters
    are pending, so B's recorder writes A's (auto-disable must not wait for B to fail)."""
    failing = await _webhook_with_clean_streak(conn, success_ago=-3600)
    await _record(conn, failing, success=False)  # A: noted, counters never applied
    healthy = await _webhook_with_clean_streak(conn, success_ago=-3600)
    got = await _record(conn, healthy)  # B
    assert got["webhooks"] == 0 and got["counters_pending"] is True
    await conn.execute(query("delivery_apply_webhook_counters"))
    assert (await hostdb.webhook(conn, failing["id"]))["consecutive_failures"] == 1
    got = await _record(conn, healthy)
    assert got["counters_pending"] is False, "written: nothing left pending"


async def _leased(conn: hostdb.Conn, hook: dict[str, Any]) -> tuple[str, str]:
    """A fresh delivery row of `hook`, leased: its id and claim token."""
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, next_retry_at)"
        " VALUES (%s, %s, 'job.created', '{}', 'https://example.com/hook', '{}', '{}',"
        " 'pending', now() + interval '30 seconds') RETURNING id, next_retry_at",
        (hook["org_id"], hook["id"]),
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row["id"]), row["next_retry_at"].isoformat()


def _out(hook: dict[str, Any], leased: tuple[str, str], seq: int, success: bool) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": leased[0],
        "webhook_id": str(hook["id"]),
        "org_id": str(hook["org_id"]),
        "claim": leased[1],
        "seq": seq,
        "status": "success" if success else "retrying",
        "outcome": "delivered" if success else "retryable",
        "attempt": 1,
        "attempt_number": 1 if success else 2,
        "retry_in": None if success else 60.0,
        "final": success,
        "counts": not success,
        "success": success,
        "gone": False,
        "response_status": 204 if success else 503,
        "duration_ms": 3,
        "started_at": now,
        "ended_at": now,
    }


@pytest.mark.parametrize("name", ["delivery_record_outcomes", "delivery_record_outcomes_lean"])
@pytest.mark.parametrize("last_succeeds", [True, False])
async def test_a_mixed_batch_notes_each_webhook_with_only_its_own_outcomes_in_order(
    conn, name, last_succeeds
):
    """One batch, three webhooks: a healthy one with only successes (not noted, its streak row
    untouched), and two whose outcomes alternate, interleaved in the batch. Each noted webhook's
    streak gets its own outcomes only, in `seq` order: its count after the batch is what its
    last outcomes say (issue 12, session 8: the outcomes' JSON built only for noted webhooks)."""
    healthy = await _webhook_with_clean_streak(conn, success_ago=-3600)
    first = await _webhook_with_clean_streak(conn, success_ago=-3600)
    second = await _webhook_with_clean_streak(conn, success_ago=-3600)
    before = await _streak_version(conn, healthy)
    # first: fail, fail, then (last_succeeds) a success or a third failure; second: the
    # opposite order of success and failure, so mixing the two up changes both counts
    plan = [
        (healthy, True),
        (first, False),
        (second, True),
        (healthy, True),
        (first, False),
        (second, not last_succeeds),
        (first, last_succeeds),
        (second, False),
        (healthy, True),
    ]
    rows = []
    for seq, (hook, success) in enumerate(plan, 1):
        rows.append(_out(hook, await _leased(conn, hook), seq, success))
    rows.reverse()  # the statement orders by seq, not by position in the batch
    cur = await conn.execute(query(name), {"rows": orjson.dumps(rows).decode()})
    got = await cur.fetchone()
    assert got is not None and got["recorded"] == len(plan)
    assert got["webhooks"] == 2, "the two webhooks with failures, not the healthy one"
    assert await _streak_version(conn, healthy) == before
    await conn.execute(query("delivery_apply_webhook_counters"))
    assert (await hostdb.webhook(conn, first["id"]))["consecutive_failures"] == (
        0 if last_succeeds else 3
    )
    assert (await hostdb.webhook(conn, second["id"]))["consecutive_failures"] == (
        2 if last_succeeds else 1
    )
