"""A delivery's sequence number (0032) goes with the delivery (0033: a statement trigger,
not a foreign key checked once per fanned-out row; 0039: a TRUNCATE takes them all, and a
webhook's numbers go on from the last it gave)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import hostdb
import psycopg
import pytest
from psycopg.types.json import Jsonb

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits


async def _numbered_delivery(
    conn: hostdb.Conn, org: uuid.UUID, hook: uuid.UUID, n: int
) -> uuid.UUID:
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body) VALUES (%s, %s, 'job.created', '{}',"
        " 'https://example.com/hook', '{}', '{}') RETURNING id",
        (org, hook),
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        "INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence)"
        " VALUES (%s, %s, %s)",
        (row["id"], hook, n),
    )
    return row["id"]


async def _numbers(conn: hostdb.Conn) -> list[int]:
    cur = await conn.execute("SELECT sequence FROM dispatcher.delivery_sequence ORDER BY 1")
    return [r["sequence"] for r in await cur.fetchall()]


async def test_a_deleted_delivery_takes_its_number_with_it(conn):
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
    first = await _numbered_delivery(conn, org, hook, 1)
    await _numbered_delivery(conn, org, hook, 2)
    await conn.execute("DELETE FROM webhook_deliveries WHERE id = %s", (first,))
    assert await _numbers(conn) == [2]


async def test_a_deleted_webhook_takes_its_deliveries_numbers(conn):
    org = await hostdb.create_org(conn)
    gone = (await hostdb.create_webhook(conn, org, "https://example.com/a"))["id"]
    kept = (await hostdb.create_webhook(conn, org, "https://example.com/b"))["id"]
    await _numbered_delivery(conn, org, gone, 1)
    await _numbered_delivery(conn, org, gone, 2)
    await _numbered_delivery(conn, org, kept, 7)
    # the host's hard delete: webhook_deliveries cascade from webhooks
    await conn.execute("DELETE FROM webhooks WHERE id = %s", (gone,))
    assert await _numbers(conn) == [7]


async def test_a_truncate_takes_every_number_with_it(conn):
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
    for n in (1, 2, 3):
        await _numbered_delivery(conn, org, hook, n)
    await conn.execute("TRUNCATE webhook_deliveries")
    assert await _numbers(conn) == []


async def test_the_hosts_service_role_truncates_and_the_numbers_go(host_db_dsn):
    """On the real host's roles: service_role (Supabase's, granted ALL on the host's tables)
    sees no schema dispatcher; the trigger runs as the dispatcher schema's owner."""
    async with await hostdb.connect(host_db_dsn) as conn:
        org = await hostdb.create_org(conn)
        hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
        await _numbered_delivery(conn, org, hook, 1)
        await _numbered_delivery(conn, org, hook, 2)
        await conn.execute("SET ROLE service_role")
        try:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("SELECT 1 FROM dispatcher.delivery_sequence")
            await conn.execute("TRUNCATE webhook_deliveries")
        finally:
            await conn.execute("RESET ROLE")
        assert await _numbers(conn) == []


async def test_a_truncate_does_not_wait_for_a_session_reading_the_numbers(conn, db_dsn):
    """A session holding a lock on delivery_sequence (a daemon statement that may next wait
    for webhook_deliveries behind the TRUNCATE: a deadlock) does not make it wait: the
    numbers are deleted instead of truncated."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
    await _numbered_delivery(conn, org, hook, 1)
    pid = (await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone() or {})["pid"]
    async with await hostdb.connect(db_dsn) as reader, await hostdb.connect(db_dsn) as watch:
        async with reader.transaction():
            await reader.execute("SELECT count(*) FROM dispatcher.delivery_sequence")
            truncate = asyncio.create_task(conn.execute("TRUNCATE webhook_deliveries"))
            waited = False
            while not truncate.done():  # done, or seen waiting for a lock
                cur = await watch.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)
                )
                row = await cur.fetchone()
                if row is not None and row["wait_event_type"] == "Lock":
                    waited = True
                    break
                await asyncio.sleep(0.01)
            if waited:
                await watch.execute("SELECT pg_cancel_backend(%s)", (pid,))
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                await truncate
    assert not waited, "the TRUNCATE waited for the reader's lock"
    assert await _numbers(conn) == []


async def test_a_truncate_in_a_session_with_the_numbers_open_deletes_them(conn):
    """The session that truncates has delivery_sequence open (a cursor): TRUNCATE of the
    numbers would raise object_in_use and fail the host's TRUNCATE; they are deleted."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
    for n in (1, 2):
        await _numbered_delivery(conn, org, hook, n)
    async with conn.transaction():
        await conn.execute(
            "DECLARE numbers CURSOR FOR SELECT sequence FROM dispatcher.delivery_sequence"
        )
        await conn.execute("FETCH 1 FROM numbers")
        await conn.execute("TRUNCATE webhook_deliveries")
        await conn.execute("CLOSE numbers")
    assert await _numbers(conn) == []


async def _fan_out(conn: hostdb.Conn) -> None:
    """One fan_out statement, as a daemon runs it, leasing nothing."""
    room = Admission[Claimed](4, RateLimits()).claim_params()
    await conn.execute(
        query("delivery_fan_out"), {**room, "lease": 60.0, "batch": 10, "claim": 0, "only": None}
    )


async def _publish(conn: hostdb.Conn, org: uuid.UUID, n: int) -> None:
    await conn.execute(
        "SELECT publish_event('job.created', NULL, %s, NULL, '{}'::jsonb, %s)",
        (Jsonb({"n": n}), org),
    )


async def test_numbers_after_a_truncate_go_on_from_the_last_one_given(conn):
    """docs/receivers.md: a webhook's numbers never repeat (a receiver keeping the numbers it
    processed would drop a repeated one as a duplicate). The truncate takes the numbers of
    the deliveries it removed, not the webhook's counter."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook", ["job.*"]))["id"]
    for n in range(3):
        await _publish(conn, org, n)
    await _fan_out(conn)
    assert await _numbers(conn) == [1, 2, 3]
    await conn.execute("TRUNCATE webhook_deliveries")
    for n in range(3, 5):
        await _publish(conn, org, n)
    await _fan_out(conn)
    assert await _numbers(conn) == [4, 5]
    cur = await conn.execute(
        "SELECT sequence FROM dispatcher.deliveries_since(%s, %s, 0, 100)", (org, hook)
    )
    assert [r["sequence"] for r in await cur.fetchall()] == [4, 5]
