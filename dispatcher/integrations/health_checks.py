"""Integration health checks: the probe, the verdict, and recording both.

The probe suits the integration: its config is readable (every encrypted value decrypts); a
configured ``health_check_url`` answers 2xx; for OAuth integrations (those with token rows) an
active, unexpired, readable token exists and, when configured (``userinfo_url`` or
``check_userinfo: true``), the provider's userinfo endpoint accepts it. An integration with
none of these has nothing to probe and is skipped.

The verdict (``assess``, pure) is verdict.py's.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import aiohttp
import psycopg
import structlog
from psycopg.types.json import Jsonb

from dispatcher.crypto import DecryptError, Keyring, decrypt_config
from dispatcher.integrations import events, failover
from dispatcher.integrations.oauth import scrub, userinfo_endpoint
from dispatcher.integrations.verdict import (
    CheckResult,
    CheckType,
    HealthState,
    HealthStatus,
    assess,
    transition_event,
)
from dispatcher.queries import query
from dispatcher.ssrf import TargetRefused, refused_cause, validate_url

log = structlog.get_logger("dispatcher.integrations.health_checks")


class Prober:
    """Runs probes through the worker's SSRF-guarded session."""

    def __init__(
        self, session: aiohttp.ClientSession, keyring: Keyring, allowed: Any, timeout: float
    ) -> None:
        self._session = session
        self._keyring = keyring
        self._allowed = allowed
        self._timeout = timeout

    async def probe(self, row: dict[str, Any]) -> CheckResult | None:
        """Check one integration (row from integ_load_integration); None: nothing to probe."""
        try:
            config = decrypt_config(row["config"] or {}, self._keyring)
        except DecryptError as exc:
            return CheckResult("failure", 0, str(exc), "decrypt_failed")
        if not isinstance(config, dict):
            config = {}
        url = config.get("health_check_url")
        url = url.strip() if isinstance(url, str) and url.strip() else None
        if url is None and not row["has_tokens"]:
            return None
        timeout = _positive(config.get("health_check_timeout_seconds"), self._timeout)
        secrets: list[str] = [v for v in _strings(config)]
        started = time.perf_counter()
        details: dict[str, Any] = {}
        try:
            async with asyncio.timeout(timeout):
                if row["has_tokens"]:
                    failed = self._token_problem(row, secrets)
                    if failed is not None:
                        return failed
                if url is not None:
                    details["health_check_url"] = True
                    status = await self._get(url, {}, timeout)
                    if not 200 <= status < 300:
                        return self._result_http("health check", status, started, details)
                info = userinfo_endpoint(str(row["provider"] or ""), config)
                if row["has_tokens"] and info is not None:
                    details["userinfo"] = True
                    token = self._keyring.decrypt(row["access_token"])
                    secrets.append(token)
                    status = await self._get(info, {"Authorization": f"Bearer {token}"}, timeout)
                    if not 200 <= status < 300:
                        return self._result_http("userinfo", status, started, details)
        except TimeoutError:
            return CheckResult(
                "timeout", _ms(started), f"no answer within {timeout:g} s", "timeout", details
            )
        except TargetRefused as exc:
            return CheckResult("failure", _ms(started), str(exc), "target_refused", details)
        except (aiohttp.ClientError, OSError) as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return CheckResult("failure", _ms(started), str(refused), "target_refused", details)
            text = scrub(f"{type(exc).__name__}: {exc}"[:300], secrets)
            return CheckResult("failure", _ms(started), text, "network_error", details)
        return CheckResult("success", _ms(started), None, None, details)

    def _token_problem(self, row: dict[str, Any], secrets: list[str]) -> CheckResult | None:
        if row["token_id"] is None:
            last = (
                f" (the last one is {row['last_token_status']})" if row["last_token_status"] else ""
            )
            return CheckResult(
                "failure",
                0,
                f"no active OAuth token{last}: re-authenticate the integration",
                "no_active_token",
            )
        try:
            for column in ("access_token", "refresh_token"):
                if row[column]:
                    secrets.append(self._keyring.decrypt(row[column]))
        except DecryptError as exc:
            return CheckResult(
                "failure",
                0,
                f"cannot decrypt integration_oauth_tokens.{column}: {exc}",
                "decrypt_failed",
            )
        if row["refresh_error_kind"] == "rejected" and row["refresh_error"]:
            return CheckResult("failure", 0, str(row["refresh_error"]), "refresh_failing")
        expires = row["token_expires_at"]
        if expires is not None and expires <= datetime.now(UTC):
            return CheckResult(
                "failure",
                0,
                f"OAuth access token expired at {expires.isoformat()} and was not refreshed",
                "token_expired",
            )
        return None

    async def _get(self, url: str, headers: dict[str, str], timeout: float) -> int:
        validate_url(url, self._allowed)
        async with self._session.get(
            url,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout + 1),
        ) as resp:
            await resp.content.read(64 * 1024)
            return resp.status

    @staticmethod
    def _result_http(
        what: str, status: int, started: float, details: dict[str, Any]
    ) -> CheckResult:
        return CheckResult(
            "failure", _ms(started), f"{what} answered HTTP {status}", f"http_{status}", details
        )


def _ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _positive(value: Any, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) and len(value) >= 8 else []


@dataclass(frozen=True, slots=True)
class Recorded:
    result: CheckResult
    previous: str | None
    health_status: HealthStatus
    event: str | None
    failover: list[str]


async def record(
    conn: psycopg.AsyncConnection[Any],
    integration_id: UUID,
    result: CheckResult,
    *,
    check_type: CheckType,
    owner: str,
    slow_ms: int,
    unhealthy_after: int,
) -> Recorded | None:
    """Write the log row, the integration's health, the state, events and failover, atomically.

    None when the integration vanished meanwhile.
    """
    async with conn.transaction():
        cur = await conn.execute(
            query("integ_lock_integration"), {"integration_id": integration_id}
        )
        integ = await cur.fetchone()
        if integ is None:
            return None
        cur = await conn.execute(
            query("integ_lock_health_state"), {"integration_id": integration_id}
        )
        st = await cur.fetchone()
        assert st is not None
        previous_state = HealthState(st["consecutive_failures"], st["recent"], st["healthy_since"])
        now = datetime.now(UTC)
        status, state = assess(
            previous_state, result, now=now, slow_ms=slow_ms, unhealthy_after=unhealthy_after
        )
        details = dict(result.details)
        if status == "degraded" and not result.failed:
            details["degraded_reason"] = (
                "slow" if (result.response_time_ms or 0) > slow_ms else "intermittent"
            )
        await conn.execute(
            query("integ_insert_health_log"),
            {
                "org_id": integ["org_id"],
                "integration_id": integration_id,
                "check_type": check_type,
                "status": result.status,
                "response_time_ms": result.response_time_ms,
                "error_message": result.error_message,
                "error_code": result.error_code,
                "details": Jsonb(details),
            },
        )
        await conn.execute(
            query("integ_update_integration_health"),
            {
                "integration_id": integration_id,
                "health_status": status,
                "failed": result.failed,
                "error_message": result.error_message,
            },
        )
        await conn.execute(
            query("integ_update_health_state"),
            {
                "integration_id": integration_id,
                "consecutive_failures": state.consecutive_failures,
                "recent": state.recent,
                "healthy_since": state.healthy_since,
                "owner": owner,
            },
        )
        previous = integ["health_status"]
        event = transition_event(previous, status)
        if event is not None:
            published = await events.publish_or_log(
                conn,
                event,
                org_id=integ["org_id"],
                aggregate_id=integration_id,
                payload={
                    **events.describe(integ),
                    "previous_health_status": previous,
                    "health_status": status,
                    "check_type": check_type,
                    "check_status": result.status,
                    "response_time_ms": result.response_time_ms,
                    "error": result.error_message,
                    "error_code": result.error_code,
                    "consecutive_failures": state.consecutive_failures,
                },
            )
            if published is None:
                event = None
        moves = await failover.evaluate(conn, integ, status, state, now)
    return Recorded(result, previous, status, event, moves)
