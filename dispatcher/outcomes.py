"""Classification of a delivery attempt's result (docs/host-contract.md, "Retry policy").

Success is any 2xx. Retryable: network error or timeout (recorded as status 0), 429 and 5xx.
410 Gone is its own outcome (the receiver says the endpoint is gone for good). Every other status
(1xx, 3xx redirects, other 4xx, anything outside 100-599) is final at once. REFUSED is for a request
the dispatcher never sent (SSRF guard, invalid URL, body too large, invalid webhook config), and
NOT_ACTIVE for a delivery whose webhook is switched off or deleted (nothing is sent, the row fails
with transitions.NOT_ACTIVE's text); both are decided by the caller, never by ``classify_status``.

Pure functions, no I/O.
"""

from __future__ import annotations

import enum

__all__ = ["Outcome", "classify_status"]


class Outcome(enum.StrEnum):
    """What an attempt's result means for the delivery."""

    DELIVERED = "delivered"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    GONE = "gone"
    REFUSED = "refused"
    NOT_ACTIVE = "not_active"


def classify_status(status: int) -> Outcome:
    """Classify an HTTP status (0 = network error or timeout) into an Outcome."""
    if 200 <= status <= 299:
        return Outcome.DELIVERED
    if status == 0 or status == 429 or 500 <= status <= 599:
        return Outcome.RETRYABLE
    if status == 410:
        return Outcome.GONE
    return Outcome.PERMANENT
