"""A webhook held back by its per-webhook cap is refilled when its attempts end, not on the
poll interval (issue 12). Behaviour, not speed: the poll interval is set far above the
deadline, so a loop that waits for it cannot pass; the deadline itself is generous."""

from __future__ import annotations

import hostdb
from support.daemon import daemon_env
from support.receiver import Reply

BACKLOG = 3000


async def test_a_one_webhook_backlog_drains_without_waiting_for_the_poll_interval(
    conn, receiver, db_dsn, daemon_factory
):
    """A daemon process with default settings but a poll every 120 s drains a backlog of
    ~100 times the per-webhook cap to one webhook within the deadline: only refills when
    attempts end can do that (before issue 12, attempts ending while a claim ran left the
    webhook with room and due rows, and nothing looked again until the poll)."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/one"), ["*"])
    # Published while the daemon was stopped.
    await hostdb.insert_events_directly(conn, org, "job.created", BACKLOG)
    env = {"DISPATCHER_POLL_INTERVAL": "120", "DISPATCHER_LOG_LEVEL": "warning"}
    daemon = daemon_factory(daemon_env(db_dsn, **env))
    await hostdb.wait_deliveries(conn, "status = 'success'", BACKLOG, timeout=90)
    assert len({r.headers["webhook-id"] for r in receiver.requests_for("/one")}) == BACKLOG
    assert daemon.is_running()


async def test_a_slow_capped_webhook_is_refilled_as_its_attempts_end(
    conn, receiver, db_dsn, daemon_factory
):
    """Attempts end one by one (a slow endpoint): each freed slot is refilled, never left
    empty until the next poll (120 s)."""
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/slow"), ["*"])
    receiver.respond("/slow", Reply(204, delay=0.05))
    await hostdb.insert_events_directly(conn, org, "job.created", 400)
    env = {
        "DISPATCHER_POLL_INTERVAL": "120",
        "DISPATCHER_LOG_LEVEL": "warning",
        "DISPATCHER_PER_WEBHOOK_CONCURRENCY": "4",
    }
    daemon = daemon_factory(daemon_env(db_dsn, **env))
    # 4 at a time, 50 ms each: ~5 s when every freed slot is refilled at once.
    await hostdb.wait_deliveries(conn, "status = 'success'", 400, timeout=90)
    assert daemon.is_running()


async def test_a_capped_webhook_does_not_starve_another_one(conn, receiver, start_daemon):
    """While one webhook drains a backlog at its cap, a fresh event to another webhook is
    delivered at once (its doorbell is heard between refills)."""
    busy_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, busy_org, receiver.url("/busy"), ["*"])
    receiver.respond("/busy", Reply(204, delay=0.02))
    quiet_org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, quiet_org, receiver.url("/quiet"), ["*"])
    await hostdb.insert_events_directly(conn, busy_org, "job.created", 2000)
    await start_daemon(poll_interval=120.0, per_webhook_concurrency=4)
    await receiver.wait_for(20, path="/busy", timeout=30)
    await hostdb.publish(conn, "job.created", org=quiet_org)
    await receiver.wait_for(1, path="/quiet", timeout=20)
    busy = len(receiver.requests_for("/busy"))
    assert busy < 2000, "the quiet webhook's event waited for the whole backlog"
