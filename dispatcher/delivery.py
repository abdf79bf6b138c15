"""One HTTP attempt: validate the target, sign, POST, read a bounded answer.

Every failure becomes an AttemptResult (never an exception): the caller records
it. One long-lived aiohttp session with explicit limits: total timeout,
redirects off, a cap on response bytes read, an SSRF-guarding resolver.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from dispatcher.backoff import parse_retry_after
from dispatcher.outcomes import Outcome, classify_status
from dispatcher.request import BuiltRequest, InvalidWebhook, build_request
from dispatcher.settings import Settings
from dispatcher.ssrf import (
    GuardedResolver,
    InvalidTarget,
    TargetRefused,
    refused_cause,
    validate_url,
)

MAX_RESPONSE_HEADERS = 64
MAX_RESPONSE_HEADER_VALUE = 1024


@dataclass(slots=True)
class Target:
    """What is needed to send one attempt."""

    delivery_id: str
    event_type: str
    url: str
    body: str
    secrets: list[str]
    headers: Any


@dataclass(slots=True)
class AttemptResult:
    outcome: Outcome
    response_status: int = 0
    duration_ms: int = 0
    response_headers: dict[str, str] | None = None
    response_body: str | None = None
    error_message: str | None = None
    error_code: str | None = None
    retry_after: float | None = None
    request_headers: dict[str, str] | None = None
    notes: list[str] = field(default_factory=list)


def _clean(text: str) -> str:
    """PostgreSQL text cannot hold NUL."""
    return text.replace("\x00", "\ufffd")


class Sender:
    """Owns the aiohttp session; `attempt()` never raises for a receiver's behaviour."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._allowed = settings.allowed_networks
        self._session: aiohttp.ClientSession | None = None
        self._read_bytes = max(settings.response_body_chars * 4, 1024)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(allowed=self._allowed),
            limit=max(self._settings.concurrency, 10),
            limit_per_host=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.http_timeout),
            auto_decompress=True,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Accept-Encoding",),
            max_line_size=8190,
            max_field_size=8190,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def prepare(self, target: Target) -> BuiltRequest | AttemptResult:
        """Checks done before any byte is sent; an AttemptResult means refused."""
        body = target.body.encode("utf-8")
        if len(body) > self._settings.max_body_bytes:
            return AttemptResult(
                Outcome.REFUSED,
                error_code="body_too_large",
                error_message=(
                    f"request body is {len(body)} bytes, above the limit of "
                    f"{self._settings.max_body_bytes} (DISPATCHER_MAX_BODY_BYTES)"
                ),
            )
        try:
            target.url = str(validate_url(target.url, self._allowed))
            return build_request(
                delivery_id=target.delivery_id,
                event_type=target.event_type,
                body=body,
                secrets=target.secrets,
                headers=target.headers,
            )
        except InvalidTarget as exc:
            return AttemptResult(Outcome.REFUSED, error_code="invalid_url", error_message=str(exc))
        except TargetRefused as exc:
            return AttemptResult(
                Outcome.REFUSED, error_code="target_refused", error_message=str(exc)
            )
        except InvalidWebhook as exc:
            return AttemptResult(
                Outcome.REFUSED, error_code="invalid_webhook", error_message=str(exc)
            )

    async def attempt(self, target: Target) -> AttemptResult:
        prepared = self.prepare(target)
        if isinstance(prepared, AttemptResult):
            return prepared
        assert self._session is not None, "Sender.start() was not called"
        started = time.perf_counter()
        result = await self._post(target, prepared)
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        result.request_headers = prepared.recorded_headers
        if prepared.ignored_headers:
            result.notes.append(
                "custom headers ignored (owned by the dispatcher): "
                + ", ".join(prepared.ignored_headers)
            )
        return result

    async def _post(self, target: Target, req: BuiltRequest) -> AttemptResult:
        assert self._session is not None
        timeout = self._settings.http_timeout
        try:
            async with self._session.post(
                target.url,
                data=target.body.encode("utf-8"),
                headers=req.headers,
                allow_redirects=False,
            ) as resp:
                body = await self._read_capped(resp)
                status = resp.status
                headers = self._headers(resp)
                outcome = classify_status(status)
                result = AttemptResult(
                    outcome, response_status=status, response_headers=headers, response_body=body
                )
                if 300 <= status < 400:
                    location = resp.headers.get("Location", "")[:200]
                    result.error_message = (
                        f"HTTP {status}: redirect to {_clean(location)!r} not followed "
                        "(webhook URLs must answer directly)"
                    )
                    result.error_code = "redirect"
                elif outcome is not Outcome.DELIVERED:
                    result.error_message = f"HTTP {status} {_clean(resp.reason or '')}".strip()
                    result.error_code = f"http_{status}"
                if status in (429, 503):
                    result.retry_after = parse_retry_after(
                        resp.headers.get("Retry-After"), datetime.now(UTC)
                    )
                return result
        except TimeoutError:
            return AttemptResult(
                Outcome.RETRYABLE,
                error_code="timeout",
                error_message=f"no complete answer within {timeout:g} s",
            )
        except aiohttp.ClientError as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return AttemptResult(
                    Outcome.REFUSED, error_code="target_refused", error_message=str(refused)
                )
            return AttemptResult(
                Outcome.RETRYABLE, error_code="network_error", error_message=_clean(_describe(exc))
            )
        except OSError as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return AttemptResult(
                    Outcome.REFUSED, error_code="target_refused", error_message=str(refused)
                )
            return AttemptResult(
                Outcome.RETRYABLE, error_code="network_error", error_message=_clean(_describe(exc))
            )

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> str:
        """At most response_body_chars characters, reading at most a bounded number of bytes."""
        limit = self._read_bytes
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            chunk = await resp.content.read(limit - got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        text = b"".join(chunks).decode("utf-8", errors="replace")
        return _clean(text[: self._settings.response_body_chars])

    @staticmethod
    def _headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in resp.headers.items():
            if len(out) >= MAX_RESPONSE_HEADERS:
                break
            out[_clean(name)[:100]] = _clean(value)[:MAX_RESPONSE_HEADER_VALUE]
        return out


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    name = type(exc).__name__
    return f"{name}: {text}"[:500] if text else name
