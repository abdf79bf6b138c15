"""Backend CPU per delivery of the drain's hot statements, one connection (issue 12).

The 16-webhook drain's statement mix without the daemon, HTTP or the receiver: the fan-out
(64 events, all leased) while fewer than 256 deliveries are leased, else the outcomes of the
oldest 50 (all delivered at the first attempt), then the webhook counters when the outcome
statement asks for them. With ``--webhooks 1`` the rows beyond the webhook's cap are created
pending and leased by ``delivery_claim_due`` (44 a call), as in the one-webhook drain;
``--outcomes-per-call 1`` writes one outcome a statement, as the recorder does at a low
rate. CPU is read from ``/proc/<backend pid>/schedstat`` (ns; ``stat``'s 10 ms ticks where
there is none) around each statement, so other work on the machine changes it little; one
figure per statement, in ms per delivery. Run from the root of the tree to measure (its
migrations, its SQL), with that tree's venv, against a PostgreSQL where the user may create
databases::

    .venv/bin/python bench/statement_cpu.py --dsn "host=127.0.0.1 user=postgres"
    cd /old/tree && .venv/bin/python /new/tree/bench/statement_cpu.py   # another commit

``--sql FILE`` takes the statements found in FILE (named blocks) instead of the tree's: a
variant measured against its base in alternating runs. Statement names are looked up with
and without the ``delivery_`` prefix, so trees from before the split of queries.sql work.
For the outcome statement the replay also reports WAL bytes per delivery (the insert LSN read
around each call), and with ``--own-server`` (pg_stat_statements) shared buffers per delivery
and server time per call. ``--probe FILE`` runs the block ``probe`` of FILE with the same
``rows`` parameter right before each outcome statement and reports it apart (CPU, WAL,
buffers): a part of the statement alone, e.g. the ``jsonb_to_recordset`` decode
(bench/outcome_parts/, docs/performance.md, "the outcome statement, part by part").

``--single N`` measures instead the fan-out of ONE fresh event, N times (issue 12's 200
events/s to one webhook: each pass finds one event): 200 orgs with one webhook each, 2,000
events (``--backlog``) fanned out and ``ANALYZE`` (statistics of a database that has been
working; ``--backlog 400``: of the bench's latency warm-up), then N
times: publish one event (round-robin over the orgs), fan it out (batch 256, claim 256, as the
daemon asks), backend CPU from ``/proc`` around the fan-out only. psycopg prepares the
statement after five runs, as in the daemon, so PostgreSQL may keep a generic plan made early
while the outbox's dead rows pile up (autovacuum off for the outbox, as between two of its
vacuums). Shared buffers and server time per call come from ``pg_stat_statements`` when the
server has it loaded; ``--own-server`` starts a throwaway one that has it (the bench's)::

    .venv/bin/python bench/statement_cpu.py --single 3000 --own-server
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, os.getcwd())  # the tree under test, also when run by path from another

from bench.workload import create_webhooks, publish_backlog
from dispatcher import queries as tree_queries
from dispatcher.migrations import apply_migrations
from dispatcher.queries import parse
from dispatcher.queries import query as tree_query

TICK = os.sysconf("SC_CLK_TCK")
IN_FLIGHT = 256
FAN_OUT_EVENTS = 64
OUTCOMES = 50


def backend_cpu(pid: int) -> float:
    """CPU time of a backend, in seconds: the scheduler's run time in ns
    (/proc/<pid>/schedstat) where the kernel has it, else utime + stime in clock ticks
    (10 ms: a part of a statement is then lost in the rounding)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def statements(sql_file: str | None) -> dict[str, str | None]:
    """The statements to replay, as the daemon of the tree sends them: the lean variant of a
    block where the tree has one (issue 12: what the daemon runs while no webhook is ordered,
    as here), and the block itself in trees from before."""
    # the loader of the tree under test: variants made, comments out (issue 12)
    load = getattr(tree_queries, "load", parse)
    override = load(Path(sql_file).read_text()) if sql_file else {}

    def find(name: str) -> str | None:
        for candidate in (f"delivery_{name}_lean", f"delivery_{name}", name):
            if candidate in override:
                return override[candidate]
        for candidate in (f"delivery_{name}_lean", f"delivery_{name}", name):
            try:
                return str(tree_query(candidate))
            except KeyError:
                pass
        return None

    names = ("fan_out", "claim_due", "record_outcomes", "apply_webhook_counters")
    return {n: find(n) for n in names}


def fan_out_params(*, batch: int, claim: int) -> dict[str, Any]:
    """delivery_fan_out's parameters as the daemon passes them with nothing in flight."""
    return {
        "lease": 30,
        "failing_after": 3,
        "hook_cap": 32,
        "only": None,
        "room_ids": [],
        "room_left": [],
        "full_ids": [],
        "batch": batch,
        "claim": claim,
    }


@contextmanager
def fresh_database(dsn: str, db: str) -> Iterator[str]:
    """A new database `db` on the server of `dsn` (dropped first if left over, and after)."""
    with psycopg.connect(f"{dsn} dbname=postgres", autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {db}")
        admin.execute(f"CREATE DATABASE {db}")
    try:
        yield f"{dsn} dbname={db}"
    finally:
        with psycopg.connect(f"{dsn} dbname=postgres", autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {db}")


def outcome(row: dict[str, Any], seq: int, now: str) -> dict[str, Any]:
    """A first attempt answered 204, as the recorder writes it."""
    return {
        "id": str(row["id"]),
        "webhook_id": str(row["webhook_id"]),
        "org_id": str(row["org_id"]),
        "claim": row["claim"].isoformat(),
        "seq": seq,
        "status": "success",
        "outcome": "delivered",
        "attempt": 1,
        "attempt_number": 1,
        "retry_in": None,
        "final": True,
        "counts": False,
        "success": True,
        "gone": False,
        "request_url": "http://127.0.0.1:9/h",
        "request_headers": {
            "webhook-id": str(row["id"]),
            "webhook-timestamp": "1764490000",
            "webhook-signature": "v1,abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG=",
            "content-type": "application/json",
        },
        "response_status": 204,
        "response_headers": {"Server": "Python/3.11 aiohttp/3.9"},
        "response_body": "",
        "duration_ms": 1,
        "error_message": None,
        "error_code": None,
        "started_at": now,
        "ended_at": now,
    }


# pg_stat_statements keeps a statement's first text: a leading comment names it there
MARKS = {"record_outcomes": "/* bench:record_outcomes */ ", "probe": "/* bench:probe */ "}


async def wal_lsn(conn: psycopg.AsyncConnection[Any]) -> int:
    """The server's WAL insert position, in bytes."""
    cur = await conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn AS b")
    return int((await cur.fetchone() or {})["b"])


async def prepared_plans(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    """How this connection's prepared statements ran so far: (generic plans, planned once;
    custom plans, planned again on every call)."""
    cur = await conn.execute(
        "SELECT sum(generic_plans) AS g, sum(custom_plans) AS c FROM pg_prepared_statements"
    )
    row = await cur.fetchone() or {}
    return int(row.get("g") or 0), int(row.get("c") or 0)


async def marked_stats(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, float]]:
    """Calls, server ms and shared buffers of the statements named by MARKS."""
    out: dict[str, dict[str, float]] = {}
    for name, mark in MARKS.items():
        cur = await conn.execute(
            "SELECT sum(calls) AS calls, sum(total_exec_time) AS exec_ms,"
            " sum(shared_blks_hit + shared_blks_read + shared_blks_dirtied) AS buffers,"
            " sum(shared_blks_hit + shared_blks_read) AS touched"
            " FROM pg_stat_statements WHERE query LIKE %s",
            (mark.replace("*", "_").strip() + "%",),
        )
        got = await cur.fetchone() or {}
        if got.get("calls"):
            out[name] = {k: float(v) for k, v in got.items()}
    return out


async def measure(
    dsn: str,
    events: int,
    webhooks: int,
    sql_file: str | None,
    per_call: int = OUTCOMES,
    probe_text: str | None = None,
) -> dict[str, Any]:
    await apply_migrations(dsn)
    q = statements(sql_file)
    fan_out, record, apply = q["fan_out"], q["record_outcomes"], q["apply_webhook_counters"]
    claim_due = q["claim_due"]
    assert fan_out and record, "no fan_out / record_outcomes statement in this tree"
    record = MARKS["record_outcomes"] + record
    probe = MARKS["probe"] + probe_text if probe_text else None
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with conn:
        await conn.execute("SET default_toast_compression = lz4")  # as the daemon's sessions
        hooks = await create_webhooks(conn, "http://127.0.0.1:9", orgs=webhooks, per_org=1)
        await publish_backlog(conn, hooks.orgs, events)
        await conn.execute("ANALYZE")
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        pid = int((await cur.fetchone() or {})["pid"])
        tracked = await statement_tracking(conn, quiet=True)
        params = fan_out_params(batch=FAN_OUT_EVENTS, claim=FAN_OUT_EVENTS)
        cpu = {"fan_out": 0.0, "claim_due": 0.0, "record_outcomes": 0.0}
        cpu["apply_webhook_counters"] = 0.0
        if probe:
            cpu["probe"] = 0.0
        wal = dict.fromkeys(("record_outcomes", "probe"), 0)
        calls = dict.fromkeys(cpu, 0)
        leased: list[dict[str, Any]] = []
        recorded, seq, outbox_empty, pending = 0, 0, False, 0
        now = datetime.now(UTC).isoformat()
        while not outbox_empty or leased or pending:
            if not outbox_empty and len(leased) < IN_FLIGHT:
                before = backend_cpu(pid)
                rows = await (await conn.execute(fan_out, params)).fetchall()
                cpu["fan_out"] += backend_cpu(pid) - before
                calls["fan_out"] += 1
                got_leased = [r for r in rows if r["id"] is not None]
                leased += got_leased
                # rows beyond the webhook's cap are created pending (one webhook): claimed below
                pending += int(rows[-1]["deliveries_created"]) - len(got_leased)
                outbox_empty = int(rows[-1]["events_claimed"]) == 0
                continue
            if pending and claim_due and len(leased) < IN_FLIGHT:
                before = backend_cpu(pid)
                cur = await conn.execute(claim_due, {**params, "limit": 44, "scan": 176})
                rows = await cur.fetchall()
                cpu["claim_due"] += backend_cpu(pid) - before
                calls["claim_due"] += 1
                leased += rows
                pending -= len(rows)
                if rows:
                    continue
                if not leased:
                    break  # nothing claimable: the count below tells
            batch, leased = leased[:per_call], leased[per_call:]
            body = orjson.dumps([outcome(r, seq + i, now) for i, r in enumerate(batch)])
            seq += len(batch)
            if probe:
                lsn = await wal_lsn(conn)
                before = backend_cpu(pid)
                await (await conn.execute(probe, {"rows": body.decode()})).fetchall()
                cpu["probe"] += backend_cpu(pid) - before
                calls["probe"] += 1
                wal["probe"] += await wal_lsn(conn) - lsn
            lsn = await wal_lsn(conn)
            before = backend_cpu(pid)
            got = await (await conn.execute(record, {"rows": body.decode()})).fetchone() or {}
            cpu["record_outcomes"] += backend_cpu(pid) - before
            calls["record_outcomes"] += 1
            wal["record_outcomes"] += await wal_lsn(conn) - lsn
            recorded += int(got["recorded"])
            if apply and got.get("webhooks"):
                before = backend_cpu(pid)
                await conn.execute(apply)
                cpu["apply_webhook_counters"] += backend_cpu(pid) - before
                calls["apply_webhook_counters"] += 1
        cur = await conn.execute(
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'"
        )
        succeeded = int((await cur.fetchone() or {})["n"])
        stats = await marked_stats(conn) if tracked else {}
    assert succeeded == recorded == events, (succeeded, recorded, events)
    per = {k: round(1000 * v / recorded, 4) for k, v in cpu.items()}
    total = round(sum(v for k, v in per.items() if k != "probe"), 4)
    detail: dict[str, dict[str, float]] = {}
    for name in ("record_outcomes", "probe"):
        if name not in cpu:
            continue
        d = {"wal_bytes": round(wal[name] / recorded, 1)}
        if name in stats:
            s = stats[name]
            d["buffers"] = round(s["touched"] / recorded, 2)
            d["dirtied_plus_touched"] = round(s["buffers"] / recorded, 2)
            d["server_ms_per_call"] = round(s["exec_ms"] / s["calls"], 4)
            d["server_ms_per_delivery"] = round(s["exec_ms"] / recorded, 5)
        detail[name] = d
    return {"ms_per_delivery": per, "total": total, "calls": calls, "per_delivery": detail}


SINGLE_BACKLOG = 2000


async def measure_single(
    dsn: str, calls: int, webhooks: int, sql_file: str | None, backlog: int = SINGLE_BACKLOG
) -> dict[str, Any]:
    """`calls` fan-outs of one fresh event each (module docstring, ``--single``)."""
    await apply_migrations(dsn)
    fan_out = statements(sql_file)["fan_out"]
    assert fan_out, "no fan_out statement in this tree"
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with conn:
        await conn.execute("SET default_toast_compression = lz4")  # as the daemon's sessions
        await conn.execute("ALTER TABLE dispatcher.outbox SET (autovacuum_enabled = false)")
        hooks = await create_webhooks(conn, "http://127.0.0.1:9", orgs=webhooks, per_org=1)
        await publish_backlog(conn, hooks.orgs, backlog)
        params = fan_out_params(batch=500, claim=0)
        while True:
            rows = await (await conn.execute(fan_out, params)).fetchall()
            if int(rows[-1]["events_claimed"]) == 0:
                break
        await conn.execute("ANALYZE")
        params.update(batch=256, claim=256)
        cur = await conn.execute("SELECT pg_backend_pid() AS pid")
        pid = int((await cur.fetchone() or {})["pid"])
        tracked = await statement_tracking(conn)
        cpu, wall, claimed = 0.0, 0.0, 0
        for i in range(calls):
            await publish_backlog(conn, [hooks.orgs[i % len(hooks.orgs)]], 1)
            before, started = backend_cpu(pid), time.perf_counter()
            rows = await (await conn.execute(fan_out, params)).fetchall()
            wall += time.perf_counter() - started
            cpu += backend_cpu(pid) - before
            claimed += int(rows[-1]["events_claimed"])
        stats: dict[str, Any] = {}
        if tracked:
            cur = await conn.execute(q_single_stats())
            stats = dict(await cur.fetchone() or {})
        cur = await conn.execute(
            "SELECT pg_relation_size('dispatcher.outbox') / 8192 AS outbox_pages"
        )
        pages = int((await cur.fetchone() or {})["outbox_pages"])
    assert claimed == calls, (claimed, calls)
    out: dict[str, Any] = {
        "calls": calls,
        "backend_cpu_ms": round(1000 * cpu / calls, 4),
        "client_ms": round(1000 * wall / calls, 4),
        "outbox_pages": pages,
    }
    if stats.get("calls"):
        n = int(stats["calls"])
        out["server_ms"] = round(float(stats["exec_ms"]) / n, 4)
        out["buffers"] = round(int(stats["buffers"]) / n, 1)
    return out


async def statement_tracking(conn: psycopg.AsyncConnection[Any], quiet: bool = False) -> bool:
    """pg_stat_statements on for this session and reset, when the server has it loaded."""
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.execute("SET pg_stat_statements.track = 'top'")
        await conn.execute("SELECT pg_stat_statements_reset()")
    except psycopg.Error as exc:
        if not quiet:
            print(f"no pg_stat_statements: {exc}", file=sys.stderr)
        return False
    return True


def numbered(text: str) -> str:
    """psycopg's %(name)s placeholders as it sends them: $1, $2... in order of first use."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text)


def q_single_stats() -> str:
    # the fan-out's row (or rows): pg_stat_statements shows the text with its constants as $n,
    # so it is found by a name only the fan-out has (trees with and without comments)
    return (
        "SELECT sum(calls) AS calls, sum(total_exec_time) AS exec_ms,"
        " sum(shared_blks_hit + shared_blks_read) AS buffers"
        " FROM pg_stat_statements"
        " WHERE query LIKE '%%claimed_events AS MATERIALIZED%%' AND dbid = ("
        "   SELECT oid FROM pg_database WHERE datname = current_database())"
    )


@contextmanager
def server(a: argparse.Namespace) -> Iterator[str]:
    """The DSN to use: --dsn, or a throwaway server with pg_stat_statements (--own-server)."""
    if not a.own_server:
        yield a.dsn
        return
    from bench.infra import BenchCluster

    owned = BenchCluster()
    owned.pg.start()
    try:
        dsn = f"host=127.0.0.1 port={owned.pg.port} user=postgres"
        with psycopg.connect(f"{dsn} dbname=postgres", autocommit=True) as admin:
            admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        yield dsn
    finally:
        owned.cleanup()


async def single(a: argparse.Namespace) -> None:
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        r = await measure_single(db_dsn, a.single, a.webhooks or 200, a.sql, a.backlog)
    extra = (
        f"  server {r['server_ms']:.4f} ms  {r['buffers']:.1f} shared buffers per call"
        if "buffers" in r
        else "  (buffers: pg_stat_statements not loaded; --own-server)"
    )
    print(
        f"{a.tag}: single-event fan-out x{r['calls']}: backend CPU {r['backend_cpu_ms']:.4f} ms"
        f"  client {r['client_ms']:.4f} ms{extra}  outbox {r['outbox_pages']} pages"
    )


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--db", default="bench_statement_cpu", help="database created and dropped")
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--webhooks", type=int, help="16 (drain), 200 (--single)")
    ap.add_argument("--sql", help="named blocks to use instead of the tree's")
    ap.add_argument(
        "--outcomes-per-call",
        type=int,
        default=OUTCOMES,
        help="outcomes per delivery_record_outcomes call (1: the recorder at a low rate)",
    )
    ap.add_argument("--tag", default=Path.cwd().name, help="label of the output line")
    ap.add_argument("--single", type=int, metavar="N", help="N fan-outs of one fresh event")
    ap.add_argument("--own-server", action="store_true", help="on a throwaway server")
    ap.add_argument("--backlog", type=int, default=SINGLE_BACKLOG, help="--single: events first")
    ap.add_argument("--probe", help="FILE: its block `probe` runs before each outcome statement")
    ap.add_argument("--json", action="store_true", help="the result as JSON too")
    a = ap.parse_args()
    if a.single:
        await single(a)
        return
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        r = await measure(db_dsn, a.events, a.webhooks or 16, a.sql, a.outcomes_per_call, a.probe)
    parts = "  ".join(f"{k} {v:.4f} ({r['calls'][k]})" for k, v in r["ms_per_delivery"].items())
    print(f"{a.tag}: {r['total']:.4f} ms backend CPU per delivery  {parts}")
    for name, d in r["per_delivery"].items():
        print(f"  {name} per delivery: " + "  ".join(f"{k} {v}" for k, v in d.items()))
    if a.json:
        print(orjson.dumps(r).decode())


if __name__ == "__main__":
    asyncio.run(main())
