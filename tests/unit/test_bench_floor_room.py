"""The ladder's room (bench/floor.py room_params, issue 12) is the room the daemon's admission
passes to delivery_fan_out and delivery_claim_due for one webhook held back by its cap."""

from __future__ import annotations

import uuid

import pytest

from bench.floor import room_params
from dispatcher.admission import Admission
from dispatcher.ratelimit import RateLimits


@pytest.mark.parametrize(("in_flight", "queued"), [(32, 0), (32, 10), (32, 64), (31, 5)])
def test_room_params_are_admissions_for_a_webhook_held_back_by_its_cap(
    in_flight: int, queued: int
) -> None:
    hook = uuid.uuid4()
    admission: Admission[int] = Admission(32, RateLimits())
    for _ in range(32):
        admission.started(hook, active=True, failing=False)
    admission.note_held([hook] * 32, {hook: 32})  # the last claim gave it all its room
    for i in range(queued):
        assert admission.enqueue(hook, i)
    for _ in range(32 - in_flight):
        admission.ended(hook)
    assert room_params(hook, 32, in_flight, queued) == admission.claim_params()
