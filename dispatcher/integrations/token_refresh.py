"""OAuth token refresh: claim due tokens (single flight across replicas), refresh, persist.

A pass leases due tokens in one short statement (``integ_claim_tokens``: a lease row per token
in ``dispatcher.oauth_refresh_state``, FOR UPDATE SKIP LOCKED semantics through ON CONFLICT),
re-reads each in a fresh snapshot (skipping any another replica refreshed meanwhile), calls
the token endpoint with no transaction open, then writes the outcome in one transaction:

* Grant: new access token, new refresh token when one came back, expires_at, scope,
  last_refreshed_at, raw_token_response without credentials - encrypted under the primary key.
* Refusal (invalid_grant): token ``expired``, integration ``error`` asking to re-authenticate,
  event ``integration.oauth.expired``.
* Transient (network, timeout, 429, 5xx): backoff (base * 2^(n-1), capped, jittered, and kept
  below half the time left before expiry); never marked expired for it.
* Rejected (invalid_client...), bad config, undecryptable value: integration ``error`` with the
  reason, values untouched, retried after the maximum backoff.

A token that has expired and cannot be refreshed (no refresh token, or refresh_expires_at
passed) is marked expired with the same event. The request and the write of its outcome are
shielded from cancellation: a rotated refresh token the provider already issued must not be
lost to a shutdown (the HTTP timeout bounds the wait).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
import structlog
from psycopg.types.json import Jsonb
from psycopg_pool import PoolTimeout
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from dispatcher.crypto import DecryptError, Keyring, decrypt_config
from dispatcher.db import Pool
from dispatcher.integrations import events
from dispatcher.integrations.oauth import (
    ConfigProblem,
    Grant,
    OAuthClient,
    RefreshRequest,
    RefreshResult,
    Refusal,
    Rejected,
    Transient,
    refresh_request,
)
from dispatcher.integrations.stats import TOKEN_REFRESHES
from dispatcher.queries import query
from dispatcher.settings import Settings

log = structlog.get_logger("dispatcher.integrations.token_refresh")

STORE_RETRY_SECONDS = 30.0  # how long a granted token's write is retried on database errors


@dataclass(frozen=True, slots=True)
class Claim:
    token_id: UUID
    lease_until: datetime


def backoff_seconds(
    attempts: int, base: float, cap: float, until_expiry: float | None, rand: float | None = None
) -> float:
    """Delay before retry number ``attempts`` (1-based) of a transient failure (pure)."""
    delay = min(base * float(2 ** max(attempts - 1, 0)), cap)
    delay *= 0.8 + 0.4 * (random.random() if rand is None else rand)
    if until_expiry is not None and until_expiry > 0:
        delay = min(delay, max(until_expiry / 2, base))
    return max(min(delay, cap), 0.1)


class TokenRefresher:
    def __init__(
        self, settings: Settings, pool: Pool, keyring: Keyring, client: OAuthClient, owner: str
    ) -> None:
        self._s = settings
        self._pool = pool
        self._keyring = keyring
        self._client = client
        self._owner = owner
        self._lease = max(
            settings.integrations_lease_seconds, settings.integrations_http_timeout * 2
        )
        self.refreshed = 0

    async def run_once(self) -> int:
        """One pass: claim and process due tokens until none is due. Returns tokens handled."""
        handled = 0
        sem = asyncio.Semaphore(self._s.integrations_concurrency)

        async def one(c: Claim) -> None:
            async with sem:
                await self._process(c)

        limit = self._s.integrations_concurrency * 4
        while True:
            claims = await self._claim(limit)
            async with asyncio.TaskGroup() as tg:
                for c in claims:
                    tg.create_task(one(c))
            handled += len(claims)
            if len(claims) < limit:  # a full batch means there may be more
                return handled

    async def _claim(self, limit: int) -> list[Claim]:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                query("integ_claim_tokens"),
                {
                    "lead": self._s.oauth_refresh_lead_seconds,
                    "limit": limit,
                    "lease": self._lease,
                    "owner": self._owner,
                },
            )
            return [Claim(r["token_id"], r["lease_until"]) for r in await cur.fetchall()]

    async def _process(self, claim: Claim) -> None:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                query("integ_load_token"),
                {
                    "token_id": claim.token_id,
                    "owner": self._owner,
                    "lease_until": claim.lease_until,
                    "lead": self._s.oauth_refresh_lead_seconds,
                },
            )
            row = await cur.fetchone()
            if row is None:  # refreshed by someone else, or no longer ours
                await conn.execute(
                    query("integ_release_token"), {"token_id": claim.token_id, "owner": self._owner}
                )
                return
        try:
            await self._refresh(dict(row))
        except Exception as exc:  # one token's bug must not stop the others or the daemon
            TOKEN_REFRESHES["error"] += 1
            log.error(
                "token_refresh_crashed", token_id=str(claim.token_id), error=type(exc).__name__
            )
            await self._shielded(
                self._retry(
                    row, f"internal error: {type(exc).__name__}", self._s.oauth_retry_max_seconds
                )
            )

    async def _refresh(self, row: dict[str, Any]) -> None:
        provider = str(row["token_provider"] or row["provider"] or "")
        now = datetime.now(UTC)
        expired = row["expires_at"] is not None and row["expires_at"] <= now
        try:
            config = decrypt_config(row["config"] or {}, self._keyring)
            refresh_token = self._column(row, "refresh_token")
            self._column(row, "access_token")
        except DecryptError as exc:
            await self._shielded(self._problem(row, str(exc)))
            return
        if refresh_token is None or (
            row["refresh_expires_at"] is not None and row["refresh_expires_at"] <= now
        ):
            if expired:
                why = "no refresh token" if refresh_token is None else "the refresh token expired"
                await self._shielded(self._expire(row, why, "not_refreshable"))
            else:  # come back when it expires
                left = (row["expires_at"] - now).total_seconds()
                await self._shielded(self._retry(row, None, max(left, 1.0), count=False))
            return
        try:
            req = refresh_request(
                provider, config if isinstance(config, dict) else {}, refresh_token, row["scope"]
            )
        except ConfigProblem as exc:
            await self._shielded(self._problem(row, f"cannot refresh the OAuth token: {exc}"))
            return
        # Shielded from the request on: a provider that already rotated the refresh token
        # must not have its answer dropped by a shutdown (the old token would then be dead).
        await self._shielded(self._call_and_settle(row, req, provider, refresh_token))

    async def _call_and_settle(
        self, row: dict[str, Any], req: RefreshRequest, provider: str, refresh_token: str
    ) -> None:
        outcome = await self._client.refresh(req)
        await self._settle(row, outcome, provider, refresh_token)

    def _column(self, row: dict[str, Any], column: str) -> str | None:
        try:
            return self._keyring.decrypt(row[column]) if row[column] else None
        except DecryptError as exc:
            raise DecryptError(f"cannot decrypt integration_oauth_tokens.{column}: {exc}") from None

    async def _settle(
        self, row: dict[str, Any], outcome: RefreshResult, provider: str, refresh_token: str
    ) -> None:
        ids = {
            "token_id": str(row["id"]),
            "integration_id": str(row["integration_id"]),
            "org_id": str(row["org_id"]),
            "provider": provider,
        }
        if isinstance(outcome, Grant):
            try:
                # The provider may already have revoked the old refresh token: ride out a short
                # database hiccup rather than lose the new one.
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type((psycopg.OperationalError, PoolTimeout)),
                    stop=stop_after_delay(STORE_RETRY_SECONDS),
                    wait=wait_exponential(multiplier=0.5, max=5),
                    reraise=True,
                ):
                    with attempt:
                        await self._store(row, outcome, refresh_token)
            except (psycopg.OperationalError, PoolTimeout):
                log.error(
                    "token_refresh_unsaved",
                    **ids,
                    note="the database was unreachable; if the provider rotated the refresh "
                    "token, the integration may need re-authentication",
                )
                raise
            self.refreshed += 1
            TOKEN_REFRESHES["refreshed"] += 1
            log.info(
                "token_refreshed",
                **ids,
                duration_ms=outcome.duration_ms,
                rotated=outcome.refresh_token is not None,
                expires_at=outcome.expires_at.isoformat(),
            )
        elif isinstance(outcome, Refusal):
            await self._expire(
                row, f"{provider} refused the refresh token ({outcome.message})", outcome.error
            )
        elif isinstance(outcome, Transient):
            left = (row["expires_at"] - datetime.now(UTC)).total_seconds()
            delay = backoff_seconds(
                int(row["attempts"]) + 1,
                self._s.oauth_retry_base_seconds,
                self._s.oauth_retry_max_seconds,
                left,
            )
            if outcome.retry_after is not None:
                delay = max(delay, min(outcome.retry_after, self._s.oauth_retry_max_seconds))
            TOKEN_REFRESHES["retry"] += 1
            log.warning(
                "token_refresh_retry",
                **ids,
                error=outcome.error,
                reason=outcome.message,
                attempt=int(row["attempts"]) + 1,
                retry_in=round(delay, 2),
            )
            await self._retry(row, outcome.message, delay)
        else:
            assert isinstance(outcome, Rejected)
            await self._problem(
                row,
                f"the {provider} token endpoint rejected the refresh request ({outcome.message}); "
                "check the integration's client_id, client_secret and token_auth_method",
            )

    async def _store(self, row: dict[str, Any], grant: Grant, old_refresh: str) -> None:
        """Persist a grant; a kept refresh token is re-sealed under the primary key too."""
        k = self._keyring
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute(query("integ_lock_token"), {"token_id": row["id"]})
            await conn.execute(
                query("integ_token_refreshed"),
                {
                    "token_id": row["id"],
                    "access_token": k.seal(grant.access_token),
                    "refresh_token": k.seal(grant.refresh_token or old_refresh),
                    "token_type": grant.token_type,
                    "scope": grant.scope,
                    "expires_at": grant.expires_at,
                    "refresh_expires_at": grant.refresh_expires_at,
                    "raw": Jsonb(grant.raw),
                },
            )
            now = datetime.now(UTC)
            await conn.execute(
                query("integ_refresh_done"),
                {
                    "token_id": row["id"],
                    "refreshed": 1,
                    "not_before": now + (grant.expires_at - now) / 2,
                    "expires_at": grant.expires_at,
                },
            )

    async def _expire(self, row: dict[str, Any], why: str, code: str) -> None:
        message = (
            f"OAuth authorisation expired: {why}; re-authenticate the integration to restore access"
        )[:1000]
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(query("integ_token_expired"), {"token_id": row["id"]})
            changed = cur.rowcount > 0
            await events.mark_error(conn, row["integration_id"], message)
            await conn.execute(
                query("integ_refresh_done"),
                {"token_id": row["id"], "refreshed": 0, "not_before": None, "expires_at": None},
            )
            if changed:
                await events.publish_or_log(
                    conn,
                    events.OAUTH_EXPIRED,
                    org_id=row["org_id"],
                    aggregate_id=row["integration_id"],
                    payload={
                        **events.describe({**row, "id": row["integration_id"]}),
                        "token_id": str(row["id"]),
                        "reason": code,
                        "message": message,
                        "expires_at": row["expires_at"].isoformat() if row["expires_at"] else None,
                    },
                )
        TOKEN_REFRESHES["expired"] += 1
        log.warning(
            "token_expired",
            token_id=str(row["id"]),
            integration_id=str(row["integration_id"]),
            org_id=str(row["org_id"]),
            reason=code,
        )

    async def _problem(self, row: dict[str, Any], message: str) -> None:
        """Integration `error` with the reason; nothing overwritten; retried much later."""
        async with self._pool.connection() as conn, conn.transaction():
            await events.mark_error(conn, row["integration_id"], message[:1000])
            await conn.execute(
                query("integ_refresh_retry"),
                {
                    "token_id": row["id"],
                    "delay": self._s.oauth_retry_max_seconds,
                    "error": message[:1000],
                    "count": 1,
                    "kind": "rejected",
                },
            )
        TOKEN_REFRESHES["failed"] += 1
        log.error(
            "token_refresh_failed",
            token_id=str(row["id"]),
            integration_id=str(row["integration_id"]),
            org_id=str(row["org_id"]),
            reason=message,
        )

    async def _retry(
        self, row: Any, error: str | None, delay: float, *, count: bool = True
    ) -> None:
        """Release the lease and come back after ``delay`` (``count``: a failed attempt)."""
        async with self._pool.connection() as conn:
            await conn.execute(
                query("integ_refresh_retry"),
                {
                    "token_id": row["id"],
                    "delay": delay,
                    "error": error,
                    "count": int(count),
                    "kind": "transient" if error else None,
                },
            )

    @staticmethod
    async def _shielded(coro: Any) -> None:
        """Finish writing even if the worker is being cancelled."""
        task = asyncio.ensure_future(coro)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise
