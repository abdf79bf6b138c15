"""Tests for dispatcher.signing against the standardwebhooks package and fixed vectors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from dispatcher.signing import (
    intime_timestamp,
    sign_intime,
    sign_standard,
    standard_webhooks_key,
)

HOST_SECRET = "a3f1c9e2b4d6f8a0c2e4b6d8f0a2c4e6b8d0f2a4c6e8b0d2f4a6c8e0b2d4f6a8"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"event":"job.created","data":{"id":1,"name":"Caf\xc3\xa9"}}'


def _headers(msg_id: str, ts: int, signature: str) -> dict[str, str]:
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def test_key_whsec_is_base64_decoded() -> None:
    assert standard_webhooks_key(WHSEC) == base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")


def test_key_unpadded_whsec() -> None:
    assert standard_webhooks_key("whsec_" + base64.b64encode(b"ab").decode().rstrip("=")) == b"ab"


def test_key_plain_secret_is_utf8() -> None:
    assert standard_webhooks_key(HOST_SECRET) == HOST_SECRET.encode()
    assert standard_webhooks_key("clé") == b"cl\xc3\xa9"


@pytest.mark.parametrize("bad", ["", "whsec_", "whsec_!!!notbase64", "whsec_a"])
def test_key_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        standard_webhooks_key(bad)


def test_standard_known_vector() -> None:
    # Vector from the Standard Webhooks reference test suite, re-checked with openssl.
    sig = sign_standard(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}', [WHSEC]
    )
    assert sig == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_standard_independent_hmac_vector() -> None:
    msg_id, ts = "3f6c2f2e-6a7b-4b8e-9a63-1b2c3d4e5f60", 1764943706
    expected_digest = hmac.new(
        HOST_SECRET.encode(), msg_id.encode() + b"." + str(ts).encode() + b"." + BODY, "sha256"
    ).digest()
    assert sign_standard(msg_id, ts, BODY, [HOST_SECRET]) == (
        "v1," + base64.b64encode(expected_digest).decode()
    )


def test_standard_verifies_with_official_package_whsec() -> None:
    ts = int(time.time())
    sig = sign_standard("msg_1", ts, BODY, [WHSEC])
    assert Webhook(WHSEC).verify(BODY, _headers("msg_1", ts, sig)) == {
        "event": "job.created",
        "data": {"id": 1, "name": "Café"},
    }


def test_standard_verifies_with_official_package_raw_secret() -> None:
    ts = int(time.time())
    sig = sign_standard("msg_2", ts, BODY, [HOST_SECRET])
    Webhook(HOST_SECRET.encode()).verify(BODY, _headers("msg_2", ts, sig))
    with pytest.raises(WebhookVerificationError):
        Webhook(HOST_SECRET.encode()).verify(BODY + b" ", _headers("msg_2", ts, sig))
    with pytest.raises(WebhookVerificationError):
        Webhook(HOST_SECRET.encode()).verify(BODY, _headers("msg_3", ts, sig))


def test_standard_rotation_two_signatures() -> None:
    ts = int(time.time())
    old, new = HOST_SECRET, WHSEC
    header = sign_standard("msg_rot", ts, BODY, [old, new])
    parts = header.split(" ")
    assert len(parts) == 2
    assert all(p.startswith("v1,") for p in parts)
    assert parts[0] == sign_standard("msg_rot", ts, BODY, [old])
    assert parts[1] == sign_standard("msg_rot", ts, BODY, [new])
    # Each secret verifies the combined header on its own.
    Webhook(old.encode()).verify(BODY, _headers("msg_rot", ts, header))
    Webhook(new).verify(BODY, _headers("msg_rot", ts, header))
    # A third secret does not.
    with pytest.raises(WebhookVerificationError):
        Webhook(b"some other key").verify(BODY, _headers("msg_rot", ts, header))


def test_standard_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        sign_standard("m", 1, b"", [])


@given(st.text(min_size=1, max_size=30), st.integers(0, 2**40), st.binary(max_size=200))
def test_standard_matches_independent_hmac(msg_id: str, ts: int, body: bytes) -> None:
    expected = hmac.new(
        HOST_SECRET.encode(), f"{msg_id}.{ts}.".encode() + body, hashlib.sha256
    ).digest()
    assert sign_standard(msg_id, ts, body, [HOST_SECRET]) == "v1," + base64.b64encode(
        expected
    ).decode("ascii")


def test_intime_timestamp_format() -> None:
    at = datetime(2025, 12, 5, 14, 8, 26, 123999, tzinfo=UTC)
    assert intime_timestamp(at) == "2025-12-05T14:08:26.123Z"


def test_intime_timestamp_zero_ms_and_conversion_to_utc() -> None:
    at = datetime(2025, 12, 5, 16, 8, 26, tzinfo=timezone(timedelta(hours=2)))
    assert intime_timestamp(at) == "2025-12-05T14:08:26.000Z"
    at2 = datetime(2025, 12, 31, 23, 30, 0, 5000, tzinfo=timezone(timedelta(hours=-1)))
    assert intime_timestamp(at2) == "2026-01-01T00:30:00.005Z"


def test_intime_timestamp_rejects_naive() -> None:
    with pytest.raises(ValueError):
        intime_timestamp(datetime(2025, 12, 5, 14, 8, 26))


def test_intime_signature_fixed_vector() -> None:
    # Computed with: printf '%s' '<ts>.<body>' | openssl dgst -sha256 -hmac '<secret>'
    body = b'{"event":"job.created","data":{"id":1}}'
    assert sign_intime("2025-12-05T14:08:26.123Z", body, HOST_SECRET) == (
        "sha256=fc731a1d87fbc390bbcdd76dc5532c0f22389d53e7328a90413a44f7ccf64e30"
    )


@given(st.text(max_size=40), st.binary(max_size=200), st.text(min_size=1, max_size=64))
def test_intime_signature_recipe(timestamp: str, body: bytes, secret: str) -> None:
    expected = hmac.new(
        secret.encode("utf-8"), timestamp.encode("utf-8") + b"." + body, hashlib.sha256
    ).hexdigest()
    got = sign_intime(timestamp, body, secret)
    assert got == "sha256=" + expected
    assert got == got.lower()


def test_request_timestamps_of_now_agree_with_the_datetime_formatting() -> None:
    """build_request's fast clock path gives the same texts as intime_timestamp."""
    from dispatcher.request import _now_stamps

    before = datetime.now(UTC).replace(microsecond=0)
    unix, iso = _now_stamps()
    after = datetime.now(UTC)
    at = datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= at <= after
    assert unix == str(int(at.timestamp()))
    assert iso == intime_timestamp(at)
