"""Intake under faults (issue 10, items 4-7): a stable webhook-id across recover after
retention, events the role cannot read stay in the outbox, a partitioned `events`, and a
poison fan-out batch that must not stall every tenant. Real PostgreSQL, real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

import hostdb
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from standardwebhooks.webhooks import Webhook

from dispatcher.app import App
from dispatcher.intake import IntakeNotInstalled
from dispatcher.migrations import apply_migrations
from dispatcher.request import message_id
from dispatcher.settings import load_settings

SCRIPT = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
PASSWORD = "lp-" + uuid.uuid4().hex


def whsec(secret: str) -> str:
    return "whsec_" + base64.b64encode(secret.encode()).decode()


async def wait_until(check: Callable[[], Awaitable[Any]], what: str, timeout: float = 30.0) -> Any:
    """Poll `check` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"waited {timeout}s for {what}")
        await asyncio.sleep(0.05)


async def scalar(conn: hostdb.Conn, query: str, params: Any = ()) -> Any:
    cur = await conn.execute(query, params)
    row = await cur.fetchone()
    return None if row is None else next(iter(row.values()))


# -- item 4: webhook-id stable per (event, webhook) -----------------------------------------


async def test_webhook_id_is_stable_across_recover_after_retention_and_replay(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    await start_daemon()
    event_id = await hostdb.publish(conn, "job.created", {"n": 1}, org)
    [first] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    # Retention purges the delivered row; recover then finds the event never delivered.
    await conn.execute("DELETE FROM webhook_deliveries WHERE id = %s", (first["id"],))
    queued = await scalar(
        conn,
        "SELECT queued FROM dispatcher.recover_webhook(%s, %s, now() - interval '1 hour')",
        (org, hook["id"]),
    )
    assert queued == 1
    reqs = await receiver.wait_for(2, timeout=20)
    [second] = await hostdb.wait_deliveries(conn, "status = 'success'", 1)
    assert second["id"] != first["id"]
    expected = message_id(event_id, hook["id"], first["id"])
    assert expected == message_id(event_id, hook["id"], second["id"])
    # The receiver can deduplicate: the same webhook-id; X-InTime-Delivery is the row.
    assert [r.headers["webhook-id"] for r in reqs] == [expected, expected]
    assert [r.headers["X-InTime-Delivery"] for r in reqs] == [str(first["id"]), str(second["id"])]
    Webhook(whsec(hook["secret"])).verify(reqs[1].body, dict(reqs[1].headers))

    # An operator's replay resends the same message: same webhook-id, its own row id.
    replay = await scalar(conn, "SELECT dispatcher.replay_delivery(%s, %s)", (org, second["id"]))
    reqs = await receiver.wait_for(3, timeout=20)
    assert reqs[2].headers["webhook-id"] == expected
    assert reqs[2].headers["X-InTime-Delivery"] == str(replay)

    # A test ping has no event: its webhook-id is its row id.
    ping = await scalar(conn, "SELECT dispatcher.send_test(%s, %s)", (org, hook["id"]))
    reqs = await receiver.wait_for(4, timeout=20)
    assert reqs[3].headers["webhook-id"] == reqs[3].headers["X-InTime-Delivery"] == str(ping)


# -- item 5: events the role cannot read stay in the outbox ---------------------------------


@pytest_asyncio.fixture
async def role_dsn(db_dsn: str) -> AsyncIterator[str]:
    """The least-privilege script applied; a LOGIN role in `dispatcher`, no BYPASSRLS."""
    name = f"disp_{uuid.uuid4().hex[:12]}"
    async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as owner:
        await owner.execute(SCRIPT)
        await owner.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE dispatcher").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    rest = db_dsn.split("@", 1)[1]
    try:
        yield f"postgresql://{name}:{PASSWORD}@{rest}"
    finally:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as owner:
            await owner.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            await owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            await owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


async def test_events_hidden_by_row_level_security_stay_in_the_outbox_and_are_reported(
    conn, receiver, start_daemon, role_dsn
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    running = await start_daemon(database_url=role_dsn)
    app = running.app
    await hostdb.publish(conn, "job.created", {"n": 1}, org)
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)

    # On the running system: RLS on events, no policy for the daemon's role.
    await conn.execute("ALTER TABLE public.events ENABLE ROW LEVEL SECURITY")
    hidden = await hostdb.publish(conn, "job.created", {"n": 2}, org)

    async def outbox_state() -> Any:
        cur = await conn.execute(
            "SELECT to_jsonb(o) AS row FROM dispatcher.outbox o WHERE event_id = %s", (hidden,)
        )
        found = await cur.fetchone()
        return "gone" if found is None else found["row"].get("misses")

    state = await wait_until(outbox_state, "the fan-out to take the hidden event")
    assert state != "gone", "an event the role cannot read vanished from the outbox"
    assert state >= 1
    assert await hostdb.deliveries(conn, "event_id = %s", (hidden,)) == []
    # Reported loudly: metric and /readyz degraded.
    assert app.metrics.registry.get_sample_value("dispatcher_events_unreadable_total") >= 1
    ok, text = app._ready()
    assert not ok and text.startswith("degraded") and "cannot be read" in text

    # Once the role may read it, it is delivered, and readiness recovers.
    await conn.execute(
        "CREATE POLICY dispatcher_read ON public.events FOR SELECT TO dispatcher USING (true)"
    )
    await hostdb.wait_deliveries(
        conn, "event_id = %s AND status = 'success'", 1, (hidden,), timeout=40
    )
    assert await scalar(conn, "SELECT count(*) FROM dispatcher.outbox") == 0
    await wait_until(lambda: asyncio.sleep(0, app._ready()[0]), "readiness to recover", 30)
    assert len(receiver.requests) == 2


# -- item 6: partitioned events --------------------------------------------------------------


PARTITIONED_EVENTS = """
CREATE TABLE public.events (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    event_type text NOT NULL,
    event_category text NOT NULL,
    aggregate_id uuid,
    payload jsonb NOT NULL DEFAULT '{}'::jsonb,
    metadata jsonb DEFAULT '{}'::jsonb,
    user_id uuid,
    user_email text,
    org_id uuid NOT NULL,
    status text DEFAULT 'pending',
    retry_count integer DEFAULT 0,
    max_retries integer DEFAULT 3,
    next_retry_at timestamptz,
    error_message text,
    processed_at timestamptz,
    failed_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE public.events_early PARTITION OF public.events
    FOR VALUES FROM (MINVALUE) TO ('2000-01-01');
CREATE TABLE public.events_main PARTITION OF public.events
    FOR VALUES FROM ('2000-01-01') TO ('2900-01-01');
"""


def _insert(table: str, created_at: str | None = None) -> sql.Composed:
    stamp = sql.SQL("now()") if created_at is None else sql.Literal(created_at)
    return sql.SQL(
        "INSERT INTO {} (event_type, event_category, payload, org_id, created_at) "
        "VALUES ('job.created', 'job', %s, %s, {}) RETURNING id"
    ).format(sql.Identifier("public", table), stamp)


async def test_partitioned_events_reach_the_outbox_through_parent_and_partitions(
    empty_db_dsn, receiver, start_daemon
):
    async with await hostdb.connect(empty_db_dsn) as c:
        await c.execute(PARTITIONED_EVENTS)
    await apply_migrations(empty_db_dsn)
    async with await hostdb.connect(empty_db_dsn) as c:
        # Partitions that appear after migrate: created as one, and attached.
        await c.execute(
            "CREATE TABLE public.events_late PARTITION OF public.events "
            "FOR VALUES FROM ('3000-01-01') TO (MAXVALUE)"
        )
        await c.execute(
            "CREATE TABLE public.events_attached (LIKE public.events INCLUDING DEFAULTS)"
        )
        await c.execute(
            "ALTER TABLE public.events ATTACH PARTITION public.events_attached "
            "FOR VALUES FROM ('2900-01-01') TO ('3000-01-01')"
        )
        org = await hostdb.create_org(c)
        hook = await hostdb.create_webhook(c, org, receiver.url(), ["job.*"])
        await start_daemon(database_url=empty_db_dsn)
        sent: dict[str, uuid.UUID] = {}
        sent["publish"] = await hostdb.publish(c, "job.created", {"via": "publish"}, org)
        for via, table, stamp in [
            ("parent", "events", None),
            ("parent_to_late", "events", "3001-01-01"),
            ("main", "events_main", None),
            ("early", "events_early", "1999-06-01"),
            ("late", "events_late", "3000-06-01"),
            ("attached", "events_attached", "2950-06-01"),
        ]:
            cur = await c.execute(_insert(table, stamp), (json.dumps({"via": via}), org))
            row = await cur.fetchone()
            assert row is not None
            sent[via] = row["id"]
        reqs = await receiver.wait_for(len(sent), timeout=30)
        await hostdb.wait_deliveries(c, "status = 'success'", len(sent))
        await asyncio.sleep(0.5)  # a duplicate (two triggers) would arrive by now
        got = sorted(json.loads(r.body)["data"]["via"] for r in receiver.requests)
        assert got == sorted(sent), got
        ids = {r.headers["webhook-id"] for r in reqs}
        assert ids == {message_id(e, hook["id"], uuid.uuid4()) for e in sent.values()}
        assert await scalar(c, "SELECT count(*) FROM dispatcher.outbox") == 0


async def test_daemon_refuses_to_start_when_events_would_miss_the_outbox(
    conn, db_dsn, receiver, start_daemon
):
    # The host replaced `events` (or dropped our trigger): nothing would reach the outbox.
    await conn.execute("DROP TRIGGER dispatcher_intake ON public.events")
    app = App(load_settings(database_url=db_dsn, metrics_address=""), install_signals=False)
    with pytest.raises(IntakeNotInstalled, match=r"SELECT dispatcher\.install_intake\(\)"):
        await asyncio.wait_for(app.run(), 30)
    assert await scalar(conn, "SELECT dispatcher.install_intake()") == "dispatcher_intake"
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
    await start_daemon()
    await hostdb.publish(conn, "job.created", {}, org)
    await hostdb.wait_deliveries(conn, "status = 'success'", 1)


# -- item 7: a poison fan-out batch ----------------------------------------------------------


SLOW_POISON = """
CREATE FUNCTION public.slow_poison() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload -> 'data' ->> 'poison' = 'yes' THEN
        PERFORM pg_sleep(3);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER slow_poison BEFORE INSERT ON public.webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION public.slow_poison();
"""


async def test_poison_fan_out_batch_shrinks_quarantines_one_event_and_the_rest_flows(
    conn, db_dsn, receiver, start_daemon
):
    org_a = await hostdb.create_org(conn, "A")
    org_b = await hostdb.create_org(conn, "B")
    await hostdb.create_webhook(conn, org_a, receiver.url("/a"), ["job.*"])
    await hostdb.create_webhook(conn, org_b, receiver.url("/b"), ["job.*"])
    # A host trigger that makes one event's fan-out exceed statement_timeout, always.
    await conn.execute(SLOW_POISON)
    for n in range(5):
        await hostdb.publish(conn, "job.created", {"n": n}, org_a)
    poison = await hostdb.publish(conn, "job.created", {"poison": "yes"}, org_a)
    for n in range(5):
        await hostdb.publish(conn, "job.created", {"n": n}, org_b)

    running = await start_daemon(statement_timeout_ms=1000, batch_size=16)
    # Every other event of both tenants is delivered.
    await hostdb.wait_deliveries(conn, "status = 'success'", 10, timeout=90)
    cur = await conn.execute("SELECT * FROM dispatcher.quarantine")
    [q] = await cur.fetchall()
    assert q["event_id"] == poison and q["reason"] == "statement_timeout"
    assert await scalar(conn, "SELECT count(*) FROM dispatcher.outbox") == 0
    metrics = running.app.metrics.registry
    assert metrics.get_sample_value("dispatcher_events_quarantined_total") == 1
    assert metrics.get_sample_value("dispatcher_fanout_timeouts_total") >= 2

    # The operator sees it, fixes the cause and puts it back.
    env = {**os.environ, "DISPATCHER_DATABASE_URL": db_dsn}
    out = await _cli(env, "quarantine", "list", "--json")
    assert [(r["kind"], r["event_id"]) for r in json.loads(out)] == [("quarantined", str(poison))]
    human = await _cli(env, "quarantine", "list")
    assert str(poison) in human and "quarantined" in human
    await conn.execute("DROP TRIGGER slow_poison ON public.webhook_deliveries")
    assert "put 1 event(s) back" in await _cli(env, "quarantine", "retry", "--all")
    await hostdb.wait_deliveries(
        conn, "event_id = %s AND status = 'success'", 1, (poison,), timeout=30
    )
    assert await scalar(conn, "SELECT count(*) FROM dispatcher.quarantine") == 0


async def _cli(env: dict[str, str], *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dispatcher",
        *args,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode()
