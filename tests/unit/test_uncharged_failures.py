"""A failure that is ours or the event's never counts toward consecutive_failures."""

from __future__ import annotations

import pytest

from dispatcher.backoff import RetryPolicy
from dispatcher.outcomes import Outcome
from dispatcher.transitions import after_attempt


@pytest.mark.parametrize("outcome", [Outcome.REFUSED, Outcome.RETRYABLE, Outcome.PERMANENT])
@pytest.mark.parametrize("attempt", [1, 4])
def test_uncharged_failures_keep_their_status_but_do_not_count(outcome: Outcome, attempt: int):
    charged, uncharged = (
        after_attempt(
            outcome=outcome,
            attempt=attempt,
            max_attempts=4,
            policy=RetryPolicy(),
            rng=lambda: 0.5,
            charged=charged,
        )
        for charged in (True, False)
    )
    assert charged.counts_as_failure and not uncharged.counts_as_failure
    assert (uncharged.status, uncharged.attempt_number, uncharged.final) == (
        charged.status,
        charged.attempt_number,
        charged.final,
    )
