"""The claim statement's parts side by side, interleaved call by call (issue 12, drain1's shape).

`bench/fanout_parts.py`'s method for `delivery_claim_due`: one webhook, ``--rows`` events
fanned out pending by the tree's `delivery_fan_out_lean` (their sequence rows as the fan-out
makes them), committed, ``ANALYZE``. Each round runs every variant in turn on the same due
rows: one claim of ``--limit`` rows (scan 4x, as dispatch.py) with the room drain1's daemon
passes (`bench.floor.room_params`: cap 32, claim-ahead 64, ``--limit`` left), inside a
transaction that is rolled back, so every variant leases the same rows from the same state;
the order rotates each round, the first ten rounds are left out (psycopg prepares after five).
Every variant has its own connection (its own backend, prepared plan and functions). Backend
CPU of each call from ``/proc/<pid>/schedstat`` (ns), WAL bytes from the insert LSN, medians
per leased row; each variant's leased ids are compared with the first variant's::

    nice -n 5 .venv/bin/python bench/claim_parts.py --own-server tree cut:window floor

A variant is ``tree`` (the tree's `delivery_claim_due`), ``file:PATH`` (the block
`delivery_claim_due` of a file of named blocks; its blocks named ``function...``, each a
``CREATE FUNCTION``, are run first), ``cut:A+B`` (the tree's statement, and
claim_candidates_v2 as a copy of its own, with the cuts of CUTS applied: a part taken out to
see what it costs, not a statement to run in a daemon), ``inline`` (the candidates' query in
the statement, no function; ``nosort:`` in front: with the function's two settings on the
connection; ``generic:`` / ``custom:``: ``plan_cache_mode`` forced on it), ``floor`` /
``floor_wide`` (bench/bench.sql's `floor_lease` / `floor_lease_wide`).
docs/performance.md, "the claim statement, part by part (claimparts)".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, os.getcwd())  # the tree under test

from bench.fanout_parts import flex
from bench.floor import room_params
from bench.infra import q as bench_query
from bench.statement_cpu import (
    backend_cpu,
    fan_out_params,
    fresh_database,
    prepared_plans,
    server,
    wal_lsn,
)
from bench.workload import create_webhooks, publish_backlog
from dispatcher.migrations import apply_migrations
from dispatcher.queries import load
from dispatcher.queries import query as tree_query

MIGRATION = Path("dispatcher/sql/migrations/0045_claim_candidates_policy.sql")
FUNCTION = "dispatcher.claim_candidates_v2"

# Cuts of the statement (S) and of the candidates function's body (F): (where, regex,
# replacement); a cut that does not apply is an error, not a silent no-op.
CUTS: dict[str, list[tuple[str, str, str]]] = {
    # the per-webhook window and the room: the first `limit` candidates in due order
    "window": [
        (
            "S",
            r"\), ranked AS \(.*?LIMIT %\(limit\)s\s*\)",
            ")\n, due AS (SELECT c.* FROM candidates c ORDER BY c.due_at, c.created_at"
            " LIMIT %(limit)s)",
        )
    ],
    # the failing webhook's single spaced probe: no claimable test, never failing
    "failing": [
        ("F", r"AND dispatcher\.webhook_claimable_v1\(.*?failing_after\)\s*(?=--)", ""),
        (
            "F",
            flex("coalesce(w.consecutive_failures, 0) >= claim_candidates_v2.failing_after"),
            "false",
        ),
        ("S", flex("CASE WHEN r.failing THEN 1 ELSE %(hook_cap)s END"), "%(hook_cap)s"),
    ],
    # an ordered webhook's keyed row waits for its predecessor
    "ordered": [
        ("F", r"AND \(NOT EXISTS \(SELECT 1 FROM dispatcher\.webhook_settings.*?true\)\)", "")
    ],
    # the sequence row (number, keyed)
    "seq": [
        ("S", flex("LEFT JOIN dispatcher.delivery_sequence s ON s.delivery_id = due.id"), ""),
        ("S", flex("s.sequence,"), "NULL::bigint AS sequence,"),
        ("S", flex("s.order_key IS NOT NULL AS keyed"), "false AS keyed"),
    ],
    # the org's retry policy of the leased rows
    "policy": [
        ("S", flex("LEFT JOIN public.integration_retry_config rc ON rc.org_id = due.org_id"), ""),
        (
            "S",
            flex("rc.max_retries, rc.retry_strategy, rc.base_delay_seconds, rc.max_delay_seconds,")
            + r"\s*"
            + flex("rc.enable_jitter, rc.enable_dlq,"),
            "NULL::int AS max_retries, NULL::text AS retry_strategy, NULL::int AS"
            " base_delay_seconds, NULL::int AS max_delay_seconds, NULL::bool AS enable_jitter,"
            " NULL::bool AS enable_dlq,",
        ),
    ],
    # the webhook's previous secret
    "secrets": [
        (
            "S",
            flex("LEFT JOIN dispatcher.webhook_secrets ws ON ws.webhook_id = due.webhook_id"),
            "",
        ),
        (
            "S",
            flex("ws.previous_secret, ws.previous_expires_at,"),
            "NULL::text AS previous_secret, NULL::timestamptz AS previous_expires_at,",
        ),
    ],
    # the webhook's url, secret and headers: neither read in the function nor returned
    "hookcols": [
        (
            "F",
            flex("w.url::text, w.secret::text, w.headers::text,"),
            "NULL::text, NULL::text, NULL::text,",
        ),
        (
            "S",
            flex("due.url, due.secret, due.headers,"),
            "NULL::text AS url, NULL::text AS secret, NULL::text AS headers,",
        ),
    ],
    # the request body not returned
    "body": [("S", flex("d.request_body,"), "NULL::text AS request_body,")],
    # every column but id and the body
    "columns": [
        (
            "S",
            r"RETURNING d\.id, d\.org_id.*?AS keyed",
            "RETURNING d.id, d.request_body",
        )
    ],
    # the rows locked: as many as leased (scan = limit), not 4x
    "scan": [("S", flex("%(scan)s::integer"), "%(limit)s::integer")],
}


def function_text(cuts: list[str], name: str) -> str:
    """claim_candidates_v2's CREATE text, renamed `name`, with the cuts' F edits."""
    text = MIGRATION.read_text()
    text = text[text.index("CREATE OR REPLACE FUNCTION") :]
    for cut in cuts:
        for where, pattern, repl in CUTS[cut]:
            if where == "F":
                text, n = re.subn(pattern, repl, text, count=1, flags=re.DOTALL)
                if n != 1:
                    raise SystemExit(f"cut {cut!r}: {pattern!r} not in the function")
    return text.replace("claim_candidates_v2", name.removeprefix("dispatcher."))


def inline_candidates() -> str:
    """The candidates function's query as the statement's first CTE (parameters for its
    arguments, its FOR UPDATE kept)."""
    body = function_text([], FUNCTION)
    query = body[body.index("SELECT d.id::uuid") : body.index("FOR UPDATE OF d SKIP LOCKED;")]
    query = query.replace("claim_candidates_v2.full_ids", "%(full_ids)s::uuid[]")
    query = query.replace("claim_candidates_v2.failing_after", "%(failing_after)s::integer")
    query = query.replace("claim_candidates_v2.scan", "%(scan)s::integer")
    cols = (
        "id, webhook_id, org_id, created_at, due_at, url, secret, headers, webhook_status,"
        " webhook_deleted_at, failing"
    )
    return f"WITH candidates ({cols}) AS (\n{query} FOR UPDATE OF d SKIP LOCKED\n)"


PREFIXES: dict[str, str] = {
    "nosort:": "SET enable_bitmapscan = off; SET enable_sort = off",
    "generic:": "SET plan_cache_mode = force_generic_plan",
    "custom:": "SET plan_cache_mode = force_custom_plan",
}


def variant(spec: str, index: int) -> tuple[str, list[str]]:
    """(statement text, setup statements run on its connection first)."""
    for prefix, setting in PREFIXES.items():
        if spec.startswith(prefix):
            text, setup = variant(spec.removeprefix(prefix), index)
            return text, [*setup, *setting.split("; ")]
    if spec in ("floor", "floor_wide"):
        return bench_query("floor_lease" if spec == "floor" else "floor_lease_wide"), []
    tree = str(tree_query("delivery_claim_due"))
    if spec == "tree":
        return tree, []
    if spec == "inline":
        text, n = re.subn(
            r"WITH candidates AS \(.*?\), ranked AS",
            inline_candidates() + ", ranked AS",
            tree,
            count=1,
            flags=re.DOTALL,
        )
        assert n == 1
        return text, []
    if spec.startswith("file:"):
        blocks = load(Path(spec.removeprefix("file:")).read_text())
        setup = [v for k, v in blocks.items() if k.startswith("function")]
        return blocks["delivery_claim_due"], setup
    if spec.startswith("cut:"):
        cuts = spec.removeprefix("cut:").split("+")
        text = tree
        for cut in cuts:
            for where, pattern, repl in CUTS[cut]:
                if where == "S":
                    text, n = re.subn(pattern, repl, text, count=1, flags=re.DOTALL)
                    if n != 1:
                        raise SystemExit(f"cut {cut!r}: {pattern!r} not in the statement")
        setup = []
        if any(w == "F" for c in cuts for w, _, _ in CUTS[c]):
            name = f"dispatcher.claim_cut{index}_v2"
            setup.append(function_text(cuts, name))
            text = text.replace(FUNCTION, name)
        return text, setup
    raise SystemExit(f"{spec}: not a variant (tree, inline, file:, cut:, nosort:, floor)")


async def run(
    dsn: str, specs: list[str], rows: int, limit: int, rounds: int, explain: bool = False
) -> dict[str, Any]:
    await apply_migrations(dsn)
    texts = {s: variant(s, i) for i, s in enumerate(specs)}
    setup = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with setup:
        await setup.execute("SET default_toast_compression = lz4")
        hooks = await create_webhooks(setup, "http://127.0.0.1:9", orgs=1, per_org=1)
        await publish_backlog(setup, hooks.orgs, rows)
        fan_out = str(tree_query("delivery_fan_out_lean"))
        while True:  # every row pending, as drain1's fan-out leaves most of them
            got = await (
                await setup.execute(fan_out, fan_out_params(batch=500, claim=0))
            ).fetchall()
            if int(got[-1]["events_claimed"]) == 0:
                break
        for _, extra in texts.values():
            for stmt in extra:
                if stmt.lstrip().upper().startswith("CREATE"):
                    await setup.execute(stmt)
        await setup.execute("ANALYZE")
        cur = await setup.execute(
            "SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = 'pending') AS d,"
            " (SELECT count(*) FROM dispatcher.delivery_sequence) AS s,"
            " (SELECT id FROM webhooks) AS w"
        )
        made = await cur.fetchone()
        assert made is not None and int(made["d"]) == rows, made
        webhook = made["w"]
    # drain1: cap 32, claim-ahead 64, `limit` rows of room left
    room = room_params(webhook, 32, 32, 96 - 32 - limit)
    assert room["room_left"] == [limit], room
    params = {**room, "lease": 30, "limit": limit, "scan": 4 * limit, "batch": limit}
    conns: dict[str, psycopg.AsyncConnection[Any]] = {}
    pids: dict[str, int] = {}
    for s in specs:
        c = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        await c.execute("SET default_toast_compression = lz4")  # as the daemon's sessions
        for stmt in texts[s][1]:
            if not stmt.lstrip().upper().startswith("CREATE"):
                await c.execute(stmt)
        conns[s] = c
        pid_row = await (await c.execute("SELECT pg_backend_pid() AS p")).fetchone()
        assert pid_row is not None
        pids[s] = int(pid_row["p"])
    cpu: dict[str, list[float]] = {s: [] for s in specs}
    wal: dict[str, list[int]] = {s: [] for s in specs}
    ids: dict[str, list[str]] = {}
    plans: dict[str, tuple[int, int]] = {}
    try:
        for r in range(rounds):
            order = specs[r % len(specs) :] + specs[: r % len(specs)]
            for s in order:
                conn, pid = conns[s], pids[s]
                await conn.execute("BEGIN")
                lsn = await wal_lsn(conn)
                before = backend_cpu(pid)
                got = await (await conn.execute(texts[s][0], params)).fetchall()
                spent = backend_cpu(pid) - before
                written = await wal_lsn(conn) - lsn
                await conn.execute("ROLLBACK")
                ids[s] = sorted(str(x["id"]) for x in got)
                assert got, s
                if r >= 10:
                    cpu[s].append(spent * 1000 / len(got))
                    wal[s].append(written // len(got))
        for s in specs:
            plans[s] = await prepared_plans(conns[s])
        if explain:
            for s in specs:
                conn = conns[s]
                await conn.execute("BEGIN")
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT text) " + texts[s][0], params
                )
                plan = "\n".join(str(x["QUERY PLAN"]) for x in await cur.fetchall())
                await conn.execute("ROLLBACK")
                print(f"--- {s}\n{plan}")
    finally:
        for c in conns.values():
            await c.close()
    first = ids[specs[0]]
    return {
        s: {
            "median_ms": round(statistics.median(cpu[s]), 5),
            "mean_ms": round(statistics.fmean(cpu[s]), 5),
            "wal_bytes": statistics.median(wal[s]),
            "calls": len(cpu[s]),
            "leased": len(ids[s]),
            "same_rows": ids[s] == first,
            "generic_custom_plans": plans.get(s),
        }
        for s in specs
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="*", help="tree, inline, file:PATH, cut:A+B, nosort:X, floor")
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--db", default="bench_claim_parts", help="database created and dropped")
    ap.add_argument("--own-server", action="store_true", help="on a throwaway server")
    ap.add_argument("--rows", type=int, default=2000, help="pending rows of the one webhook")
    ap.add_argument("--limit", type=int, default=42, help="rows a claim (drain1: 42)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--explain", action="store_true", help="print each variant's plan at the end")
    ap.add_argument("--show", help="print the text of this variant and exit")
    a = ap.parse_args()
    if a.show:
        text, setup = variant(a.show, 0)
        print("\n;\n".join([*setup, text]))
        return
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        r = await run(db_dsn, a.variants, a.rows, a.limit, a.rounds, a.explain)
    base = r[a.variants[0]]["median_ms"]
    for s, d in r.items():
        print(
            f"{s}: backend CPU per leased row median {d['median_ms']:.5f} ms"
            f" ({d['median_ms'] - base:+.5f})  mean {d['mean_ms']:.5f}  WAL {d['wal_bytes']} B"
            f"  leased {d['leased']} same rows {d['same_rows']}  plans (generic, custom)"
            f" {d['generic_custom_plans']}  ({d['calls']} calls)"
        )


if __name__ == "__main__":
    started = time.time()
    asyncio.run(main())
    print(f"({time.time() - started:.0f} s)", file=sys.stderr)
