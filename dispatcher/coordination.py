"""Replica coordination: heartbeats, the live replica count, and the shared rate limits.

Every replica records a heartbeat in dispatcher.replicas and reads back how many replicas
are alive and the per-webhook rate limits; each enforces rate / live-replicas
(`RateLimits.update`), so together they stay near the configured rate. Claims themselves
need no coordination: `FOR UPDATE SKIP LOCKED` and the lease token keep replicas apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.db import Pool
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits

log = structlog.get_logger("dispatcher.coordination")


class Coordinator:
    """This replica's heartbeat; `replicas` and `limits` are what the last one returned."""

    def __init__(self, pool: Pool, instance_name: str, limits: RateLimits) -> None:
        self._pool = pool
        self._name = instance_name
        self.limits = limits
        self.replica_id = uuid.uuid4()
        self.replicas = 1

    async def run(self, every: float = 2.0) -> None:
        """Heartbeat this replica and refresh rate limits, until cancelled."""
        params = {
            "id": self.replica_id,
            "name": self._name,
            "alive_within": max(every * 5, 10.0),
            "forget_after": 3600,
        }
        try:
            while True:
                try:
                    async with self._pool.connection(timeout=5) as conn:
                        cur = await conn.execute(query("replica_heartbeat"), params)
                        row = await cur.fetchone()
                    if row is not None:
                        self.replicas = int(row["live"])
                        self.limits.update(row["limits"] or {}, self.replicas)
                except (psycopg.Error, PoolTimeout) as exc:
                    log.warning("heartbeat_failed", error=type(exc).__name__)
                await asyncio.sleep(every)
        finally:
            with contextlib.suppress(Exception):
                async with self._pool.connection(timeout=2) as conn:
                    await conn.execute(query("replica_leave"), {"id": self.replica_id})
