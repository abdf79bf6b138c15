"""Tests for dispatcher.demo.patterns: a case table and a property test against a regex
reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dispatcher.demo.patterns import matches, matches_any

CASES: list[tuple[str, str, bool]] = [
    # "*" alone
    ("*", "job.created", True),
    ("*", "system.job.daily_digest.completed", True),
    ("*", "x", True),
    # exact names
    ("job.created", "job.created", True),
    ("job.created", "job.updated", False),
    ("job.created", "job.created.extra", False),
    ("job.created", "Job.created", False),
    ("Job.Created", "job.created", False),
    # prefix.*
    ("recruiting.*", "recruiting.job.created", True),
    ("recruiting.*", "recruiting.x", True),
    ("recruiting.*", "recruiting", False),
    ("recruiting.*", "recruiting.", False),
    ("recruiting.*", "recruitingx.job", False),
    ("recruiting.*", "other.recruiting.job", False),
    ("recruiting.*", "Recruiting.job", False),
    ("candidate.sla_breach.*", "candidate.sla_breach.first_contact", True),
    ("candidate.sla_breach.*", "candidate.sla_breach", False),
    # *.suffix
    ("*.failed", "job.failed", True),
    ("*.failed", "system.job.sync.failed", True),
    ("*.failed", "failed", False),
    ("*.failed", ".failed", False),
    ("*.failed", "job.failedx", False),
    ("*.failed", "job.notfailed", False),
    ("*.sync.failed", "integration.sync.failed", True),
    ("*.sync.failed", "a.b.sync.failed", True),
    ("*.sync.failed", "sync.failed", False),
    ("*.daily_digest.completed", "system.job.daily_digest.completed", True),
    # middle wildcards
    ("job.*.failed", "job.sync.failed", True),
    ("job.*.failed", "job.failed", False),
    ("job.*.failed", "job.a.b.failed", False),
    ("job.*.failed", "job..failed", False),
    ("job.*.failed", "job.sync.failedx", False),
    ("a.*.*.d", "a.b.c.d", True),
    ("a.*.*.d", "a.b.d", False),
    ("a.*.*.d", "a.b.c.e.d", False),
    ("a.*.c.*.e", "a.b.c.d.e", True),
    ("a.*.c.*.e", "a.b.x.d.e", False),
    # anything else is an exact name
    ("job*", "job.created", False),
    ("job*", "jobs", False),
    ("job*", "job*", True),
    ("jo*b.x", "jo*b.x", True),
    ("jo*b.x", "joab.x", False),
    ("*.*", "a.b", False),
    ("*.*", "*.*", True),
    ("job.*.*", "job.a.b", False),
    ("job.*.*", "job.*.*", True),
    ("*.job.*", "a.job.b", False),
    ("a.b*.c", "a.bx.c", False),
    ("**", "anything", False),
    ("", "job.created", False),
    ("", "", True),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), CASES)
def test_case_table(pattern: str, event_type: str, expected: bool) -> None:
    assert matches(pattern, event_type) is expected


def test_matches_any() -> None:
    assert matches_any(["job.created", "candidate.*"], "candidate.hired") is True
    assert matches_any(["job.created", "candidate.*"], "job.updated") is False
    assert matches_any([], "job.created") is False
    assert matches_any(iter(["x", "*"]), "job.created") is True


def reference(pattern: str, event_type: str) -> bool:
    """Independent regex translation of the rules (classification by regex, not string ops)."""
    if pattern == "*":
        regex = r".*"
    elif re.fullmatch(r"[^*]*\.\*", pattern, re.DOTALL):
        regex = re.escape(pattern[:-2]) + r"\..+"
    elif re.fullmatch(r"\*\.[^*]*", pattern, re.DOTALL):
        regex = r".+\." + re.escape(pattern[2:])
    elif re.fullmatch(r"[^*.]*(\.(\*|[^*.]*))*\.\*(\.(\*|[^*.]*))*\.[^*.]*", pattern, re.DOTALL):
        regex = r"\.".join("[^.]+" if seg == "*" else re.escape(seg) for seg in pattern.split("."))
    else:
        return pattern == event_type
    return re.fullmatch(regex, event_type, re.DOTALL) is not None


SEGMENT = st.sampled_from(["a", "b", "ab", "job", "", "x_y"])
PATTERN_SEGMENT = st.sampled_from(["a", "b", "ab", "job", "", "*", "a*", "*b"])
EVENTS = st.lists(SEGMENT, min_size=1, max_size=5).map(".".join)
PATTERNS = st.lists(PATTERN_SEGMENT, min_size=1, max_size=5).map(".".join)


@given(PATTERNS, EVENTS)
def test_matches_reference(pattern: str, event_type: str) -> None:
    assert matches(pattern, event_type) == reference(pattern, event_type)


@given(EVENTS)
def test_event_name_matches_itself(event_type: str) -> None:
    assert matches(event_type, event_type)


@given(st.text(), st.text())
def test_arbitrary_text_reference(pattern: str, event_type: str) -> None:
    assert matches(pattern, event_type) == reference(pattern, event_type)
