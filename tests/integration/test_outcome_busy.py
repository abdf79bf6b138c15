"""The recorder and a delivery row another transaction holds (the "locked row" fault, issue 12).

An outcome whose row is locked by someone else when the recorder writes it is neither waited
on nor lost: the statement returns at once with the row in `busy`, the row is left as it was,
and the recorder writes it on its retry once the lock is gone. Through the real Recorder and
pool, for the full outcome statement and the lean one (a batch without keyed deliveries), with
the row held by `SELECT ... FOR UPDATE` (an admin tool, the chaos suite's fault) and by an
open `UPDATE` (another writer). A statement that waited would never finish its first batch
while the lock is held, and the test would fail on the wait for it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import hostdb
import pytest
from support.outcomes import delivered

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.db import open_pool
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits
from dispatcher.recorder import OutcomeRow, Recorder
from dispatcher.settings import load_settings

HOLDS = {
    "for_update": "SELECT 1 FROM webhook_deliveries WHERE id = %s FOR UPDATE",
    "open_update": "UPDATE webhook_deliveries SET error_code = error_code WHERE id = %s",
}


async def _leased(conn: hostdb.Conn) -> Claimed:
    """One pending delivery row, leased by delivery_claim_due as the daemon does."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook")
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status)"
        " VALUES (%s, %s, 'job.created', '{}', 'https://example.com/hook', '{}', '{}',"
        " 'pending')",
        (org, hook["id"]),
    )
    admission: Admission[Claimed] = Admission(4, RateLimits())
    params = {**admission.claim_params(), "lease": 60.0, "limit": 1, "scan": 4}
    cur = await conn.execute(query("delivery_claim_due"), params)
    rows = [r for r in await cur.fetchall() if r["id"]]
    assert len(rows) == 1
    return Claimed.from_row(rows[0], datetime.now(UTC))


def _success(d: Claimed, keyed: bool) -> OutcomeRow:
    now = datetime.now(UTC)
    return delivered(
        d.id,
        d.webhook_id,
        d.org_id,
        d.claim,
        attempt=d.attempt,
        request_url=d.url,
        request_headers={"content-type": "application/json"},
        response_status=204,
        response_headers={"x-receiver": "test"},
        response_body="",
        duration_ms=5,
        started_at=now - timedelta(milliseconds=5),
        ended_at=now,
        keyed=keyed,
    )


async def _row(conn: hostdb.Conn, delivery: UUID) -> dict[str, Any]:
    cur = await conn.execute("SELECT * FROM webhook_deliveries WHERE id = %s", (delivery,))
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def _until(check: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("hold", sorted(HOLDS))
@pytest.mark.parametrize("keyed", [False, True], ids=["lean", "full"])
async def test_an_outcome_on_a_locked_row_is_reported_busy_then_written(
    db_dsn: str, conn: hostdb.Conn, hold: str, keyed: bool
) -> None:
    d = await _leased(conn)
    if not keyed:
        assert not d.keyed, "an unordered delivery: the recorder takes the lean statement"
    before = await _row(conn, d.id)
    settings = load_settings(database_url=db_dsn, allowed_target_networks="127.0.0.1/32")
    pool = await open_pool(settings)
    locker = await hostdb.connect(db_dsn)
    recorder = Recorder(pool, deadline=30)
    running = asyncio.create_task(recorder.run())
    try:
        async with locker.transaction():
            await locker.execute(HOLDS[hold], (d.id,))
            recorder.put(_success(d, keyed))

            async def returned() -> bool:
                return recorder.batches >= 1

            # the statement came back while the lock is still held: not waited on
            await _until(returned, 10)
            assert (recorder.written, recorder.dropped, recorder.backlog) == (0, 0, 1)
            assert not recorder.lost
            # read while the lock is still held (the recorder's retry may write it as soon
            # as the locker commits): the row is as the claim left it, still ours
            assert await _row(conn, d.id) == before

        async def written() -> bool:
            return (await _row(conn, d.id))["status"] == "success"

        await _until(written, 10)  # the recorder's retry (BUSY_RETRY), not a new outcome
        row = await _row(conn, d.id)
        assert (row["response_status"], row["next_retry_at"]) == (204, None)
        assert row["request_headers"] == {"content-type": "application/json"}
        assert (recorder.written, recorder.dropped, recorder.backlog) == (1, 0, 0)
        assert recorder.batches >= 2
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await locker.close()
        await pool.close()
