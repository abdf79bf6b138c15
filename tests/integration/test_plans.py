"""The outcome statement reaches delivery rows by primary key in every plan (issue 12).

psycopg prepares a statement after five runs, and PostgreSQL may then keep a generic plan
for it, made once from the statistics of that moment and kept while the table grows. Made
while ``webhook_deliveries`` looked small, the generic plan of delivery_record_outcomes read
every pending row through the partial index dispatcher_deliveries_due_since (a bitmap heap
scan and a hash join) to lock a few dozen outcomes' rows: ~80 shared buffers per delivery
instead of ~24 in a one-webhook drain (docs/performance.md, "the outcome statement's plan").
These tests build that situation (statistics of an empty table, then a backlog) and read
the plans, generic and custom, from EXPLAIN: deterministic, no timing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import hostdb
import orjson
import pytest
from psycopg import sql

from dispatcher.queries import query

BACKLOG = 3000
OUTCOMES = 44


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, executed or not."""
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(nodes(child))
    return out


def numbered(text: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s placeholders as $1, $2... for PREPARE; the names in order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text), names


async def backlog_with_stale_statistics(conn: hostdb.Conn) -> list[dict[str, Any]]:
    """One webhook; statistics taken while webhook_deliveries was empty (as after a bench's
    or a host's ANALYZE before the backlog), then BACKLOG pending rows of which OUTCOMES are
    leased. Autovacuum off for the table, so the statistics stay as they are."""
    await conn.execute("ALTER TABLE webhook_deliveries SET (autovacuum_enabled = false)")
    await conn.execute("ANALYZE webhook_deliveries")
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, created_at)"
        " SELECT %s, %s, 'job.created', '{}', 'https://example.com/hook', '{}',"
        "        repeat('x', 900), 'pending', now() - make_interval(secs => g)"
        " FROM generate_series(1, %s) g",
        (org, hook["id"], BACKLOG),
    )
    cur = await conn.execute(
        "UPDATE webhook_deliveries SET next_retry_at = now() + interval '30 seconds'"
        " WHERE id IN (SELECT id FROM webhook_deliveries ORDER BY created_at LIMIT %s)"
        " RETURNING id, org_id, webhook_id, next_retry_at",
        (OUTCOMES,),
    )
    return list(await cur.fetchall())


def outcomes(rows: list[dict[str, Any]]) -> str:
    now = datetime.now(UTC).isoformat()
    return orjson.dumps(
        [
            {
                "id": str(r["id"]),
                "webhook_id": str(r["webhook_id"]),
                "org_id": str(r["org_id"]),
                "claim": r["next_retry_at"].isoformat(),
                "seq": i,
                "status": "success",
                "outcome": "delivered",
                "attempt": 1,
                "attempt_number": 1,
                "retry_in": None,
                "final": True,
                "counts": False,
                "success": True,
                "gone": False,
                "response_status": 204,
                "duration_ms": 1,
                "started_at": now,
                "ended_at": now,
            }
            for i, r in enumerate(rows)
        ]
    ).decode()


@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
async def test_outcome_rows_are_reached_only_by_primary_key(
    request: pytest.FixtureRequest, database: str, mode: str
) -> None:
    """On the standalone schema and on the host's (its own indexes on status and
    next_retry_at), generic and custom: every node of delivery_record_outcomes' plan that
    reads webhook_deliveries is a primary-key probe, and the outcomes are recorded."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        leased = await backlog_with_stale_statistics(conn)
        text, names = numbered(str(query("delivery_record_outcomes")))
        assert names == ["rows"]
        rows = outcomes(leased)
        await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        await conn.execute(sql.SQL("PREPARE record AS {}").format(sql.SQL(text)))
        execute = sql.SQL("EXECUTE record({})").format(sql.Literal(rows))
        cur = await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(execute))
        got = await cur.fetchone()
        assert got is not None
        plan = got["QUERY PLAN"][0]["Plan"]
        reads = [
            (n["Node Type"], n.get("Index Name"), n.get("Index Cond"))
            for n in nodes(plan)
            if n.get("Relation Name") == "webhook_deliveries" and n["Node Type"] != "ModifyTable"
        ]
        assert reads, plan
        for node_type, index, cond in reads:
            assert node_type == "Index Scan" and index == "webhook_deliveries_pkey", reads
            assert cond is not None and re.fullmatch(r"\(id = [\w.]+\)", cond), reads
        bitmaps = [n for n in nodes(plan) if n["Node Type"].startswith("Bitmap")]
        assert not [n for n in bitmaps if "deliveries" in str(n.get("Index Name"))], bitmaps
        # and the statement so planned still does its work
        cur = await conn.execute(execute)
        done = await cur.fetchone()
        assert done is not None
        assert (done["recorded"], done["busy"], done["lost"]) == (OUTCOMES, [], [])
        cur = await conn.execute(
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'"
        )
        assert (await cur.fetchone() or {})["n"] == OUTCOMES
    finally:
        await conn.close()
