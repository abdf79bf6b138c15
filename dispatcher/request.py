"""Build the exact HTTP request of one attempt: headers for both signature schemes.

Pure: no I/O. The body is the delivery's stored `request_body`, sent byte for
byte; every signature is computed over those bytes.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from dispatcher import __version__
from dispatcher.signing import (
    intime_timestamp,
    sign_intime_with_key,
    sign_standard_with_keys,
    standard_webhooks_key,
)

USER_AGENT = f"webhook-dispatcher/{__version__}"

# Headers the dispatcher owns: a webhook's custom headers can never replace them.
RESERVED = frozenset(
    {
        "content-type",
        "content-length",
        "user-agent",
        "host",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-intime-event",
        "x-intime-delivery",
        "x-intime-timestamp",
        "x-intime-signature",
        "x-intime-sequence",
        # hop-by-hop (RFC 9110 7.6.1) and framing
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
        "proxy-connection",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# Control characters a header value must not carry (RFC 9110 5.5: HTAB is the only one allowed).
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SENSITIVE = re.compile(r"auth|token|secret|key|password|cookie|signature|credential", re.I)
MAX_CUSTOM_HEADERS = 50
MAX_HEADER_VALUE = 8192


# Namespace of webhook-ids (UUIDv5): fixed forever, or every receiver sees new ids.
MESSAGE_ID_NAMESPACE = uuid.UUID("3b8f7c1e-5d0a-4f52-9c1d-6a2e8b4f0d17")
_NAMESPACE_BYTES = MESSAGE_ID_NAMESPACE.bytes
_id_texts: dict[Any, str] = {}
# a hex digit d -> that of (d & 0b0011) | 0b1000: the RFC variant in a UUID's 17th digit
_VARIANT_DIGIT = {f"{d:x}": f"{(d & 0x3) | 0x8:x}" for d in range(16)}


def repeated_id_text(value: uuid.UUID) -> str:
    """``str(value)`` for an id that repeats from one delivery to the next (a webhook's, an
    org's), remembered: UUID.__str__ is pure Python and cost more than the lookup."""
    text = _id_texts.get(value)
    if text is None:
        if len(_id_texts) >= 8192:
            _id_texts.clear()
        text = _id_texts[value] = str(value)
    return text


def message_id(event_id: uuid.UUID | None, webhook_id: uuid.UUID, delivery_id: uuid.UUID) -> str:
    """The `webhook-id` of a message: the same for one event to one webhook on every
    attempt, DLQ retry, replay and recovery (a new delivery row of the same pair), so a
    receiver can deduplicate even after retention purged the first row. A row with no
    event (a test ping) is its own message: its row id. `X-InTime-Delivery` stays the
    row id.

    It is ``str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{event_id}/{webhook_id}"))``, worked
    out as RFC 9562 defines UUIDv5 without building UUID objects (uuid5 and UUID.__str__
    were 6 % of the daemon's CPU in a drain; tests pin the equality)."""
    if event_id is None:
        return str(delivery_id)
    name = f"{event_id}/{repeated_id_text(webhook_id)}"
    x = hashlib.sha1(_NAMESPACE_BYTES + name.encode()).hexdigest()
    # the version nibble (byte 6's high half) becomes 5, the variant bits of byte 8 10xx:
    # set on the hex text (2.1 -> 1.8 us against a bytearray and a second hex())
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{_VARIANT_DIGIT[x[16]]}{x[17:20]}-{x[20:32]}"


class InvalidWebhook(ValueError):
    """The webhook's configuration cannot produce a valid request."""


@dataclass(slots=True)  # one per attempt, never changed: not frozen (sender.Target)
class BuiltRequest:
    headers: dict[str, str]
    recorded_headers: dict[str, str]  # what is stored in the delivery row: no secrets
    ignored_headers: tuple[str, ...]  # custom headers dropped because the dispatcher owns them


def custom_headers(raw: Any) -> tuple[dict[str, str], tuple[str, ...]]:
    """Validate a webhook's `headers` jsonb: returns (usable headers, ignored names).

    InvalidWebhook when it is not an object, a name is not an HTTP token, a value
    is not a scalar, contains a control character (CR, LF, NUL...) or a lone surrogate.
    """
    if raw is None:
        return {}, ()
    if not isinstance(raw, Mapping):
        raise InvalidWebhook(
            f"custom headers must be a JSON object of name -> value, not {type(raw).__name__}"
        )
    if len(raw) > MAX_CUSTOM_HEADERS:
        raise InvalidWebhook(f"too many custom headers ({len(raw)}, at most {MAX_CUSTOM_HEADERS})")
    usable: dict[str, str] = {}
    ignored: list[str] = []
    for name, value in raw.items():
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise InvalidWebhook(f"custom header name {name!r} is not a valid HTTP header name")
        if isinstance(value, bool) or value is None:
            text = "" if value is None else str(value).lower()
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise InvalidWebhook(f"custom header {name!r} must be a string, not a JSON object")
        if any(c in text for c in "\r\n\0"):
            raise InvalidWebhook(f"custom header {name!r} contains CR, LF or NUL")
        if _CONTROL.search(text):
            raise InvalidWebhook(f"custom header {name!r} contains a control character")
        if not _encodable(text):
            raise InvalidWebhook(f"custom header {name!r} is not valid Unicode text")
        if len(text) > MAX_HEADER_VALUE:
            raise InvalidWebhook(f"custom header {name!r} is longer than {MAX_HEADER_VALUE}")
        if name.lower() in RESERVED:
            ignored.append(name)
            continue
        usable[name] = text
    return usable, tuple(ignored)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _header_safe(text: str) -> str:
    """A header value for arbitrary text: control characters become spaces, lone
    surrogates U+FFFD (the body keeps the text exactly)."""
    text = _CONTROL.sub(" ", text)
    if not _encodable(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def _usable_secrets(secrets: Sequence[str]) -> list[str]:
    """The current secret must sign (InvalidWebhook otherwise); a previous one that cannot
    (a malformed whsec_ value) is left out rather than blocking every delivery."""
    usable: list[str] = []
    for i, secret in enumerate(secrets):
        try:
            secret.encode("utf-8")
            standard_webhooks_key(secret)
        except ValueError as exc:  # UnicodeEncodeError included
            if i == 0:
                reason = "it is not valid Unicode" if isinstance(exc, UnicodeError) else exc
                raise InvalidWebhook(f"the webhook secret cannot sign: {reason}") from None
            continue
        usable.append(secret)
    return usable


@dataclass(frozen=True, slots=True)
class Signer:
    """What a webhook's configuration contributes to every request, worked out once:
    HMAC keys (Standard Webhooks: one per usable secret, current first; InTime: the
    current secret's bytes) and the validated custom headers."""

    standard_keys: tuple[bytes, ...]
    intime_key: bytes
    extra: dict[str, str]
    recorded_extra: dict[str, str]  # sensitive values redacted
    ignored: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CustomHeaders:
    """A webhook's custom headers, read once from its `headers` jsonb (custom_headers):
    the ones sent, in the webhook's order; the names ignored because the dispatcher owns
    them; or why none can be sent (``problem``: InvalidWebhook's message, raised when a
    request is signed, after the secret's own checks)."""

    sent: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    problem: str | None = None

    def as_dict(self) -> dict[str, str]:
        return dict(self.sent)


NO_CUSTOM_HEADERS = CustomHeaders()


def read_custom_headers(raw: object) -> CustomHeaders:
    """CustomHeaders of a webhook's `headers` value (None, a JSON object, or any other JSON
    value, which is a problem). Never raises."""
    if raw is None:
        return NO_CUSTOM_HEADERS
    try:
        usable, ignored = custom_headers(raw)
    except InvalidWebhook as exc:
        return CustomHeaders(problem=str(exc))
    return CustomHeaders(tuple(usable.items()), ignored)


@functools.lru_cache(maxsize=4096)
def parse_custom_headers(text: str | None) -> CustomHeaders:
    """read_custom_headers of the `headers` jsonb as text (how the claim queries return it),
    remembered: webhooks repeat. Never raises."""
    if text is None:
        return NO_CUSTOM_HEADERS
    try:
        raw = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return CustomHeaders(problem=f"custom headers are not valid JSON: {exc}")
    return read_custom_headers(raw)


@functools.lru_cache(maxsize=4096)
def signer_for(secrets: tuple[str, ...], headers: CustomHeaders = NO_CUSTOM_HEADERS) -> Signer:
    """The one way to a Signer: a webhook's secrets (current first) and its custom headers,
    remembered (webhooks repeat; a changed secret or header makes a different key).
    InvalidWebhook when the current secret cannot sign or the custom headers are invalid."""
    if not secrets or not secrets[0]:
        raise InvalidWebhook("the webhook secret is empty")
    usable = _usable_secrets(secrets)
    if headers.problem is not None:
        raise InvalidWebhook(headers.problem)
    extra = dict(headers.sent)
    recorded = {k: ("[redacted]" if _SENSITIVE.search(k) else v) for k, v in extra.items()}
    return Signer(
        standard_keys=tuple(standard_webhooks_key(s) for s in usable),
        intime_key=usable[0].encode("utf-8"),
        extra=extra,
        recorded_extra=recorded,
        ignored=headers.ignored,
    )


_second: list[Any] = [-1, "", ""]  # the current second: [seconds, unix text, ISO prefix]


def _now_stamps() -> tuple[str, str]:
    """(webhook-timestamp, X-InTime-Timestamp) of this instant, from one clock reading;
    the text of the second is worked out once per second."""
    ms_total = time.time_ns() // 1_000_000
    seconds, ms = divmod(ms_total, 1000)
    if seconds != _second[0]:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _second[:] = [seconds, str(seconds), prefix]
    return _second[1], f"{_second[2]}.{ms:03d}Z"


def build_request(
    *,
    delivery_id: str,
    event_type: str,
    body: bytes,
    secrets: Sequence[str] | None = None,
    headers: CustomHeaders = NO_CUSTOM_HEADERS,
    signer: Signer | None = None,
    now: datetime | None = None,
    msg_id: str | None = None,
    traceparent: str | None = None,
    sequence: int | None = None,
) -> BuiltRequest:
    """Headers of one attempt; `secrets[0]` is current, later ones are rotating out.
    A `signer` (signer_for) stands for secrets and headers. `msg_id`
    is the `webhook-id` (message_id(); the delivery id when not given). A
    `traceparent` (already validated: tracing.valid_traceparent) is sent as is and wins
    over a custom header of that name. A `sequence` (the webhook's number of this
    message) is sent as X-InTime-Sequence; it is not signed (the body is), but a
    receiver that verified the body can trust it no more than any header."""
    if signer is None:
        signer = signer_for(tuple(secrets or ()), headers)
    if now is None:
        unix, ts = _now_stamps()
    else:
        unix, ts = str(int(now.timestamp())), intime_timestamp(now)
    msg_id = msg_id or delivery_id
    own = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": unix,
        "webhook-signature": sign_standard_with_keys(msg_id, unix, body, signer.standard_keys),
        "X-InTime-Event": event_type,
        "X-InTime-Delivery": delivery_id,
        "X-InTime-Timestamp": ts,
        "X-InTime-Signature": sign_intime_with_key(ts, body, signer.intime_key),
    }
    if traceparent is not None:
        own["traceparent"] = traceparent
    if sequence is not None:
        own["X-InTime-Sequence"] = str(sequence)
    if not event_type.isprintable() and (_CONTROL.search(event_type) or not _encodable(event_type)):
        own["X-InTime-Event"] = _header_safe(event_type)
    if not signer.extra:
        return BuiltRequest(own, own, signer.ignored)
    extra, recorded = signer.extra, signer.recorded_extra
    if traceparent is not None:  # ours replaces a custom one, whatever its case
        extra = {k: v for k, v in extra.items() if k.lower() != "traceparent"}
        recorded = {k: v for k, v in recorded.items() if k.lower() != "traceparent"}
    return BuiltRequest({**extra, **own}, {**recorded, **own}, signer.ignored)
