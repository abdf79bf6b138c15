"""Retention: removes old DLQ rows, held events, finished deliveries and attempt history,
and sequence numbers left without their delivery.

Runs on one replica at a time (advisory lock), in small batches with a pause
between them, so it never holds long locks nor starves delivery of I/O. The
attempt history is partitioned by day (migration 0024): its old days are dropped
whole, and the days ahead are created here. A long catch-up (a first run on a
big table, or after downtime) logs `retention_progress` lines as it goes.

Sequence numbers (dispatcher.delivery_sequence) go with their deliveries through
triggers (0033, 0039); what bypasses them (a partition dropped, a delete under
session_replication_role = replica) leaves numbers behind. Each pass examines a
bounded number of them (`orphan_scan`), going on where the previous pass stopped and
wrapping around, and deletes those whose delivery is gone, at a bounded cost per pass
(about 1 s for 100,000 on the test machine). Coverage is eventual, not bounded: one
replica that runs every pass alone covers the numbers within (numbers / orphan_scan)
passes, but each replica keeps its own cursor (a random start, also after a restart)
and whichever takes the lock sweeps from its own, so parts of the key range may be
visited again before others are reached. The sweep runs with row_security = off:
deliveries hidden from the daemon's role raise (logged, sweep skipped) instead of
looking gone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.db import Pool
from dispatcher.queries import query

log = structlog.get_logger("dispatcher.retention")

LOCK_KEY = 0x64697372  # "disr"
NIL_UUID = uuid.UUID(int=0)


@dataclass
class Purged:
    dlq: int = 0
    finished: int = 0
    attempts: int = 0
    held: int = 0
    orphan_numbers: int = 0
    attempt_partitions_dropped: int = 0
    attempt_partitions_created: int = 0
    orphan_sweep_refused: bool = False
    skipped: bool = False
    by: dict[str, int] = field(default_factory=dict)


class Retention:
    def __init__(
        self,
        pool: Pool,
        *,
        days: int,
        interval: float = 600.0,
        batch: int = 1000,
        pause: float = 0.05,
        progress_every: float = 10.0,
        orphan_scan: int = 100_000,
    ) -> None:
        self._progress_every = progress_every
        self._pool = pool
        self._days = days
        self._interval = interval
        self._batch = batch
        self._pause = pause
        self._orphan_scan = orphan_scan
        # where the orphan sweep goes on from; a random start spreads the work of
        # replicas and restarts over the whole key range
        self._orphan_after = uuid.uuid4()

    async def run(self) -> None:
        while True:
            try:
                purged = await self.run_once()
                if (
                    purged.dlq
                    or purged.finished
                    or purged.attempts
                    or purged.held
                    or purged.orphan_numbers
                    or purged.attempt_partitions_dropped
                ):
                    log.info(
                        "retention_purged",
                        dlq=purged.dlq,
                        held=purged.held,
                        finished=purged.finished,
                        attempts=purged.attempts,
                        orphan_numbers=purged.orphan_numbers,
                        attempt_partitions_dropped=purged.attempt_partitions_dropped,
                        retention_days=self._days,
                    )
            except (psycopg.Error, PoolTimeout) as exc:
                log.warning("retention_failed", error=type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def run_once(self) -> Purged:
        purged = Purged()
        async with self._pool.connection() as conn:
            cur = await conn.execute(query("retention_lock"), {"key": LOCK_KEY})
            row = await cur.fetchone()
            if not row or not row["locked"]:
                purged.skipped = True
                return purged
            try:
                await self._partitions(conn, purged)
                purged.dlq = await self._drain(conn, "purge_dlq", {})
                purged.held = await self._drain(conn, "purge_held", {})
                purged.finished = await self._drain(conn, "purge_finished", {"days": self._days})
                purged.attempts += await self._drain(conn, "purge_attempts", {"days": self._days})
                try:
                    purged.orphan_numbers = await self._sweep_orphan_numbers(conn)
                except psycopg.errors.InsufficientPrivilege as exc:
                    # row_security = off: rows hidden from the role raise, never look gone
                    purged.orphan_sweep_refused = True
                    log.warning(
                        "retention_orphan_sweep_refused",
                        error=type(exc).__name__,
                        sqlstate=exc.sqlstate,
                        note="row-level security hides deliveries from the daemon's role"
                        " (BYPASSRLS lost, or a policy): the sweep waits until it is fixed",
                    )
            finally:
                await conn.execute(query("retention_unlock"), {"key": LOCK_KEY})
        return purged

    async def _partitions(self, conn: psycopg.AsyncConnection[Any], purged: Purged) -> None:
        """Create the coming days' attempt partitions, drop those past the window. A lock
        not had within 2 s leaves the work to the next pass (logged), never blocking inserts."""
        try:
            async with conn.transaction():
                await conn.execute(query("retention_lock_timeout"))
                cur = await conn.execute(query("attempt_partitions_ensure"))
                row = await cur.fetchone()
                purged.attempt_partitions_created = int(row["created"]) if row else 0
            async with conn.transaction():
                await conn.execute(query("retention_lock_timeout"))
                cur = await conn.execute(query("attempt_partitions_drop"), {"days": self._days})
                row = await cur.fetchone()
            if row:
                purged.attempt_partitions_dropped = int(row["dropped"])
                purged.attempts += int(row["rows_estimate"])
        except psycopg.errors.LockNotAvailable:
            log.warning("retention_partitions_busy", note="tried again on the next pass")

    async def _drain(
        self, conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, object]
    ) -> int:
        total = 0
        started = last = time.monotonic()
        while True:
            cur = await conn.execute(query(name), {**params, "batch": self._batch})
            total += cur.rowcount
            if cur.rowcount < self._batch:
                return total
            now = time.monotonic()
            if now - last >= self._progress_every:
                last = now
                log.info(
                    "retention_progress",
                    step=name,
                    purged=total,
                    rate=round(total / max(now - started, 1e-6), 1),
                    elapsed_seconds=round(now - started, 1),
                )
            await asyncio.sleep(self._pause)

    async def _sweep_orphan_numbers(self, conn: psycopg.AsyncConnection[Any]) -> int:
        """Examine up to `orphan_scan` sequence numbers from where the last pass stopped
        (wrapping around once), `batch` at a time; delete those whose delivery is gone.
        Each batch runs with row_security = off: when row-level security would hide
        deliveries from the daemon's role, PostgreSQL raises InsufficientPrivilege (the
        caller logs it and skips the sweep) rather than let live deliveries look gone."""
        start = self._orphan_after
        after, wrapped, examined, purged = start, False, 0, 0
        while examined < self._orphan_scan:
            async with conn.transaction():
                await conn.execute(query("retention_row_security_off"))
                cur = await conn.execute(
                    query("purge_orphan_numbers"), {"after": after, "batch": self._batch}
                )
                row = await cur.fetchone()
            assert row is not None
            examined += int(row["examined"])
            purged += int(row["purged"])
            if int(row["examined"]) < self._batch:  # the end of the key range
                if wrapped or start == NIL_UUID:
                    after = NIL_UUID
                    break
                after, wrapped = NIL_UUID, True
            else:
                after = row["last"]
                if wrapped and after >= start:  # a whole lap
                    break
            await asyncio.sleep(self._pause)
        self._orphan_after = after
        return purged
