"""Pure parts of intake safety: the webhook-id of a message, and how the fan-out batch
shrinks on statement timeouts and grows back (dispatcher/request.py, dispatcher/intake.py).
The database side is tested in tests/integration/test_faults_intake.py."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from dispatcher.intake import GROW_AFTER, Intake
from dispatcher.metrics import Metrics
from dispatcher.request import build_request, message_id

EVENT, HOOK, OTHER = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def test_message_id_is_one_per_event_and_webhook_whatever_the_row() -> None:
    first = message_id(EVENT, HOOK, uuid.uuid4())
    assert first == message_id(EVENT, HOOK, uuid.uuid4())  # replay, recovery: new rows
    assert str(uuid.UUID(first)) == first
    assert first != message_id(EVENT, OTHER, uuid.uuid4())
    assert first != message_id(uuid.uuid4(), HOOK, uuid.uuid4())
    # Fixed forever (UUIDv5 of "<event>/<webhook>"): receivers compare ids across releases.
    fixed = uuid.UUID("00000000-0000-0000-0000-000000000001")
    assert message_id(fixed, fixed, fixed) == "11cf996f-d36a-52ae-a4d2-8273d3e1010f"


def test_a_row_without_event_is_its_own_message() -> None:
    row = uuid.uuid4()
    assert message_id(None, HOOK, row) == str(row)


def test_the_signature_covers_the_message_id_and_the_delivery_header_is_the_row() -> None:
    secret = "ab" * 32
    row = str(uuid.uuid4())
    msg = message_id(EVENT, HOOK, uuid.UUID(row))
    body = b'{"id": 1}'
    req = build_request(
        delivery_id=row, event_type="job.created", body=body, secrets=[secret], msg_id=msg
    )
    assert req.headers["webhook-id"] == msg and req.headers["X-InTime-Delivery"] == row
    whsec = "whsec_" + base64.b64encode(secret.encode()).decode()
    Webhook(whsec).verify(body, req.headers)


# These paths never touch the connection (no narrowing below one event, no quarantine).
NO_CONN: Any = None


def _timeout() -> psycopg.errors.QueryCanceled:
    return psycopg.errors.QueryCanceled("canceling statement due to statement timeout")


async def test_batches_halve_on_timeouts_and_grow_back_slowly() -> None:
    intake = Intake(64, Metrics())
    assert await intake.narrow(NO_CONN, 40) == (40, None)
    assert await intake.timed_out(NO_CONN, _timeout(), 40, None)
    assert intake.cap == 20
    assert await intake.timed_out(NO_CONN, _timeout(), 20, None)
    assert intake.cap == 10
    assert await intake.narrow(NO_CONN, 40) == (10, None)
    for _ in range(GROW_AFTER - 1):
        intake.succeeded(10)
        assert intake.cap == 10
    intake.succeeded(10)
    assert intake.cap == 20
    for _ in range(GROW_AFTER):
        intake.succeeded(3)  # passes smaller than the cap prove nothing
    assert intake.cap == 20
    for _ in range(GROW_AFTER):
        intake.succeeded(20)
    assert intake.cap == 40
    for _ in range(GROW_AFTER):
        intake.succeeded(40)
    assert intake.cap is None


@pytest.mark.parametrize(
    "message", ["canceling statement due to user request", "canceling statement"]
)
async def test_other_cancels_are_not_timeouts(message: str) -> None:
    intake = Intake(64, Metrics())
    assert not await intake.timed_out(NO_CONN, psycopg.errors.QueryCanceled(message), 64, None)
    assert intake.cap is None
