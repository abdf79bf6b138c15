"""Fan-out never waits on a lock the host holds on one webhook's row (found by the
randomized fault test, seed 105: a `hold_webhook` fault stalled the healthy org for ~15 s).

The fan-out inserts delivery rows whose foreign key check takes FOR KEY SHARE on the
webhook row, which conflicts with a host transaction's SELECT ... FOR UPDATE (or DELETE):
the whole statement, and with it every tenant's events, used to wait. Real daemon, real
PostgreSQL row locks held by a test transaction, real receivers on loopback.
"""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from typing import Any

import hostdb
import psycopg
from psycopg.rows import dict_row

EVENTS = 5


async def _outbox_has(conn: hostdb.Conn, event_ids: list[uuid.UUID]) -> int:
    cur = await conn.execute(
        "SELECT count(*) AS n FROM dispatcher.outbox WHERE event_id = ANY(%s)", (event_ids,)
    )
    row = await cur.fetchone()
    return int(row["n"]) if row else 0


async def test_a_webhook_row_held_for_update_stalls_no_one_and_loses_nothing(
    conn, receiver, db_dsn, start_daemon
):
    org_a = await hostdb.create_org(conn, "Healthy")
    org_b = await hostdb.create_org(conn, "Edited")
    await hostdb.create_webhook(conn, org_a, receiver.url("/a"), ["*"], name="a")
    held = await hostdb.create_webhook(conn, org_b, receiver.url("/b-held"), ["*"], name="b1")
    await hostdb.create_webhook(conn, org_b, receiver.url("/b-free"), ["*"], name="b2")
    await start_daemon(poll_interval=0.5)

    # A host transaction holds one of B's webhook rows (an admin editing it, a migration).
    holder: psycopg.AsyncConnection[Any] = await psycopg.AsyncConnection.connect(
        db_dsn, row_factory=dict_row
    )
    try:
        await holder.execute("SELECT * FROM webhooks WHERE id = %s FOR UPDATE", (held["id"],))
        b_events = [
            await hostdb.publish(conn, "job.created", {"i": i}, org_b) for i in range(EVENTS)
        ]
        a_events = [
            await hostdb.publish(conn, "job.created", {"i": i}, org_a) for i in range(EVENTS)
        ]
        # The other org's events flow while the lock is held (before the fix: none did
        # until the lock went).
        started = time.monotonic()
        await receiver.wait_for(EVENTS, path="/a", timeout=15)
        await hostdb.wait_deliveries(
            conn, "event_id = ANY(%s) AND status = 'success'", EVENTS, (a_events,), timeout=5
        )
        # B's events are not lost: still in the outbox, whole (nothing of them fanned
        # out, not even to B's webhook whose row is free), while the lock lasts.
        await asyncio.sleep(1.5)
        assert await _outbox_has(conn, b_events) == EVENTS
        assert receiver.requests_for("/b-held") == []
        assert receiver.requests_for("/b-free") == []
        assert time.monotonic() - started < 15
    finally:
        await holder.rollback()
        await holder.close()

    # Once the lock goes, every B event reaches both B webhooks, each exactly once.
    await receiver.wait_for(EVENTS, path="/b-held", timeout=15)
    await receiver.wait_for(EVENTS, path="/b-free", timeout=15)
    await hostdb.wait_deliveries(conn, "status = 'success'", 3 * EVENTS, timeout=15)
    await asyncio.sleep(1.5)  # room for a duplicate to show
    for path in ("/a", "/b-held", "/b-free"):
        ids = collections.Counter(r.headers["webhook-id"] for r in receiver.requests_for(path))
        assert len(ids) == EVENTS and set(ids.values()) == {1}, (path, ids)
    cur = await conn.execute(
        "SELECT count(*) AS n, count(DISTINCT (event_id, webhook_id)) AS pairs"
        " FROM webhook_deliveries"
    )
    row = await cur.fetchone()
    assert row == {"n": 3 * EVENTS, "pairs": 3 * EVENTS}, row
    assert await _outbox_has(conn, b_events) == 0
