"""The HTTP sender of one attempt: validate the target, sign, POST, read a bounded answer.

Every failure becomes an AttemptResult (never an exception): delivery.py records
it. One long-lived aiohttp session with explicit limits: total timeout,
redirects off (a 3xx is a failure, never followed), a cap on response bytes
read, on header count and line length, and an SSRF-guarding resolver.

The status decides the outcome. Once the status line and headers have
arrived, the body is read until the attempt's deadline, the byte cap or the
end, whichever comes first: a body that never ends, trickles or breaks off
keeps the status and what was read (the receiver has already answered).
Everything that comes from the receiver is cleaned to text PostgreSQL and
JSON can hold (no NUL, no lone surrogates) before it is recorded.
"""

from __future__ import annotations

import errno
import re
import ssl
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import structlog
from aiohttp import hdrs
from aiohttp.abc import AbstractResolver
from yarl import URL

from dispatcher.backoff import parse_retry_after
from dispatcher.bounded_read import read_bounded
from dispatcher.dns import LookupsBusy, bounded_resolver, lookup_owner
from dispatcher.outcomes import Outcome, classify_status
from dispatcher.request import (
    NO_CUSTOM_HEADERS,
    BuiltRequest,
    CustomHeaders,
    InvalidWebhook,
    build_request,
    signer_for,
)
from dispatcher.settings import Settings
from dispatcher.ssrf import (
    GuardedResolver,
    InvalidTarget,
    TargetRefused,
    refused_cause,
    validate_url,
)

log = structlog.get_logger("dispatcher.sender")

# What is kept of a response's headers.
MAX_RESPONSE_HEADERS = 64
MAX_RESPONSE_HEADER_VALUE = 1024
# What aiohttp's parser accepts before giving up on a response: the status line and each
# header line at most 8 KiB (nginx's default), at most 100 headers. Worst case ~800 KiB of
# headers per attempt; aiohttp < 3.13.4 defaulted to 32768 headers.
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 100
# Socket read buffer per connection (aiohttp pauses reading at twice this).
READ_BUFSIZE = 16 * 1024
MAX_ERROR_CHARS = 300


# Target, Prepared and request.BuiltRequest are made once per attempt and never changed
# after; they are not frozen because a frozen dataclass's __init__ sets each field through
# object.__setattr__ (~0.1 us a field: Target's 10 cost ~1.3 us against ~0.4; issue 12).
@dataclass(slots=True)
class Target:
    """What is needed to send one attempt."""

    delivery_id: str
    event_type: str
    url: str
    body: str
    secrets: tuple[str, ...]  # current first, then one rotating out
    headers: CustomHeaders = NO_CUSTOM_HEADERS  # the webhook's custom headers, as read
    msg_id: str | None = None  # the webhook-id (request.message_id); None: the delivery id
    org_id: str | None = None  # whose DNS lookup budget the attempt uses
    traceparent: str | None = None  # sent as the W3C traceparent header when set
    sequence: int | None = None  # the webhook's sequence number: X-InTime-Sequence


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
    # False for a failure that is ours or the event's (body too large, cannot sign, URL
    # refused by our own validation, an unexpected error here): it never counts toward
    # the webhook's consecutive_failures, so it cannot disable a healthy endpoint.
    charged: bool = True


@dataclass(slots=True)
class Prepared:
    """A target that passed every check made before a byte is sent."""

    url: str  # the target's URL, validated (validate_url's form)
    body: bytes  # the target's body, encoded
    request: BuiltRequest


class _Request(aiohttp.ClientRequest):
    """aiohttp's request without its default ``Accept-Encoding`` (the dispatcher asks for no
    compressed answer), and nothing else changed: the bytes sent are those of a session with
    ``skip_auto_headers=("Accept-Encoding",)``. That option cost every request a sorted
    CIMultiDict of the names and a copy of its headers in aiohttp 3.13-3.14 (~1.5 us of
    ~6 per request object); the class-level default is read on aiohttp's fast path instead
    (issue 12, docs/performance.md "pyhot"; tests/integration/test_request_bytes.py pins the
    request head byte for byte)."""

    DEFAULT_HEADERS = {  # noqa: RUF012  (aiohttp's own class attribute, read only)
        k: v for k, v in aiohttp.ClientRequest.DEFAULT_HEADERS.items() if k != hdrs.ACCEPT_ENCODING
    }


def _clean(text: str) -> str:
    """Text PostgreSQL and JSON can hold: no NUL, no lone surrogates (aiohttp decodes
    undecodable header bytes to surrogate escapes)."""
    if text.isascii():  # the usual case: no surrogate possible
        return text.replace("\x00", "\ufffd") if "\x00" in text else text
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _one_line(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    text = re.sub(r"\s+", " ", _clean(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _refused(code: str, exc: Exception, *, charged: bool) -> AttemptResult:
    """A request refused before any byte was sent."""
    return AttemptResult(
        Outcome.REFUSED, charged=charged, error_code=code, error_message=_one_line(str(exc))
    )


class Sender:
    """Owns the aiohttp session; `attempt()` never raises for a receiver's behaviour.

    ``resolver`` does the DNS lookups (default: the system's getaddrinfo); it is always
    wrapped in the SSRF guard unless it is a GuardedResolver already.
    """

    def __init__(self, settings: Settings, *, resolver: AbstractResolver | None = None) -> None:
        self._settings = settings
        self._allowed = settings.allowed_networks
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}  # URL -> validated form (only accepted URLs)
        self._read_bytes = max(settings.response_body_chars * 4, 1024)
        if resolver is None or not isinstance(resolver, GuardedResolver):
            bounded = bounded_resolver(
                settings.dns_servers,
                settings.dns_timeout,
                settings.dns_max_per_org,
                settings.dns_threads,
                inner=resolver,
            )
            resolver = GuardedResolver(allowed=self._allowed, inner=bounded)
        self._resolver: GuardedResolver = resolver

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=self._resolver,
            limit=max(self._settings.concurrency, 10),
            limit_per_host=0,
            ttl_dns_cache=60,
            enable_cleanup_closed=False,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self._settings.http_timeout),
            auto_decompress=True,  # aiohttp >= 3.13 inflates in bounded steps
            cookie_jar=aiohttp.DummyCookieJar(),
            request_class=_Request,  # no Accept-Encoding (see _Request)
            read_bufsize=READ_BUFSIZE,
            max_line_size=MAX_LINE_SIZE,
            max_field_size=MAX_FIELD_SIZE,
            max_headers=MAX_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._resolver.close()  # lookups still waiting end here: stop never hangs

    def prepare(self, target: Target) -> Prepared | AttemptResult:
        """Checks done before any byte is sent; an AttemptResult means refused."""
        body = target.body.encode("utf-8")
        if len(body) > self._settings.max_body_bytes:
            return AttemptResult(
                Outcome.REFUSED,
                charged=False,
                error_code="body_too_large",
                error_message=(
                    f"request body is {len(body)} bytes, above the limit of "
                    f"{self._settings.max_body_bytes} (DISPATCHER_MAX_BODY_BYTES)"
                ),
            )
        try:
            url = self._validated(target.url)
            request = build_request(
                delivery_id=target.delivery_id,
                event_type=target.event_type,
                body=body,
                signer=signer_for(target.secrets, target.headers),
                msg_id=target.msg_id,
                traceparent=target.traceparent,
                sequence=target.sequence,
            )
            return Prepared(url, body, request)
        except InvalidTarget as exc:  # our own validation: not the endpoint's failure
            return _refused("invalid_url", exc, charged=False)
        except TargetRefused as exc:
            return _refused("target_refused", exc, charged=True)
        except InvalidWebhook as exc:
            return _refused("invalid_webhook", exc, charged=False)

    def _validated(self, url: str) -> str:
        """validate_url, remembered per URL (webhook URLs repeat; the rules do not change)."""
        known = self._urls.get(url)
        if known is None:
            known = str(validate_url(url, self._allowed))
            if len(self._urls) >= 4096:
                self._urls.clear()
            self._urls[url] = known
        return known

    async def attempt(self, target: Target) -> AttemptResult:
        """One attempt; never raises (cancellation aside). An exception nobody expected
        becomes a retryable failure that is not charged to the endpoint, logged with the
        delivery id: never an unretrieved task exception and a row retaken forever."""
        owner = lookup_owner.set(target.org_id)
        try:
            return await self._attempt(target)
        except Exception as exc:
            # The exception's text may quote a secret or a header value: only its type and
            # where it was raised leave this method.
            frames = traceback.extract_tb(exc.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            detail = f"{type(exc).__name__}{where}"
            log.error(
                "attempt_crashed",
                delivery_id=target.delivery_id,
                error=type(exc).__name__,
                detail=detail,
            )
            return AttemptResult(
                Outcome.RETRYABLE,
                charged=False,
                error_code="internal_error",
                error_message=f"unexpected error in the dispatcher: {detail}",
            )
        finally:
            lookup_owner.reset(owner)

    async def _attempt(self, target: Target) -> AttemptResult:
        prepared = self.prepare(target)
        if isinstance(prepared, AttemptResult):
            return prepared
        assert self._session is not None, "Sender.start() was not called"
        started = time.perf_counter()
        result = await self._post(prepared)
        result.duration_ms = int((time.perf_counter() - started) * 1000)
        req = prepared.request
        result.request_headers = req.recorded_headers
        if req.ignored_headers:
            result.notes.append(
                "custom headers ignored (owned by the dispatcher): "
                + ", ".join(req.ignored_headers)
            )
        return result

    async def _post(self, prepared: Prepared) -> AttemptResult:
        assert self._session is not None
        try:
            async with self._session.post(
                prepared.url,
                data=prepared.body,
                headers=prepared.request.headers,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                result = AttemptResult(
                    classify_status(status),
                    response_status=status,
                    response_headers=self._headers(resp),
                )
                result.response_body, incomplete = await self._read_capped(resp)
                if 300 <= status < 400:
                    location = redirect_shown(resp.headers.get("Location", ""))
                    result.error_message = (
                        f"HTTP {status}: redirect to {location!r} not followed "
                        "(webhook URLs must answer directly)"
                    )
                    result.error_code = "redirect"
                elif result.outcome is not Outcome.DELIVERED:
                    reason = _one_line(resp.reason or "", 100)
                    result.error_message = f"HTTP {status} {reason}".strip()
                    result.error_code = f"http_{status}"
                if incomplete and result.error_message:
                    result.error_message += f"; response body incomplete: {incomplete}"
                if status in (429, 503):
                    result.retry_after = parse_retry_after(
                        resp.headers.get("Retry-After"), datetime.now(UTC)
                    )
                return result
        except TimeoutError:
            return AttemptResult(
                Outcome.RETRYABLE,
                error_code="timeout",
                error_message=(
                    f"no response within {self._settings.http_timeout:g} s "
                    "(DISPATCHER_HTTP_TIMEOUT)"
                ),
            )
        except (aiohttp.ClientError, OSError) as exc:
            refused = refused_cause(exc)
            if refused is not None:
                return AttemptResult(
                    Outcome.REFUSED,
                    error_code="target_refused",
                    error_message=_one_line(str(refused)),
                )
            busy = _find(exc, LookupsBusy)
            if busy is not None:  # another webhook of the org holds the lookups: not charged
                return AttemptResult(
                    Outcome.RETRYABLE,
                    charged=False,
                    error_code="dns_busy",
                    error_message=_one_line(str(busy)),
                )
            code, message = describe_network_error(exc)
            return AttemptResult(Outcome.RETRYABLE, error_code=code, error_message=message)
        except UnicodeError as exc:
            # The host name cannot be encoded for the resolver (IDNA): validate_url should
            # have refused it; the same verdict if a form slipped through.
            return AttemptResult(
                Outcome.REFUSED,
                charged=False,
                error_code="invalid_url",
                error_message=_one_line(f"invalid webhook URL: host name rejected ({exc})"),
            )

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> tuple[str, str | None]:
        """At most response_body_chars characters, reading at most a bounded number of bytes
        and never past the attempt's deadline. Returns (text, why it is incomplete or None)."""
        data, broken = await read_bounded(resp, self._read_bytes, keep_partial=True)
        incomplete: str | None = None
        if isinstance(broken, TimeoutError):
            incomplete = f"not finished within {self._settings.http_timeout:g} s"
        elif broken is not None:
            incomplete = describe_network_error(broken)[1]
        text = data.decode("utf-8", errors="replace")
        return _clean(text[: self._settings.response_body_chars]), incomplete

    @staticmethod
    def _headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, value in resp.headers.items():
            if len(out) >= MAX_RESPONSE_HEADERS:
                break
            out[_clean(name)[:100]] = _clean(value)[:MAX_RESPONSE_HEADER_VALUE]
        return out


# a host shown in a redirect's error: a DNS name, an IPv4 or an IPv6 literal, nothing else
_PLAIN_HOST = re.compile(r"[a-z0-9.-]+|[0-9a-f:.]+(%[a-z0-9]+)?", re.IGNORECASE)


def redirect_shown(location: str) -> str:
    """A redirect's target as an attempt's error (and so its log line) quotes it: scheme,
    host and port only, "/..." standing for any path or query. A redirect often echoes the
    webhook's own URL (HTTP to HTTPS), whose path or query may be its credential
    (``?token=``): the URL itself is never logged. The whole Location stays in the
    response headers recorded on the delivery row."""
    text = _clean(location.strip())
    try:
        url = URL(text)
        origin = str(url.origin()) if url.absolute and url.raw_host else None
    except Exception:  # yarl raises IndexError too on some malformed hosts
        origin = None
    if origin is not None and not _PLAIN_HOST.fullmatch(url.raw_host or ""):
        # a host yarl accepted with other characters in it (percent-encoded path or query,
        # ';'): it may carry what followed it in the URL
        origin = None
    if origin is None:
        return "(a relative or unreadable Location)" if text else "(no Location)"
    rest = text[len(origin) :] if text.startswith(origin) else "/..."
    return origin[:200] + ("/" if rest == "/" else "/..." if rest else "")


def _find(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in exc's chain (cause, context, aiohttp's os_error and
    certificate_error), aiohttp's wrappers excluded."""
    stack, seen = [exc], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind) and not isinstance(current, aiohttp.ClientError):
            return current  # aiohttp's own TLS errors subclass ssl's: look behind them
        for linked in (
            current.__cause__,
            current.__context__,
            getattr(current, "os_error", None),
            getattr(current, "certificate_error", None),
        ):
            if isinstance(linked, BaseException):
                stack.append(linked)
    return None


def _where(exc: BaseException) -> str:
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    return f" {host}:{port}" if host else ""


def describe_network_error(exc: BaseException) -> tuple[str, str]:
    """(error_code, one-line message) for a failure before a complete response arrived."""
    cert = _find(exc, ssl.SSLCertVerificationError)
    if cert is not None:
        reason = getattr(cert, "verify_message", None) or getattr(cert, "reason", None) or cert
        return "tls_error", _one_line(
            f"TLS failure: the certificate of{_where(exc)} was not accepted: {reason}"
        )
    tls = _find(exc, ssl.SSLError)
    if tls is not None:
        reason = getattr(tls, "reason", None) or str(tls)
        hint = ""
        if str(reason).upper() in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "HTTP_REQUEST"):
            hint = " (is the endpoint serving plain HTTP on an https URL?)"
        return "tls_error", _one_line(
            f"TLS failure: handshake with{_where(exc)} failed: {reason}{hint}"
        )
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns_error", _one_line(f"cannot resolve{_where(exc)}: {exc.strerror or exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect_error", _one_line(f"cannot connect to{_where(exc)}: {exc.strerror or exc}")
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "disconnected", "the receiver closed the connection before a complete response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "invalid_response", _one_line(f"invalid response body: {_payload_reason(exc)}")
    if isinstance(exc, aiohttp.ClientResponseError):
        # Raised by the response parser (aiohttp sets status 400 on it: not the receiver's).
        return "invalid_response", _one_line(f"invalid HTTP response: {exc.message}")
    os_error = _find(exc, OSError)
    if isinstance(os_error, OSError) and os_error.errno in (errno.ECONNRESET, errno.EPIPE):
        return "connection_reset", "the receiver reset the connection"
    if isinstance(os_error, OSError) and os_error.strerror:
        return "network_error", _one_line(f"network error: {os_error.strerror}")
    text = str(exc).strip()
    return "network_error", _one_line(f"network error: {type(exc).__name__}: {text}".rstrip(": "))


def _payload_reason(exc: aiohttp.ClientPayloadError) -> str:
    inner = exc.__cause__ or exc.__context__
    return str(inner or exc) or type(exc).__name__
