"""The benchmark's durable floor (bench/floor.py, scenarios ``floor`` and ``floor3``) on a
small backlog: every event delivered exactly once, signed, and every row recorded.

Correctness only: its speed belongs to ``python -m bench``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from support.receiver import Receiver

from bench.infra import q, start_floor
from bench.workload import create_webhooks, publish_backlog
from dispatcher.demo.receiver import verify_standard_webhooks

EVENTS = 300


@pytest.mark.timeout(60)
@pytest.mark.parametrize("writes", [2, 3])
async def test_floor_delivers_every_event_once_signed_and_records_every_row(
    db_dsn: str, receiver: Receiver, writes: int
) -> None:
    async with await psycopg.AsyncConnection.connect(
        db_dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        hooks = await create_webhooks(conn, receiver.url("/floor"), orgs=1, per_org=1)
        await publish_backlog(conn, hooks.orgs, EVENTS, chunk=100)
        cur = await conn.execute(q("webhook_ids"))
        [webhook] = [str(r["id"]) for r in await cur.fetchall()]
        cur = await conn.execute("SELECT id FROM events")
        events = {r["id"] for r in await cur.fetchall()}
        assert len(events) == EVENTS

        floor = start_floor(db_dsn, "test-floor", webhook=webhook, writes=writes)
        try:
            await receiver.wait_for(EVENTS, timeout=30)
            rows = await _all_recorded(conn, EVENTS, floor)
            await asyncio.sleep(0.3)  # a duplicate would arrive meanwhile
        finally:
            floor.terminate()
            code = await floor.wait_exit(10)
            tail = floor.tail()
            floor.close()
        assert code == 0, tail
        cur = await conn.execute(q("outbox_count"))
        outbox = await cur.fetchone()
        assert outbox is not None and outbox["n"] == 0

    got = receiver.requests
    assert len(got) == EVENTS  # exactly once: no duplicate, nothing missing
    by_id = {r["id"]: r for r in rows}
    assert {r["event_id"] for r in rows} == events  # one row per event
    assert len(rows) == EVENTS
    assert {req.headers["X-InTime-Delivery"] for req in got} == {str(i) for i in by_id}
    for req in got:
        assert verify_standard_webhooks(hooks.secret, req.headers, req.body) is None
        assert req.headers["webhook-id"] == req.headers["X-InTime-Delivery"]
        row = by_id[uuid.UUID(req.headers["X-InTime-Delivery"])]
        assert req.body == row["request_body"].encode()  # the row's exact body was sent
    for row in rows:
        assert row["status"] == "success"
        assert row["response_status"] == 204
        assert row["response_body"] == ""
        assert row["delivered_at"] is not None and row["duration_ms"] is not None
        assert row["next_retry_at"] is None
        assert row["attempt_number"] == 1
        assert str(row["webhook_id"]) == webhook
        assert row["request_url"] == receiver.url("/floor") + "/0/0"


async def _all_recorded(
    conn: psycopg.AsyncConnection[dict[str, Any]], expected: int, floor: Any
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while True:
        cur = await conn.execute("SELECT * FROM webhook_deliveries")
        rows = await cur.fetchall()
        if sum(r["status"] == "success" for r in rows) >= expected:
            return rows
        assert floor.is_running(), floor.tail()
        assert time.monotonic() < deadline, f"{len(rows)} rows, not all recorded"
        await asyncio.sleep(0.05)
