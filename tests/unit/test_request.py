"""The request of one attempt as the daemon builds it: a signer worked out once per webhook
configuration gives exactly what the uncached path gives."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.request import (
    MESSAGE_ID_NAMESPACE,
    InvalidWebhook,
    build_request,
    message_id,
    parse_custom_headers,
    read_custom_headers,
    repeated_id_text,
    signer_for,
)

AT = datetime(2025, 12, 5, 14, 8, 26, 123000, tzinfo=UTC)
BODY = b'{"event": "job.created", "data": {}}'


def test_remembered_signer_signs_like_the_secrets_and_headers_it_stands_for() -> None:
    plain = build_request(
        delivery_id="d1",
        event_type="job.created",
        body=BODY,
        secrets=["s" * 64, "whsec_" + "QUJD"],
        headers=read_custom_headers({"X-Team": "blue", "X-Api-Key": "k"}),
        now=AT,
    )
    cached = build_request(
        delivery_id="d1",
        event_type="job.created",
        body=BODY,
        signer=signer_for(
            ("s" * 64, "whsec_QUJD"), parse_custom_headers('{"X-Team": "blue", "X-Api-Key": "k"}')
        ),
        now=AT,
    )
    assert cached == plain
    assert plain.recorded_headers["X-Api-Key"] == "[redacted]"
    assert plain.headers["X-Api-Key"] == "k"


def test_a_rotated_secret_is_a_different_signer() -> None:
    old = signer_for(("a" * 64,))
    new = signer_for(("b" * 64,))
    assert old is signer_for(("a" * 64,))
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
        signer_for(("s" * 64,), parse_custom_headers(headers_json))


def test_an_empty_secret_cannot_sign() -> None:
    with pytest.raises(InvalidWebhook, match="secret is empty"):
        signer_for(("",))


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
        signer_for(("s" * 64,), parse_custom_headers(headers_json))
    assert "SEKRIT" not in str(caught.value)


EVENT = uuid.UUID("0b7e6a52-3c1f-4d8e-9a47-5f2c1e8d9b30")
WEBHOOK = uuid.UUID("6f1d2c3b-4a5e-4f60-8b71-92a3b4c5d6e7")


def test_webhook_id_of_an_event_to_a_webhook_is_pinned() -> None:
    # Receivers deduplicate on it: the value of one pair never changes between releases.
    assert message_id(EVENT, WEBHOOK, uuid.uuid4()) == "ac2cd2ba-b997-5702-92d5-c57cf02e766e"


@given(st.uuids(), st.uuids(), st.uuids())
def test_webhook_id_is_uuid5_of_event_and_webhook(
    event: uuid.UUID, webhook: uuid.UUID, delivery: uuid.UUID
) -> None:
    expected = str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{event}/{webhook}"))
    assert message_id(event, webhook, delivery) == expected
    assert message_id(str(event), str(webhook), delivery) == expected  # type: ignore[arg-type]
    assert uuid.UUID(expected).version == 5


def test_webhook_id_of_a_row_without_event_is_the_row_id() -> None:
    delivery = uuid.uuid4()
    assert message_id(None, WEBHOOK, delivery) == str(delivery)


@given(st.uuids())
def test_remembered_id_text_is_the_uuid_text(value: uuid.UUID) -> None:
    assert repeated_id_text(value) == str(value)
    assert repeated_id_text(uuid.UUID(str(value))) == str(value)  # equal, not the same object
