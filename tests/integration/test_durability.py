"""Nothing is lost: direct inserts, bulk inserts, downtime, replicas, kills, restarts, SIGTERM."""

from __future__ import annotations

import asyncio
import collections
import signal

import hostdb
import pytest
from support.daemon import daemon_env
from support.receiver import Reply


def delivery_ids(receiver) -> collections.Counter[str]:
    return collections.Counter(r.headers["webhook-id"] for r in receiver.requests)


async def test_direct_bulk_and_offline_inserts_are_all_delivered(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    # While the daemon is down: published and inserted directly.
    for i in range(20):
        await hostdb.publish(conn, "job.created", {"i": i}, org)
    await hostdb.insert_events_directly(conn, org, "job.imported", 30)
    running = await start_daemon()
    # While it runs: one multi-row INSERT of 300 rows, no publish_event, no NOTIFY of the host.
    await hostdb.insert_events_directly(conn, org, "job.bulk", 300)
    # Rolled back: must send nothing.
    async with conn.transaction(force_rollback=True):
        await hostdb.publish(conn, "job.rolled_back", {}, org)

    rows = await hostdb.wait_deliveries(conn, "status = 'success'", 350, timeout=30)
    await running.stop()
    assert len(rows) == 350
    ids = delivery_ids(receiver)
    assert len(ids) == 350 and max(ids.values()) == 1
    assert not [r for r in receiver.requests if b"job.rolled_back" in r.body]
    cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.outbox")
    assert (await cur.fetchone())["n"] == 0


async def test_two_daemons_share_the_load_and_never_send_twice(
    conn, receiver, db_dsn, daemon_factory
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(204, delay=0.005))
    env = daemon_env(db_dsn, DISPATCHER_CONCURRENCY="16", DISPATCHER_BATCH_SIZE="16")
    daemons = [daemon_factory(env), daemon_factory(env)]
    for d in daemons:
        await d.wait_for_log("ready", timeout=20)

    await hostdb.insert_events_directly(conn, org, "job.created", 1000)
    await hostdb.wait_deliveries(conn, "status = 'success'", 1000, timeout=60)

    ids = delivery_ids(receiver)
    assert len(ids) == 1000
    assert max(ids.values()) == 1, "a delivery was sent twice by live replicas"
    per_daemon = [len(d.events("delivery_attempt")) for d in daemons]
    assert sum(per_daemon) == 1000
    assert min(per_daemon) > 0, f"one replica did all the work: {per_daemon}"


async def test_kill_9_during_a_burst_loses_nothing(conn, receiver, db_dsn, daemon_factory):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(204, delay=0.05))
    env = daemon_env(
        db_dsn,
        DISPATCHER_CONCURRENCY="32",
        DISPATCHER_HTTP_TIMEOUT="5",
        DISPATCHER_LEASE_SECONDS="15",
    )
    first = daemon_factory(env)
    await first.wait_for_log("ready", timeout=20)
    await hostdb.insert_events_directly(conn, org, "job.created", 600)
    await receiver.wait_for(100, timeout=30)
    first.kill()
    assert await first.wait_exit(10) == -signal.SIGKILL
    in_flight_at_kill = 32

    second = daemon_factory(env)
    await second.wait_for_log("ready", timeout=20)
    await hostdb.wait_deliveries(conn, "status = 'success'", 600, timeout=60)

    ids = delivery_ids(receiver)
    assert len(ids) == 600, "every delivery arrives"
    duplicates = sum(n - 1 for n in ids.values())
    assert duplicates <= in_flight_at_kill, f"{duplicates} duplicates, more than were in flight"


async def test_postgres_restart_during_a_burst(conn, receiver, db_dsn, pg_cluster, daemon_factory):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(204, delay=0.01))
    daemon = daemon_factory(daemon_env(db_dsn))
    await daemon.wait_for_log("ready", timeout=20)
    await hostdb.insert_events_directly(conn, org, "job.created", 300)
    await receiver.wait_for(30, timeout=30)

    await asyncio.to_thread(pg_cluster.restart, "fast")

    async with await hostdb.connect(db_dsn) as again:
        await hostdb.insert_events_directly(again, org, "job.after_restart", 100)
        await hostdb.wait_deliveries(again, "status = 'success'", 400, timeout=60)
    assert daemon.is_running(), "the daemon must ride out a database restart"
    assert daemon.events("listener_connected")[-1]["reconnect"] is True
    ids = delivery_ids(receiver)
    assert len(ids) == 400


async def test_sigterm_drains_in_flight_and_exits_0(conn, receiver, db_dsn, daemon_factory):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    receiver.respond("/hook", Reply(204, delay=0.1))
    env = daemon_env(db_dsn, DISPATCHER_CONCURRENCY="16")
    daemon = daemon_factory(env)
    await daemon.wait_for_log("ready", timeout=20)
    await hostdb.insert_events_directly(conn, org, "job.created", 300)
    await receiver.wait_for(40, timeout=30)

    daemon.terminate()
    assert await daemon.wait_exit(20) == 0
    assert daemon.events("stopped")
    # Nothing it claimed is left leased: every attempt it started was recorded.
    received = collections.Counter(r.headers["X-InTime-Delivery"] for r in receiver.requests)
    rows = await hostdb.deliveries(conn, "status = 'success'")
    assert {str(r["id"]) for r in rows} == set(received)

    again = daemon_factory(env)
    await again.wait_for_log("ready", timeout=20)
    await hostdb.wait_deliveries(conn, "status = 'success'", 300, timeout=60)
    ids = delivery_ids(receiver)
    assert len(ids) == 300 and max(ids.values()) == 1


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://localhost:{port}/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
    ],
)
async def test_ssrf_guard_refuses_internal_targets(conn, receiver, start_daemon, url, reason):
    org = await hostdb.create_org(conn)
    port = receiver.url().split(":")[2].split("/")[0]
    await hostdb.create_webhook(conn, org, url.format(port=port), ["*"])
    await start_daemon(allowed_target_networks="")
    await hostdb.publish(conn, "job.created", {}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'failed'", 1)
    message = row["error_message"]
    assert reason in message.lower(), message
    assert "DISPATCHER_ALLOWED_TARGET_NETWORKS" in message
    assert row["response_status"] is None or row["response_status"] == 0
    assert receiver.requests == []
