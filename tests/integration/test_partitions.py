"""Partitioned history (issue 14 item 5): dispatcher.attempts by day, retention dropping whole
partitions; and the daemon on a host whose webhook_deliveries is partitioned by time."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import hostdb
import pytest_asyncio
from support.integrations import run_cli
from support.receiver import Reply

from dispatcher.app import App
from dispatcher.db import make_pool
from dispatcher.migrations import apply_migrations
from dispatcher.retention import Retention
from dispatcher.settings import load_settings
from dispatcher.tracing import Tracing

HOST_SCHEMA_SQL = Path(__file__).parent / "host_schema.sql"


async def one(conn: hostdb.Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def partitions(conn: hostdb.Conn) -> list[str]:
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'dispatcher.attempts'::regclass ORDER BY 1"
    )
    return [r["relname"] for r in await cur.fetchall()]


async def run_retention(dsn: str, days: int = 30) -> Any:
    pool = make_pool(load_settings(database_url=dsn))
    await pool.open(wait=True)
    try:
        return await Retention(pool, days=days, batch=50).run_once()
    finally:
        await pool.close()


async def test_attempts_are_partitioned_by_day_and_retention_drops_whole_days(db_dsn, conn):
    row = await one(
        conn, "SELECT relkind FROM pg_class WHERE oid = 'dispatcher.attempts'::regclass"
    )
    assert row["relkind"] == "p"
    today = (await one(conn, "SELECT (now() AT TIME ZONE 'UTC')::date AS d"))["d"]
    names = await partitions(conn)
    assert "attempts_default" in names
    assert f"attempts_p{today:%Y%m%d}" in names  # created by the migration, a week ahead too

    # 40 days ago had a partition (an old deployment's); 50 days ago had none (DEFAULT).
    await conn.execute(
        "SELECT dispatcher.ensure_attempt_partitions_v1((now() AT TIME ZONE 'UTC')::date - 40, 1)"
    )

    async def insert(at: str, n: int) -> None:
        """n attempts at the SQL time expression ``at``."""
        await conn.execute(
            "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
            " outcome, attempted_at) SELECT gen_random_uuid(), gen_random_uuid(),"
            f" gen_random_uuid(), 1, 'retryable', {at} FROM generate_series(1, {n:d})"
        )

    await insert("now()", 7)
    await insert(
        "((now() AT TIME ZONE 'UTC')::date - 40 + interval '12 hours') AT TIME ZONE 'UTC'", 300
    )
    await insert("now() - interval '50 days'", 5)
    old_part = next(p for p in await partitions(conn) if p != "attempts_default")
    await conn.execute(f"ANALYZE dispatcher.{old_part}")  # as autovacuum does
    assert (await one(conn, f"SELECT count(*) AS n FROM dispatcher.{old_part}"))["n"] == 300

    wal0 = (await one(conn, "SELECT pg_current_wal_lsn() AS l"))["l"]
    purged = await run_retention(db_dsn)
    assert purged.attempt_partitions_dropped == 1
    assert purged.attempts == 300 + 5  # the day by estimate, the DEFAULT rows one by one
    assert old_part not in await partitions(conn)
    left = await one(conn, "SELECT count(*) AS n FROM dispatcher.attempts")
    assert left["n"] == 7
    wal = await one(conn, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s) AS b", (wal0,))
    # dropping 300 rows' day is catalog work, not one WAL record per row
    assert wal["b"] < 300 * 100, wal

    # Rows of a day without a partition wait in DEFAULT and move when it is created.
    await insert("now() + interval '20 days'", 4)
    created = await one(
        conn,
        "SELECT dispatcher.ensure_attempt_partitions_v1("
        "(now() AT TIME ZONE 'UTC')::date + 20, 1) AS n",
    )
    assert created["n"] == 1
    ahead = [p for p in await partitions(conn) if p != "attempts_default"][-1]
    assert (await one(conn, f"SELECT count(*) AS n FROM dispatcher.{ahead}"))["n"] == 4
    assert (await one(conn, "SELECT count(*) AS n FROM dispatcher.attempts_default"))["n"] == 0
    # a second ensure creates nothing
    assert (await run_retention(db_dsn)).attempt_partitions_created == 0


def partitioned_host_schema() -> str:
    """The host's real schema with webhook_deliveries partitioned by month of created_at, as
    a host that outgrows one table would do it (the primary key must include created_at)."""
    sql = HOST_SCHEMA_SQL.read_text()
    table = sql.index("CREATE TABLE IF NOT EXISTS webhook_deliveries (")
    end = sql.index(");", table)
    body = sql[table:end]
    assert "id UUID PRIMARY KEY DEFAULT gen_random_uuid()," in body
    body = body.replace(
        "id UUID PRIMARY KEY DEFAULT gen_random_uuid(),",
        "id UUID NOT NULL DEFAULT gen_random_uuid(),",
    )
    body += ",\n  PRIMARY KEY (id, created_at)\n) PARTITION BY RANGE (created_at);\n"
    body += """
DO $p$
DECLARE m date := date_trunc('month', now() AT TIME ZONE 'UTC')::date - interval '2 months';
BEGIN
    FOR i IN 0..3 LOOP
        EXECUTE format('CREATE TABLE webhook_deliveries_%s PARTITION OF webhook_deliveries'
                       ' FOR VALUES FROM (%L) TO (%L)', to_char(m, 'YYYYMM'),
                       m::timestamp AT TIME ZONE 'UTC',
                       (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
        m := m + interval '1 month';
    END LOOP;
END
$p$;
CREATE TABLE webhook_deliveries_default PARTITION OF webhook_deliveries DEFAULT;
"""
    return sql[:table] + body + sql[end + 2 :]


@pytest_asyncio.fixture
async def partitioned_host_dsn(pg_cluster) -> AsyncIterator[str]:
    name = f"hp_{uuid.uuid4().hex}"
    pg_cluster.create_database(name)
    try:
        with pg_cluster.connect(name, autocommit=True) as c:
            c.execute(partitioned_host_schema())
        owner = pg_cluster.dsn(name, user="host_owner")
        with ThreadPoolExecutor(max_workers=1) as pool:
            await asyncio.wrap_future(pool.submit(lambda: asyncio.run(apply_migrations(owner))))
        yield pg_cluster.dsn(name)
    finally:
        pg_cluster.drop_database(name)


async def test_daemon_on_a_host_that_partitions_webhook_deliveries_by_time(
    partitioned_host_dsn, receiver
):
    dsn = partitioned_host_dsn
    async with await hostdb.connect(dsn) as conn:
        row = await one(
            conn, "SELECT relkind FROM pg_class WHERE oid = 'webhook_deliveries'::regclass"
        )
        assert row["relkind"] == "p"
        org = await hostdb.create_org(conn)
        await hostdb.set_retry_config(
            conn,
            org,
            max_retries=1,
            retry_strategy="fixed",
            base_delay_seconds=1,
            enable_jitter=False,
        )
        ok = await hostdb.create_webhook(conn, org, receiver.url("/ok"), ["job.*"])
        flaky = await hostdb.create_webhook(conn, org, receiver.url("/flaky"), ["job.*"])
        dead = await hostdb.create_webhook(conn, org, receiver.url("/dead"), ["job.*"])
        receiver.respond("/flaky", Reply(500), Reply(200))
        receiver.respond("/dead", Reply(503), Reply(503), Reply(200))
        settings = load_settings(
            database_url=dsn, metrics_address="", poll_interval=0.2, log_format="json"
        )
        app = App(settings, install_signals=False, tracing=Tracing())
        task = asyncio.create_task(app.run())
        try:
            await asyncio.wait_for(app.ready.wait(), 20)
            await hostdb.publish(conn, "job.created", {"n": 1}, org)
            await hostdb.wait_deliveries(conn, "status = 'success'", 2, timeout=30)
            [dlq] = await hostdb.wait_deliveries(conn, "status = 'dlq'", 1)
            assert dlq["webhook_id"] == dead["id"]
            # the host's admin actions: retry the DLQ item, replay a delivery, a test ping
            await conn.execute("SELECT * FROM dispatcher.retry_dlq(%s, %s)", (org, dead["id"]))
            first = (await hostdb.deliveries(conn, "webhook_id = %s", (ok["id"],)))[0]
            await conn.execute("SELECT dispatcher.replay_delivery(%s, %s)", (org, first["id"]))
            await conn.execute("SELECT dispatcher.send_test(%s, %s)", (org, flaky["id"]))
            rows = await hostdb.wait_deliveries(conn, "status = 'success'", 5, timeout=30)
        finally:
            app.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        assert {r["webhook_id"] for r in rows} == {ok["id"], flaky["id"], dead["id"]}
        history = await one(conn, "SELECT count(*) AS n FROM dispatcher.attempts")
        assert history["n"] >= 3  # 500 then 200 on /flaky, 503 twice then 200 on /dead
        # Retention deletes old finished rows from whichever partition holds them.
        await conn.execute(
            "UPDATE webhook_deliveries SET created_at = now() - interval '40 days',"
            " delivered_at = now() - interval '40 days'"
        )
        purged = await run_retention(dsn)
        assert purged.finished == 5  # 3 fanned out, the replay, the test ping
        assert (await one(conn, "SELECT count(*) AS n FROM webhook_deliveries"))["n"] == 0
        # their numbers went with them (the AFTER DELETE trigger, on the partitioned table)
        assert (await one(conn, "SELECT count(*) AS n FROM dispatcher.delivery_sequence"))["n"] == 0
        assert purged.orphan_numbers == 0


async def _numbered_in_month(
    conn: hostdb.Conn, org: uuid.UUID, hook: uuid.UUID, n: int, months_ago: int
) -> uuid.UUID:
    row = await one(
        conn,
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, created_at) VALUES (%s, %s, 'job.created', '{}',"
        " 'https://example.com/hook', '{}', '{}',"
        " date_trunc('month', now()) - make_interval(months => %s) + interval '1 day')"
        " RETURNING id",
        (org, hook, months_ago),
    )
    await conn.execute(
        "INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence)"
        " VALUES (%s, %s, %s)",
        (row["id"], hook, n),
    )
    return uuid.UUID(str(row["id"]))


async def _numbers(conn: hostdb.Conn) -> list[int]:
    cur = await conn.execute("SELECT sequence FROM dispatcher.delivery_sequence ORDER BY 1")
    return [r["sequence"] for r in await cur.fetchall()]


async def test_numbers_of_a_partitioned_host_table_truncated_or_dropped(partitioned_host_dsn):
    """TRUNCATE of the partitioned webhook_deliveries fires the trigger on the parent; a
    partition dropped (or truncated on its own) fires none, and retention's sweep removes
    the numbers it left (0039)."""
    async with await hostdb.connect(partitioned_host_dsn) as conn:
        org = await hostdb.create_org(conn)
        hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
        for n in (1, 2):
            await _numbered_in_month(conn, org, hook, n, months_ago=1)
        await conn.execute("TRUNCATE webhook_deliveries")
        assert await _numbers(conn) == []

        await _numbered_in_month(conn, org, hook, 3, months_ago=2)
        await _numbered_in_month(conn, org, hook, 4, months_ago=1)
        await _numbered_in_month(conn, org, hook, 5, months_ago=0)
        oldest = (
            "SELECT tableoid::regclass::text AS name FROM webhook_deliveries"
            " ORDER BY created_at LIMIT 1"
        )
        await conn.execute(f"DROP TABLE {(await one(conn, oldest))['name']}")  # number 3
        await conn.execute(f"TRUNCATE {(await one(conn, oldest))['name']}")  # number 4
        assert await _numbers(conn) == [3, 4, 5]  # no trigger fired
        purged = await run_retention(partitioned_host_dsn)
        assert purged.orphan_numbers == 2
        assert await _numbers(conn) == [5]


async def test_history_reads_work_where_writes_are_refused_as_on_a_read_replica(db_dsn, conn):
    """A hot standby refuses every write; a database with default_transaction_read_only
    refuses them the same way. The reading commands must work there (docs/scaling.md)."""
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://93.184.216.34/hook")
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, attempt_number, delivered_at)"
        " VALUES (%s, %s, 'job.created', '{}', 'https://93.184.216.34/hook', '{}', '{}', 'dlq',"
        " 4, now()) RETURNING id",
        (org, hook["id"]),
    )
    delivery = (await cur.fetchone())["id"]
    await conn.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
        " outcome, response_status) VALUES (%s, %s, %s, 1, 'retryable', 503)",
        (delivery, org, hook["id"]),
    )
    db = (await one(conn, "SELECT current_database() AS d"))["d"]
    await conn.execute(f'ALTER DATABASE "{db}" SET default_transaction_read_only = on')
    for argv in (
        ("deliveries", "list", "--json"),
        ("deliveries", "show", str(delivery), "--json"),
        ("dlq", "list", "--json"),
        ("stats", "--json"),
        ("webhooks", "list", "--json"),
    ):
        code, out, err = await run_cli(db_dsn, *argv)
        assert code == 0, (argv, err)
        assert out.strip().startswith(("[", "{")), (argv, out)
    # and a write is refused there, as a standby would
    code, _, err = await run_cli(db_dsn, "dlq", "retry", "--all")
    assert code != 0 and "read-only" in err
