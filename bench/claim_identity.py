"""The rows `delivery_claim_due` leases, the tree's statement against a variant's (issue 12).

`bench/claim_parts.py` checks its variants lease the first variant's rows in one shape (one
webhook, every row pending). Here one database holds six webhooks over two orgs: one failing
past its probe spacing (one probe a claim), one not active (its rows always taken), the
others healthy; 5-40 rows each, pending and retrying, with due_at tied among retries (a batch
of failures recorded by one statement) and, unless ``--unique``, in (due_at, created_at) too
(a fan-out's batch: one created_at). Each of ``--trials`` claims draws a room as admission
gives it (some webhooks listed with 0-10 left, the full ones in full_ids), a per-webhook cap,
a limit (scan 4x) and 0-20 rows held FOR UPDATE by another session (SKIP LOCKED), then runs
both statements in rolled-back transactions and compares the leased (id, sequence, failing)::

    .venv/bin/python bench/claim_identity.py --own-server file:bench/claim_variants/prefix.sql

A claim that differs where rows tie in (due_at, created_at) picked another of the tied rows:
the statement's ORDER BY does not say which. docs/performance.md, "the claim statement, part
by part (claimparts)".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

sys.path.insert(0, os.getcwd())  # the tree under test

from bench.claim_parts import variant
from bench.statement_cpu import fresh_database, server
from bench.workload import create_webhooks
from dispatcher.migrations import apply_migrations

INSERT = (
    "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
    " request_headers, request_body, status, created_at, next_retry_at)"
    " SELECT w.org_id, w.id, 'job.created', '{}', w.url, '{}', repeat('x', 100), %(status)s,"
    " %(created)s, %(retry)s FROM webhooks w WHERE w.id = %(hook)s"
)


async def fill(conn: psycopg.AsyncConnection[Any], rnd: random.Random, unique: bool) -> list[Any]:
    await create_webhooks(conn, "http://127.0.0.1:9", orgs=2, per_org=3)
    cur = await conn.execute("SELECT id FROM webhooks ORDER BY id")
    hooks = [r["id"] for r in await cur.fetchall()]
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = 5,"
        " last_failure_at = now() - interval '1 day' WHERE id = %s",
        (hooks[0],),
    )
    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hooks[1],))
    row = await (await conn.execute("SELECT now() - interval '1 hour' AS t")).fetchone()
    assert row is not None
    stamps = [row["t"] + timedelta(seconds=s) for s in range(0, 60, 6)]
    for h in hooks:
        for _ in range(rnd.randint(5, 40)):
            jitter = timedelta(microseconds=rnd.randint(1, 999_999)) if unique else timedelta()
            if rnd.random() < 0.6:
                created, retry, status = rnd.choice(stamps) + jitter, None, "pending"
            else:  # due at one of a few instants, created at distinct earlier ones
                retry = rnd.choice(stamps) + timedelta(seconds=3)
                created = retry - timedelta(seconds=rnd.randint(1, 500)) - jitter
                status = "retrying"
            await conn.execute(
                INSERT, {"status": status, "created": created, "retry": retry, "hook": h}
            )
    await conn.execute("ANALYZE")
    return hooks


def inside_room(rows: list[Any], params: dict[str, Any], hooks: list[Any]) -> bool:
    """Every active webhook's leased rows within what the room allows it (the failing one: 1)."""
    room = dict(zip(params["room_ids"], params["room_left"], strict=True))
    for h in hooks[:1] + hooks[2:]:  # hooks[1] is not active: all its rows may be taken
        allowed = min(1 if h == hooks[0] else params["hook_cap"], room.get(h, params["hook_cap"]))
        if sum(1 for r in rows if r["webhook_id"] == h) > allowed:
            return False
    return True


async def run(dsn: str, spec: str, trials: int, unique: bool, seed: int) -> tuple[int, int]:
    """(claims whose leased rows differ, claims whose rows' (due_at, created_at)
    differ: the rows of those differ beyond a choice among tied rows)"""
    await apply_migrations(dsn)
    rnd = random.Random(seed)
    tree, _ = variant("tree", 0)
    text, setup = variant(spec, 1)
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    other = await psycopg.AsyncConnection.connect(dsn, autocommit=True, row_factory=dict_row)
    async with conn, other:
        for stmt in setup:
            await conn.execute(stmt)
        hooks = await fill(conn, rnd, unique)
        cur = await conn.execute(
            "SELECT id, webhook_id, coalesce(next_retry_at, created_at) AS due_at, created_at"
            " FROM webhook_deliveries"
        )
        keys = {r["id"]: (r["due_at"], r["created_at"]) for r in await cur.fetchall()}
        differ = differ_keys = 0
        for t in range(trials):
            limit = rnd.randint(1, 30)
            listed = rnd.sample(hooks, rnd.randint(0, len(hooks)))
            left = [rnd.randint(0, 10) for _ in listed]
            params = {
                "room_ids": listed,
                "room_left": left,
                "full_ids": [k for k, n in zip(listed, left, strict=True) if n <= 0],
                "hook_cap": rnd.randint(1, 20),
                "failing_after": 3,
                "lease": 30,
                "limit": limit,
                "scan": 4 * limit,
            }
            await other.execute("BEGIN")
            await other.execute(
                "SELECT id FROM webhook_deliveries ORDER BY random() LIMIT %s FOR UPDATE",
                (rnd.randint(0, 20),),
            )
            got, got_keys = [], []
            for q in (tree, text):
                await conn.execute("BEGIN")
                rows = await (await conn.execute(q, params)).fetchall()
                await conn.execute("ROLLBACK")
                got.append(sorted((str(r["id"]), r["sequence"], r["failing"]) for r in rows))
                got_keys.append(sorted(keys[r["id"]] for r in rows))
            await other.execute("ROLLBACK")
            differ_keys += got_keys[0] != got_keys[1] or not inside_room(rows, params, hooks)
            if got[0] != got[1]:
                differ += 1
                if differ <= 3:
                    print(f"claim {t}: {len(got[0])} / {len(got[1])} rows, {params}")
    return differ, differ_keys


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("variant", help="as bench/claim_parts.py's (file:PATH, cut:A+B, inline)")
    ap.add_argument("--dsn", default="host=127.0.0.1 user=postgres", help="server to use")
    ap.add_argument("--db", default="bench_claim_identity", help="database created and dropped")
    ap.add_argument("--own-server", action="store_true", help="on a throwaway server")
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--unique", action="store_true", help="no two rows tie in (due_at, created_at)")
    a = ap.parse_args()
    with server(a) as dsn, fresh_database(dsn, a.db) as db_dsn:
        differ, beyond_ties = await run(db_dsn, a.variant, a.trials, a.unique, a.seed)
    print(
        f"{a.variant}: {a.trials} claims, {differ} lease other rows than the tree's,"
        f" {beyond_ties} beyond a choice among rows tied in (due_at, created_at)"
    )


if __name__ == "__main__":
    asyncio.run(main())
