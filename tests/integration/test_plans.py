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
import pytest
from psycopg import sql

from dispatcher.queries import query
from dispatcher.recorder import OutcomeRow, outcomes_json

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


async def backlog_with_stale_statistics(
    conn: hostdb.Conn, rows: int = BACKLOG
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One webhook; statistics taken while webhook_deliveries was empty (as after a bench's
    or a host's ANALYZE before the backlog), then `rows` pending rows of which OUTCOMES are
    leased. Autovacuum off for the table, so the statistics stay as they are."""
    await conn.execute("ALTER TABLE webhook_deliveries SET (autovacuum_enabled = false)")
    await conn.execute("ANALYZE webhook_deliveries")
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
    hook["org_id"] = org
    await more_pending(conn, hook, rows)
    cur = await conn.execute(
        "UPDATE webhook_deliveries SET next_retry_at = now() + interval '30 seconds'"
        " WHERE id IN (SELECT id FROM webhook_deliveries ORDER BY created_at LIMIT %s)"
        " RETURNING id, org_id, webhook_id, next_retry_at",
        (OUTCOMES,),
    )
    return hook, list(await cur.fetchall())


async def more_pending(conn: hostdb.Conn, hook: dict[str, Any], rows: int) -> None:
    """`rows` more pending deliveries of `hook`, each with a ~1 KB body, due now."""
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, created_at)"
        " SELECT %s, %s, 'job.created', '{}', 'https://example.com/hook', '{}',"
        "        repeat('x', 900), 'pending', now() - make_interval(secs => g)"
        " FROM generate_series(1, %s) g",
        (hook["org_id"], hook["id"], rows),
    )


def outcomes(rows: list[dict[str, Any]]) -> str:
    """First attempts answered 204, as the recorder writes them (its own OutcomeRow JSON)."""
    now = datetime.now(UTC)
    return outcomes_json(
        [
            OutcomeRow(
                id=r["id"],
                webhook_id=r["webhook_id"],
                org_id=r["org_id"],
                claim=r["next_retry_at"],
                status="success",
                outcome="delivered",
                attempt=1,
                attempt_number=1,
                retry_in=None,
                final=True,
                counts=False,
                success=True,
                gone=False,
                response_status=204,
                duration_ms=1,
                started_at=now,
                ended_at=now,
                seq=i,
            )
            for i, r in enumerate(rows)
        ]
    )


DELIVERY_INDEXES = re.compile(r"webhook_deliveries|dispatcher_deliveries_|idx_webhook_deliveries")


def primary_key_only(plan: dict[str, Any]) -> None:
    """Every node of `plan` that reads webhook_deliveries is a primary-key probe: an index
    scan of its primary key, or a bitmap heap scan fed only by bitmap scans of it, on `id`."""
    reads = [
        n
        for n in nodes(plan)
        if n.get("Relation Name") == "webhook_deliveries" and n["Node Type"] != "ModifyTable"
    ]
    assert reads, plan
    for n in reads:
        if n["Node Type"] == "Bitmap Heap Scan":
            feeding = [b for b in nodes(n) if b["Node Type"] == "Bitmap Index Scan"]
            assert feeding, n
            probes = [(b["Index Name"], b["Index Cond"]) for b in feeding]
        else:
            probes = [(n.get("Index Name"), n.get("Index Cond"))]
            assert n["Node Type"] == "Index Scan", (n["Node Type"], n.get("Filter"))
        for index, cond in probes:
            assert index == "webhook_deliveries_pkey", probes
            assert str(cond).startswith(("(id = ", "((id = ")), probes
    other = [
        (n["Node Type"], n.get("Index Name"))
        for n in nodes(plan)
        if DELIVERY_INDEXES.match(str(n.get("Index Name")))
        and n["Index Name"] != "webhook_deliveries_pkey"
    ]
    assert not other, other


@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize(
    ("mode", "first"),
    [("force_generic_plan", BACKLOG), ("force_generic_plan", 150), ("force_custom_plan", BACKLOG)],
)
async def test_outcome_rows_are_reached_only_by_primary_key(
    request: pytest.FixtureRequest, database: str, mode: str, first: int
) -> None:
    """On the standalone schema and on the host's (its own indexes on status and
    next_retry_at), generic and custom: every node of delivery_record_outcomes' plan that
    reads webhook_deliveries is a primary-key probe, and the outcomes are recorded. With
    `first` < BACKLOG the generic plan is made while the table holds `first` rows and kept
    while the backlog grows to BACKLOG (a drain's first outcomes come while the fan-out is
    still filling the table)."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        hook, leased = await backlog_with_stale_statistics(conn, first)
        text, names = numbered(str(query("delivery_record_outcomes")))
        assert names == ["rows"]
        rows = outcomes(leased)
        await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        await conn.execute(sql.SQL("PREPARE record AS {}").format(sql.SQL(text)))
        execute = sql.SQL("EXECUTE record({})").format(sql.Literal(rows))
        explain = sql.SQL("EXPLAIN (FORMAT JSON) {}").format(execute)
        cur = await conn.execute(explain)  # the generic plan is made here, and kept
        await more_pending(conn, hook, BACKLOG - first)
        cur = await conn.execute(explain)
        got = await cur.fetchone()
        assert got is not None
        primary_key_only(got["QUERY PLAN"][0]["Plan"])
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
