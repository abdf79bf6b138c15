"""The shared depth's gate (dispatcher/admission.py, "Only for short attempts"): a webhook
with a backlog is held to the shared depth only while its attempts are no slower than
SHORT_RATIO times the quiet webhooks' fastest; a slow endpoint keeps its cap, and one that
turns slow gets it back within LATENCY_WINDOW. Pure: an injectable clock, latencies given
as the dispatch loop gives them (`ended(hook, took)`)."""

from __future__ import annotations

from typing import Any
from uuid import UUID, uuid4

from dispatcher.admission import LATENCY_WINDOW, SHORT_RATIO, Admission
from dispatcher.ratelimit import RateLimits

QUIET_TOOK = 0.004  # a quiet webhook's attempt: what our loop makes it


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(cap: int = 32, shared: int = 8) -> tuple[Admission[Any], Clock]:
    clock = Clock()
    return Admission(cap, RateLimits(clock=clock), clock=clock, shared_depth=shared), clock


def hot_with_backlog(adm: Admission[Any], hook: UUID) -> None:
    """One claim leasing 96 rows: 32 start, 64 queue ahead, the webhook is held."""
    adm.claim_params()
    for i in range(96):
        if adm.can_start(hook):
            adm.started(hook, active=True, failing=False)
        else:
            assert adm.enqueue(hook, i)
    adm.note_held([hook] * 96)


def quiet_event(adm: Admission[Any], hook: UUID, took: float = QUIET_TOOK) -> None:
    """A quiet webhook's claim starts one attempt, which ends after `took`."""
    adm.claim_params()
    adm.started(hook, active=True, failing=False)
    adm.note_held([hook])
    adm.ended(hook, took)


def end(adm: Admission[Any], hook: UUID, took: float) -> int:
    """One attempt of `hook` ended after `took`: how many queued rows started."""
    adm.ended(hook, took)
    n = 0
    row, back = adm.next_queued(hook)
    while row is not None:
        adm.started(hook, active=True, failing=False)
        n += 1
        row, back = adm.next_queued(hook)
    assert back == []  # the depth never hands queued rows back
    return n


def test_a_slow_endpoint_keeps_its_cap_while_others_trickle() -> None:
    """The review's case: a 100 ms endpoint with a backlog, fast quiet webhooks beside it.
    Held to 8 it could deliver ~80/s of the ~320/s its cap allows."""
    adm, clock = make()
    slow, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, slow)
    for _ in range(20):  # 2 s of quiet traffic, one event every 100 ms
        clock.now += 0.1
        quiet_event(adm, quiet)
        assert end(adm, slow, 0.1) == 1  # each end starts the next queued row at once
        assert adm.depth(slow) == 32 and adm.inflight(slow) == 32
    assert adm.room()[slow] == 0  # at its cap, not at the shared depth's room


def test_a_fast_webhook_is_held_while_its_attempts_are_no_slower_than_twice_the_quiet_ones() -> (
    None
):
    adm, _ = make()
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, hot)
    quiet_event(adm, quiet)
    assert adm.depth(hot) == 32  # none of its attempts has ended: not known to be short
    end(adm, hot, SHORT_RATIO * QUIET_TOOK * 1.25)
    assert adm.depth(hot) == 32
    end(adm, hot, SHORT_RATIO * QUIET_TOOK)  # its fastest in the window decides
    assert adm.depth(hot) == 8 and adm.room()[hot] == 0


def test_without_a_quiet_attempt_ended_in_the_window_it_keeps_its_cap() -> None:
    adm, clock = make()
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, hot)
    quiet_event(adm, quiet)
    end(adm, hot, QUIET_TOOK)
    assert adm.depth(hot) == 8
    # the quiet one starts again (the share window goes on) but its attempt has not ended,
    # and the last one that did is older than the window: no reference, no holding
    clock.now += LATENCY_WINDOW
    adm.claim_params()
    adm.started(quiet, active=True, failing=False)
    adm.note_held([quiet])
    end(adm, hot, QUIET_TOOK)
    assert adm.fastest() is None and adm.depth(hot) == 32


def test_a_webhook_that_turns_slow_mid_backlog_gets_its_cap_back_within_the_window() -> None:
    adm, clock = make()
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, hot)
    quiet_event(adm, quiet)
    end(adm, hot, QUIET_TOOK)
    for _ in range(23):  # down to the shared depth (the first end above was one)
        assert end(adm, hot, QUIET_TOOK) == 0
    assert adm.depth(hot) == 8 and adm.inflight(hot) == 8
    # its endpoint now answers in 300 ms; the quiet traffic goes on
    started = 0
    elapsed = 0.0
    while elapsed <= LATENCY_WINDOW + 0.01:
        clock.now += 0.05
        elapsed += 0.05
        quiet_event(adm, quiet)
        started += end(adm, hot, 0.3)
        if adm.depth(hot) == 32:
            break
    assert adm.depth(hot) == 32, "still held a LATENCY_WINDOW after its last fast attempt"
    # the attempt that ended when the gate closed started its queued rows up to the cap
    assert adm.inflight(hot) == 32 and started >= 24


def test_a_fast_webhook_beside_slow_quiet_ones_is_held() -> None:
    """The quiet webhooks' latency is only a reference: a fast hot webhook beside slower
    quiet endpoints is held (its latency is ours), as beside fast ones."""
    adm, _ = make()
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, hot)
    quiet_event(adm, quiet, took=0.25)
    end(adm, hot, 0.01)
    assert adm.depth(hot) == 8


def test_replicas_decide_alone() -> None:
    """Each process compares its own attempts: quiet traffic and short attempts in one
    replica never hold the same webhook's backlog in another."""
    a, _ = make()
    b, _ = make()
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(a, hot)
    hot_with_backlog(b, hot)
    quiet_event(a, quiet)
    end(a, hot, QUIET_TOOK)
    end(b, hot, QUIET_TOOK)
    assert a.depth(hot) == 8 and b.depth(hot) == 32


def test_off_records_nothing() -> None:
    adm, _ = make(shared=0)
    hot, quiet = uuid4(), uuid4()
    hot_with_backlog(adm, hot)
    quiet_event(adm, quiet)
    end(adm, hot, QUIET_TOOK)
    assert adm.fastest(hot) is None and adm.fastest() is None and adm.depth(hot) == 32


def test_webhooks_with_nothing_ended_in_the_window_are_forgotten() -> None:
    """The per-webhook record stays as small as the set of webhooks with a backlog whose
    attempts end, whether or not quiet traffic flows."""
    adm, clock = make()
    hooks = [uuid4() for _ in range(3)]
    for hook in hooks:
        hot_with_backlog(adm, hook)
        end(adm, hook, 0.01)
    assert len(adm._fastest) == 3
    clock.now += LATENCY_WINDOW
    end(adm, hooks[0], 0.01)
    assert set(adm._fastest) == {hooks[0]}
