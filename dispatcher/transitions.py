"""The state machine of a delivery: what one attempt's result does to its row.

    pending ──attempt──▶ success                 (2xx)
       │                 retrying ──attempt──▶ … (0/429/5xx, attempts left)
       │                 dlq | failed            (retryable, exhausted: dlq if the org keeps one)
       │                 failed                  (other status, 410, refused before sending)
       │   (a failure that is ours or the event's, not the endpoint's, is not counted)
       └─ webhook not active ──▶ failed 'Webhook is not active' (not sent, not counted)

Pure: the caller supplies the policy, the result and a random source.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from dispatcher.backoff import RetryPolicy, retry_delay
from dispatcher.outcomes import Outcome

NOT_ACTIVE = "Webhook is not active"  # error_message of Outcome.NOT_ACTIVE (0038: not_active_v1)

# The delivery row's status after an attempt (the host's column holds these among others).
Status = Literal["success", "retrying", "dlq", "failed"]


@dataclass(frozen=True, slots=True)
class Transition:
    status: Status
    attempt_number: int  # stored: the next attempt while retrying, else the one made
    retry_in: float | None  # seconds until next_retry_at, when retrying
    final: bool  # sets delivered_at
    counts_as_failure: bool  # adds to webhooks.consecutive_failures
    success: bool
    gone: bool  # 410: disable the webhook


@functools.lru_cache(maxsize=64)
def _delivered(attempt: int) -> Transition:
    """Made once per attempt number: nearly every attempt ends here."""
    return Transition("success", attempt, None, True, False, True, False)


def not_active(attempt: int) -> Transition:
    """The webhook is not active: nothing was sent, the delivery fails, not counted."""
    return Transition("failed", attempt, None, True, False, False, False)


def after_attempt(
    *,
    outcome: Outcome,
    attempt: int,
    max_attempts: int,
    policy: RetryPolicy,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
    charged: bool = True,
) -> Transition:
    """Where a delivery goes after attempt number `attempt` ended with `outcome`.

    ``charged=False``: the failure is ours or the event's, not the endpoint's (body too
    large, cannot sign, URL refused by our own validation): it does not add to
    consecutive_failures.
    """
    if outcome is Outcome.DELIVERED:
        return _delivered(attempt)
    if outcome is Outcome.NOT_ACTIVE:
        return not_active(attempt)
    if outcome is Outcome.RETRYABLE:
        if attempt < max_attempts:
            delay = retry_delay(policy, attempt, rng=rng, retry_after=retry_after)
            return Transition("retrying", attempt + 1, delay, False, charged, False, False)
        status: Status = "dlq" if policy.enable_dlq else "failed"
        return Transition(status, attempt, None, True, charged, False, False)
    return Transition("failed", attempt, None, True, charged, False, outcome is Outcome.GONE)
