"""delivery_fan_out per outbox row (issue 12, branch fanrow): what the cuts of its per-row
cost must keep.

- an event this role cannot read, taken in one batch with events it can, stays in the
  outbox and is backed off (misses, retry_at) while the others leave with their deliveries
  (the unreadable write's gate is a count now, not an EXISTS over an anti join);
- a batch in which every event was read scans `claimed_events` a bounded number of times,
  not once per taken row (the old gate: a nested loop, n^2/2 comparisons).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import hostdb
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits

URL = "https://93.184.216.34/hook"  # never sent to: SQL-level tests
VARIANTS = ["delivery_fan_out_lean", "delivery_fan_out"]


def fan_out_args(batch: int, claim: int = 10) -> dict[str, Any]:
    room = Admission[Claimed](4, RateLimits()).claim_params()
    return {**room, "lease": 60.0, "batch": batch, "claim": claim, "only": None}


async def publish_many(conn: hostdb.Conn, org: uuid.UUID, payloads: list[dict[str, Any]]) -> None:
    for p in payloads:
        await conn.execute(
            "SELECT publish_event('job.created', NULL, %s, NULL, '{}'::jsonb, %s)",
            (Jsonb(p), org),
        )


@pytest.mark.parametrize("variant", VARIANTS)
async def test_an_unreadable_event_among_readable_ones_stays_and_backs_off(
    conn: hostdb.Conn, variant: str
) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, URL, ["job.*"])
    await publish_many(conn, org, [{"n": i, "hidden": i in (2, 5)} for i in range(8)])
    role = f"fanrow_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(role)
    await conn.execute(sql.SQL("CREATE ROLE {}").format(ident))
    try:
        for schema in ("public", "dispatcher"):
            s = sql.Identifier(schema)
            await conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, ident))
            await conn.execute(
                sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {}").format(s, ident)
            )
            await conn.execute(
                sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {} TO {}").format(s, ident)
            )
        await conn.execute("ALTER TABLE public.events ENABLE ROW LEVEL SECURITY")
        await conn.execute(
            sql.SQL(
                "CREATE POLICY fanrow_read ON public.events FOR SELECT TO {}"
                " USING (NOT coalesce((payload ->> 'hidden')::boolean, false))"
            ).format(ident)
        )
        await conn.execute("BEGIN")
        await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(ident))
        cur = await conn.execute(query(variant), fan_out_args(batch=50))
        rows = [dict(r) for r in await cur.fetchall()]
        await conn.execute("COMMIT")
    finally:
        if conn.info.transaction_status:  # the fan-out failed: out of its transaction first
            await conn.execute("ROLLBACK")
        await conn.execute("DROP POLICY IF EXISTS fanrow_read ON public.events")
        await conn.execute("ALTER TABLE public.events DISABLE ROW LEVEL SECURITY")
        await conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        await conn.execute(sql.SQL("DROP ROLE {}").format(ident))
    marker = rows[-1]
    assert marker["id"] is None
    assert int(marker["events_claimed"]) == 6
    assert int(marker["deliveries_created"]) == 6
    hidden = await (
        await conn.execute(
            "SELECT e.payload ->> 'n' AS n, o.misses, o.retry_at > now() AS later"
            " FROM dispatcher.outbox o JOIN public.events e ON e.id = o.event_id ORDER BY 1"
        )
    ).fetchall()
    assert [(r["n"], r["misses"], r["later"]) for r in hidden] == [
        ("2", 1, True),
        ("5", 1, True),
    ]
    left = await (await conn.execute("SELECT event_id FROM dispatcher.outbox")).fetchall()
    assert sorted(map(str, marker["events_unreadable"])) == sorted(str(r["event_id"]) for r in left)
    made = await (
        await conn.execute(
            "SELECT (d.payload -> 'data' ->> 'n') AS n FROM webhook_deliveries d ORDER BY 1"
        )
    ).fetchall()
    assert [r["n"] for r in made] == ["0", "1", "3", "4", "6", "7"]


def cte_scan_loops(plan: dict[str, Any], name: str) -> int:
    """Sum of actual loops of the CTE Scan nodes of `name` in a JSON plan (executed ones)."""
    n = 0
    if plan.get("Node Type") == "CTE Scan" and plan.get("CTE Name") == name:
        n += int(plan.get("Actual Loops", 0))
    for child in plan.get("Plans", []):
        n += cte_scan_loops(child, name)
    return n


@pytest.mark.parametrize("variant", VARIANTS)
async def test_a_fully_read_batch_does_not_rescan_its_events_per_row(
    conn: hostdb.Conn, variant: str
) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, URL, ["job.*"])
    # drain1's shape: a working database (a batch fanned out and kept), then a large batch
    await publish_many(conn, org, [{"n": i, "notes": "x" * 900} for i in range(100)])
    text = query(variant)
    await conn.execute(text, fan_out_args(batch=100, claim=0))
    await publish_many(conn, org, [{"n": i, "notes": "x" * 900} for i in range(425)])
    await conn.execute("ANALYZE")
    await conn.execute("BEGIN")
    cur = await conn.execute(
        sql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) {}").format(sql.SQL(text)),
        fan_out_args(batch=425, claim=40),
    )
    got = (await cur.fetchone() or {})["QUERY PLAN"]
    await conn.execute("ROLLBACK")
    plan = (json.loads(got) if isinstance(got, str) else got)[0]["Plan"]
    loops = cte_scan_loops(plan, "claimed_events")
    # matched, the delete, the gate's count, the unreadable write's anti join (not run):
    # a few scans; the old EXISTS gate rescanned it once per taken row (425)
    assert loops <= 6, loops
