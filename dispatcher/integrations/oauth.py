"""OAuth 2.0 refresh_token grant (RFC 6749 section 6): endpoints, client auth, one request.

``refresh_request`` builds the request (well-known token endpoints for google, microsoft and
zoom; ``token_url`` in the integration's config overrides them and is how any other provider is
supported; client_secret_post or client_secret_basic), ``OAuthClient.refresh`` sends it and
``classify_response`` turns the answer into a Grant, a Refusal (the provider says the grant is
gone: re-authenticate), a Rejected (the provider refuses the client or the request: fix the
config) or a Transient (network, timeout, 429, 5xx: try again later).

Every message is free of tokens and secrets: provider text is passed through ``scrub``.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import quote

import aiohttp
import orjson

from dispatcher.bounded_read import read_bounded
from dispatcher.ssrf import TargetRefused, refused_cause, validate_url

AuthMethod = Literal["client_secret_post", "client_secret_basic"]

TOKEN_ENDPOINTS: dict[str, str] = {
    "google": "https://oauth2.googleapis.com/token",
    "microsoft": "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
    "zoom": "https://zoom.us/oauth/token",
}
USERINFO_ENDPOINTS: dict[str, str] = {
    "google": "https://openidconnect.googleapis.com/v1/userinfo",
    "microsoft": "https://graph.microsoft.com/oidc/userinfo",
    "zoom": "https://api.zoom.us/v2/users/me",
}
DEFAULT_AUTH: dict[str, AuthMethod] = {
    "google": "client_secret_post",
    "microsoft": "client_secret_post",
    "zoom": "client_secret_basic",
}
DEFAULT_EXPIRES_IN = 3600
MAX_RESPONSE_BYTES = 64 * 1024
# Response members that are credentials: never stored in raw_token_response, never logged.
CREDENTIAL_FIELDS = frozenset({"access_token", "refresh_token", "id_token"})
# RFC 6749 5.2 error codes that mean the refresh token itself is no longer any good.
REFUSAL_ERRORS = frozenset({"invalid_grant"})


class ConfigProblem(Exception):
    """The integration's config cannot produce a refresh request (message says what to set)."""


@dataclass(frozen=True, slots=True)
class RefreshRequest:
    url: str
    form: dict[str, str]
    headers: dict[str, str]
    secrets: tuple[str, ...]  # values to scrub from any text that leaves this module


@dataclass(frozen=True, slots=True)
class Grant:
    access_token: str
    refresh_token: str | None
    token_type: str
    scope: str | None
    expires_at: datetime
    refresh_expires_at: datetime | None
    raw: dict[str, Any]  # the response without its credentials
    duration_ms: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """The provider refused the grant (invalid_grant): the user must re-authenticate."""

    error: str
    message: str
    status: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The provider rejected the client or request (invalid_client, 400...): fix the config."""

    error: str
    message: str
    status: int


@dataclass(frozen=True, slots=True)
class Transient:
    """Network error, timeout, 429, 5xx or an unreadable answer: retry with backoff."""

    error: str
    message: str
    status: int = 0
    retry_after: float | None = field(default=None)


RefreshResult = Grant | Refusal | Rejected | Transient


def scrub(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "[redacted]")
    return text


def token_endpoint(provider: str, config: dict[str, Any]) -> str:
    url = config.get("token_url") or config.get("token_endpoint")
    if isinstance(url, str) and url.strip():
        return url.strip()
    template = TOKEN_ENDPOINTS.get(provider.lower())
    if template is None:
        raise ConfigProblem(
            f"no token endpoint for provider {provider!r}: set token_url in the integration config"
        )
    tenant = str(config.get("tenant_id") or config.get("tenant") or "common")
    return template.format(tenant=quote(tenant, safe=""))


def userinfo_endpoint(provider: str, config: dict[str, Any]) -> str | None:
    """The userinfo/introspection URL to probe, when configured (``userinfo_url``, or
    ``check_userinfo: true`` for a provider with a well-known one)."""
    url = config.get("userinfo_url") or config.get("introspection_url")
    if isinstance(url, str) and url.strip():
        return url.strip()
    if config.get("check_userinfo") is True:
        return USERINFO_ENDPOINTS.get(provider.lower())
    return None


def auth_method(provider: str, config: dict[str, Any]) -> AuthMethod:
    raw = str(config.get("token_auth_method") or config.get("client_auth") or "").strip().lower()
    if raw in ("client_secret_basic", "basic"):
        return "client_secret_basic"
    if raw in ("client_secret_post", "post"):
        return "client_secret_post"
    if raw:
        raise ConfigProblem(
            f"token_auth_method {raw!r} is not client_secret_post or client_secret_basic"
        )
    return DEFAULT_AUTH.get(provider.lower(), "client_secret_basic")


def refresh_request(
    provider: str, config: dict[str, Any], refresh_token: str, scope: str | None
) -> RefreshRequest:
    """The refresh_token grant for this integration; ConfigProblem when config is incomplete."""
    client_id = config.get("client_id")
    client_secret = config.get("client_secret")
    if not isinstance(client_id, str) or not client_id:
        raise ConfigProblem("the integration config has no client_id")
    if client_secret is not None and not isinstance(client_secret, str):
        raise ConfigProblem("the integration config's client_secret is not a string")
    url = token_endpoint(provider, config)
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope and (provider.lower() == "microsoft" or config.get("refresh_send_scope") is True):
        form["scope"] = scope
    headers = {"Accept": "application/json"}
    if auth_method(provider, config) == "client_secret_basic":
        # RFC 6749 2.3.1: form-urlencode id and secret, then Basic.
        pair = f"{_form_quote(client_id)}:{_form_quote(client_secret or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    else:
        form["client_id"] = client_id
        if client_secret:
            form["client_secret"] = client_secret
    return RefreshRequest(url, form, headers, (refresh_token, client_secret or ""))


def _form_quote(value: str) -> str:
    return quote(value, safe="*-._~").replace("%20", "+")


def classify_response(
    status: int, body: bytes, now: datetime, secrets: tuple[str, ...], retry_after: float | None
) -> RefreshResult:
    """Turn a token endpoint's answer into a RefreshResult (RFC 6749 5.1 and 5.2)."""
    try:
        data = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        data = None
    if 200 <= status < 300:
        if data is None or not isinstance(data.get("access_token"), str):
            return Transient("invalid_response", f"HTTP {status} without an access_token", status)
        return _grant(data, now)
    if status == 429 or status >= 500:
        return Transient(
            f"http_{status}", f"token endpoint answered HTTP {status}", status, retry_after
        )
    error = str(data.get("error", "")) if data else ""
    described = str(data.get("error_description", "")) if data else ""
    text = scrub(f"{error}: {described}" if described else error or f"HTTP {status}", secrets)
    text = text[:300]
    if error in REFUSAL_ERRORS:
        return Refusal(error, text, status)
    return Rejected(error or f"http_{status}", text, status)


def _grant(data: dict[str, Any], now: datetime) -> Grant:
    expires_in = _number(data.get("expires_in"), DEFAULT_EXPIRES_IN)
    refresh_in = _number(data.get("refresh_token_expires_in"), None)
    refresh = data.get("refresh_token")
    scope = data.get("scope")
    return Grant(
        access_token=str(data["access_token"]),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        token_type=str(data.get("token_type") or "Bearer")[:50],
        scope=" ".join(scope)
        if isinstance(scope, list)
        else (scope if isinstance(scope, str) else None),
        expires_at=now + timedelta(seconds=expires_in),
        refresh_expires_at=now + timedelta(seconds=refresh_in) if refresh_in else None,
        raw={k: v for k, v in data.items() if k not in CREDENTIAL_FIELDS},
    )


def _number(value: Any, default: float | None) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if number > 0 else default


class OAuthClient:
    """Sends refresh requests through the caller's (SSRF-guarded) aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, allowed: Any, timeout: float) -> None:
        self._session = session
        self._allowed = allowed
        self._timeout = timeout

    async def refresh(self, req: RefreshRequest) -> RefreshResult:
        try:
            validate_url(req.url, self._allowed)
        except TargetRefused as exc:
            return Rejected("target_refused", f"token endpoint refused: {exc}", 0)
        started = time.perf_counter()
        try:
            async with self._session.post(
                req.url,
                data=req.form,
                headers=req.headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
            ) as resp:
                body, _ = await read_bounded(resp, MAX_RESPONSE_BYTES + 1)
                retry_after = _retry_after(resp.headers.get("Retry-After"))
                status = resp.status
        except TimeoutError:
            return Transient("timeout", f"token endpoint did not answer within {self._timeout:g} s")
        except (aiohttp.ClientError, OSError) as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return Rejected("target_refused", f"token endpoint refused: {refused}", 0)
            text = scrub(f"{type(exc).__name__}: {exc}"[:300], req.secrets)
            return Transient("network_error", text)
        if len(body) > MAX_RESPONSE_BYTES:
            return Transient(
                "invalid_response",
                f"token endpoint answered HTTP {status} with a body over "
                f"{MAX_RESPONSE_BYTES} bytes",
                status,
            )
        outcome = classify_response(status, body, datetime.now(UTC), req.secrets, retry_after)
        if isinstance(outcome, Grant):
            ms = int((time.perf_counter() - started) * 1000)
            outcome = dataclasses.replace(outcome, duration_ms=ms)
        return outcome


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds <= 86400 else None
