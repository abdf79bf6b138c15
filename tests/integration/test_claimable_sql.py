"""The database's half of admission (0022: dispatcher.webhook_claimable_v1, probe_delay_v1)
agrees with dispatcher/admission.py: one schedule for probing a failing webhook."""

from __future__ import annotations

import itertools

import psycopg

from dispatcher.admission import FAILING_AFTER, probe_delay
from dispatcher.backoff import RetryPolicy


def test_the_probe_schedule_is_the_same_in_sql_and_python(db_dsn: str) -> None:
    grid = list(itertools.product([0, 1, 2, 3, 4, 7, 12, 40], [1, 5, 60], [1, 30, 300, 3600]))
    with psycopg.connect(db_dsn) as conn:
        for streak, base, top in grid:
            row = conn.execute(
                "SELECT dispatcher.probe_delay_v1(%s, %s, %s, %s)",
                (streak, base, top, FAILING_AFTER),
            ).fetchone()
            assert row is not None
            policy = RetryPolicy(base_delay_seconds=base, max_delay_seconds=top)
            assert row[0] == probe_delay(policy, streak), (streak, base, top)
        # no retry configuration: the defaults, as RetryPolicy() has them
        row = conn.execute(
            "SELECT dispatcher.probe_delay_v1(5, NULL, NULL, %s)", (FAILING_AFTER,)
        ).fetchone()
        assert row is not None and row[0] == probe_delay(RetryPolicy(), 5)


def test_which_webhooks_the_database_lets_claims_take(db_dsn: str) -> None:
    cases = [
        # status, deleted, streak, seconds since the last failure, claimable
        ("active", False, 0, None, True),
        ("active", False, FAILING_AFTER - 1, 0, True),
        ("active", False, FAILING_AFTER, None, True),
        ("active", False, FAILING_AFTER, 1, False),  # base 5 s: not yet
        ("active", False, FAILING_AFTER, 6, True),
        ("active", False, FAILING_AFTER + 1, 6, False),  # 10 s now
        ("active", True, FAILING_AFTER, 0, True),  # soft-deleted: recorded, not sent
        ("disabled", False, 10, 0, True),  # not active: recorded, not sent
    ]
    with psycopg.connect(db_dsn) as conn:
        for status, deleted, streak, ago, expected in cases:
            row = conn.execute(
                "SELECT dispatcher.webhook_claimable_v1(%s, CASE WHEN %s THEN now() END, %s,"
                " now() - make_interval(secs => %s), NULL, NULL, %s)",
                (status, deleted, streak, ago, FAILING_AFTER),
            ).fetchone()
            assert row is not None and row[0] is expected, (status, deleted, streak, ago)
