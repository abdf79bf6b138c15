"""The benchmark's latency floor (bench/floor_latency.py): a bare pipeline that delivers, in
its own process, exactly the events whose transaction rang its doorbell, and keeps the
times of its stages. Nothing about speed is asserted."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from support.receiver import Receiver

from bench.floor_latency import FloorProcess
from bench.infra import q
from bench.workload import EVENT_TYPE, PAYLOAD


async def _publish(conn: psycopg.AsyncConnection[Any], block: str, org: uuid.UUID) -> str:
    cur = await conn.execute(
        q(block), {"event_type": EVENT_TYPE, "payload": Jsonb(PAYLOAD), "org": org}
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row["id"])


async def test_floor_delivers_the_events_that_rang_its_doorbell_and_times_them(
    db_dsn: str, receiver: Receiver
) -> None:
    floor = FloorProcess(db_dsn, receiver.url("/floor"))
    await asyncio.to_thread(floor.start)
    try:
        async with await psycopg.AsyncConnection.connect(
            db_dsn, autocommit=True, row_factory=dict_row
        ) as conn:
            org = uuid.uuid4()
            await conn.execute(q("create_org"), {"id": org, "name": "floor", "slug": "floor"})
            plain = await _publish(conn, "publish_one", org)
            rung = await _publish(conn, "publish_one_floor", org)
            committed = time.time()
            got = await receiver.wait_for(1, "/floor")
            assert got[0].headers["X-InTime-Delivery"] == f"floor-{rung}"
            assert json.loads(got[0].body)["id"] == rung  # the daemon's body of that event
            deadline = time.monotonic() + 10
            while True:
                cur = await conn.execute(q("floor_timeline"))
                rows = await cur.fetchall()
                if (rows and rows[0]["status"] != "pending") or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # the other event would have arrived by now
        assert [r["event_id"] for r in rows] == [rung] != [plain]
        assert len(receiver.requests_for("/floor")) == 1
        row = rows[0]
        assert row["status"] == "success"
        # the stages are in order on the one clock of this machine
        assert committed - 5 < row["heard"] <= row["sent"] <= row["recorded"] < committed + 10
        assert row["heard"] - 0.01 <= row["written"] <= row["sent"] + 0.01
    finally:
        floor.stop()
