"""Request signing: Standard Webhooks and the host's ``X-InTime-*`` scheme.

Standard Webhooks (https://www.standardwebhooks.com/): the ``webhook-signature`` header holds
space-separated ``v1,<base64 HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")>`` entries, one per
active secret, so receivers keep verifying while a secret is rotated. A ``whsec_`` secret is
base64 for the key bytes; any other secret (the host's 64-hex-char secrets) is used as its UTF-8
bytes.

InTime (the host's receivers, see docs/host-contract.md): ``X-InTime-Timestamp`` is ISO-8601
UTC with milliseconds, and ``X-InTime-Signature`` is ``sha256=<lowercase hex HMAC-SHA256(key =
secret's UTF-8 bytes, message = timestamp + "." + body)>``.

Pure functions, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime

__all__ = [
    "intime_timestamp",
    "sign_intime",
    "sign_intime_with_key",
    "sign_standard",
    "sign_standard_with_keys",
    "standard_webhooks_key",
]

_WHSEC_PREFIX = "whsec_"


def standard_webhooks_key(secret: str) -> bytes:
    """Return the HMAC key for ``secret``.

    ``whsec_<base64>`` decodes to the key bytes (missing ``=`` padding tolerated, like the
    reference library); any other secret is used as its UTF-8 bytes. Raises ValueError for an
    empty secret, an empty key, or invalid base64 after ``whsec_``.
    """
    if not secret:
        raise ValueError("webhook secret is empty")
    if not secret.startswith(_WHSEC_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(_WHSEC_PREFIX) :]
    encoded += "=" * (-len(encoded) % 4)
    try:
        key = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"webhook secret after 'whsec_' is not valid base64: {exc}") from None
    if not key:
        raise ValueError("webhook secret 'whsec_' decodes to an empty key")
    return key


def sign_standard(msg_id: str, timestamp: int, body: bytes, secrets: Sequence[str]) -> str:
    """Return the Standard Webhooks ``webhook-signature`` header value.

    One ``v1,<base64>`` entry per secret, in the order given, separated by single spaces.
    ``timestamp`` is the ``webhook-timestamp`` value (integer Unix seconds). Raises ValueError
    when ``secrets`` is empty.
    """
    if not secrets:
        raise ValueError("at least one secret is needed to sign a webhook")
    return sign_standard_with_keys(
        msg_id, timestamp, body, [standard_webhooks_key(s) for s in secrets]
    )


def sign_standard_with_keys(
    msg_id: str, timestamp: int | str, body: bytes, keys: Sequence[bytes]
) -> str:
    """sign_standard with the HMAC keys already derived (``standard_webhooks_key``): what the
    daemon does per request, the keys being worked out once per webhook configuration."""
    to_sign = f"{msg_id}.{timestamp}.".encode() + body
    if len(keys) == 1:  # no rotation under way: the usual case, without a generator
        mac = hmac.digest(keys[0], to_sign, hashlib.sha256)
        return "v1," + base64.b64encode(mac).decode("ascii")
    return " ".join(
        "v1," + base64.b64encode(hmac.digest(key, to_sign, hashlib.sha256)).decode("ascii")
        for key in keys
    )


def intime_timestamp(at: datetime) -> str:
    """Format ``at`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ`` in UTC (microseconds truncated to ms).

    ``at`` must be timezone-aware (a naive datetime raises ValueError: its zone is unknown).
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("intime_timestamp needs a timezone-aware datetime")
    utc = at.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds") + "Z"


def sign_intime(timestamp: str, body: bytes, secret: str) -> str:
    """Return the ``X-InTime-Signature`` value: ``sha256=`` + lowercase hex HMAC-SHA256."""
    return sign_intime_with_key(timestamp, body, secret.encode("utf-8"))


def sign_intime_with_key(timestamp: str, body: bytes, key: bytes) -> str:
    """sign_intime with the key already encoded (the secret's UTF-8 bytes)."""
    message = timestamp.encode("utf-8") + b"." + body
    return "sha256=" + hmac.digest(key, message, hashlib.sha256).hex()
