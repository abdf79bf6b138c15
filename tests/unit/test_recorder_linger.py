"""The recorder's linger (issue 12): at a low rate, an outcome is held back a few
milliseconds for the next one only while an attempt is out, and is always written.

The writes are captured instead of sent to PostgreSQL (the statement is covered by the
integration suite); what is checked is which outcomes go into which statement."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from dispatcher.recorder import OutcomeRow, Recorder


def row() -> OutcomeRow:
    return OutcomeRow(
        id=uuid.uuid4(),
        webhook_id=uuid.uuid4(),
        org_id=uuid.uuid4(),
        claim=datetime.now(UTC),
        status="success",
        outcome="delivered",
        attempt=1,
        attempt_number=1,
        retry_in=None,
        final=True,
        counts=False,
        success=True,
        gone=False,
    )


class Captured(Recorder):
    """A recorder whose statements are captured: each batch it would write."""

    def __init__(self, linger: float) -> None:
        super().__init__(pool=None, linger=linger)  # type: ignore[arg-type]
        self._counters_due = False
        self.statements: list[list[uuid.UUID]] = []
        self.wrote = asyncio.Event()

    async def _write(self, batch: list[OutcomeRow]) -> None:
        self.statements.append([r.id for r in batch])
        self.wrote.set()


async def running(rec: Recorder) -> Any:
    task = asyncio.create_task(rec.run())
    await asyncio.sleep(0)
    return task


async def test_an_outcome_waits_for_the_next_one_while_an_attempt_is_out() -> None:
    rec = Captured(linger=30.0)
    out = [1]
    rec.expecting = lambda: out[0]
    task = await running(rec)
    try:
        a, b = row(), row()
        rec.put(a)
        await asyncio.sleep(0.001)
        assert rec.statements == []  # held back: another outcome is expected
        out[0] = 0  # the last attempt ends...
        rec.put(b)  # ...and its outcome comes
        await rec.wrote.wait()
        assert rec.statements == [[a.id, b.id]]  # one statement for both
        assert rec.lingered == 1
    finally:
        task.cancel()


async def test_nothing_waits_when_no_attempt_is_out() -> None:
    rec = Captured(linger=30.0)
    rec.expecting = lambda: 0
    task = await running(rec)
    try:
        a = row()
        rec.put(a)
        await rec.wrote.wait()  # a 30 s linger would hang here
        assert rec.statements == [[a.id]]
        assert rec.lingered == 0
    finally:
        task.cancel()


async def test_the_linger_is_bounded_and_drain_flushes_it() -> None:
    rec = Captured(linger=0.02)
    rec.expecting = lambda: 5  # attempts out whose outcomes never come
    task = await running(rec)
    try:
        a = row()
        rec.put(a)
        assert await rec.drain(timeout=30)  # shutdown's wait: everything is written
        assert rec.statements == [[a.id]]
    finally:
        task.cancel()


async def test_a_full_batch_is_written_without_waiting() -> None:
    rec = Captured(linger=30.0)
    rec.expecting = lambda: 1
    rows = [row() for _ in range(8)]
    for r in rows:
        rec.put(r)
    task = await running(rec)
    try:
        await rec.wrote.wait()
        assert rec.statements == [[r.id for r in rows]]
    finally:
        task.cancel()
