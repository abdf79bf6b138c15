"""bench/drain.py names the daemon's statements from pg_stat_statements' texts (`_name`): the
texts as the server keeps them (comments stripped by the loader, constants shown as $n), and
the two variants of one block (delivery_fan_out and delivery_fan_out_lean, issue 12) told
apart. Runs on a throwaway server of the bench's kind, with pg_stat_statements loaded."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from bench.drain import _name
from bench.infra import BenchCluster
from bench.statement_cpu import fan_out_params
from dispatcher.queries import query

RUN = (
    "delivery_fan_out",
    "delivery_fan_out_lean",
    "delivery_record_outcomes",
    "delivery_record_outcomes_lean",
    "delivery_claim_due",
    "delivery_apply_webhook_counters",
)


def test_pg_stat_statements_texts_map_to_the_names_of_the_statements_run() -> None:
    cluster = BenchCluster()
    if not cluster.has_pg_stat_statements:
        pytest.skip("pg_stat_statements is not installed with this PostgreSQL")
    cluster.start()
    try:
        db = cluster.fresh_database("names")
        dsn = f"host=127.0.0.1 port={cluster.pg.port} user=postgres dbname={db}"
        params: dict[str, Any] = {
            **fan_out_params(batch=10, claim=10),
            "limit": 10,
            "scan": 40,
            "rows": "[]",
        }
        with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            conn.execute("SET pg_stat_statements.track = 'top'")
            conn.execute("SELECT pg_stat_statements_reset()")
            for name in RUN:
                conn.execute(query(name), params).fetchall()
            conn.execute("SET pg_stat_statements.track = 'none'")
            rows = conn.execute(
                "SELECT query FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
    finally:
        cluster.cleanup()
    texts = [r["query"] for r in rows if "pg_stat_statements" not in r["query"]]
    assert any("$" in t for t in texts)  # premise: the server's texts, constants as $n
    assert sorted(_name(t) for t in texts) == sorted(RUN)


def test_a_short_text_is_named_only_by_a_whole_block() -> None:
    """The listener's health check (`SELECT $1`, dispatcher/listener.py) shares its first word
    with many blocks: it keeps its own text rather than an admin query's name."""
    assert _name("SELECT $1") == "SELECT $1"
    assert _name("select 1") == "select 1"
