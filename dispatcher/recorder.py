"""Writes attempt outcomes to PostgreSQL in batches, one statement per batch.

Outcomes are queued by the delivery tasks and written by one task: under load a
batch holds many outcomes; when idle each is written at once. Under load only (outcomes were
already waiting when the batch began, and the previous batch held at least LINGER_AFTER fresh
ones) the writer lingers, like Kafka's linger.ms: it
waits up to LINGER seconds for the batch to reach LINGER_TARGET before writing, so that a
backlog's outcomes go in fuller statements. It never lingers over an ordered key's outcome
(the key's next delivery waits for it), nor while drain() waits (shutdown). A write that
fails because the database is away is retried (with capped backoff) until it
succeeds or shutdown's deadline passes; an outcome whose claim was retaken by
another replica (lease ran out) is dropped by the statement itself.

No outcome waits on a row lock someone else holds: delivery rows locked by another
transaction are skipped and tried again shortly (the row cannot be retaken while
it is locked), and the webhooks' counters are written by a second statement
(delivery_apply_webhook_counters) that skips locked webhook rows and keeps their changes
pending in dispatcher.webhook_streaks until the lock goes.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from uuid import UUID

import orjson
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.db import Pool
from dispatcher.outcomes import Outcome
from dispatcher.queries import query
from dispatcher.retrying import RECORDER, TRANSIENT_DB_ERRORS, Backoff

if TYPE_CHECKING:
    from dispatcher.claims import Claimed
    from dispatcher.sender import AttemptResult
    from dispatcher.transitions import Transition

log = structlog.get_logger("dispatcher.recorder")

MAX_BATCH = 500
BUSY_RETRY = 0.5  # seconds before rows locked by someone else, or pending counters, are retried
# The linger (issue 12): after a batch of at least LINGER_AFTER outcomes, the next one waits
# up to LINGER seconds for LINGER_TARGET outcomes, if outcomes were already waiting when it
# began. An idle daemon's writer waits for each outcome, so it never lingers, even right after
# a busy spell; a backlog's batches stay above LINGER_AFTER, so it keeps lingering.
LINGER = 0.005
LINGER_AFTER = 8
LINGER_TARGET = 64


# Longest error texts written (the delivery row's error_message, the attempt's error_code).
MAX_ERROR_MESSAGE = 2000
MAX_ERROR_CODE = 50


@dataclass(slots=True)
class OutcomeRow:
    """One outcome as delivery_record_outcomes reads it: orjson writes the dataclass itself, one
    JSON object per row with a key per field (UUIDs and datetimes as their str() and
    isoformat() text), with no dict built in between."""

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
    error_message: str | None = None  # at most MAX_ERROR_MESSAGE characters
    error_code: str | None = None  # at most MAX_ERROR_CODE characters
    # when the attempt was sent and when it ended (streak steps: 0011_webhook_streaks.sql)
    started_at: datetime | None = None
    ended_at: datetime | None = None
    seq: int = 0  # set when written: orders the outcomes of one webhook in a batch
    # of an ordered key's delivery (Claimed.keyed): a batch without one is written by the
    # lean statement, which leaves out the release of the key's next delivery (issue 12)
    keyed: bool = True


def outcomes_json(rows: list[OutcomeRow]) -> str:
    """The `rows` parameter of delivery_record_outcomes."""
    return orjson.dumps(rows).decode()


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


def outcome_row(
    d: Claimed, r: AttemptResult | None, t: Transition, error: str | None
) -> OutcomeRow:
    """The row recorded for one attempt of `d`: `r` is what the receiver did (None when
    the webhook was not active and nothing was sent), `t` what happens to the delivery."""
    now = datetime.now(UTC)
    row = OutcomeRow(
        id=d.id,
        webhook_id=d.webhook_id,
        org_id=d.org_id,
        claim=d.claim,
        status=t.status,
        outcome=r.outcome.value if r else Outcome.NOT_ACTIVE.value,
        attempt=d.attempt,
        attempt_number=t.attempt_number,
        retry_in=t.retry_in,
        final=t.final,
        counts=t.counts_as_failure,
        success=t.success,
        gone=t.gone,
        started_at=d.sent_at or now,
        ended_at=now,
        keyed=d.keyed,
    )
    if r is not None:
        row.request_url = d.url
        row.request_headers = r.request_headers
        row.response_status = r.response_status
        row.response_headers = r.response_headers
        row.response_body = r.response_body
        row.duration_ms = r.duration_ms
        row.error_code = r.error_code[:MAX_ERROR_CODE] if r.error_code else None
        if r.outcome is Outcome.GONE:
            error = (error or "HTTP 410") + "; the endpoint is gone: webhook disabled"
        elif r.outcome is Outcome.RETRYABLE and t.status in ("dlq", "failed"):
            error = f"{error} (attempt {d.attempt} of {d.max_attempts}, no attempts left)"
    row.error_message = error[:MAX_ERROR_MESSAGE] if error else None
    return row


class Recorder:
    def __init__(self, pool: Pool, *, deadline: float = 60.0) -> None:
        self._pool = pool
        self._deadline = deadline  # client-side bound on one write, beyond statement_timeout
        self._queue: asyncio.Queue[OutcomeRow] = asyncio.Queue()
        self._seq = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy: list[OutcomeRow] = []  # rows locked by another transaction: retried
        self._counters_due = True  # streak rows may have pending changes (also from a crash)
        self._counters_waiting = False
        self.written = 0
        self.dropped = 0  # not recorded: claim no longer held, or refused
        # Why claims were lost, by reason (lease_retaken, changed_by_another_writer, deleted).
        self.lost: Counter[str] = Counter()
        self.batches = 0
        self._last = 0  # outcomes in the last batch written: under load when large
        self._want = 0  # while lingering: the queue size that ends the linger
        self._enough = asyncio.Event()  # ends a linger early
        self._draining = False
        self.lingered = 0  # batches that lingered

    def put(self, row: OutcomeRow) -> None:
        self._idle.clear()
        self._queue.put_nowait(row)
        if self._want and (row.keyed or self._queue.qsize() >= self._want):
            self._enough.set()

    @property
    def backlog(self) -> int:
        return self._queue.qsize() + len(self._busy)

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            batch: list[OutcomeRow] = []
            # Under load when outcomes were already waiting as this batch began: a writer that
            # had to wait for its first outcome is idle, however large its last batch was.
            waiting = not self._queue.empty()
            if self._queue.empty() and (self._busy or self._counters_due):
                # Something waits on another transaction's lock: look again shortly.
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), BUSY_RETRY))
                except TimeoutError:
                    pass
            else:
                batch.append(await self._queue.get())
            retried = len(self._busy)
            batch.extend(self._busy)
            self._busy = []
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            if (
                waiting
                and self._last >= LINGER_AFTER
                and len(batch) < LINGER_TARGET
                and not self._draining
            ):
                await self._linger(batch)
            # Only fresh outcomes say "under load": rows retried because another transaction
            # holds their lock (BUSY_RETRY) would keep a lone outcome lingering for as long.
            self._last = len(batch) - retried
            if batch:
                await self._write_with_retry(batch)
            if self._counters_due:
                await self._apply_counters()
            if self._queue.empty() and not self._busy:
                self._idle.set()

    async def _linger(self, batch: list[OutcomeRow]) -> None:
        """Under load: wait up to LINGER for the batch to fill to LINGER_TARGET, then take what
        came. Not over an ordered key's outcome (its next delivery is released by this
        write), and ended by one arriving, or by drain()."""
        if any(row.keyed for row in batch):
            return
        self.lingered += 1
        self._want = LINGER_TARGET - len(batch)
        self._enough.clear()
        try:
            async with asyncio.timeout(LINGER):
                await self._enough.wait()
        except TimeoutError:
            pass
        finally:
            self._want = 0
        while len(batch) < MAX_BATCH and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued outcome is written; False if the timeout passed first.
        A linger in progress ends at once, and none starts while this waits."""
        self._draining = True
        self._enough.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            self._draining = False

    async def _apply_counters(self) -> None:
        """Write pending streak changes to public.webhooks, skipping locked webhook rows."""
        try:
            async with asyncio.timeout(self._deadline), self._pool.connection() as conn:
                cur = await conn.execute(query("delivery_apply_webhook_counters"))
                got = await cur.fetchone()
        except (psycopg.Error, PoolTimeout, TimeoutError) as exc:
            log.warning("webhook_counters_not_written", error=type(exc).__name__)
            return  # still pending in dispatcher.webhook_streaks: next time
        waiting = int(got["waiting"]) if got else 0
        if waiting and not self._counters_waiting:
            log.warning(
                "webhook_counters_waiting",
                webhooks=waiting,
                reason="webhook rows locked by another transaction; written when the lock goes",
            )
        self._counters_waiting = self._counters_due = waiting > 0

    async def _write_with_retry(self, batch: list[OutcomeRow]) -> None:
        backoff: Backoff | None = None  # made on the first failure: most writes have none
        while True:
            try:
                await self._write(batch)
                if backoff is not None:
                    backoff.recovered(log, "outcome_write_recovered", outcomes=len(batch))
                return
            except TRANSIENT_DB_ERRORS as exc:
                backoff = backoff or Backoff(RECORDER)
                delay = backoff.failed(
                    log, "outcome_write_failed", outcomes=len(batch), error=type(exc).__name__
                )
                await asyncio.sleep(delay)
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
        for row in batch:
            self._seq += 1
            row.seq = self._seq
        payload = outcomes_json(batch)
        async with asyncio.timeout(self._deadline), self._pool.connection() as conn:
            name = (
                "delivery_record_outcomes"
                if any(row.keyed for row in batch)
                else "delivery_record_outcomes_lean"
            )
            cur = await conn.execute(query(name), {"rows": payload})
            got = await cur.fetchone()
            recorded = int(got["recorded"]) if got else 0
            noted = int(got["webhooks"]) if got else 1
            busy = set(got["busy"] or ()) if got else set()
            lost: list[dict[str, str]] = list(got["lost"]) if got else []
            later = list(got["release_later"] or ()) if got else []
            if later:  # ordered keys (0032): a next delivery that snapshot could not see
                await conn.execute(query("delivery_release_parked"), {"ids": later})
        self.batches += 1
        self.written += recorded
        # Streak rows changed (ours, or another replica's still unwritten): counters next.
        if noted or (got is not None and got["counters_pending"]):
            self._counters_due = True
        if busy:
            # Locked by another transaction: nobody can retake them meanwhile; try again.
            self._busy.extend(r for r in batch if r.id in busy)
            log.info("outcomes_waiting_on_lock", outcomes=len(busy))
        if lost:
            self.dropped += len(lost)
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
