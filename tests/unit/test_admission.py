"""Admission rules: per-webhook room, rate limits, failing-endpoint probes, and which
webhooks a claim held back (the refill signal of the dispatch loop)."""

from __future__ import annotations

import itertools
from typing import Any
from uuid import UUID, uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.admission import FAILING_AFTER, Admission, probe_delay
from dispatcher.backoff import RetryPolicy
from dispatcher.ratelimit import RateLimits

POLICY = RetryPolicy(base_delay_seconds=2, max_delay_seconds=30)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(cap: int = 4, ahead: int = 0, shared: int = 0) -> tuple[Admission[Any], Clock]:
    """Without claim-ahead or shared depth unless asked: the rules of what may start now."""
    clock = Clock()
    limits = RateLimits(clock=clock)
    return Admission(cap, limits, clock=clock, ahead=ahead, shared_depth=shared), clock


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


def test_a_410_makes_the_webhook_failing_at_once_and_hands_its_queue_back() -> None:
    """One 410 (the webhook is being disabled) is enough: its queued rows go back unsent
    and nothing of it starts before a probe (branch breakit)."""
    adm, clock = make(cap=2, ahead=4)
    hook = uuid4()
    adm.started(hook, active=True, failing=False)
    adm.started(hook, active=True, failing=False)
    for row in ("a", "b", "c"):
        assert adm.enqueue(hook, row)
    adm.outcome(hook, POLICY, success=False, counts=True, gone=True)
    adm.ended(hook)
    assert adm.next_queued(hook) == (None, ["a", "b", "c"])
    assert adm.room() == {hook: 0} and adm.ahead_room(hook) == 0
    clock.now += probe_delay(POLICY, FAILING_AFTER)
    adm.ended(hook)
    assert adm.room() == {hook: 1}  # one probe: it finds the webhook disabled, or enabled


def test_a_due_probe_with_nothing_to_claim_stops_arming_the_timer() -> None:
    """A webhook gone with 410 (or three final failures and no row left) has a due probe that
    no scan can fill: next_probe_in must not stay at 0, or the loop scans every millisecond
    for as long as it lives (review of branch breakit)."""
    adm, clock = make()
    hook = uuid4()
    adm.outcome(hook, POLICY, success=False, counts=True, gone=True)
    clock.now += probe_delay(POLICY, FAILING_AFTER) + 0.5
    assert adm.next_probe_in() == 0.0
    adm.due_scanned(clock.now, [], full=False)  # the scan offered the probe: no row of it
    assert adm.next_probe_in() is None
    adm.due_scanned(clock.now, [hook], full=False)  # a row of it turned up and was claimed
    assert adm.next_probe_in() == 0.0


def test_a_full_scan_or_a_probe_not_yet_due_keeps_the_timer() -> None:
    adm, clock = make()
    hook = uuid4()
    adm.outcome(hook, POLICY, success=False, counts=True, gone=True)
    adm.due_scanned(clock.now, [], full=False)  # before the probe was due: not offered
    assert adm.next_probe_in() == probe_delay(POLICY, FAILING_AFTER)
    clock.now += probe_delay(POLICY, FAILING_AFTER)
    adm.due_scanned(clock.now, [uuid4()], full=True)  # its row may not have fit
    assert adm.next_probe_in() == 0.0
    adm.due_scanned(clock.now, [], full=False)
    assert adm.next_probe_in() is None
    adm.outcome(hook, POLICY, success=False, counts=True)  # a probe's outcome: armed again
    assert adm.next_probe_in() == probe_delay(POLICY, FAILING_AFTER + 1)


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


# -- claim-ahead -------------------------------------------------------------------------


def _at_cap(adm: Admission[Any], hook: UUID, n: int) -> None:
    for _ in range(n):
        adm.started(hook, active=True, failing=False)


def test_claim_ahead_defaults_to_twice_the_cap_and_zero_turns_it_off() -> None:
    limits = RateLimits()
    assert Admission(32, limits).ahead == 64
    assert Admission(32, limits).refill_at == 32  # refilled once half of it is used
    assert Admission(1, limits).ahead == 0  # one at a time: nothing leased ahead
    assert Admission(32, limits, ahead=0).ahead == 0
    adm, _ = make(cap=4, ahead=0)
    hook = uuid4()
    _at_cap(adm, hook, 4)
    assert adm.claim_room() == {hook: 0} and not adm.enqueue(hook, "row")


def test_rows_are_leased_ahead_only_for_a_webhook_at_its_cap_and_at_most_ahead() -> None:
    adm, _ = make(cap=4, ahead=2)
    hook = uuid4()
    assert adm.claim_room() == {}  # unknown: the cap, nothing ahead
    _at_cap(adm, hook, 3)
    assert adm.claim_room() == {hook: 1}  # room left, not held back: nothing ahead
    adm.started(hook, active=True, failing=False)
    assert adm.claim_room() == {hook: 2}  # at its cap: 2 may be leased ahead
    assert adm.enqueue(hook, "a")
    # the queued row counts once (a webhook both busy and queued was counted twice)
    assert adm.claim_room() == {hook: 1}
    assert adm.enqueue(hook, "b")
    params = adm.claim_params()
    assert params["room_left"] == [0] and params["full_ids"] == [hook]
    assert not adm.enqueue(hook, "c") and adm.queued(hook) == 2  # bounded
    # one statement leases at most cap + ahead of one webhook, also of one not listed
    assert params["hook_cap"] == 6


def test_a_webhook_given_all_it_asked_for_is_held_back_and_may_lease_ahead() -> None:
    adm, _ = make(cap=8, ahead=4)
    hook = uuid4()
    _at_cap(adm, hook, 6)
    assert adm.claim_params()["room_left"] == [2]
    adm.note_held([])  # the claim found nothing: not held back, no queue
    assert adm.claim_room() == {hook: 2}
    adm.claim_params()
    adm.note_held([hook, hook])  # got both: more may be due
    _at_cap(adm, hook, 0)
    assert adm.claim_room() == {hook: 6}  # 2 to start, 4 ahead: one statement for all
    assert adm.claim_params()["hook_cap"] == 12  # the statement's bound per webhook


def test_an_ended_attempt_starts_the_oldest_queued_row_and_never_exceeds_the_cap() -> None:
    adm, _ = make(cap=2, ahead=2)
    hook = uuid4()
    _at_cap(adm, hook, 2)
    assert not adm.can_start(hook)
    assert adm.enqueue(hook, "a") and adm.enqueue(hook, "b")
    assert adm.next_queued(hook) == (None, [])  # nothing ended: no slot
    adm.ended(hook)
    assert adm.next_queued(hook) == ("a", [])
    adm.started(hook, active=True, failing=False)
    assert adm.inflight(hook) == 2 and adm.queued(hook) == 1
    adm.ended(hook)
    assert adm.next_queued(hook) == ("b", [])
    adm.started(hook, active=True, failing=False)
    adm.ended(hook)
    assert adm.next_queued(hook) == (None, []) and adm.queued() == 0
    assert adm.dequeued == 2


def test_no_rows_leased_ahead_for_a_rate_limited_or_failing_webhook() -> None:
    adm, _ = make(cap=4, ahead=2)
    limited, failing, probing = uuid4(), uuid4(), uuid4()
    adm.limits.update({str(limited): 100.0}, replicas=1)
    _at_cap(adm, limited, 4)
    assert adm.ahead_room(limited) == 0 and not adm.enqueue(limited, "x")
    _at_cap(adm, failing, 4)
    for _ in range(FAILING_AFTER):
        adm.outcome(failing, POLICY, success=False, counts=True)
    assert adm.ahead_room(failing) == 0
    adm.started(probing, active=True, failing=True)  # the database's probe
    assert adm.ahead_room(probing) == 0


def test_queued_rows_of_a_webhook_that_begins_failing_are_handed_back() -> None:
    adm, _ = make(cap=2, ahead=2)
    hook = uuid4()
    _at_cap(adm, hook, 2)
    adm.enqueue(hook, "a")
    adm.enqueue(hook, "b")
    for _ in range(FAILING_AFTER):
        adm.outcome(hook, POLICY, success=False, counts=True)
    adm.ended(hook)
    assert adm.next_queued(hook) == (None, ["a", "b"])  # one probe at a time: release
    assert adm.queued() == 0


def test_stop_takes_every_queued_row() -> None:
    adm, _ = make(cap=1, ahead=3)
    one, two = uuid4(), uuid4()
    _at_cap(adm, one, 1)
    _at_cap(adm, two, 1)
    for row in ("a", "b"):
        adm.enqueue(one, row)
    adm.enqueue(two, "c")
    assert sorted(adm.take_queued()) == ["a", "b", "c"]
    # queues empty again: each at its cap, up to 3 ahead each
    assert adm.queued() == 0 and adm.claim_room() == {one: 3, two: 3}


def test_no_rows_leased_ahead_for_a_webhook_the_database_calls_failing_until_a_success() -> None:
    adm, _ = make(cap=2, ahead=2)
    hook = uuid4()
    _at_cap(adm, hook, 2)
    assert adm.ahead_room(hook) == 2
    adm.failing_elsewhere(hook)  # its probe came back while we were at the cap
    assert adm.ahead_room(hook) == 0 and not adm.enqueue(hook, "a")
    adm.ended(hook)
    adm.outcome(hook, POLICY, success=True, counts=False)
    adm.started(hook, active=True, failing=False)
    assert adm.ahead_room(hook) == 2


# -- the rules hold together, whatever happens --------------------------------------------

HOOKS = [UUID(int=1), UUID(int=2), UUID(int=3)]
_hook = st.sampled_from(HOOKS)
_op = st.one_of(
    st.tuples(st.just("claim"), _hook, st.booleans()),  # start a claimed row (failing?)
    st.tuples(st.just("end"), _hook, st.booleans()),  # an attempt ends (succeeded?)
    st.tuples(st.just("fail"), _hook, st.booleans()),  # an outcome: failure (counted?)
    st.tuples(st.just("limit"), _hook, st.sampled_from([0.0, 1.0, 3.0])),  # 0: no limit
    st.tuples(st.just("tick"), _hook, st.sampled_from([0.1, 1.0, 5.0])),
    st.tuples(st.just("params"), _hook, st.integers(0, 4)),  # a claim, then note_held
)


@settings(max_examples=300, deadline=None)
@given(
    cap=st.integers(1, 4),
    ahead=st.integers(0, 3),
    shared=st.integers(0, 3),
    ops=st.lists(_op, max_size=60),
)
def test_the_rules_agree_with_each_other_after_any_sequence(
    cap: int, ahead: int, shared: int, ops: list[tuple[str, UUID, Any]]
) -> None:
    """Driven as the dispatch loop drives it (a row starts only when can_start, else it
    is queued or released; an ended attempt starts the next queued row): room_of() is
    room() for one webhook, the cap is never exceeded, a claim never asks for more than
    the room plus what the queue may still take, and nothing is leased ahead for a
    rate-limited or failing webhook."""
    adm, clock = make(cap=cap, ahead=ahead, shared=shared)
    limits: dict[str, float] = {}
    rows = itertools.count()

    def start(hook: UUID, failing: bool) -> None:
        assert adm.can_start(hook)
        adm.started(hook, active=True, failing=failing)

    for op, hook, arg in ops:
        if op == "claim":
            if adm.can_start(hook):
                start(hook, arg)
            elif not arg:
                adm.enqueue(hook, next(rows))
        elif op == "end" and adm.inflight(hook):
            adm.ended(hook)
            adm.outcome(hook, POLICY, success=arg, counts=not arg)
            row, released = adm.next_queued(hook)
            while row is not None:
                start(hook, False)
                row, released = adm.next_queued(hook)
            if released:  # only rows that may not start at all now (never for the depth)
                assert (
                    adm.limits.room(hook) is not None
                    or hook in adm._probing
                    or (adm._streak.get(hook, (0, 0.0))[0] >= FAILING_AFTER)
                )
        elif op == "fail":
            adm.outcome(hook, POLICY, success=False, counts=arg)
        elif op == "limit":
            limits[str(hook)] = arg
            adm.limits.update({k: v for k, v in limits.items() if v}, replicas=1)
        elif op == "tick":
            clock.now += arg
        elif op == "params":
            params = adm.claim_params()
            assert params["hook_cap"] == cap + adm.ahead
            assert all(0 <= n <= params["hook_cap"] for n in params["room_left"])
            adm.note_held([hook] * arg)

        room, claim_room = adm.room(), adm.claim_room()
        for h in HOOKS:
            assert adm.room_of(h) == room.get(h, cap), (h, room)
            assert room.get(h, cap) <= claim_room.get(h, cap) <= cap + adm.ahead
            assert claim_room.get(h, cap) - room.get(h, cap) <= adm.ahead - adm.queued(h)
            assert adm.inflight(h) <= cap
            assert adm.queued(h) <= adm.ahead
            if adm.limits.room(h) is not None or adm._streak.get(h, (0, 0.0))[0] >= FAILING_AFTER:
                assert adm.ahead_room(h) == 0
            if adm._streak.get(h, (0, 0.0))[0] >= FAILING_AFTER:
                assert room[h] <= 1  # one probe at a time


def test_a_held_back_webhook_asks_for_a_refill_only_once_its_queue_ran_down_to_half() -> None:
    """One claim statement per half a queue, not one per attempt ended: while enough rows
    wait, an attempt that ends starts the next queued one and no claim is needed."""
    adm, _ = make(cap=2, ahead=4)
    hook = uuid4()
    _at_cap(adm, hook, 2)
    for row in "abcd":
        assert adm.enqueue(hook, row)
    adm.note_held([hook, hook])
    seen: list[tuple[Any, bool]] = []
    for _ in range(4):
        assert adm.ended(hook)  # held back: rows of it may be due
        started, _released = adm.next_queued(hook)
        adm.started(hook, active=True, failing=False)
        seen.append((started, adm.refill_wanted(hook)))
    assert seen == [("a", False), ("b", True), ("c", True), ("d", True)]
    assert adm.claim_room() == {hook: 4}  # the refill: the whole queue in one statement


def test_queued_rows_are_handed_back_when_a_rate_limit_appears() -> None:
    """A row leased ahead must not wait for an end that will not let it start: once a
    limit holds the webhook back below its cap, its queue is released."""
    adm, _ = make(cap=2, ahead=2)
    hook = uuid4()
    _at_cap(adm, hook, 2)
    assert adm.enqueue(hook, "a") and adm.enqueue(hook, "b")
    adm.limits.update({str(hook): 1.0}, replicas=1)
    adm.limits.take(hook)  # the bucket is empty: nothing may start now
    adm.ended(hook)
    assert adm.next_queued(hook) == (None, ["a", "b"]) and adm.queued() == 0


def test_the_next_probe_is_the_earliest_of_the_failing_webhooks_not_probing() -> None:
    adm, clock = make(cap=4)
    slow, fast = uuid4(), uuid4()
    slow_policy = RetryPolicy(base_delay_seconds=20, max_delay_seconds=60)
    for _ in range(FAILING_AFTER):
        adm.outcome(slow, slow_policy, success=False, counts=True)
        adm.outcome(fast, POLICY, success=False, counts=True)
    assert adm.next_probe_in() == 2.0  # fast's backoff, not slow's 20 s
    clock.now += 3.0
    adm.started(fast, active=True, failing=False)  # fast's probe is out: slow is next
    assert adm.next_probe_in() == 17.0
    clock.now += 30.0
    assert adm.next_probe_in() == 0.0  # overdue: at once, never negative


def test_two_claims_at_once_each_judge_held_back_webhooks_by_the_room_they_were_given() -> None:
    """A due scan and a doorbell's fan-out may run at once (dispatch.py): each statement's
    answer is read against its own room, and while the other still runs, the webhooks
    already held back stay held (an attempt of theirs that ends still asks for a refill)."""
    adm, _ = make(cap=4)
    hot, quiet = uuid4(), uuid4()
    _at_cap(adm, hot, 2)
    scan = adm.claim_params()  # the due scan: hot may take 2 more
    asked_scan = dict(zip(scan["room_ids"], scan["room_left"], strict=True))
    adm.claim_params()  # the fan-out's, sent while the scan runs (overwrites the last one)
    adm.note_held([quiet], {quiet: 4, hot: 2}, keep=True)  # the fan-out: 1 of quiet's 4
    adm.note_held([hot, hot], asked_scan)  # the scan got all it was given for hot
    assert adm.ended(hot), "hot got its whole room: more of it may be due"
    adm.note_held([], asked_scan, keep=True)
    assert adm.ended(hot), "kept while another statement still runs"
    adm.note_held([], asked_scan)
    assert not adm.ended(hot) and not adm.ended(quiet)
