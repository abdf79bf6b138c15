"""The integrations worker: OAuth token refresh, health checks, failover and log retention.

Runs as one task under the supervisor (``App._supervise``) beside webhook delivery. Each pass
(every ``integrations_poll_seconds``; ``run_once()`` for tests and the CLI):

1. refresh due OAuth tokens (token_refresh.TokenRefresher; single flight across replicas);
2. run due health checks (health_checks; claimed with leases, jittered schedule) and the
   failover/recovery they trigger (failover);
3. every ``health_log_purge_interval_seconds``, purge health logs older than
   ``health_log_retention_days`` in small batches.

Database trouble makes a pass fail and the next one try again; one integration's failure is
recorded against it and never stops the others. HTTP goes through one aiohttp session of its
own with an explicit timeout, redirects off and the SSRF-guarding resolver.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import aiohttp
import psycopg
import structlog
from psycopg_pool import PoolTimeout

from dispatcher.crypto import Keyring
from dispatcher.db import Pool
from dispatcher.dns import bounded_resolver
from dispatcher.integrations import events, health_checks, verdict
from dispatcher.integrations.oauth import OAuthClient
from dispatcher.integrations.stats import HEALTH_CHECKS
from dispatcher.integrations.token_refresh import TokenRefresher
from dispatcher.queries import query
from dispatcher.settings import Settings
from dispatcher.ssrf import GuardedResolver

log = structlog.get_logger("dispatcher.integrations.worker")

T = TypeVar("T")

PURGE_BATCH = 1000
# Check results that make the integration `error` at once (not only once unhealthy).
IMMEDIATE_ERRORS = frozenset({"decrypt_failed"})


def load_keyring(settings: Settings) -> Keyring:
    """The keys from DISPATCHER_ENCRYPTION_KEYS, the key file and the systemd credential."""
    keys = settings.encryption_keys.get_secret_value() if settings.encryption_keys else None
    return Keyring.from_sources(keys, settings.encryption_keys_file, settings.credentials_directory)


@dataclass(frozen=True, slots=True)
class PassSummary:
    tokens: int
    checks: int
    purged: int


class IntegrationsWorker:
    def __init__(
        self,
        settings: Settings,
        pool: Pool,
        *,
        keyring: Keyring | None = None,
        owner: str | None = None,
    ) -> None:
        self._s = settings
        self._pool = pool
        self.keyring = keyring if keyring is not None else load_keyring(settings)
        self.owner = owner or f"{settings.instance_name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._session: aiohttp.ClientSession | None = None
        self._resolver: GuardedResolver | None = None
        self._refresher: TokenRefresher | None = None
        self._prober: health_checks.Prober | None = None
        self._next_purge = 0.0
        self.passes = 0

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        if self._session is not None:
            return
        s = self._s
        # Token endpoints and health URLs are looked up like webhook hosts: bounded, off the
        # thread pool the database lookup uses (dispatcher/dns.py).
        self._resolver = GuardedResolver(
            allowed=s.allowed_networks,
            inner=bounded_resolver(s.dns_servers, s.dns_timeout, s.dns_max_per_org, s.dns_threads),
        )
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            limit=max(s.integrations_concurrency * 2, 10),
            ttl_dns_cache=60,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=s.integrations_http_timeout),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": "webhook-dispatcher-integrations"},
        )
        client = OAuthClient(self._session, s.allowed_networks, s.integrations_http_timeout)
        self._refresher = TokenRefresher(s, self._pool, self.keyring, client, self.owner)
        self._prober = health_checks.Prober(
            self._session, self.keyring, s.allowed_networks, s.health_check_timeout_seconds
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._resolver is not None:
            await self._resolver.close()
            self._resolver = None

    async def __aenter__(self) -> IntegrationsWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run(self) -> None:
        """The supervisor's task: passes until cancelled."""
        if not self._s.integrations_enabled:
            log.info("integrations_disabled")
            return
        if not self.keyring:
            log.warning(
                "integrations_plaintext",
                note="no encryption key configured: refreshed tokens are stored in "
                "plaintext (set DISPATCHER_ENCRYPTION_KEYS)",
            )
        log.info("integrations_started", key_ids=self.keyring.key_ids, owner=self.owner)
        await self.start()
        try:
            while True:
                try:
                    await self.run_once()
                except* (psycopg.Error, PoolTimeout) as group:  # the database: try again later
                    exc = group.exceptions[0]
                    log.warning(
                        "integrations_pass_failed",
                        error=type(exc).__name__,
                        detail=str(exc).splitlines()[0][:200] if str(exc) else "",
                        errors=len(group.exceptions),
                    )
                await asyncio.sleep(self._s.integrations_poll_seconds)
        finally:
            await self.close()

    # -- one pass ---------------------------------------------------------------------
    async def run_once(self) -> PassSummary:
        await self.start()
        assert self._refresher is not None
        tokens = await self._refresher.run_once()
        checks = await self.check_due()
        purged = 0
        if time.monotonic() >= self._next_purge:
            purged = await self.purge_health_logs()
            self._next_purge = time.monotonic() + self._s.health_log_purge_interval_seconds
        self.passes += 1
        return PassSummary(tokens, checks, purged)

    async def refresh_due(self) -> int:
        await self.start()
        assert self._refresher is not None
        return await self._refresher.run_once()

    async def check_due(self) -> int:
        """Run every due health check (claimed under a lease); returns how many ran."""
        await self.start()
        s = self._s
        done = 0
        async with self._pool.connection() as conn:
            await conn.execute(
                query("integ_seed_health_state"),
                {"spread": s.health_check_interval_seconds * s.health_check_jitter},
            )
        sem = asyncio.Semaphore(s.integrations_concurrency)
        limit = s.integrations_concurrency * 4

        async def one(integration_id: UUID) -> None:
            async with sem:
                await self._check_guarded(integration_id)

        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    query("integ_claim_health"),
                    {
                        "lease": max(
                            s.integrations_lease_seconds, s.health_check_timeout_seconds * 3
                        ),
                        "owner": self.owner,
                        "jitter": s.health_check_jitter,
                        "interval": s.health_check_interval_seconds,
                        "limit": s.integrations_concurrency * 4,
                    },
                )
                claimed = [r["integration_id"] for r in await cur.fetchall()]
            async with asyncio.TaskGroup() as tg:
                for integration_id in claimed:
                    tg.create_task(one(integration_id))
            done += len(claimed)
            if len(claimed) < limit:  # a full batch means there may be more
                return done

    async def _check_guarded(self, integration_id: UUID) -> None:
        try:
            await self.check(integration_id, "scheduled")
        except Exception as exc:  # recorded against this integration only
            log.error(
                "integration_check_crashed",
                integration_id=str(integration_id),
                error=type(exc).__name__,
            )
            async with self._pool.connection() as conn:
                await conn.execute(
                    query("integ_release_health"),
                    {"integration_id": integration_id, "owner": self.owner},
                )

    async def check(
        self, integration_id: UUID, check_type: verdict.CheckType = "manual"
    ) -> health_checks.Recorded | None:
        """Probe one integration now and record it; None when there is nothing to probe."""
        await self.start()
        assert self._prober is not None
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                query("integ_load_integration"), {"integration_id": integration_id}
            )
            row = await cur.fetchone()
        result = None
        if row is not None and row["deleted_at"] is None:
            result = await self._prober.probe(dict(row))
        if row is None or result is None:
            async with self._pool.connection() as conn:
                await conn.execute(
                    query("integ_release_health"),
                    {"integration_id": integration_id, "owner": self.owner},
                )
            return None
        rec = await _shielded(self._record(integration_id, row, result, check_type))
        HEALTH_CHECKS[result.status] += 1
        log.info(
            "integration_checked",
            integration_id=str(integration_id),
            org_id=str(row["org_id"]),
            provider=row["provider"],
            check_type=check_type,
            status=result.status,
            health_status=rec.health_status if rec else None,
            response_time_ms=result.response_time_ms,
            error_code=result.error_code,
            error=result.error_message,
            events=[e for e in [rec.event if rec else None] if e] + (rec.failover if rec else []),
        )
        return rec

    async def _record(
        self, integration_id: UUID, row: Any, result: verdict.CheckResult, check_type: Any
    ) -> health_checks.Recorded | None:
        s = self._s
        async with self._pool.connection() as conn:
            rec = await health_checks.record(
                conn,
                integration_id,
                result,
                check_type=check_type,
                owner=self.owner,
                slow_ms=s.health_check_slow_ms,
                unhealthy_after=s.health_unhealthy_after,
            )
            if result.error_code in IMMEDIATE_ERRORS and result.error_message:
                await events.mark_error(conn, integration_id, result.error_message)
            if result.details.get("userinfo") and row["token_id"] is not None:
                await conn.execute(query("integ_touch_token_used"), {"token_id": row["token_id"]})
        return rec

    async def purge_health_logs(self) -> int:
        """Delete health logs older than the retention, PURGE_BATCH rows at a time."""
        total = 0
        while True:
            async with self._pool.connection() as conn:
                cur = await conn.execute(
                    query("integ_purge_health_logs"),
                    {"days": self._s.health_log_retention_days, "batch": PURGE_BATCH},
                )
                n = cur.rowcount
            total += max(n, 0)
            if n < PURGE_BATCH:
                break
            await asyncio.sleep(0)
        if total:
            log.info(
                "health_logs_purged", rows=total, retention_days=self._s.health_log_retention_days
            )
        return total


async def _shielded(coro: Coroutine[Any, Any, T]) -> T:
    """Finish writing even if the worker is being cancelled."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise
