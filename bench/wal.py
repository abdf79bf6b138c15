"""What one delivery costs the primary in WAL, dead rows and vacuum, and what retention costs.

    python -m bench.wal [--events 20000] [--orgs 10] [--out FILE]

docs/scaling.md takes its figures from this. On a throwaway cluster (the benchmark's, with
full_page_writes on and wal_level replica, as in production): N events through
publish_event() (one webhook per org, so N deliveries), then one daemon drains them
(bench/drain.py, which runs a CHECKPOINT first, so pages touched again are full-page images
as after every checkpoint in production). Around each phase: pg_current_wal_lsn() and
pg_stat_wal (records, full-page images), and per table pg_stat_user_tables (inserts,
updates, HOT updates, deletes, dead rows). Then VACUUM of the tables the drain churned,
timed, with its WAL; and attempt-history retention both ways: a day partition of N rows
dropped whole, against N rows deleted from the DEFAULT partition and vacuumed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import psycopg
from psycopg.rows import dict_row

from bench.drain import Drain
from bench.infra import BenchCluster, DaemonSpec
from bench.receiver import ReceiverProcess
from bench.workload import create_webhooks, publish_backlog

TABLES = ("events", "outbox", "webhook_deliveries", "webhooks", "attempts")


async def _wal(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    cur = await conn.execute(
        "SELECT pg_current_wal_lsn() AS lsn, s.wal_records, s.wal_fpi, s.wal_bytes"
        " FROM pg_stat_wal s"
    )
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def _delta(
    conn: psycopg.AsyncConnection[Any], before: dict[str, Any], per: int
) -> dict[str, Any]:
    after = await _wal(conn)
    cur = await conn.execute("SELECT pg_wal_lsn_diff(%s, %s) AS b", (after["lsn"], before["lsn"]))
    row = await cur.fetchone()
    assert row is not None
    nbytes = int(row["b"])
    records = int(after["wal_records"] - before["wal_records"])
    fpi = int(after["wal_fpi"] - before["wal_fpi"])
    return {
        "wal_bytes": nbytes,
        "wal_bytes_per_unit": round(nbytes / per, 1),
        "wal_records_per_unit": round(records / per, 2),
        "full_page_images_per_1000": round(fpi * 1000 / per, 2),
    }


async def _tables(conn: psycopg.AsyncConnection[Any]) -> dict[str, dict[str, int]]:
    await conn.execute("SELECT pg_stat_force_next_flush()")
    cur = await conn.execute(
        "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del, n_dead_tup"
        " FROM pg_stat_user_tables WHERE relname = ANY(%s)",
        (list(TABLES),),
    )
    return {
        r["relname"]: {k: int(v) for k, v in r.items() if k != "relname"}
        for r in await cur.fetchall()
    }


def _per(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]], n: int
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for table, stats in after.items():
        base = before.get(table, {})
        out[table] = {
            k: round((v - base.get(k, 0)) / n, 3) if k != "n_dead_tup" else round(v / n, 3)
            for k, v in stats.items()
        }
    return out


async def measure(
    cluster: BenchCluster, receiver: ReceiverProcess, events: int, orgs: int
) -> dict[str, Any]:
    try:
        db = cluster.fresh_database("wal")
        async with await psycopg.AsyncConnection.connect(
            cluster.dsn(db), autocommit=True, row_factory=dict_row
        ) as conn:
            await conn.execute("ALTER SYSTEM SET autovacuum = off")  # vacuum measured below
            await conn.execute("SELECT pg_reload_conf()")
            hooks = await create_webhooks(conn, receiver.url(), orgs=orgs, per_org=1)
            t0 = await _tables(conn)
            w0 = await _wal(conn)
            await publish_backlog(conn, hooks.orgs, events)
            publish = await _delta(conn, w0, events)
            t1 = await _tables(conn)
            w1 = await _wal(conn)
            drain = await Drain(cluster, receiver, DaemonSpec(), timeout=900).run(db, events)
            drained = await _delta(conn, w1, events)
            t2 = await _tables(conn)

            cur = await conn.execute(
                "SELECT pg_table_size('public.webhook_deliveries') AS heap,"
                " pg_indexes_size('public.webhook_deliveries') AS indexes,"
                " pg_total_relation_size('public.events') AS events"
            )
            sizes = await cur.fetchone()
            assert sizes is not None
            storage = {
                "deliveries_table_bytes_per_delivery": round(sizes["heap"] / events),
                "deliveries_index_bytes_per_delivery": round(sizes["indexes"] / events),
                "events_bytes_per_event": round(sizes["events"] / events),
                "note": "after the drain, before VACUUM (dead versions included)",
            }
            w2 = await _wal(conn)
            started = time.perf_counter()
            await conn.execute(
                "VACUUM public.webhook_deliveries, dispatcher.outbox, public.webhooks"
            )
            vacuum_s = time.perf_counter() - started
            vacuum = await _delta(conn, w2, events)
            vacuum["seconds"] = round(vacuum_s, 3)
            vacuum["dead_rows"] = sum(
                t2[t]["n_dead_tup"] for t in ("webhook_deliveries", "outbox", "webhooks")
            )
            vacuum["dead_rows_per_s"] = round(vacuum["dead_rows"] / max(vacuum_s, 1e-6))

            retention = await _retention(conn, events)
            await conn.execute("ALTER SYSTEM RESET autovacuum")
            await conn.execute("SELECT pg_reload_conf()")
        return {
            "server_version": cluster.server_version,
            "events": events,
            "deliveries": events,
            "body_bytes": drain.get("body_bytes"),
            "drain_deliveries_per_s": drain.get("deliveries_per_s"),
            "postgres_cpu_s_per_1000": drain.get("postgres_cpu_s_per_1000"),
            "publish_per_event": publish,
            "drain_per_delivery": drained,
            "rows_per_event_publish": _per(t0, t1, events),
            "rows_per_delivery_drain": _per(t1, t2, events),
            "storage": storage,
            "vacuum_after_drain": vacuum,
            "attempt_retention": retention,
        }
    finally:
        await receiver.aclose()


async def _retention(conn: psycopg.AsyncConnection[Any], n: int) -> dict[str, Any]:
    """N attempt rows dropped as a day partition, against N rows deleted from DEFAULT."""
    await conn.execute(
        "SELECT dispatcher.ensure_attempt_partitions_v1((now() AT TIME ZONE 'UTC')::date - 40, 1)"
    )
    fill = (
        "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
        " outcome, response_status, duration_ms, error_message, attempted_at)"
        " SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 2, 'retryable', 503,"
        " 120, 'HTTP 503 Service Unavailable', {at} FROM generate_series(1, {n:d})"
    )
    day = "((now() AT TIME ZONE 'UTC')::date - 40 + interval '12 hours') AT TIME ZONE 'UTC'"
    await conn.execute(fill.format(at=day, n=n))
    await conn.execute(fill.format(at="now() - interval '50 days'", n=n))
    await conn.execute("CHECKPOINT")
    await conn.execute("ANALYZE dispatcher.attempts_default")
    out: dict[str, Any] = {"rows": n}
    w = await _wal(conn)
    started = time.perf_counter()
    await conn.execute("SELECT * FROM dispatcher.drop_attempt_partitions_v1(30)")
    out["drop_partition"] = {
        **await _delta(conn, w, n),
        "seconds": round(time.perf_counter() - started, 3),
    }
    w = await _wal(conn)
    started = time.perf_counter()
    await conn.execute(
        "DELETE FROM dispatcher.attempts_default WHERE attempted_at < now() - interval '30 days'"
    )
    out["delete_rows"] = {
        **await _delta(conn, w, n),
        "seconds": round(time.perf_counter() - started, 3),
    }
    w = await _wal(conn)
    started = time.perf_counter()
    await conn.execute("VACUUM dispatcher.attempts_default")
    out["vacuum_after_delete"] = {
        **await _delta(conn, w, n),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return out


PG_CPU_MS = 0.17  # PostgreSQL CPU per delivery, docs/performance.md (table beyond shared buffers)


def sizing(result: dict[str, Any], retention_days: int = 30) -> str:
    """docs/scaling.md's table: the measured unit costs times deliveries per day (one
    delivery per event; fan-out shares the event's publish cost between its deliveries)."""
    wal = (
        result["publish_per_event"]["wal_bytes_per_unit"]
        + result["drain_per_delivery"]["wal_bytes_per_unit"]
        + result["vacuum_after_drain"]["wal_bytes_per_unit"]
    )
    storage = result["storage"]
    # live row after VACUUM: half the two versions a delivery leaves (insert + outcome update)
    row = storage["deliveries_table_bytes_per_delivery"] / 2
    row += storage["deliveries_index_bytes_per_delivery"]
    lines = [
        f"WAL per delivery {wal / 1000:.2f} kB; live row {row / 1000:.2f} kB; "
        f"PostgreSQL CPU {PG_CPU_MS} ms; 2 dead rows",
        "| deliveries/day | average/s | WAL/day | WAL MB/s | PostgreSQL cores | dead rows/day "
        f"| webhook_deliveries at {retention_days} days |",
        "|---|---|---|---|---|---|---|",
    ]
    for per_day in (1e6, 1e7, 5e7, 1e8, 5e8):
        per_s = per_day / 86400
        lines.append(
            f"| {per_day / 1e6:,.0f} M | {per_s:,.0f} | {wal * per_day / 1e9:,.1f} GB "
            f"| {wal * per_s / 1e6:.2f} | {per_s * PG_CPU_MS / 1000:.2f} "
            f"| {2 * per_day / 1e6:,.0f} M | {row * per_day * retention_days / 1e12:,.2f} TB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.wal", description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--orgs", type=int, default=10)
    parser.add_argument("--out", help="also write the JSON result to this file")
    parser.add_argument("--sizing", metavar="FILE", help="only print the sizing of a saved result")
    args = parser.parse_args()
    if args.sizing:
        with open(args.sizing) as f:
            print(sizing(json.load(f)))
        return
    cluster = BenchCluster()
    # As in production (the test cluster turns them off): full-page images after each
    # checkpoint, and WAL a streaming replica can follow.
    cluster.pg.settings.update({"full_page_writes": "on", "wal_level": "replica"})
    receiver = ReceiverProcess()
    try:
        cluster.start()  # migrates the template with its own event loop
        receiver.start()
        result = asyncio.run(measure(cluster, receiver, args.events, args.orgs))
    finally:
        receiver.stop()
        cluster.cleanup()
    text = json.dumps(result, indent=2, default=str)
    print(text)
    print(sizing(result))
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
