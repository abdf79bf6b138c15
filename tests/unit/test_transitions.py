"""The delivery state machine (dispatcher/transitions.py): every transition, table-driven.

One row per (outcome, attempt, policy) case: where the delivery goes, which attempt number
the row stores, whether it is final, whether it counts toward consecutive_failures and
whether it disables the webhook (410).
"""

from __future__ import annotations

import pytest

from dispatcher.backoff import RetryPolicy, retry_delay
from dispatcher.outcomes import Outcome
from dispatcher.transitions import NOT_ACTIVE, Transition, after_attempt, not_active

MAX = 4  # attempts: the first plus three retries
DLQ = RetryPolicy(max_retries=MAX - 1, base_delay_seconds=5, enable_jitter=False)
NO_DLQ = RetryPolicy(
    max_retries=MAX - 1, base_delay_seconds=5, enable_jitter=False, enable_dlq=False
)

# (outcome, attempt, policy) -> (status, stored attempt, final, counted, success, gone)
CASES: list[tuple[Outcome, int, RetryPolicy, tuple[str, int, bool, bool, bool, bool]]] = [
    # 2xx: success on any attempt, the last one included; never a failure
    (Outcome.DELIVERED, 1, DLQ, ("success", 1, True, False, True, False)),
    (Outcome.DELIVERED, MAX, DLQ, ("success", MAX, True, False, True, False)),
    (Outcome.DELIVERED, MAX, NO_DLQ, ("success", MAX, True, False, True, False)),
    # 0/429/5xx with attempts left: retrying, the row stores the NEXT attempt's number
    (Outcome.RETRYABLE, 1, DLQ, ("retrying", 2, False, True, False, False)),
    (Outcome.RETRYABLE, MAX - 1, DLQ, ("retrying", MAX, False, True, False, False)),
    (Outcome.RETRYABLE, 1, NO_DLQ, ("retrying", 2, False, True, False, False)),
    # the last attempt: dlq when the org keeps one, else failed; the attempt made is kept
    (Outcome.RETRYABLE, MAX, DLQ, ("dlq", MAX, True, True, False, False)),
    (Outcome.RETRYABLE, MAX, NO_DLQ, ("failed", MAX, True, True, False, False)),
    # past the last attempt (max_attempts lowered while a row was retrying): exhausted too
    (Outcome.RETRYABLE, MAX + 2, DLQ, ("dlq", MAX + 2, True, True, False, False)),
    # other 4xx: failed at once, whatever attempts are left, never to the DLQ
    (Outcome.PERMANENT, 1, DLQ, ("failed", 1, True, True, False, False)),
    (Outcome.PERMANENT, MAX, DLQ, ("failed", MAX, True, True, False, False)),
    # 410: failed at once and the webhook is disabled
    (Outcome.GONE, 1, DLQ, ("failed", 1, True, True, False, True)),
    (Outcome.GONE, MAX, NO_DLQ, ("failed", MAX, True, True, False, True)),
    # refused before sending (SSRF guard, bad URL): failed at once, not gone
    (Outcome.REFUSED, 1, DLQ, ("failed", 1, True, True, False, False)),
    (Outcome.REFUSED, MAX, DLQ, ("failed", MAX, True, True, False, False)),
    # the webhook is not active: nothing sent, failed at once, never counted (not_active)
    (Outcome.NOT_ACTIVE, 1, DLQ, ("failed", 1, True, False, False, False)),
    (Outcome.NOT_ACTIVE, MAX, NO_DLQ, ("failed", MAX, True, False, False, False)),
]


def _fields(t: Transition) -> tuple[str, int, bool, bool, bool, bool]:
    return (t.status, t.attempt_number, t.final, t.counts_as_failure, t.success, t.gone)


@pytest.mark.parametrize(("outcome", "attempt", "policy", "expected"), CASES)
def test_where_an_attempt_leaves_its_delivery(
    outcome: Outcome,
    attempt: int,
    policy: RetryPolicy,
    expected: tuple[str, int, bool, bool, bool, bool],
) -> None:
    t = after_attempt(outcome=outcome, attempt=attempt, max_attempts=MAX, policy=policy)
    assert _fields(t) == expected
    # only a retry waits; a final row has no next_retry_at
    assert (t.retry_in is not None) == (t.status == "retrying")
    assert t.final == (t.status != "retrying")


def test_every_outcome_has_a_row_in_the_table() -> None:
    assert {outcome for outcome, *_ in CASES} == set(Outcome)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_a_retry_waits_the_policys_delay_for_the_attempt_just_made(attempt: int) -> None:
    t = after_attempt(
        outcome=Outcome.RETRYABLE, attempt=attempt, max_attempts=MAX, policy=DLQ, rng=lambda: 0.0
    )
    assert t.retry_in == retry_delay(DLQ, attempt) == 5 * 2 ** (attempt - 1)


@pytest.mark.parametrize(("r", "expected"), [(0.0, 8.0), (0.5, 10.0)])
def test_the_jitter_comes_from_the_random_source_given(r: float, expected: float) -> None:
    jittered = RetryPolicy(base_delay_seconds=10, enable_jitter=True)
    t = after_attempt(
        outcome=Outcome.RETRYABLE, attempt=1, max_attempts=MAX, policy=jittered, rng=lambda: r
    )
    assert t.retry_in == expected


@pytest.mark.parametrize(("retry_after", "expected"), [(42.0, 42.0), (0.0, 0.0), (10_000.0, 300.0)])
def test_retry_after_replaces_the_schedule_capped_by_the_max_delay(
    retry_after: float, expected: float
) -> None:
    t = after_attempt(
        outcome=Outcome.RETRYABLE,
        attempt=1,
        max_attempts=MAX,
        policy=DLQ,
        retry_after=retry_after,
        rng=lambda: 0.99,
    )
    assert (t.status, t.retry_in) == ("retrying", expected)


def test_retry_after_on_the_last_attempt_does_not_buy_another() -> None:
    t = after_attempt(
        outcome=Outcome.RETRYABLE, attempt=MAX, max_attempts=MAX, policy=DLQ, retry_after=1.0
    )
    assert (t.status, t.retry_in, t.final) == ("dlq", None, True)


@pytest.mark.parametrize(("outcome", "attempt", "policy", "expected"), CASES)
def test_an_uncharged_failure_goes_the_same_way_without_counting(
    outcome: Outcome,
    attempt: int,
    policy: RetryPolicy,
    expected: tuple[str, int, bool, bool, bool, bool],
) -> None:
    t = after_attempt(
        outcome=outcome, attempt=attempt, max_attempts=MAX, policy=policy, charged=False
    )
    status, stored, final, _counted, success, gone = expected
    assert _fields(t) == (status, stored, final, False, success, gone)


def test_a_single_attempt_policy_goes_straight_to_the_dlq() -> None:
    one = RetryPolicy(max_retries=1)
    t = after_attempt(outcome=Outcome.RETRYABLE, attempt=1, max_attempts=1, policy=one)
    assert _fields(t) == ("dlq", 1, True, True, False, False)


@pytest.mark.parametrize("attempt", [1, 3])
def test_a_webhook_not_active_fails_the_row_unsent_and_uncounted(attempt: int) -> None:
    t = not_active(attempt)
    assert _fields(t) == ("failed", attempt, True, False, False, False)
    assert t.retry_in is None
    assert NOT_ACTIVE == "Webhook is not active"  # the text the host's UI shows
