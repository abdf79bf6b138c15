"""delivery_claim_due's plan and cost in the one-webhook drain's shape (issue 12).

One webhook, ``--events`` events (20,000: drain1's backlog) published, ``ANALYZE`` (the
statistics of the empty delivery table, as in a drain's first seconds), all fanned out
pending (batches of 256, none leased), autovacuum off for the delivery table so those
statistics stay; ``--analyze`` takes them again after the fan-out instead. Then, on one
connection, claims of ``--limit`` (44, scan 4x: as the daemon asks, with room for 44) until
nothing is due, each claimed batch recorded by ``delivery_record_outcomes`` (not measured),
as a drain does. psycopg prepares the claim after five runs, as in the daemon; the server
picks custom or generic plans by ``--plan-cache-mode`` (auto: its own choice).

Per claim: backend CPU from ``/proc``; for the first ``--explain`` claims auto_explain
(buffers, no timing) sent back as a notice: generic or custom plan, how the due index was
read (an ordered ``Index Scan`` or a ``Bitmap Heap Scan``), the rows it read and the
buffers of the call. Over the whole run: backend CPU and shared buffers (pg_stat_statements)
per claimed row. ``--sql FILE`` takes delivery_claim_due from FILE (a variant). Run from the
root of the tree to measure, like statement_cpu.py::

    .venv/bin/python bench/claim_plan.py --own-server --plan-cache-mode force_custom_plan
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, os.getcwd())  # the tree under test, also when run by path from another

from bench.statement_cpu import (
    backend_cpu,
    fan_out_params,
    fresh_database,
    outcome,
    statement_tracking,
    statements,
)
from bench.workload import create_webhooks, publish_backlog
from dispatcher.migrations import apply_migrations
from dispatcher.queries import parse

DUE_INDEX = "dispatcher_deliveries_due_since"


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(nodes(child))
    return out


def describe(plans_json: list[str]) -> dict[str, Any]:
    """What one auto_explain'd claim did (the plans of the statement and of what it ran
    inside, the statement's last): how the due index was read, buffers of the whole."""
    plans = [orjson.loads(p)["Plan"] for p in plans_json]
    plan = plans[-1]
    every = [n for p in plans for n in nodes(p)]
    due = [n for n in every if n.get("Index Name") == DUE_INDEX]
    read = "none"
    rows_read = 0
    for n in due:
        if n["Node Type"] == "Bitmap Index Scan":
            read = "bitmap"
        elif n["Node Type"] in ("Index Scan", "Index Only Scan"):
            read = "ordered" if read == "none" else read
        rows_read += int(n.get("Actual Rows", 0)) * int(n.get("Actual Loops", 1))
    sorted_ = any(
        n["Node Type"] in ("Sort", "Incremental Sort")
        and "coalesce" in " ".join(n.get("Sort Key", []))
        for n in every
    )
    return {
        "due_read": read,
        "due_rows": rows_read,
        "sorted": sorted_,
        "buffers": int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)),
        "claimed": int(plan.get("Actual Rows", 0)),
    }


async def run(dsn: str, a: argparse.Namespace) -> dict[str, Any]:
    await apply_migrations(dsn)
    q = statements(None)
    claim_due, record = q["claim_due"], q["record_outcomes"]
    if a.sql:
        claim_due = parse(a.sql_text)["delivery_claim_due"]
    assert claim_due and record
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    notices: list[str] = []
    conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
    async with conn:
        await conn.execute("SET default_toast_compression = lz4")
        await conn.execute("ALTER TABLE webhook_deliveries SET (autovacuum_enabled = false)")
        hooks = await create_webhooks(conn, "http://127.0.0.1:9", orgs=1, per_org=1)
        await publish_backlog(conn, hooks.orgs, a.events)
        await conn.execute("ANALYZE")
        params = fan_out_params(batch=256, claim=0)
        while True:
            rows = await (await conn.execute(q["fan_out"] or "", params)).fetchall()
            if int(rows[-1]["events_claimed"]) == 0:
                break
        if a.analyze:
            await conn.execute("ANALYZE webhook_deliveries")
        cur = await conn.execute("SELECT webhook_id FROM webhook_deliveries LIMIT 1")
        hook = (await cur.fetchone() or {})["webhook_id"]
        await conn.execute(f"SET plan_cache_mode = {a.plan_cache_mode}")
        tracked = await statement_tracking(conn)
        await conn.execute("LOAD 'auto_explain'")
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_analyze = on",
            "auto_explain.log_buffers = on",
            "auto_explain.log_timing = off",
            "auto_explain.log_format = json",
            "auto_explain.log_level = notice",
            # a variant may scan in a function: its plans come first, the statement's last
            "auto_explain.log_nested_statements = on",
        ):
            await conn.execute(f"SET {setting}")
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        pid = int((await cur.fetchone() or {})["pid"])
        claim_params = {
            **params,
            "room_ids": [hook],
            "room_left": [a.limit],
            "hook_cap": a.limit,
            "limit": a.limit,
            "scan": 4 * a.limit,
        }
        now = datetime.now(UTC).isoformat()
        cpu, claimed, calls, seq = 0.0, 0, 0, 0
        explained: list[dict[str, Any]] = []
        dumped = ""
        generic_before = 0
        while True:
            explain = calls < a.explain
            if calls == a.explain:
                await conn.execute("SET auto_explain.log_min_duration = -1")
            notices.clear()
            before = backend_cpu(pid)
            got = await (await conn.execute(claim_due, claim_params)).fetchall()
            cpu += backend_cpu(pid) - before
            calls += 1
            if explain:
                plans = [m.split("plan:\n", 1)[1] for m in notices if "plan:\n" in m]
                explained.append(describe(plans) if plans else {})
                if a.dump and calls == a.explain:  # the last claim explained, whole
                    dumped = "[" + ",".join(plans) + "]"
                # generic or custom: the server's counters of the prepared statement (none
                # yet: psycopg sent it unprepared, planned with its parameters, a custom plan)
                cur = await conn.execute(
                    "SELECT generic_plans FROM pg_prepared_statements"
                    " WHERE statement LIKE '%%hook_rank%%'"
                    " AND statement NOT LIKE '%%generic_plans%%'"
                )
                generic = int((await cur.fetchone() or {}).get("generic_plans") or 0)
                if explained[-1]:
                    # forced: the mode (psycopg's unprepared runs too); auto: the counter
                    explained[-1]["generic"] = (
                        generic > generic_before
                        if a.plan_cache_mode == "auto"
                        else a.plan_cache_mode == "force_generic_plan"
                    )
                generic_before = generic
            if not got:
                break
            claimed += len(got)
            body = orjson.dumps([outcome(r, seq + i, now) for i, r in enumerate(got)])
            seq += len(got)
            await conn.execute("SET auto_explain.log_min_duration = -1")
            await conn.execute(record, {"rows": body.decode()})
            if calls < a.explain:
                await conn.execute("SET auto_explain.log_min_duration = 0")
        buffers = None
        if tracked:
            cur = await conn.execute(
                "SELECT sum(calls) AS calls, sum(shared_blks_hit + shared_blks_read) AS buffers"
                " FROM pg_stat_statements WHERE query LIKE '%%hook_rank%%'"
                " AND query NOT LIKE '%%generic_plans%%' AND dbid ="
                " (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            row = await cur.fetchone() or {}
            if row.get("calls"):
                buffers = int(row["buffers"])
        cur = await conn.execute("SHOW server_version")
        version = str((await cur.fetchone() or {})["server_version"])
    assert claimed == a.events, (claimed, a.events)
    return {
        "server": version,
        "calls": calls,
        "claimed": claimed,
        "cpu_ms_per_row": round(1000 * cpu / claimed, 4),
        "buffers_per_row": round(buffers / claimed, 2) if buffers is not None else None,
        "explained": explained,
        "dumped": dumped,
    }


def read_text(path: str) -> str:
    return Path(path).read_text()


def write_text(path: str, text: str) -> None:
    Path(path).write_text(text)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--own-server", action="store_true", help="a throwaway server (the bench's)")
    ap.add_argument("--db", default="bench_claim_plan", help="database created and dropped")
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--limit", type=int, default=44)
    ap.add_argument(
        "--plan-cache-mode",
        default="auto",
        choices=["auto", "force_custom_plan", "force_generic_plan"],
    )
    ap.add_argument("--explain", type=int, default=15, help="claims auto_explain'd first")
    ap.add_argument("--analyze", action="store_true", help="ANALYZE after the fan-out")
    ap.add_argument("--sql", help="delivery_claim_due from this file (named blocks)")
    ap.add_argument("--tag", default=Path.cwd().name)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--dump", help="write the last explained claim's plans (JSON) to this file")
    a = ap.parse_args()
    a.sql_text = read_text(a.sql) if a.sql else None
    owned = None
    dsn = a.dsn
    if a.own_server:
        from bench.infra import BenchCluster

        owned = BenchCluster()
        owned.pg.start()
        dsn = f"host=127.0.0.1 port={owned.pg.port} user=postgres"
        with psycopg.connect(f"{dsn} dbname=postgres", autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    try:
        with fresh_database(dsn, a.db) as db_dsn:
            r = await run(db_dsn, a)
    finally:
        if owned is not None:
            owned.cleanup()
    if a.dump:
        write_text(a.dump, r.pop("dumped"))
    if a.json:
        print(orjson.dumps(r).decode())
        return
    kinds = " ".join(
        f"{'G' if e.get('generic') else 'C'}:{e.get('due_read')}"
        f"{'+sort' if e.get('sorted') else ''}/{e.get('due_rows')}r/{e.get('buffers')}b"
        for e in r["explained"]
    )
    print(
        f"{a.tag} pg{r['server']} {a.plan_cache_mode}{' analyzed' if a.analyze else ''}:"
        f" {r['claimed']} rows in {r['calls']} claims: backend CPU {r['cpu_ms_per_row']:.4f} ms"
        f" and {r['buffers_per_row']} shared buffers per claimed row\n  first claims: {kinds}"
    )


if __name__ == "__main__":
    asyncio.run(main())
