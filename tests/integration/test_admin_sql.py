"""The SQL admin API (0005_admin_api.sql), called in SQL as the host's admin code would."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import hostdb
import psycopg
import pytest

Conn = hostdb.Conn


async def one(conn: Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def insert_delivery(
    conn: Conn,
    org: uuid.UUID,
    hook: dict[str, Any],
    status: str,
    *,
    event_id: uuid.UUID | None = None,
    age: timedelta = timedelta(0),
    body: str = '{"event": "job.created"}',
) -> uuid.UUID:
    """A delivery row written the way the host or a finished attempt leaves it."""
    row = await one(
        conn,
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, event_id, payload,"
        " request_url, request_headers, request_body, status, attempt_number, max_attempts,"
        " created_at, delivered_at)"
        " VALUES (%s, %s, 'job.created', %s, %s::jsonb, %s, '{}', %s, %s, 4, 4,"
        "         now() - %s, CASE WHEN %s IN ('success', 'failed', 'dlq') THEN now() END)"
        " RETURNING id",
        (org, hook["id"], event_id, body, hook["url"], body, status, age, status),
    )
    return uuid.UUID(str(row["id"]))


async def insert_event(
    conn: Conn, org: uuid.UUID, event_type: str, *, age: timedelta, in_outbox: bool = False
) -> uuid.UUID:
    """An event created `age` ago; unless in_outbox, fan-out has already taken it."""
    row = await one(
        conn,
        "INSERT INTO events (event_type, event_category, payload, org_id, aggregate_id,"
        " created_at) VALUES (%s, split_part(%s, '.', 1), %s::jsonb, %s, gen_random_uuid(),"
        " now() - %s) RETURNING id",
        (event_type, event_type, json.dumps({"n": event_type}), org, age),
    )
    event = uuid.UUID(str(row["id"]))
    if not in_outbox:
        await conn.execute("DELETE FROM dispatcher.outbox WHERE event_id = %s", (event,))
    return event


async def statuses(conn: Conn, ids: list[uuid.UUID]) -> list[str]:
    cur = await conn.execute("SELECT id, status FROM webhook_deliveries WHERE id = ANY(%s)", (ids,))
    found = {r["id"]: r["status"] for r in await cur.fetchall()}
    return [found[i] for i in ids]


async def count(conn: Conn, where: str = "true", params: Any = ()) -> int:
    row = await one(conn, f"SELECT count(*) AS n FROM webhook_deliveries WHERE {where}", params)
    return int(row["n"])


@pytest.fixture
async def two_orgs(conn: Conn) -> tuple[uuid.UUID, uuid.UUID]:
    return await hostdb.create_org(conn, "Acme"), await hostdb.create_org(conn, "Other")


# -- guards shared by every function ----------------------------------------------------

CALLS = [
    "SELECT dispatcher.replay_delivery(%(org)s, %(id)s)",
    "SELECT * FROM dispatcher.retry_dlq(%(org)s, %(id)s)",
    "SELECT dispatcher.clear_dlq(%(org)s, %(id)s)",
    "SELECT * FROM dispatcher.recover_webhook(%(org)s, %(id)s, now() - interval '1 day')",
    "SELECT dispatcher.send_test(%(org)s, %(id)s)",
    "SELECT * FROM dispatcher.rotate_secret(%(org)s, %(id)s)",
    "SELECT * FROM dispatcher.stats(%(org)s)",
]


@pytest.mark.parametrize("sql", CALLS, ids=lambda s: s.split("dispatcher.")[1].split("(")[0])
async def test_every_function_requires_an_existing_org(conn, two_orgs, sql):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook")
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="organization id is required"):
        await conn.execute(sql, {"org": None, "id": hook["id"]})
    unknown = uuid.uuid4()
    with pytest.raises(psycopg.errors.NoDataFound, match=f"organization {unknown} does not"):
        await conn.execute(sql, {"org": unknown, "id": hook["id"]})
    assert await count(conn) == 0


@pytest.mark.parametrize("sql", CALLS[:-1], ids=lambda s: s.split("dispatcher.")[1].split("(")[0])
async def test_every_function_refuses_rows_of_another_org(conn, two_orgs, sql):
    org, other = two_orgs
    hook = await hostdb.create_webhook(conn, other, "https://example.com/hook")
    target = hook["id"]
    if "replay_delivery" in sql:
        target = await insert_delivery(conn, other, hook, "success")
    before = await count(conn)
    secret = hook["secret"]
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        await conn.execute(sql, {"org": org, "id": target})
    assert f"does not belong to organization {org}" in str(err.value)
    assert err.value.diag.schema_name == "dispatcher"
    assert await count(conn) == before
    assert (await hostdb.webhook(conn, hook["id"]))["secret"] == secret


@pytest.mark.parametrize("sql", CALLS[:-1], ids=lambda s: s.split("dispatcher.")[1].split("(")[0])
async def test_every_function_refuses_unknown_ids(conn, two_orgs, sql):
    org, _ = two_orgs
    missing = uuid.uuid4()
    with pytest.raises(psycopg.errors.NoDataFound, match=f"{missing} does not exist"):
        await conn.execute(sql, {"org": org, "id": missing})


# -- delivery body: one definition for fan-out and recover ---------------------------------


async def test_recover_builds_the_same_body_as_fan_out(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"], status="inactive")
    # Fan-out's row for an active sibling is the reference (the body is the event's).
    sibling = await hostdb.create_webhook(conn, org, receiver.url("/sibling"), ["job.*"])
    await start_daemon()
    event = await hostdb.publish(conn, "job.created", {"title": "Welder", "n": [1, 2]}, org)
    [missed] = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'success'", 1, (sibling["id"],)
    )
    assert await hostdb.deliveries(conn, "webhook_id = %s", (hook["id"],)) == []

    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (hook["id"],))
    got = await one(
        conn,
        "SELECT * FROM dispatcher.recover_webhook(%s, %s, now() - interval '1 hour')",
        (org, hook["id"]),
    )
    assert got == {"queued": 1, "dlq_superseded": 0}
    [sent] = await receiver.wait_for(1, path="/hook")
    [row] = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'success'", 1, (hook["id"],)
    )
    assert row["event_id"] == missed["event_id"] == event
    assert row["request_body"] == missed["request_body"]
    assert sent.body == missed["request_body"].encode()
    assert row["payload"] == missed["payload"] == json.loads(missed["request_body"])
    body = json.loads(row["request_body"])
    assert body["id"] == str(event) and body["event"] == body["type"] == "job.created"
    assert body["data"] == {"title": "Welder", "n": [1, 2]}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])


# -- recover -----------------------------------------------------------------------------


async def test_recover_queues_exactly_the_events_never_delivered(conn, two_orgs):
    org, other = two_orgs
    await hostdb.set_retry_config(conn, org, max_retries=5)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a", ["job.*"])
    sibling = await hostdb.create_webhook(conn, org, "https://example.com/b", ["job.*"])
    h = timedelta(hours=1)
    no_row = await insert_event(conn, org, "job.created", age=2 * h)
    was_off = await insert_event(conn, org, "job.updated", age=3 * h)
    await insert_delivery(conn, org, hook, "failed", event_id=was_off)
    in_dlq = await insert_event(conn, org, "job.deleted", age=4 * h)
    dlq_row = await insert_delivery(conn, org, hook, "dlq", event_id=in_dlq)
    delivered = await insert_event(conn, org, "job.created", age=2 * h)
    await insert_delivery(conn, org, hook, "failed", event_id=delivered)
    await insert_delivery(conn, org, hook, "success", event_id=delivered)
    in_flight = await insert_event(conn, org, "job.created", age=2 * h)
    await insert_delivery(conn, org, hook, "retrying", event_id=in_flight)
    await insert_delivery(conn, org, sibling, "success", event_id=no_row)  # another webhook's
    await insert_event(conn, org, "candidate.created", age=2 * h)  # does not match
    await insert_event(conn, other, "job.created", age=2 * h)  # another org
    await insert_event(conn, org, "job.created", age=30 * h)  # before the window
    await insert_event(conn, org, "job.created", age=timedelta(minutes=1))  # after it
    await insert_event(conn, org, "job.created", age=2 * h, in_outbox=True)  # fan-out's job
    window = (
        org,
        hook["id"],
        datetime.now().astimezone() - 24 * h,
        datetime.now().astimezone() - timedelta(minutes=30),
    )

    dry = await one(conn, "SELECT * FROM dispatcher.recover_webhook(%s, %s, %s, %s, true)", window)
    assert dry == {"queued": 3, "dlq_superseded": 1}
    assert await count(conn, "status = 'pending'") == 0

    got = await one(conn, "SELECT * FROM dispatcher.recover_webhook(%s, %s, %s, %s)", window)
    assert got == {"queued": 3, "dlq_superseded": 1}
    cur = await conn.execute(
        "SELECT d.*, dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,"
        " e.aggregate_id, e.payload)::text AS expected FROM webhook_deliveries d"
        " JOIN events e ON e.id = d.event_id WHERE d.status = 'pending'"
    )
    rows = await cur.fetchall()
    assert {r["event_id"] for r in rows} == {no_row, was_off, in_dlq}
    for r in rows:
        assert r["webhook_id"] == hook["id"] and r["org_id"] == org
        assert r["request_body"] == r["expected"]
        assert r["attempt_number"] == 1 and r["max_attempts"] == 6
        assert r["next_retry_at"] is None and r["request_url"] == hook["url"]
    assert await statuses(conn, [dlq_row]) == ["failed"]

    again = await one(conn, "SELECT * FROM dispatcher.recover_webhook(%s, %s, %s, %s)", window)
    assert again == {"queued": 0, "dlq_superseded": 0}


async def test_recover_refuses_bad_windows_and_inactive_webhooks(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a", status="disabled")
    await insert_event(conn, org, "job.created", age=timedelta(hours=1))
    sql = "SELECT * FROM dispatcher.recover_webhook(%s, %s, %s, %s)"
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="since"):
        await conn.execute(sql, (org, hook["id"], None, None))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="window is empty"):
        await conn.execute(sql, (org, hook["id"], "2025-12-05", "2025-12-04"))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="disabled"):
        await conn.execute(sql, (org, hook["id"], "2000-01-01", None))
    dry = await one(
        conn,
        "SELECT * FROM dispatcher.recover_webhook(%s, %s, '2000-01-01', NULL, true)",
        (org, hook["id"]),
    )
    assert dry["queued"] == 1
    assert await count(conn) == 0


# -- replay --------------------------------------------------------------------------------


async def test_replay_delivery_queues_a_copy(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a")
    event = uuid.uuid4()
    original = await insert_delivery(
        conn, org, hook, "dlq", event_id=event, body='{"b": 1, "a": "x"}'
    )
    row = await one(conn, "SELECT dispatcher.replay_delivery(%s, %s) AS id", (org, original))
    [copy] = await hostdb.deliveries(conn, "id = %s", (row["id"],))
    assert copy["id"] != original and copy["event_id"] == event
    assert copy["request_body"] == '{"b": 1, "a": "x"}'
    assert copy["status"] == "pending" and copy["attempt_number"] == 1
    assert copy["max_attempts"] == 4 and copy["next_retry_at"] is None
    assert await statuses(conn, [original]) == ["dlq"]


async def test_replay_refuses_in_flight_deliveries_and_inactive_webhooks(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a")
    pending = await insert_delivery(conn, org, hook, "pending")
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="still pending"):
        await conn.execute("SELECT dispatcher.replay_delivery(%s, %s)", (org, pending))
    done = await insert_delivery(conn, org, hook, "failed")
    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hook["id"],))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="inactive"):
        await conn.execute("SELECT dispatcher.replay_delivery(%s, %s)", (org, done))
    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (hook["id"],))
    with pytest.raises(psycopg.errors.NoDataFound, match="does not exist"):
        await conn.execute("SELECT dispatcher.replay_delivery(%s, %s)", (org, done))
    assert await count(conn) == 2


# -- dead-letter queue -----------------------------------------------------------------


async def test_retry_dlq_by_filter_like_the_host(conn, two_orgs):
    org, other = two_orgs
    a = await hostdb.create_webhook(conn, org, "https://example.com/a")
    b = await hostdb.create_webhook(conn, org, "https://example.com/b")
    off = await hostdb.create_webhook(conn, org, "https://example.com/off", status="disabled")
    theirs = await hostdb.create_webhook(conn, other, "https://example.com/x")
    old_a = await insert_delivery(conn, org, a, "dlq", age=timedelta(days=3))
    new_a = await insert_delivery(conn, org, a, "dlq", age=timedelta(hours=1))
    new_b = await insert_delivery(conn, org, b, "dlq", age=timedelta(hours=1))
    off_row = await insert_delivery(conn, org, off, "dlq", age=timedelta(hours=1))
    failed_a = await insert_delivery(conn, org, a, "failed", age=timedelta(hours=1))
    their_row = await insert_delivery(conn, other, theirs, "dlq", age=timedelta(hours=1))

    got = await one(conn, "SELECT * FROM dispatcher.retry_dlq(%s, %s)", (org, a["id"]))
    assert got == {"retried": 2, "skipped_inactive": 0}
    assert await statuses(conn, [old_a, new_a, new_b, failed_a]) == [
        "pending",
        "pending",
        "dlq",
        "failed",
    ]
    [row] = await hostdb.deliveries(conn, "id = %s", (old_a,))
    assert row["attempt_number"] == 1 and row["next_retry_at"] is None

    got = await one(
        conn, "SELECT * FROM dispatcher.retry_dlq(%s, p_since => now() - '1 day'::interval)", (org,)
    )
    assert got == {"retried": 1, "skipped_inactive": 1}
    assert await statuses(conn, [new_b, off_row, their_row]) == ["pending", "dlq", "dlq"]

    await conn.execute("UPDATE webhook_deliveries SET status = 'dlq' WHERE org_id = %s", (org,))
    got = await one(
        conn, "SELECT * FROM dispatcher.retry_dlq(%s, p_delivery_ids => %s)", (org, [new_a])
    )
    assert got == {"retried": 1, "skipped_inactive": 0}
    got = await one(
        conn, "SELECT * FROM dispatcher.retry_dlq(%s, p_until => now() - '1 day'::interval)", (org,)
    )
    assert got == {"retried": 1, "skipped_inactive": 0}
    assert await statuses(conn, [old_a, new_a, new_b]) == ["pending", "pending", "dlq"]

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        await conn.execute(
            "SELECT * FROM dispatcher.retry_dlq(%s, p_delivery_ids => %s)",
            (org, [new_b, their_row]),
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="window is empty"):
        await conn.execute("SELECT * FROM dispatcher.retry_dlq(%s, NULL, now(), now())", (org,))
    assert await statuses(conn, [new_b, their_row]) == ["dlq", "dlq"]


async def test_clear_dlq_by_filter_like_the_host(conn, two_orgs):
    org, other = two_orgs
    a = await hostdb.create_webhook(conn, org, "https://example.com/a")
    b = await hostdb.create_webhook(conn, org, "https://example.com/b", status="disabled")
    theirs = await hostdb.create_webhook(conn, other, "https://example.com/x")
    a1 = await insert_delivery(conn, org, a, "dlq", age=timedelta(days=2))
    a2 = await insert_delivery(conn, org, a, "dlq")
    b1 = await insert_delivery(conn, org, b, "dlq")
    retrying = await insert_delivery(conn, org, a, "retrying")
    their_row = await insert_delivery(conn, other, theirs, "dlq")

    cleared = await one(
        conn, "SELECT dispatcher.clear_dlq(%s, p_until => now() - '1 day'::interval) AS n", (org,)
    )
    assert cleared["n"] == 1
    assert await statuses(conn, [a1, a2, b1]) == ["failed", "dlq", "dlq"]
    cleared = await one(conn, "SELECT dispatcher.clear_dlq(%s) AS n", (org,))
    assert cleared["n"] == 2
    assert await statuses(conn, [a2, b1, retrying, their_row]) == [
        "failed",
        "failed",
        "retrying",
        "dlq",
    ]


# -- test ping ----------------------------------------------------------------------------


async def test_send_test_inserts_the_hosts_test_ping(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(
        conn, org, "https://example.com/a", ["job.created"], name="Payroll"
    )
    row = await one(conn, "SELECT dispatcher.send_test(%s, %s) AS id", (org, hook["id"]))
    [ping] = await hostdb.deliveries(conn, "id = %s", (row["id"],))
    assert ping["status"] == "pending" and ping["event_type"] == "webhook.test"
    assert ping["event_id"] is None and ping["next_retry_at"] is None
    assert ping["request_url"] == hook["url"] and ping["webhook_id"] == hook["id"]
    body = json.loads(ping["request_body"])
    assert body == ping["payload"]
    assert body["event"] == "webhook.test" and body["test"] is True
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["timestamp"])
    assert body["data"]["webhook_id"] == str(hook["id"])
    assert body["data"]["webhook_name"] == "Payroll"

    custom = await one(
        conn, "SELECT dispatcher.send_test(%s, %s, '{\"hello\": 1}') AS id", (org, hook["id"])
    )
    [ping] = await hostdb.deliveries(conn, "id = %s", (custom["id"],))
    assert ping["payload"]["data"] == {"hello": 1}

    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hook["id"],))
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="enable it first"):
        await conn.execute("SELECT dispatcher.send_test(%s, %s)", (org, hook["id"]))
    assert await count(conn) == 2


# -- secret rotation -----------------------------------------------------------------------


async def test_rotate_secret_keeps_the_previous_one_for_the_grace_period(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a")
    first = hook["secret"]
    got = await one(
        conn, "SELECT *, now() AS at FROM dispatcher.rotate_secret(%s, %s)", (org, hook["id"])
    )
    assert re.fullmatch(r"[0-9a-f]{64}", got["new_secret"]) and got["new_secret"] != first
    assert got["previous_expires_at"] == got["at"] + timedelta(hours=24)
    assert (await hostdb.webhook(conn, hook["id"]))["secret"] == got["new_secret"]
    kept = await one(
        conn, "SELECT * FROM dispatcher.webhook_secrets WHERE webhook_id = %s", (hook["id"],)
    )
    assert kept["previous_secret"] == first
    assert kept["previous_expires_at"] == got["previous_expires_at"]

    chosen = "ab" * 32
    again = await one(
        conn,
        "SELECT * FROM dispatcher.rotate_secret(%s, %s, '1 hour', %s)",
        (org, hook["id"], chosen),
    )
    assert again["new_secret"] == chosen
    kept = await one(
        conn, "SELECT * FROM dispatcher.webhook_secrets WHERE webhook_id = %s", (hook["id"],)
    )
    assert kept["previous_secret"] == got["new_secret"]  # only one previous secret is kept


async def test_rotate_secret_refuses_bad_values_without_echoing_them(conn, two_orgs):
    org, _ = two_orgs
    hook = await hostdb.create_webhook(conn, org, "https://example.com/a")
    sql = "SELECT * FROM dispatcher.rotate_secret(%s, %s, %s, %s)"
    for grace, secret, error in [
        (timedelta(days=31), None, psycopg.errors.InvalidParameterValue),
        (timedelta(seconds=-1), None, psycopg.errors.InvalidParameterValue),
        (None, None, psycopg.errors.NullValueNotAllowed),
        (timedelta(hours=1), "Not-A-Hex-Secret-But-Private", psycopg.errors.InvalidParameterValue),
        (timedelta(hours=1), hook["secret"], psycopg.errors.InvalidParameterValue),
    ]:
        with pytest.raises(error) as err:
            await conn.execute(sql, (org, hook["id"], grace, secret))
        assert "Private" not in str(err.value) and hook["secret"] not in str(err.value)
    assert (await hostdb.webhook(conn, hook["id"]))["secret"] == hook["secret"]
    row = await one(conn, "SELECT count(*) AS n FROM dispatcher.webhook_secrets")
    assert row["n"] == 0


# -- stats ---------------------------------------------------------------------------------


async def test_stats_count_one_org_and_all(conn, two_orgs):
    org, other = two_orgs
    a = await hostdb.create_webhook(conn, org, "https://example.com/a")
    await hostdb.create_webhook(conn, org, "https://example.com/b", status="inactive")
    await hostdb.create_webhook(conn, org, "https://example.com/c", status="disabled")
    gone = await hostdb.create_webhook(conn, org, "https://example.com/d")
    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (gone["id"],))
    theirs = await hostdb.create_webhook(conn, other, "https://example.com/x")
    for status, n in (("pending", 2), ("retrying", 1), ("success", 3), ("failed", 1), ("dlq", 2)):
        for _ in range(n):
            await insert_delivery(conn, org, a, status, age=timedelta(minutes=5))
    await insert_delivery(conn, other, theirs, "dlq")
    later = await insert_delivery(conn, org, a, "retrying")
    await conn.execute(
        "UPDATE webhook_deliveries SET next_retry_at = now() + interval '1 hour' WHERE id = %s",
        (later,),
    )
    await insert_event(conn, org, "job.created", age=timedelta(0), in_outbox=True)
    await insert_event(conn, other, "job.created", age=timedelta(0), in_outbox=True)

    s = await one(conn, "SELECT *, now() AS at FROM dispatcher.stats(%s)", (org,))
    at = s.pop("at")
    oldest = s.pop("oldest_due_at")
    assert at - timedelta(minutes=6) < oldest < at - timedelta(minutes=4)
    assert s == {
        "webhooks_active": 1,
        "webhooks_inactive": 1,
        "webhooks_disabled": 1,
        "deliveries_pending": 2,
        "deliveries_retrying": 2,
        "deliveries_success": 3,
        "deliveries_failed": 1,
        "deliveries_dlq": 2,
        "deliveries_due": 3,
        "outbox_events": 1,
    }
    everyone = await one(conn, "SELECT * FROM dispatcher.stats_all()")
    assert everyone["webhooks_active"] == 2 and everyone["deliveries_dlq"] == 3
    assert everyone["outbox_events"] == 2


# -- the deliveries view -------------------------------------------------------------------


async def test_deliveries_view_has_webhook_name_and_respects_row_level_security(conn, two_orgs):
    org, other = two_orgs
    mine = await hostdb.create_webhook(conn, org, "https://example.com/a", name="Payroll")
    theirs = await hostdb.create_webhook(conn, other, "https://example.com/x", name="Theirs")
    row_id = await insert_delivery(conn, org, mine, "dlq")
    await insert_delivery(conn, other, theirs, "dlq")
    row = await one(
        conn, "SELECT * FROM dispatcher.deliveries_with_webhook WHERE id = %s", (row_id,)
    )
    assert row["webhook_name"] == "Payroll" and row["webhook_status"] == "active"
    assert row["org_id"] == org and row["status"] == "dlq" and "request_body" in row

    # A tenant role under the host's kind of RLS policy sees only its rows through the view.
    role = f"tenant_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} NOLOGIN")
    await conn.execute(f"GRANT USAGE ON SCHEMA dispatcher TO {role}")
    await conn.execute(
        f"GRANT SELECT ON webhook_deliveries, webhooks, "
        f"dispatcher.deliveries_with_webhook TO {role}"
    )
    for table in ("webhook_deliveries", "webhooks"):
        await conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        await conn.execute(
            f"CREATE POLICY tenant ON {table} USING (org_id = current_setting('app.org_id')::uuid)"
        )
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute("SELECT set_config('app.org_id', %s, true)", (str(org),))
            cur = await conn.execute("SELECT webhook_name FROM dispatcher.deliveries_with_webhook")
            assert [r["webhook_name"] for r in await cur.fetchall()] == ["Payroll"]
    finally:
        for table in ("webhook_deliveries", "webhooks"):
            await conn.execute(f"DROP POLICY tenant ON {table}")
            await conn.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
