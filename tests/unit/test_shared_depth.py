"""Shared depth: a webhook with a backlog yields depth to webhooks without one while they
have work (dispatcher/admission.py). Driven as the dispatch loop drives Admission: a claim's
rows start while can_start(), the rest queue ahead, then note_held(); an ended attempt
starts queued rows while next_queued() gives them."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from dispatcher.admission import SHARE_WINDOW, Admission
from dispatcher.ratelimit import RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(cap: int = 32, shared: int = 8) -> tuple[Admission[Any], Clock]:
    clock = Clock()
    return Admission(cap, RateLimits(clock=clock), clock=clock, shared_depth=shared), clock


def claim(adm: Admission[Any], hook: UUID, rows: int) -> tuple[int, int]:
    """One claim statement leasing `rows` rows of `hook`: (started, queued); the rest
    would be released."""
    adm.claim_params()
    started = queued = 0
    for i in range(rows):
        if adm.can_start(hook):
            adm.started(hook, active=True, failing=False)
            started += 1
        elif adm.enqueue(hook, (hook, i)):
            queued += 1
    adm.note_held([hook] * rows)
    return started, queued


def end(adm: Admission[Any], hook: UUID) -> tuple[int, list[Any]]:
    """One attempt of `hook` ended: (queued rows started, rows handed back)."""
    adm.ended(hook)
    n = 0
    row, back = adm.next_queued(hook)
    while row is not None:
        adm.started(hook, active=True, failing=False)
        n += 1
        row, back = adm.next_queued(hook)
    return n, back


def test_a_held_webhook_alone_keeps_its_cap() -> None:
    adm, clock = make()
    hot = uuid4()
    assert claim(adm, hot, 96) == (32, 64)
    assert adm.depth(hot) == 32 and adm.inflight(hot) == 32
    clock.now += 0.1
    # its own earlier starts never count as someone else's quiet traffic
    assert end(adm, hot) == (1, [])
    assert adm.inflight(hot) == 32 and adm.room_of(hot) == 0


def test_a_quiet_webhooks_recent_start_holds_the_backlogged_one_to_the_shared_depth() -> None:
    adm, _ = make()
    hot, quiet = uuid4(), uuid4()
    claim(adm, hot, 96)
    assert claim(adm, quiet, 1) == (1, 0)  # the quiet one starts: others share now
    assert adm.depth(hot) == 8
    assert adm.room()[hot] == 0 and adm.room_of(hot) == 0
    # its 32 in flight end one by one: nothing starts until it is under 8, and no queued
    # row is handed back meanwhile
    for _ in range(24):
        assert end(adm, hot) == (0, [])
    assert adm.inflight(hot) == 8 and adm.queued(hot) == 64
    assert end(adm, hot) == (1, [])  # under the shared depth: the next queued row starts
    assert adm.inflight(hot) == 8
    # a claim while it shares: its queue refills, nothing beyond the shared depth starts
    assert adm.claim_room()[hot] == 1  # the one queued row that started
    assert claim(adm, hot, 1) == (0, 1)
    assert adm.inflight(hot) == 8 and adm.queued(hot) == 64


def test_after_the_window_the_backlogged_webhook_gets_its_cap_back() -> None:
    adm, clock = make()
    hot, quiet = uuid4(), uuid4()
    claim(adm, hot, 96)
    claim(adm, quiet, 1)
    for _ in range(24):
        end(adm, hot)
    assert adm.depth(hot) == 8
    clock.now += SHARE_WINDOW / 2
    assert adm.depth(hot) == 8
    clock.now += SHARE_WINDOW / 2
    assert adm.depth(hot) == 32
    # the next attempt to end starts as many queued rows as its cap allows
    assert end(adm, hot) == (25, [])
    assert adm.inflight(hot) == 32 and adm.queued(hot) == 64 - 25


def test_a_quiet_webhook_is_never_limited() -> None:
    adm, _ = make(cap=32, shared=2)
    hot, quiet, other = uuid4(), uuid4(), uuid4()
    claim(adm, hot, 96)
    claim(adm, other, 1)
    # a webhook without a backlog here gets its cap, however many others are quiet
    assert claim(adm, quiet, 5) == (5, 0)
    assert adm.depth(quiet) == 32 and adm.room_of(quiet) == 27 and adm.room()[quiet] == 27
    assert adm.depth(hot) == 2


def test_every_webhook_with_a_backlog_keeps_its_cap() -> None:
    """The 16-webhook drain and fan-out: nobody is quiet, nobody shares."""
    adm, _ = make()
    hooks = [uuid4() for _ in range(4)]
    for hook in hooks:
        assert claim(adm, hook, 96) == (32, 64)
    assert all(adm.depth(h) == 32 for h in hooks)
    assert all(end(adm, h) == (1, []) for h in hooks)
    # one not held back (it got less than its room), but busy beyond the shared depth, as
    # when the global concurrency spreads a drain over many webhooks: not quiet either
    busy = uuid4()
    assert claim(adm, busy, 20) == (20, 0)
    assert adm.depth(busy) == 32 and all(adm.depth(h) == 32 for h in hooks)


def test_zero_turns_it_off_and_it_is_never_above_the_cap() -> None:
    for shared, cap in ((0, 32), (32, 32), (64, 32)):
        adm, _ = make(cap=cap, shared=shared)
        hot, quiet = uuid4(), uuid4()
        claim(adm, hot, 96)
        claim(adm, quiet, 1)
        assert adm.shared_depth == 0 and adm.depth(hot) == cap
        assert end(adm, hot) == (1, [])
    assert Admission(4, RateLimits(), shared_depth=2).shared_depth == 2


def test_a_claim_while_it_shares_leases_ahead_and_holds_it() -> None:
    """A backlogged webhook with nothing in flight (its attempts ended, the queue ran dry)
    is listed with the shared depth's room, and a claim that gives it that is held."""
    adm, _ = make(cap=32, shared=8)
    hot, quiet = uuid4(), uuid4()
    claim(adm, hot, 32)  # all it was given: held, nothing queued
    claim(adm, quiet, 1)
    assert adm.depth(hot) == 8 and adm.room()[hot] == 0
    for _ in range(32):
        end(adm, hot)
    assert adm.room()[hot] == 8 and adm.claim_room()[hot] == 8 + 64
    assert claim(adm, hot, 72) == (8, 64)
    assert adm.depth(hot) == 8


class SteppingClock(Clock):
    """A clock that moves on by `step` at every reading: the window can end between two
    readings of one call."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0.0

    def __call__(self) -> float:
        now = self.now
        self.now += self.step
        return now


def test_the_window_ending_inside_next_queued_hands_nothing_back() -> None:
    clock = SteppingClock()
    adm: Admission[Any] = Admission(32, RateLimits(clock=clock), clock=clock, shared_depth=8)
    hot, quiet = uuid4(), uuid4()
    assert claim(adm, hot, 96) == (32, 64)
    claim(adm, quiet, 1)  # at clock 100: the hot one shares until 100 + SHARE_WINDOW
    # one of its 32 ends just before the window does, and the clock moves on 10 ms at each
    # reading inside next_queued: read more than once, the depth says 8 ("no room") and
    # then 32 ("under its depth": no end of an attempt would start them), and the whole
    # queue was handed back
    clock.now = 100.0 + SHARE_WINDOW - 0.015
    clock.step = 0.01
    adm.ended(hot)
    row, back = adm.next_queued(hot)
    assert back == []
    assert adm.queued(hot) + (row is not None) == 64
