"""The request of one attempt as the daemon builds it: a signer worked out once per webhook
configuration gives exactly what the uncached path gives."""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import pytest

from dispatcher.request import InvalidWebhook, build_request, cached_signer

AT = datetime(2025, 12, 5, 14, 8, 26, 123000, tzinfo=UTC)
BODY = b'{"event": "job.created", "data": {}}'


def test_remembered_signer_signs_like_the_secrets_and_headers_it_stands_for() -> None:
    plain = build_request(
        delivery_id="d1",
        event_type="job.created",
        body=BODY,
        secrets=["s" * 64, "whsec_" + "QUJD"],
        headers={"X-Team": "blue", "X-Api-Key": "k"},
        now=AT,
    )
    cached = build_request(
        delivery_id="d1",
        event_type="job.created",
        body=BODY,
        signer=cached_signer(("s" * 64, "whsec_QUJD"), '{"X-Team": "blue", "X-Api-Key": "k"}'),
        now=AT,
    )
    assert cached == plain
    assert plain.recorded_headers["X-Api-Key"] == "[redacted]"
    assert plain.headers["X-Api-Key"] == "k"


def test_a_rotated_secret_is_a_different_signer() -> None:
    old = cached_signer(("a" * 64,), None)
    new = cached_signer(("b" * 64,), None)
    assert old is cached_signer(("a" * 64,), None)
    req = build_request(delivery_id="d", event_type="t", body=BODY, signer=new, now=AT)
    ts = "2025-12-05T14:08:26.123Z"
    expected = hmac.new(b"b" * 64, ts.encode() + b"." + BODY, hashlib.sha256).hexdigest()
    assert req.headers["X-InTime-Signature"] == "sha256=" + expected
    assert old != new


@pytest.mark.parametrize(
    ("headers_json", "message"),
    [
        ("[1, 2]", "must be a JSON object"),
        ('{"X-Bad": "a\\r\\nb"}', "CR, LF or NUL"),
        ("{not json", "not valid JSON"),
    ],
)
def test_invalid_custom_headers_text_is_an_invalid_webhook(headers_json: str, message: str) -> None:
    with pytest.raises(InvalidWebhook, match=message):
        cached_signer(("s" * 64,), headers_json)


def test_an_empty_secret_cannot_sign() -> None:
    with pytest.raises(InvalidWebhook, match="secret is empty"):
        cached_signer(("",), None)


@pytest.mark.parametrize(
    "headers_json",
    [
        '{"Authorization": "Bearer SEKRIT-1" ',
        '{"Authorization": "SEKRIT-1\\u0000"}',
        '{"X-Key": {"nested": "SEKRIT-1"}}',
        '["SEKRIT-1"]',
    ],
)
def test_invalid_custom_headers_never_repeat_their_values(headers_json: str) -> None:
    """The message lands in the delivery row and the log: it names, it does not quote."""
    with pytest.raises(InvalidWebhook) as caught:
        cached_signer(("s" * 64,), headers_json)
    assert "SEKRIT" not in str(caught.value)
