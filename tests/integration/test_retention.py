"""Retention removes old DLQ and finished rows in batches and keeps everything else."""

from __future__ import annotations

import uuid
from importlib import resources

import hostdb
from psycopg import sql
from structlog.testing import capture_logs

from dispatcher.db import make_pool
from dispatcher.retention import NIL_UUID, Retention
from dispatcher.settings import load_settings

SCRIPT = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
PASSWORD = "rt-" + uuid.uuid4().hex


async def age(conn, days: int, where: str) -> None:
    await conn.execute(
        f"UPDATE webhook_deliveries SET created_at = now() - make_interval(days => {days}), "
        f"delivered_at = now() - make_interval(days => {days}) WHERE {where}"
    )


async def test_old_rows_are_purged_by_their_rules(conn, db_dsn) -> None:
    short = await hostdb.create_org(conn, "Short")
    await hostdb.set_retry_config(conn, short, dlq_retention_days=7)
    default = await hostdb.create_org(conn, "Default")
    rows = []
    for org in (short, default):
        hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])
        for status in ("dlq", "success", "failed", "pending", "retrying"):
            cur = await conn.execute(
                "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload,"
                " request_url, request_headers, request_body, status)"
                " SELECT %s, %s, 'job.created', '{}', 'http://x', '{}', '{}', %s"
                " FROM generate_series(1, 5) RETURNING id",
                (org, hook["id"], status),
            )
            rows += await cur.fetchall()
    await age(conn, 10, "true")
    await conn.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
        " outcome, attempted_at) SELECT gen_random_uuid(), %s, gen_random_uuid(), 1, 'delivered',"
        " now() - make_interval(days => d) + interval '12 hours' FROM generate_series(1, 40) d",
        (short,),
    )

    settings = load_settings(database_url=db_dsn)
    pool = make_pool(settings)
    await pool.open(wait=True)
    try:
        purged = await Retention(pool, days=30, batch=2).run_once()
        # 10 days old: only the short-retention org's DLQ (7 days) goes; 30-day rules keep the rest.
        assert (purged.dlq, purged.finished) == (5, 0)
        assert purged.attempts == 10  # 30.5 .. 39.5 days old
        await age(conn, 40, "true")
        purged = await Retention(pool, days=30, batch=3).run_once()
        assert (purged.dlq, purged.finished) == (5, 20)
    finally:
        await pool.close()
    left = await hostdb.deliveries(conn)
    assert sorted({r["status"] for r in left}) == ["pending", "retrying"]
    assert len(left) == 20


async def test_held_events_older_than_dlq_retention_are_purged(conn, db_dsn) -> None:
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(conn, org, dlq_retention_days=7)
    hook = await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"])
    await conn.execute("UPDATE webhooks SET status = 'disabled' WHERE id = %s", (hook["id"],))
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " SELECT %s, gen_random_uuid(), %s, now() - make_interval(days => d) + interval '12 hours'"
        " FROM generate_series(1, 10) d",
        (hook["id"], org),
    )
    pool = make_pool(load_settings(database_url=db_dsn))
    await pool.open(wait=True)
    try:
        purged = await Retention(pool, days=30, batch=2).run_once()
    finally:
        await pool.close()
    assert purged.held == 3  # 7.5, 8.5 and 9.5 days old
    cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.held")
    assert (await cur.fetchone())["n"] == 7


async def _numbered(conn, org, hook, n: int):
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body) VALUES (%s, %s, 'job.created', '{}',"
        " 'https://example.com/hook', '{}', '{}') RETURNING id",
        (org, hook),
    )
    row = await cur.fetchone()
    await conn.execute(
        "INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence)"
        " VALUES (%s, %s, %s)",
        (row["id"], hook, n),
    )
    return row["id"]


async def _numbers(conn) -> list[int]:
    cur = await conn.execute("SELECT sequence FROM dispatcher.delivery_sequence ORDER BY 1")
    return [r["sequence"] for r in await cur.fetchall()]


async def _delete_bypassing_triggers(conn, ids) -> None:
    """As a logical replication apply or a restore does: no trigger fires."""
    await conn.execute("SET session_replication_role = replica")
    try:
        await conn.execute("DELETE FROM webhook_deliveries WHERE id = ANY(%s)", (ids,))
    finally:
        await conn.execute("RESET session_replication_role")


async def test_numbers_left_without_their_delivery_are_swept(conn, db_dsn) -> None:
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"]))["id"]
    ids = [await _numbered(conn, org, hook, n) for n in range(1, 8)]
    await _delete_bypassing_triggers(conn, ids[1::2])  # 2, 4, 6
    assert await _numbers(conn) == [1, 2, 3, 4, 5, 6, 7]  # the triggers were bypassed

    pool = make_pool(load_settings(database_url=db_dsn))
    await pool.open(wait=True)
    try:
        # batches of 2 from a random point, wrapping around: the whole table in one pass
        purged = await Retention(pool, days=30, batch=2).run_once()
    finally:
        await pool.close()
    assert purged.orphan_numbers == 3
    assert await _numbers(conn) == [1, 3, 5, 7]


async def test_the_sweep_examines_a_bounded_share_per_pass_and_goes_on_from_there(
    conn, db_dsn
) -> None:
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"]))["id"]
    ids = [await _numbered(conn, org, hook, n) for n in range(1, 9)]
    by_key = sorted(ids)  # the sweep's order: delivery_id
    live = by_key[:3]
    await _delete_bypassing_triggers(conn, by_key[3:])
    cur = await conn.execute(
        "SELECT sequence FROM dispatcher.delivery_sequence WHERE delivery_id = ANY(%s) ORDER BY 1",
        (live,),
    )
    kept = [r["sequence"] for r in await cur.fetchall()]

    pool = make_pool(load_settings(database_url=db_dsn))
    await pool.open(wait=True)
    try:
        retention = Retention(pool, days=30, batch=1, pause=0, orphan_scan=3)
        retention._orphan_after = NIL_UUID  # from the start of the key range
        passes = [(await retention.run_once()).orphan_numbers for _ in range(3)]
    finally:
        await pool.close()
    # at most 3 numbers examined per pass; each pass goes on where the last one stopped:
    # the first sees only live deliveries, the second the next three (orphans), the third
    # the last two and wraps around. A cursor that started over would purge 0 again.
    assert passes == [0, 3, 2], passes
    assert await _numbers(conn) == kept


async def test_the_sweep_refuses_to_run_when_row_level_security_hides_deliveries(
    conn, db_dsn
) -> None:
    """A role without BYPASSRLS under a policy that hides deliveries: the hidden deliveries
    must not look gone. The sweep raises inside (row_security = off), is logged and skipped;
    the rest of retention goes on."""
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "http://127.0.0.1:9/x", ["*"]))["id"]
    ids = [await _numbered(conn, org, hook, n) for n in range(1, 5)]
    await _delete_bypassing_triggers(conn, ids[:1])  # number 1 is a real orphan
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " VALUES (%s, gen_random_uuid(), %s, now() - interval '400 days')",
        (hook, org),
    )
    await conn.execute(SCRIPT)
    name = f"disp_{uuid.uuid4().hex[:12]}"
    await conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} NOBYPASSRLS IN ROLE dispatcher").format(
            sql.Identifier(name), sql.Literal(PASSWORD)
        )
    )
    await conn.execute("ALTER TABLE public.webhook_deliveries ENABLE ROW LEVEL SECURITY")
    await conn.execute("CREATE POLICY hide_all ON public.webhook_deliveries USING (false)")
    role_dsn = f"postgresql://{name}:{PASSWORD}@{db_dsn.split('@', 1)[1]}"
    pool = make_pool(load_settings(database_url=role_dsn))
    await pool.open(wait=True)
    try:
        with capture_logs() as logs:
            purged = await Retention(pool, days=30, batch=2).run_once()
    finally:
        await pool.close()
        await conn.execute("DROP POLICY hide_all ON public.webhook_deliveries")
        await conn.execute("ALTER TABLE public.webhook_deliveries DISABLE ROW LEVEL SECURITY")
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,)
        )
        await conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
    assert purged.orphan_numbers == 0
    assert purged.orphan_sweep_refused
    assert purged.held == 1  # the rest of retention went on
    assert await _numbers(conn) == [1, 2, 3, 4]  # no live delivery's number deleted
    refused = [e for e in logs if e["event"] == "retention_orphan_sweep_refused"]
    assert refused and refused[0]["error"] == "InsufficientPrivilege", logs
