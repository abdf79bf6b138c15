"""Writes attempt outcomes to PostgreSQL in batches, one statement per batch.

Outcomes are queued by the delivery tasks and written by one task: under load a
batch holds many outcomes; when idle each is written at once. A write that
fails because the database is away is retried (with capped backoff) until it
succeeds or shutdown's deadline passes; an outcome whose claim was retaken by
another replica (lease ran out) is dropped by the statement itself.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.db import Pool
from dispatcher.queries import query

log = structlog.get_logger("dispatcher.recorder")

MAX_BATCH = 500


@dataclass(slots=True)
class OutcomeRow:
    id: UUID
    webhook_id: UUID
    org_id: UUID
    claim: datetime
    status: str
    outcome: str
    attempt: int
    attempt_number: int
    retry_in: float | None
    final: bool
    counts: bool
    success: bool
    gone: bool
    request_url: str | None = None
    request_headers: dict[str, str] | None = None
    response_status: int | None = None
    response_headers: dict[str, str] | None = None
    response_body: str | None = None
    duration_ms: int | None = None
    error_message: str | None = None
    error_code: str | None = None

    def as_json(self, seq: int) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "webhook_id": str(self.webhook_id),
            "org_id": str(self.org_id),
            "claim": self.claim.isoformat(),
            "seq": seq,
            "status": self.status,
            "outcome": self.outcome,
            "attempt": self.attempt,
            "attempt_number": self.attempt_number,
            "retry_in": self.retry_in,
            "final": self.final,
            "counts": self.counts,
            "success": self.success,
            "gone": self.gone,
            "request_url": self.request_url,
            "request_headers": self.request_headers,
            "response_status": self.response_status,
            "response_headers": self.response_headers,
            "response_body": self.response_body,
            "duration_ms": self.duration_ms,
            "error_message": self.error_message[:2000] if self.error_message else None,
            "error_code": self.error_code[:50] if self.error_code else None,
        }


# What an operator should know about each reason an outcome lost its claim.
LOST_NOTES = {
    "lease_retaken": "the lease ran out and another replica took the delivery over",
    "changed_by_another_writer": (
        "another writer changed the delivery while it was being sent (the host's "
        "deliver-webhook edge function still sending rows itself? see docs/host-adoption.md): "
        "the receiver may have got it twice"
    ),
    "deleted": "the delivery row was deleted while it was being sent",
}


class Recorder:
    def __init__(self, pool: Pool, *, deadline: float = 60.0) -> None:
        self._pool = pool
        self._deadline = deadline  # client-side bound on one write, beyond statement_timeout
        self._queue: asyncio.Queue[OutcomeRow] = asyncio.Queue()
        self._seq = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.written = 0
        self.dropped = 0  # not recorded: claim no longer held, or refused
        # Why claims were lost, by reason (lease_retaken, changed_by_another_writer, deleted).
        self.lost: Counter[str] = Counter()
        self.batches = 0

    def put(self, row: OutcomeRow) -> None:
        self._idle.clear()
        self._queue.put_nowait(row)

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            first = await self._queue.get()
            batch = [first]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._write_with_retry(batch)
            if self._queue.empty():
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued outcome is written; False if the timeout passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def _write_with_retry(self, batch: list[OutcomeRow]) -> None:
        delay = 0.2
        while True:
            try:
                await self._write(batch)
                return
            except (
                psycopg.OperationalError,
                psycopg.errors.DeadlockDetected,
                psycopg.errors.SerializationFailure,
                psycopg.errors.QueryCanceled,
                PoolTimeout,
                TimeoutError,  # no answer at all: a half-open connection
            ) as exc:
                log.warning(
                    "outcome_write_failed",
                    outcomes=len(batch),
                    error=type(exc).__name__,
                    retry_in=round(delay, 2),
                )
                await asyncio.sleep(delay * (0.8 + random.random() * 0.4))
                delay = min(delay * 2, 5.0)
            except (psycopg.Error, ValueError, TypeError) as exc:
                # Not transient: something in the batch the database (or JSON) refuses.
                # Write the outcomes one by one, the last resort without the receiver's data.
                log.error(
                    "outcome_batch_refused",
                    outcomes=len(batch),
                    error=type(exc).__name__,
                    detail=str(exc)[:300],
                )
                await self._write_one_by_one(batch)
                return

    async def _write_one_by_one(self, batch: list[OutcomeRow]) -> None:
        for row in batch:
            try:
                await self._write([row])
                continue
            except (psycopg.Error, ValueError, TypeError):
                pass
            row.response_headers = row.request_headers = None
            row.response_body = None
            row.error_message = (row.error_message or "")[:200] + " (response not recordable)"
            try:
                await self._write([row])
            except (psycopg.Error, ValueError, TypeError, PoolTimeout, TimeoutError) as exc:
                self.dropped += 1
                log.error(
                    "outcome_not_recorded",
                    delivery_id=str(row.id),
                    error=type(exc).__name__,
                    note="the delivery is attempted again when its lease ends",
                )

    async def _write(self, batch: list[OutcomeRow]) -> None:
        rows = []
        for row in batch:
            self._seq += 1
            rows.append(row.as_json(self._seq))
        payload = orjson.dumps(rows).decode()
        async with asyncio.timeout(self._deadline), self._pool.connection() as conn:
            cur = await conn.execute(query("record_outcomes"), {"rows": payload})
            got = await cur.fetchone()
            recorded = int(got["recorded"]) if got else 0
            lost: list[dict[str, str]] = list(got["lost"]) if got else []
        self.batches += 1
        self.written += recorded
        if recorded < len(batch):
            self.dropped += len(batch) - recorded
            self._report_lost(lost)

    def _report_lost(self, lost: list[dict[str, str]]) -> None:
        by_reason: dict[str, list[str]] = {}
        for item in lost:
            by_reason.setdefault(item["reason"], []).append(item["id"])
        for reason, ids in sorted(by_reason.items()):
            self.lost[reason] += len(ids)
            log.warning(
                "outcomes_not_recorded",
                outcomes=len(ids),
                reason=reason,
                delivery_ids=ids[:20],
                note=LOST_NOTES.get(reason, ""),
            )
