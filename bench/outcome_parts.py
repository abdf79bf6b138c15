"""The outcome statement's variants side by side, interleaved call by call (issue 12).

`bench/statement_cpu.py` replays a whole drain per variant, so two variants are minutes
apart and a few microseconds per delivery drown in the machine's noise. Here one
connection holds ``--rows`` delivery rows leased by the tree's fan-out (one webhook, every row
leased at creation), and each round records one batch of ``--batch`` successes (the
daemon's recorded headers) with every variant in turn, each inside a transaction that is
rolled back, so every variant writes the same rows from the same state; the order of the
variants rotates each round. The webhook is healthy, its counters just written, so `noted`
skips it as in a drain (``--noting``: no streak row, every call notes it). Backend CPU of
each call from ``/proc/<pid>/schedstat`` (ns), WAL bytes from the insert LSN, medians and
means per delivery::

    .venv/bin/python bench/outcome_parts.py --own-server tree VARIANT.sql

A variant is ``tree`` (the tree's ``delivery_record_outcomes_lean``), ``tree-full`` (the full
statement), ``floor`` (the durable floor's ``floor_record`` of bench/bench.sql, its five
arrays made from the same batch) or a file whose block ``delivery_record_outcomes_lean`` (or
``delivery_record_outcomes``) is taken. docs/performance.md, "the outcome statement, part by
part".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, os.getcwd())  # the tree under test

from bench.infra import q as bench_query
from bench.statement_cpu import (
    backend_cpu,
    fan_out_params,
    fresh_database,
    outcome,
    server,
    statements,
    wal_lsn,
)
from bench.workload import create_webhooks, publish_backlog
from dispatcher.migrations import apply_migrations
from dispatcher.queries import load
from dispatcher.queries import query as tree_query


def variant(spec: str) -> str:
    if spec == "floor":
        return bench_query("floor_record")
    if spec.startswith("arrays:"):  # a file whose outcomes come as one array per column
        spec = spec.removeprefix("arrays:")
    if spec == "tree":
        return str(tree_query("delivery_record_outcomes_lean"))
    if spec == "tree-full":
        return str(tree_query("delivery_record_outcomes"))
    blocks = load(Path(spec).read_text())
    for name in ("delivery_record_outcomes_lean", "delivery_record_outcomes"):
        if name in blocks:
            return blocks[name]
    raise SystemExit(f"{spec}: no delivery_record_outcomes(_lean) block")


async def run(
    dsn: str,
    specs: list[str],
    rows: int,
    batch: int,
    rounds: int,
    healthy: bool = True,
    explain: bool = False,
) -> dict[str, Any]:
    await apply_migrations(dsn)
    texts = {s: variant(s) for s in specs}
    fan_out = statements(None)["fan_out"]
    assert fan_out
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with conn:
        await conn.execute("SET default_toast_compression = lz4")  # as the daemon's sessions
        hooks = await create_webhooks(conn, "http://127.0.0.1:9", orgs=1, per_org=1)
        await publish_backlog(conn, hooks.orgs, rows)
        if healthy:
            # A healthy webhook in a drain: counters written less than a second ago (here an
            # hour ahead, as every call is) and a clean streak row, so `noted` skips it as it
            # does for all but ~1 batch a second; otherwise every call notes the webhook.
            await conn.execute(
                "UPDATE webhooks SET consecutive_failures = 0,"
                " last_success_at = now() + interval '1 hour',"
                " last_triggered_at = now() + interval '1 hour'"
            )
            await conn.execute(
                "INSERT INTO dispatcher.webhook_streaks (webhook_id) SELECT id FROM webhooks"
            )
        await conn.execute("ANALYZE")
        params = {**fan_out_params(batch=64, claim=64), "hook_cap": rows}
        leased: list[dict[str, Any]] = []
        while True:
            got = await (await conn.execute(fan_out, params)).fetchall()
            leased += [r for r in got if r["id"] is not None]
            if int(got[-1]["events_claimed"]) == 0:
                break
        assert len(leased) == rows, (len(leased), rows)
        pid_row = await (await conn.execute("SELECT pg_backend_pid() AS p")).fetchone()
        assert pid_row is not None
        pid = int(pid_row["p"])
        now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        cpu: dict[str, list[float]] = {s: [] for s in specs}
        wal: dict[str, list[int]] = {s: [] for s in specs}
        for r in range(rounds):
            start = (r * batch) % (rows - batch + 1)
            outs = [outcome(x, i, now) for i, x in enumerate(leased[start : start + batch])]
            body = orjson.dumps(outs).decode()
            floor = {
                "ids": [o["id"] for o in outs],
                "statuses": [o["status"] for o in outs],
                "codes": [o["response_status"] for o in outs],
                "bodies": [o["response_body"] for o in outs],
                "ms": [o["duration_ms"] for o in outs],
            }
            arrays = {
                f"a_{k}": [
                    orjson.dumps(o[k]).decode() if isinstance(o[k], dict) else o[k] for o in outs
                ]
                for k in outs[0]
            }
            order = specs[r % len(specs) :] + specs[: r % len(specs)]
            for s in order:
                await conn.execute("BEGIN")
                lsn = await wal_lsn(conn)
                before = backend_cpu(pid)
                res: dict[str, Any] | None
                if s == "floor":
                    cur = await conn.execute(texts[s], floor)
                    res = {"recorded": cur.rowcount}
                elif s.startswith("arrays:"):
                    res = await (await conn.execute(texts[s], arrays)).fetchone()
                else:
                    res = await (await conn.execute(texts[s], {"rows": body})).fetchone()
                spent = backend_cpu(pid) - before
                written = await wal_lsn(conn) - lsn
                await conn.execute("ROLLBACK")
                assert res is not None and int(res["recorded"]) == batch, (s, res)
                if r >= 10:  # psycopg prepares after five runs: the first ten are left out
                    cpu[s].append(spent * 1000 / batch)
                    wal[s].append(written // batch)
        if explain:
            # the plans the last round's calls ran (prepared: the generic plan), as text
            await conn.execute("LOAD 'auto_explain'")
            for setting in (
                "auto_explain.log_min_duration = 0",
                "auto_explain.log_analyze = on",
                "auto_explain.log_buffers = on",
                "auto_explain.log_timing = off",
                "auto_explain.log_level = notice",
            ):
                await conn.execute(f"SET {setting}")
            plans: list[str] = []
            conn.add_notice_handler(lambda d: plans.append(d.message_primary or ""))
            for s in specs:
                plans.clear()
                await conn.execute("BEGIN")
                if s == "floor":
                    await conn.execute(texts[s], floor)
                elif s.startswith("arrays:"):
                    await conn.execute(texts[s], arrays)
                else:
                    await conn.execute(texts[s], {"rows": body})
                await conn.execute("ROLLBACK")
                print(f"--- {s}")
                print("\n".join(p for p in plans if "Query Text" in p))
    return {
        s: {
            "median_ms": round(statistics.median(cpu[s]), 5),
            "mean_ms": round(statistics.fmean(cpu[s]), 5),
            "wal_bytes": statistics.median(wal[s]),
            "calls": len(cpu[s]),
        }
        for s in specs
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variants", nargs="+", help="tree, tree-full or FILE")
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--db", default="bench_outcome_parts", help="database created and dropped")
    ap.add_argument("--own-server", action="store_true", help="on a throwaway server")
    ap.add_argument("--rows", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=44)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument(
        "--noting", action="store_true", help="no streak row: every call notes the webhook"
    )
    ap.add_argument("--explain", action="store_true", help="print each variant's plan at the end")
    a = ap.parse_args()
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        r = await run(db_dsn, a.variants, a.rows, a.batch, a.rounds, not a.noting, a.explain)
    for s, d in r.items():
        print(
            f"{s}: backend CPU per delivery median {d['median_ms']:.5f} ms"
            f"  mean {d['mean_ms']:.5f}  WAL {d['wal_bytes']} B  ({d['calls']} calls)"
        )


if __name__ == "__main__":
    asyncio.run(main())
