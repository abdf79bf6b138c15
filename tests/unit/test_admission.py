"""Admission rules: per-webhook room, rate limits, failing-endpoint probes, and which
webhooks a claim held back (the refill signal of the dispatch loop)."""

from __future__ import annotations

from uuid import uuid4

from dispatcher.admission import FAILING_AFTER, Admission, probe_delay
from dispatcher.backoff import RetryPolicy
from dispatcher.ratelimit import RateLimits

POLICY = RetryPolicy(base_delay_seconds=2, max_delay_seconds=30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(cap: int = 4, ahead: int = 0) -> tuple[Admission, Clock]:
    """Without claim-ahead unless asked: the rules of what may start now."""
    clock = Clock()
    return Admission(cap, RateLimits(clock=clock), clock=clock, ahead=ahead), clock


def test_unknown_webhooks_have_the_full_cap_and_busy_ones_what_is_left() -> None:
    adm, _ = make(cap=4)
    hook = uuid4()
    assert adm.room() == {}
    for _ in range(3):
        adm.started(hook, active=True, failing=False)
    assert adm.room() == {hook: 1}
    adm.started(hook, active=True, failing=False)
    params = adm.claim_params()
    assert params["room_ids"] == [hook] and params["room_left"] == [0]
    assert params["full_ids"] == [hook]
    assert params["hook_cap"] == 4 and params["failing_after"] == FAILING_AFTER
    adm.ended(hook)
    assert adm.room() == {hook: 1}
    for _ in range(3):
        adm.ended(hook)
    assert adm.room() == {} and adm.inflight(hook) == 0


def test_rate_limit_bounds_the_room_and_each_start_takes_a_token() -> None:
    adm, clock = make(cap=10)
    hook = uuid4()
    adm.limits.update({str(hook): 2.0}, replicas=1)
    assert adm.room() == {hook: 2}
    adm.started(hook, active=True, failing=False)
    adm.started(hook, active=True, failing=False)
    assert adm.room() == {hook: 0}
    clock.now += 0.5
    assert adm.room() == {hook: 1}
    # an inactive webhook's row is recorded, never sent: it takes no token
    adm.started(hook, active=False, failing=False)
    assert adm.room() == {hook: 1}


def test_a_webhook_failing_here_gets_one_probe_at_a_time_spaced_by_its_backoff() -> None:
    adm, clock = make(cap=8)
    hook = uuid4()
    for _ in range(FAILING_AFTER - 1):
        adm.outcome(hook, POLICY, success=False, counts=True)
    assert hook not in adm.room()  # not failing yet: the full cap
    adm.outcome(hook, POLICY, success=False, counts=True)
    assert adm.room() == {hook: 0}  # the next probe waits for the backoff
    assert adm.next_probe_in() == probe_delay(POLICY, FAILING_AFTER) == 2.0
    clock.now += 2.0
    assert adm.room() == {hook: 1} and adm.next_probe_in() == 0.0
    adm.started(hook, active=True, failing=False)
    assert adm.room() == {hook: 0}  # one at a time
    assert adm.next_probe_in() is None  # nothing to wake for while the probe is out
    adm.ended(hook)
    adm.outcome(hook, POLICY, success=True, counts=False)
    assert adm.room() == {}  # a success ends the streak


def test_failures_that_do_not_count_leave_the_streak_alone() -> None:
    adm, _ = make()
    hook = uuid4()
    for _ in range(5):
        adm.outcome(hook, POLICY, success=False, counts=False)
    assert adm.room() == {}


def test_a_webhook_the_database_calls_failing_gets_nothing_while_its_probe_is_out() -> None:
    adm, _ = make(cap=8)
    hook = uuid4()
    adm.started(hook, active=True, failing=True)
    assert adm.room() == {hook: 0}
    adm.ended(hook)
    assert adm.room() == {}


def test_probe_delay_doubles_from_the_base_up_to_the_max() -> None:
    assert probe_delay(POLICY, FAILING_AFTER - 1) == 0.0
    assert [probe_delay(POLICY, FAILING_AFTER + i) for i in range(6)] == [2, 4, 8, 16, 30, 30]
    assert probe_delay(POLICY, 10_000) == 30


def test_a_webhook_that_got_all_its_room_is_held_back_and_its_next_end_says_so() -> None:
    """The race of issue 12: attempts end while the claim statement runs; afterwards the
    webhook has room again, yet its further rows are due. It counts as held back because
    the claim gave it all the room it was given."""
    adm, _ = make(cap=4)
    hook = uuid4()
    for _ in range(4):
        adm.started(hook, active=True, failing=False)
    adm.claim_params()  # full: not even scanned
    for _ in range(4):  # ...all four end while the statement runs
        adm.ended(hook)
    adm.note_held([])
    assert adm.room() == {}  # room again, nothing in flight
    adm.started(hook, active=True, failing=False)
    assert adm.ended(hook) is True  # the loop claims again at once


def test_a_claim_that_gave_a_webhook_less_than_its_room_holds_nothing_back() -> None:
    adm, _ = make(cap=4)
    hook, other = uuid4(), uuid4()
    adm.started(hook, active=True, failing=False)
    adm.claim_params()  # hook: 3 more
    adm.started(hook, active=True, failing=False)  # only one was due
    adm.note_held([hook])
    assert adm.ended(hook) is False  # nothing waits for this slot: no wake-up
    # a webhook unknown to the claim that got a whole cap's worth is held back
    adm.claim_params()
    for _ in range(4):
        adm.started(other, active=True, failing=False)
    adm.note_held([other] * 4)
    assert adm.ended(other) is True
