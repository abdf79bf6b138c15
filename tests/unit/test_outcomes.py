"""Tests for dispatcher.outcomes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.outcomes import Outcome, classify_status


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (0, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (502, Outcome.RETRYABLE),
        (503, Outcome.RETRYABLE),
        (504, Outcome.RETRYABLE),
        (599, Outcome.RETRYABLE),
        (410, Outcome.GONE),
        (100, Outcome.PERMANENT),
        (199, Outcome.PERMANENT),
        (300, Outcome.PERMANENT),
        (301, Outcome.PERMANENT),
        (302, Outcome.PERMANENT),
        (307, Outcome.PERMANENT),
        (308, Outcome.PERMANENT),
        (400, Outcome.PERMANENT),
        (401, Outcome.PERMANENT),
        (403, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (408, Outcome.PERMANENT),
        (409, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (428, Outcome.PERMANENT),
        (430, Outcome.PERMANENT),
        (499, Outcome.PERMANENT),
        (600, Outcome.PERMANENT),
        (999, Outcome.PERMANENT),
        (-1, Outcome.PERMANENT),
    ],
)
def test_classify_status(status: int, expected: Outcome) -> None:
    assert classify_status(status) is expected


def test_outcome_values_are_strings() -> None:
    assert [str(o) for o in Outcome] == [
        "delivered",
        "retryable",
        "permanent",
        "gone",
        "refused",
        "not_active",
    ]
    assert Outcome("gone") is Outcome.GONE


@given(st.integers(-1000, 2000))
def test_classify_matches_rule_by_range(status: int) -> None:
    got = classify_status(status)
    assert got is not Outcome.REFUSED
    if status // 100 == 2 and status >= 0:
        assert got is Outcome.DELIVERED
    elif status in (0, 429) or (status >= 0 and status // 100 == 5):
        assert got is Outcome.RETRYABLE
    elif status == 410:
        assert got is Outcome.GONE
    else:
        assert got is Outcome.PERMANENT
