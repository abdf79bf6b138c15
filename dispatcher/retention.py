"""Retention: removes old DLQ rows, held events, finished deliveries and attempt history.

Runs on one replica at a time (advisory lock), in small batches with a pause
between them, so it never holds long locks nor starves delivery of I/O.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.db import Pool
from dispatcher.queries import query

log = structlog.get_logger("dispatcher.retention")

LOCK_KEY = 0x64697372  # "disr"


@dataclass
class Purged:
    dlq: int = 0
    finished: int = 0
    attempts: int = 0
    held: int = 0
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
    ) -> None:
        self._pool = pool
        self._days = days
        self._interval = interval
        self._batch = batch
        self._pause = pause

    async def run(self) -> None:
        while True:
            try:
                purged = await self.run_once()
                if purged.dlq or purged.finished or purged.attempts or purged.held:
                    log.info(
                        "retention_purged",
                        dlq=purged.dlq,
                        held=purged.held,
                        finished=purged.finished,
                        attempts=purged.attempts,
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
                purged.dlq = await self._drain(conn, "purge_dlq", {})
                purged.held = await self._drain(conn, "purge_held", {})
                purged.finished = await self._drain(conn, "purge_finished", {"days": self._days})
                purged.attempts = await self._drain(conn, "purge_attempts", {"days": self._days})
            finally:
                await conn.execute(query("retention_unlock"), {"key": LOCK_KEY})
        return purged

    async def _drain(
        self, conn: psycopg.AsyncConnection[object], name: str, params: dict[str, object]
    ) -> int:
        total = 0
        while True:
            cur = await conn.execute(query(name), {**params, "batch": self._batch})
            total += cur.rowcount
            if cur.rowcount < self._batch:
                return total
            await asyncio.sleep(self._pause)
