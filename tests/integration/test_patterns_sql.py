"""The SQL matcher used by fan-out agrees with dispatcher.demo.patterns on any input."""

from __future__ import annotations

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.demo.patterns import matches, matches_any

SEGMENT = st.sampled_from(["job", "created", "recruiting", "failed", "a", "", "*", "x*", "sync"])
NAME = st.lists(SEGMENT, min_size=1, max_size=5).map(".".join)
PAIRS = st.lists(st.tuples(NAME, NAME), min_size=40, max_size=40)

CASES = [
    ("*", "job.created", True),
    ("job.*", "job.created", True),
    ("recruiting.*", "recruiting.job.created", True),
    ("recruiting.*", "recruiting", False),
    ("*.failed", "integration.sync.failed", True),
    ("job.*.failed", "job.sync.failed", True),
    ("job.*.failed", "job.a.b.failed", False),
    ("job.created", "job.created", True),
    ("job*", "job.created", False),
]


def test_known_cases_agree_in_sql(db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as conn:
        for pattern, event_type, expected in CASES:
            row = conn.execute(
                "SELECT dispatcher.pattern_matches(%s, %s)", (pattern, event_type)
            ).fetchone()
            assert row is not None
            assert row[0] is expected, (pattern, event_type)
            assert matches(pattern, event_type) is expected


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pairs=PAIRS)
def test_sql_and_python_matchers_agree(db_dsn: str, pairs: list[tuple[str, str]]) -> None:
    with psycopg.connect(db_dsn) as conn:
        rows = conn.execute(
            "SELECT p, t, dispatcher.pattern_matches(p, t) FROM unnest(%s::text[], %s::text[]) "
            "AS x(p, t)",
            ([p for p, _ in pairs], [t for _, t in pairs]),
        ).fetchall()
    for pattern, event_type, in_sql in rows:
        assert in_sql is matches(pattern, event_type), (pattern, event_type)


PATTERN_LISTS = st.lists(st.lists(NAME, max_size=4), min_size=20, max_size=20)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(lists=PATTERN_LISTS, event_type=NAME)
def test_sql_matches_any_is_any_of_the_patterns(
    db_dsn: str, lists: list[list[str]], event_type: str
) -> None:
    """The fan-out's webhook filter (0041: PL/pgSQL) answers as the Python one, empty lists too."""
    with psycopg.connect(db_dsn) as conn:
        for patterns in lists:
            row = conn.execute(
                "SELECT dispatcher.matches_any(%s::text[], %s)", (patterns, event_type)
            ).fetchone()
            assert row is not None
            assert row[0] is matches_any(patterns, event_type), (patterns, event_type)


def test_sql_matches_any_edge_values(db_dsn: str) -> None:
    """NULL patterns, NULL elements and a NULL event type match nothing, never raise."""
    with psycopg.connect(db_dsn) as conn:
        for patterns, event_type, expected in [
            (None, "job.created", False),
            ([], "job.created", False),
            ([None, "job.created"], "job.created", True),
            ([None], "job.created", False),
            (["*"], None, False),
            (["job.created", "recruiting.*"], "recruiting.job.created", True),
        ]:
            row = conn.execute(
                "SELECT coalesce(dispatcher.matches_any(%s::text[], %s), false)",
                (patterns, event_type),
            ).fetchone()
            assert row is not None
            assert row[0] is expected, (patterns, event_type)
