"""The fan-out's parts side by side, interleaved call by call (issue 12, drain1's shape).

`bench/outcome_parts.py`'s method for `delivery_fan_out_lean`: one webhook, a warm-up batch
fanned out and committed (so its sequence counter row exists) and ``ANALYZE``, then
``--events`` events left in the outbox. Each round runs every variant in turn on the same
outbox rows: one call taking them all (``batch`` = ``--events``), ``--leased`` of the
deliveries created leased (the webhook's room), the rest created pending, inside a
transaction that is rolled back, so every variant does the same work from the same state;
the order rotates each round, the first ten rounds are left out (psycopg prepares after
five). Every variant has its own connection (its own backend and prepared plan), so a
session setting of one (``notrig``) touches no other's plan. Backend CPU of each call from
``/proc/<pid>/schedstat`` (ns), WAL bytes from the insert LSN; medians per created
delivery::

    .venv/bin/python bench/fanout_parts.py --own-server tree cut:traceparent cut:matches floor

A variant is ``tree`` (the tree's ``delivery_fan_out_lean``), ``file:PATH`` (the block
``delivery_fan_out_lean`` of a file of named blocks, variant regions cut as the loader
does), ``old:PATH`` (the block ``fan_out`` of such a file: `1098956`'s statement, on this
tree's schema), ``cut:A+B`` (the tree's statement with the named cuts of CUTS below applied: a
part taken out to see what it costs, not a statement to run in a daemon), ``notrig:SPEC``
(SPEC on a connection with ``session_replication_role = replica``: no trigger fires, the
foreign keys' checks included), ``generic:SPEC`` / ``custom:SPEC`` (SPEC with
``plan_cache_mode`` forced on its connection; each variant's line also says how many generic
and custom plans its connection's prepared statements ran), ``floor`` / ``floor_pending``
(the durable floor's ``floor_take`` / ``floor_take_pending`` of bench/bench.sql: outbox
delete + insert of the same rows, leased / due), or ``probe:NAME`` (one expression of
PROBES over the batch's events, alone). docs/performance.md, "the fan-out's cost per
delivery row (fanrow)" and "latency at 200 events/s, stage by stage (lat200)".
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


def flex(text: str) -> str:
    """A regex of `text` where any run of whitespace matches any run (the loader's)."""
    return r"\s*".join(r"\s+".join(re.escape(w) for w in part.split()) for part in [text])


# Each cut: (regex, replacement) edits of the loaded lean text; a cut that does not apply
# (the tree's text differs) is an error, not a silent no-op.
CUTS: dict[str, list[tuple[str, str]]] = {
    # the W3C trace context of each event (0023)
    "traceparent": [
        (
            flex("dispatcher.event_traceparent_v1(e.metadata, e.correlation_id) AS traceparent"),
            "NULL::text AS traceparent",
        )
    ],
    # the event type against the webhook's patterns, per (event, webhook)
    "matches": [(flex("AND dispatcher.matches_any(w.events, e.event_type)"), "")],
    # the lifecycle feedback-loop test, per (event, webhook)
    "lifecycle": [
        (
            flex("AND NOT coalesce(e.about_webhook = w.id::text") + r".*?" + flex("false)"),
            "",
        )
    ],
    # the body: jsonb_build_object of the envelope (the payload itself instead)
    "body": [
        (
            flex("dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,")
            + r"\s*"
            + flex("e.aggregate_id, e.payload) AS body"),
            "e.payload AS body",
        )
    ],
    # the three sorts: row_number() without PARTITION/ORDER BY (same counts, any order)
    "sorts": [
        (
            flex("row_number() OVER (PARTITION BY w.id ORDER BY e.created_at, e.id)"),
            "row_number() OVER ()",
        ),
        (
            flex(
                "row_number() OVER (PARTITION BY m.eligible"
                " ORDER BY m.event_created_at, m.event_id, m.webhook_id)"
            ),
            "row_number() OVER ()",
        ),
        (
            flex(
                "row_number() OVER (PARTITION BY r.webhook_id"
                " ORDER BY r.queued_at, r.event_created_at, r.event_id)"
            ),
            "row_number() OVER ()",
        ),
    ],
    # the delivery_sequence rows (the counter upsert and the numbering stay)
    "seqrows": [(r"\),\s*sequenced AS \(.*?FROM numbered\s*\)", ")")],
    # the sequence numbers altogether: counter upsert, numbering and rows
    "seq": [
        (r"\),\s*seq_counts AS \(.*?RETURNING s\.webhook_id, s\.last\s*(?=\),\s*numbered)", ""),
        (r"l\.last - count\(\*\) OVER.*?AS sequence,", "NULL::bigint AS sequence,"),
        (flex("JOIN seq_last l ON l.webhook_id = r.webhook_id"), ""),
        (r"\),\s*sequenced AS \(.*?FROM numbered\s*\)", ")"),
    ],
    # pending rows created with next_retry_at = now() instead of null: the AFTER INSERT
    # trigger dispatcher_delivery_due (WHEN next_retry_at IS NULL) does not fire
    "duetrigger": [
        (
            flex("ELSE r.parked_until END AS claim"),
            "ELSE coalesce(r.parked_until, now()) END AS claim",
        )
    ],
    # the leased rows returned (the marker row only)
    "returned": [(flex("WHERE m.claim IS NOT NULL AND m.eligible"), "WHERE false")],
    # the delivery rows not written (a SELECT of what would be inserted)
    "insert": [
        (
            flex("INSERT INTO public.webhook_deliveries (")
            + r".*?"
            + flex("status, next_retry_at )")
            + r"\s*"
            + flex("SELECT id, org_id, webhook_id,"),
            "SELECT id, org_id, webhook_id,",
        ),
        (flex("FROM numbered RETURNING id"), "FROM numbered"),
    ],
    # the writes that touch no row in the common case, each replaced by a SELECT of nothing:
    # what their nodes cost a call even when idle (one event: latency at 200 events/s)
    "held": [
        (
            r"held AS \(\s*INSERT INTO dispatcher\.held.*?ON CONFLICT DO NOTHING\s*\)",
            "held AS (SELECT 1 WHERE false)",
        )
    ],
    "deferred": [
        (
            r"deferred AS \(\s*UPDATE dispatcher\.outbox o\s*SET retry_at"
            r".*?RETURNING o\.event_id\s*\)",
            "deferred AS (SELECT NULL::uuid AS event_id WHERE false)",
        )
    ],
    "unreadable": [
        (
            r"unreadable AS \(\s*UPDATE dispatcher\.outbox o\s*SET misses"
            r".*?RETURNING o\.event_id\s*\)",
            "unreadable AS (SELECT NULL::uuid AS event_id WHERE false)",
        )
    ],
    # the outbox rows not deleted
    "delete": [
        (
            flex("DELETE FROM dispatcher.outbox o USING claimed_events c WHERE o.ctid = c.row_id")
            + r".*?"
            + flex("RETURNING o.event_id"),
            "SELECT c.id AS event_id FROM claimed_events c"
            " WHERE NOT EXISTS (SELECT 1 FROM waiting x WHERE x.row_id = c.row_id)",
        )
    ],
}

# One expression over the outbox's events, alone (what it costs without the statement).
EVENTS = " FROM dispatcher.outbox o JOIN public.events e ON e.id = o.event_id"
PROBES: dict[str, str] = {
    "read": "SELECT count(e.payload)" + EVENTS,
    "body": (
        "SELECT count(dispatcher.delivery_body_v1(e.id, e.event_type, e.created_at, e.org_id,"
        " e.aggregate_id, e.payload))" + EVENTS
    ),
    "bodytext": (
        "SELECT sum(length(b::text)) FROM (SELECT dispatcher.delivery_body_v1(e.id, e.event_type,"
        " e.created_at, e.org_id, e.aggregate_id, e.payload) AS b FROM dispatcher.outbox o"
        " JOIN public.events e ON e.id = o.event_id OFFSET 0) x"
    ),
    "traceparent": (
        "SELECT count(dispatcher.event_traceparent_v1(e.metadata, e.correlation_id))" + EVENTS
    ),
    "matches": (
        "SELECT count(*) FILTER (WHERE dispatcher.matches_any(w.events, e.event_type))"
        + EVENTS
        + " JOIN public.webhooks w ON w.org_id = e.org_id"
    ),
    "uuid": "SELECT count(gen_random_uuid()) FROM dispatcher.outbox o",
    "nothing": "SELECT count(*) FROM dispatcher.outbox o",
}


# Session settings a variant's prefix puts on its connection (the text is the rest's).
PREFIXES: dict[str, str] = {
    "notrig:": "SET session_replication_role = replica",
    "generic:": "SET plan_cache_mode = force_generic_plan",
    "custom:": "SET plan_cache_mode = force_custom_plan",
}


def variant(spec: str) -> str:
    for prefix in PREFIXES:
        if spec.startswith(prefix):
            return variant(spec.removeprefix(prefix))
    if spec in ("floor", "floor_pending"):
        return bench_query("floor_take" if spec == "floor" else "floor_take_pending")
    if spec.startswith("probe:"):
        return PROBES[spec.removeprefix("probe:")]
    if spec == "tree":
        return str(tree_query("delivery_fan_out_lean"))
    if spec.startswith("file:"):
        return load(Path(spec.removeprefix("file:")).read_text())["delivery_fan_out_lean"]
    if spec.startswith("old:"):
        # the pre-issue tree's statement (1098956: block `fan_out` of dispatcher/sql/queries.sql)
        # on this tree's schema
        return load(Path(spec.removeprefix("old:")).read_text())["fan_out"]
    if spec.startswith("cut:"):
        text = str(tree_query("delivery_fan_out_lean"))
        for name in spec.removeprefix("cut:").split("+"):
            for pattern, repl in CUTS[name]:
                text, n = re.subn(pattern, repl, text, count=1, flags=re.DOTALL)
                if n != 1:
                    raise SystemExit(f"cut {name!r}: {pattern!r} not found in the tree's text")
        return text
    raise SystemExit(
        f"{spec}: not a variant (tree, file:, cut:, notrig:, generic:, custom:, floor, probe:)"
    )


async def run(
    dsn: str,
    specs: list[str],
    events: int,
    leased: int,
    rounds: int,
    warm: int,
    explain: bool = False,
    orgs: int = 1,
    per_org: int = 1,
) -> dict[str, Any]:
    await apply_migrations(dsn)
    texts = {s: variant(s) for s in specs}
    setup = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with setup:
        await setup.execute("SET default_toast_compression = lz4")
        # events round-robin over the orgs: drain1's shape at 1 x 1, the drain's at 16 x 1,
        # the fan-out scenario's at 1 x 10
        hooks = await create_webhooks(setup, "http://127.0.0.1:9", orgs=orgs, per_org=per_org)
        await publish_backlog(setup, hooks.orgs, warm)
        params = fan_out_params(batch=warm, claim=0)
        got = await (
            await setup.execute(str(tree_query("delivery_fan_out_lean")), params)
        ).fetchall()
        assert int(got[-1]["events_claimed"]) == warm, got[-1]
        await publish_backlog(setup, hooks.orgs, events)
        await setup.execute("ANALYZE")
        rows = await (await setup.execute("SELECT id, url FROM webhooks ORDER BY id")).fetchall()
        assert len(rows) == orgs * per_org
        webhook, url = rows[0]["id"], rows[0]["url"]
    params = {
        **fan_out_params(batch=events, claim=leased),
        # every webhook's room: `leased` (the per-webhook cap never binds)
        "room_ids": [r["id"] for r in rows],
        "room_left": [leased] * len(rows),
        "webhook": webhook,
        "url": url,
        "max_attempts": 4,
    }
    conns: dict[str, psycopg.AsyncConnection[Any]] = {}
    pids: dict[str, int] = {}
    for s in specs:
        c = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
        await c.execute("SET default_toast_compression = lz4")  # as the daemon's sessions
        for prefix, setting in PREFIXES.items():
            if s.startswith(prefix):
                await c.execute(setting)
        conns[s] = c
        pid_row = await (await c.execute("SELECT pg_backend_pid() AS p")).fetchone()
        assert pid_row is not None
        pids[s] = int(pid_row["p"])
    cpu: dict[str, list[float]] = {s: [] for s in specs}
    wal: dict[str, list[int]] = {s: [] for s in specs}
    shape: dict[str, tuple[int, int]] = {}
    plans: dict[str, tuple[int, int]] = {}  # (generic, custom) plans of its prepared statements
    try:
        for r in range(rounds):
            order = specs[r % len(specs) :] + specs[: r % len(specs)]
            for s in order:
                conn, pid = conns[s], pids[s]
                await conn.execute("BEGIN")
                lsn = await wal_lsn(conn)
                before = backend_cpu(pid)
                cur = await conn.execute(texts[s], {**params, "batch": events})
                rows = await cur.fetchall() if cur.description else []
                spent = backend_cpu(pid) - before
                written = await wal_lsn(conn) - lsn
                await conn.execute("ROLLBACK")
                if s.startswith(("probe:", "floor")):
                    shape[s] = (len(rows), cur.rowcount)
                else:
                    shape[s] = (
                        sum(1 for x in rows if x["id"] is not None),
                        int(rows[-1]["deliveries_created"]),
                    )
                # per delivery created (a probe: per event; drain1's and the drain's shapes
                # create one per event)
                made = events if s.startswith("probe:") else max(1, shape[s][1])
                if r >= 10:
                    cpu[s].append(spent * 1000 / made)
                    wal[s].append(written // made)
        for s in specs:
            plans[s] = await prepared_plans(conns[s])
        if explain:
            # each variant's plan, run once more (rolled back), with per-node timing
            for s in specs:
                conn = conns[s]
                await conn.execute("BEGIN")
                cur = await conn.execute(
                    "EXPLAIN (ANALYZE, BUFFERS, VERBOSE false, FORMAT text) " + texts[s],
                    {**params, "batch": events},
                )
                plan = "\n".join(str(x["QUERY PLAN"]) for x in await cur.fetchall())
                await conn.execute("ROLLBACK")
                print(f"--- {s}\n{plan}")
    finally:
        for c in conns.values():
            await c.close()
    return {
        s: {
            "median_ms": round(statistics.median(cpu[s]), 5),
            "mean_ms": round(statistics.fmean(cpu[s]), 5),
            "wal_bytes": statistics.median(wal[s]),
            "calls": len(cpu[s]),
            "returned_created": shape.get(s),
            "generic_custom_plans": plans.get(s),
        }
        for s in specs
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "variants",
        nargs="*",
        help="tree, file:PATH, cut:A+B, notrig:/generic:/custom:SPEC, floor, probe:X",
    )
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--db", default="bench_fanout_parts", help="database created and dropped")
    ap.add_argument("--own-server", action="store_true", help="on a throwaway server")
    ap.add_argument("--events", type=int, default=425, help="events a call (drain1 live: ~425)")
    ap.add_argument("--leased", type=int, default=40, help="deliveries created leased a call")
    ap.add_argument("--rounds", type=int, default=120)
    ap.add_argument("--warm", type=int, default=1000, help="events fanned out and kept first")
    ap.add_argument("--explain", action="store_true", help="print each variant's plan at the end")
    ap.add_argument("--show", help="print the text of this variant and exit")
    ap.add_argument("--orgs", type=int, default=1, help="orgs (the drain: 16)")
    ap.add_argument("--per-org", type=int, default=1, help="webhooks per org (fan-out: 10)")
    a = ap.parse_args()
    if a.show:
        print(variant(a.show))
        return
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        r = await run(
            db_dsn, a.variants, a.events, a.leased, a.rounds, a.warm, a.explain, a.orgs, a.per_org
        )
    base = r[a.variants[0]]["median_ms"]
    for s, d in r.items():
        print(
            f"{s}: backend CPU per created delivery median {d['median_ms']:.5f} ms"
            f" ({d['median_ms'] - base:+.5f})  mean {d['mean_ms']:.5f}  WAL {d['wal_bytes']} B"
            f"  returned/created {d['returned_created']}  plans (generic, custom)"
            f" {d['generic_custom_plans']}  ({d['calls']} calls)"
        )


if __name__ == "__main__":
    started = time.time()
    asyncio.run(main())
    print(f"({time.time() - started:.0f} s)", file=sys.stderr)
