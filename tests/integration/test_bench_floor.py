"""The benchmark's durable floor (bench/floor.py, scenarios ``floor`` and ``floor3``, and the
ladder's rungs, ``--real``) on a small backlog: every event delivered exactly once, signed,
and every row recorded.

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
from dispatcher.demo.receiver import verify_intime, verify_standard_webhooks
from dispatcher.request import message_id

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
        rows = await _drained(conn, receiver, floor)
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


async def _drained(
    conn: psycopg.AsyncConnection[dict[str, Any]], receiver: Receiver, floor: Any
) -> list[dict[str, Any]]:
    """Every event received and recorded by the floor process, which then exits 0 on SIGTERM
    (a duplicate would arrive in the 0.3 s before it is stopped)."""
    try:
        try:
            await receiver.wait_for(EVENTS, timeout=30)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nfloor: {floor.tail()}") from None
        rows = await _all_recorded(conn, EVENTS, floor)
        await asyncio.sleep(0.3)
    finally:
        floor.terminate()
        code = await floor.wait_exit(10)
        tail = floor.tail()
        floor.close()
    assert code == 0, tail
    return rows


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("real", ["request", "request,fanout,claim,outcome"])
async def test_floor_with_the_daemons_pieces_delivers_as_the_daemon_does(
    db_dsn: str, receiver: Receiver, real: str
) -> None:
    """The ladder (bench/floor.py --real): the daemon's request (both signatures, its
    webhook-id, X-InTime-Sequence), and with every piece real its fan-out's sequence
    numbers, its claim's tokens and its recorder's rows and webhook counters."""
    pieces = tuple(real.split(","))
    async with await psycopg.AsyncConnection.connect(
        db_dsn, autocommit=True, row_factory=dict_row
    ) as conn:
        hooks = await create_webhooks(conn, receiver.url("/rung"), orgs=1, per_org=1)
        await publish_backlog(conn, hooks.orgs, EVENTS, chunk=100)
        cur = await conn.execute(q("webhook_ids"))
        [webhook] = [str(r["id"]) for r in await cur.fetchall()]
        floor = start_floor(db_dsn, "test-rung", webhook=webhook, writes=3, real=pieces)
        rows = await _drained(conn, receiver, floor)
        cur = await conn.execute("SELECT delivery_id, sequence FROM dispatcher.delivery_sequence")
        numbers = {str(r["delivery_id"]): r["sequence"] for r in await cur.fetchall()}
        cur = await conn.execute("SELECT last_success_at FROM webhooks")
        hook = await cur.fetchone()

    got = receiver.requests
    assert len(got) == EVENTS  # exactly once
    by_id = {str(r["id"]): r for r in rows}
    assert set(by_id) == {req.headers["X-InTime-Delivery"] for req in got}
    for req in got:
        row = by_id[req.headers["X-InTime-Delivery"]]
        assert req.body == row["request_body"].encode()
        assert verify_standard_webhooks(hooks.secret, req.headers, req.body) is None
        assert verify_intime(hooks.secret, req.headers, req.body) is None
        assert req.headers["webhook-id"] == message_id(
            row["event_id"], row["webhook_id"], row["id"]
        )
        assert req.headers["X-InTime-Event"] == row["event_type"]
        assert req.headers["User-Agent"].startswith("webhook-dispatcher/")
        assert int(req.headers["X-InTime-Sequence"]) > 0
        assert row["status"] == "success" and row["next_retry_at"] is None
    if "fanout" not in pieces:
        return
    # the fan-out numbered every delivery, the claim sent its number, the recorder
    # recorded the request's headers and applied the webhook's counters
    assert sorted(numbers.values()) == list(range(1, EVENTS + 1))
    for req in got:
        delivery = req.headers["X-InTime-Delivery"]
        assert int(req.headers["X-InTime-Sequence"]) == numbers[delivery]
        recorded = by_id[delivery]["request_headers"]
        assert recorded["webhook-id"] == req.headers["webhook-id"]
    assert hook is not None and hook["last_success_at"] is not None
