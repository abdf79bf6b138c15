"""`dispatcher migrate`: idempotent, safe when run concurrently, harmless to a host database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import hostdb
import psycopg
import pytest
import structlog

from dispatcher import cli
from dispatcher.errors import InvalidIndex
from dispatcher.migrations import apply_migrations, available, invalid_index_warnings

CATALOG = """
SELECT 'column' AS kind, table_name || '.' || column_name AS name,
       concat_ws(' ', data_type, character_maximum_length, is_nullable, column_default) AS detail
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid))
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'policy', tablename || '.' || policyname, qual FROM pg_policies WHERE schemaname = 'public'
UNION ALL
SELECT 'rls', relname, relrowsecurity::text FROM pg_class
WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'
UNION ALL
SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
FROM pg_trigger WHERE NOT tgisinternal AND tgname NOT LIKE 'dispatcher\\_%'
"""


@contextlib.asynccontextmanager
async def running_daemon(dsn: str) -> AsyncIterator[None]:
    """The daemon in this process, ready, on `dsn`; stopped on leaving."""
    from dispatcher.app import App
    from dispatcher.settings import load_settings

    app = App(
        load_settings(database_url=dsn, metrics_address="", poll_interval=0.2),
        install_signals=False,
    )
    task = asyncio.create_task(app.run())
    try:
        await asyncio.wait_for(app.ready.wait(), 20)
        yield
    finally:
        app.request_stop()
        await asyncio.wait_for(task, 30)


def catalog(dsn: str) -> set[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return {tuple(r) for r in conn.execute(CATALOG).fetchall()}


async def test_migrate_twice_changes_nothing(empty_db_dsn: str) -> None:
    first = await apply_migrations(empty_db_dsn)
    assert first == [f"{m.version:04d}_{m.name}" for m in available()]
    before = catalog(empty_db_dsn)
    assert await apply_migrations(empty_db_dsn) == []
    assert catalog(empty_db_dsn) == before


async def test_concurrent_migrations_apply_once(empty_db_dsn: str) -> None:
    results = await asyncio.gather(*(apply_migrations(empty_db_dsn) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(available())]
    with psycopg.connect(empty_db_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM dispatcher.schema_migrations").fetchone()
    assert row is not None and row[0] == len(available())


async def test_host_database_is_left_as_the_host_made_it(empty_db_dsn: str, receiver) -> None:
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(hostdb.host_schema_sql(conn))
    before = catalog(empty_db_dsn)

    await apply_migrations(empty_db_dsn)

    after = catalog(empty_db_dsn)
    assert before - after == set(), "a host object was changed or dropped"
    added = {(kind, name) for kind, name, _ in after - before}
    # Only the host tables that were absent (integrations) may appear; nothing else of ours.
    assert all("integration" in name for _, name in added), added
    with psycopg.connect(empty_db_dsn) as conn:
        triggers = conn.execute(
            "SELECT tgname FROM pg_trigger"
            " WHERE tgrelid = 'webhooks'::regclass AND NOT tgisinternal"
        ).fetchall()
    # The host's triggers kept, no twin of them; ours release holds, publish the webhook's
    # lifecycle events (0026: webhook.disabled, webhook.recovered) and note when the status
    # changed (0028, for webhook_health's disabled_since).
    assert sorted(t[0] for t in triggers) == [
        "dispatcher_webhook_hold",
        "dispatcher_webhook_lifecycle",
        "dispatcher_webhook_status_since",
        "trigger_webhook_auto_disable",
        "trigger_webhooks_updated_at",
    ], "host triggers kept, no twin"


async def test_daemon_delivers_on_a_host_database(empty_db_dsn: str, receiver) -> None:
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(hostdb.host_schema_sql(conn))
    await apply_migrations(empty_db_dsn)
    async with await hostdb.connect(empty_db_dsn) as conn:
        org = await hostdb.create_org(conn)
        await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
        async with running_daemon(empty_db_dsn):
            # The host's own publish_event, 6 arguments: the only unambiguous call, since the
            # older 5-argument overload also exists.
            await hostdb.publish(conn, "job.created", {"n": 1}, org)
            with pytest.raises(psycopg.errors.AmbiguousFunction):
                await conn.execute(
                    "SELECT publish_event('job.updated', NULL, '{}'::jsonb, NULL, '{}')"
                )
            await hostdb.wait_deliveries(conn, "status = 'success'", 1)
            [req] = await receiver.wait_for(1)
            assert b'"n": 1' in req.body


async def test_migrate_runs_as_the_hosts_owner_that_is_not_a_superuser(
    empty_db_dsn: str, receiver
) -> None:
    """On Supabase `dispatcher migrate` runs as `postgres`, which owns the host's tables but is
    not a superuser: played here by `host_owner`."""
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(hostdb.host_schema_sql(conn))
    owner = hostdb.host_owner_dsn(empty_db_dsn)
    with psycopg.connect(owner) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        assert row == (False,)
    assert await apply_migrations(owner) == [f"{m.version:04d}_{m.name}" for m in available()]
    async with await hostdb.connect(empty_db_dsn) as conn:
        org = await hostdb.create_org(conn)
        await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
        async with running_daemon(empty_db_dsn):
            await hostdb.publish(conn, "job.created", {"n": 2}, org)
            await hostdb.wait_deliveries(conn, "status = 'success'", 1)


async def test_intake_trigger_cannot_be_diverted_by_the_callers_search_path(
    empty_db_dsn: str,
) -> None:
    """The intake function runs as its owner without a pinned search_path (0010): a caller
    who puts a temporary `new_events` and their own schema first still gets the event's own
    id into the outbox, and nothing else."""
    await apply_migrations(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE oid = 'dispatcher.intake_events_v1'::regproc"
        ).fetchone()
        assert row is not None
        (config,) = row
        assert config is None, "no function-level SET: it cost every publisher ~3 %"
        conn.execute("CREATE SCHEMA evil")
        conn.execute("CREATE TABLE evil.outbox (event_id uuid)")
        conn.execute(
            "CREATE FUNCTION evil.pg_notify(text, text) RETURNS void LANGUAGE sql AS $$ $$"
        )
        conn.execute("CREATE TEMP TABLE new_events (id uuid)")
        conn.execute("INSERT INTO new_events VALUES ('00000000-0000-0000-0000-0000000000aa')")
        conn.execute("SET search_path = pg_temp, evil, public")
        conn.execute("LISTEN dispatcher_v1")
        row = conn.execute(
            "SELECT public.publish_event('job.created', gen_random_uuid(), '{}'::jsonb, NULL,"
            " '{}'::jsonb, NULL)"
        ).fetchone()
        assert row is not None
        (event_id,) = row
        outbox = [r[0] for r in conn.execute("SELECT event_id FROM dispatcher.outbox")]
        assert outbox == [event_id]
        assert conn.execute("SELECT count(*) FROM evil.outbox").fetchone() == (0,)
        rang = [n.channel for n in conn.notifies(timeout=1, stop_after=1)]
        assert rang == ["dispatcher_v1"]


async def test_upgrade_from_0007_delivers_the_backlog_waiting_in_the_outbox(
    empty_db_dsn: str, receiver
) -> None:
    """Events published under the previous schema (outbox rows with ids from a sequence) are
    delivered once 0008-0010 are applied; nothing in the outbox is lost or sent twice."""
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA dispatcher; CREATE TABLE dispatcher.schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for mig in available():
            if mig.version <= 7:
                with conn.transaction():
                    conn.execute(mig.sql)
                    conn.execute(
                        "INSERT INTO dispatcher.schema_migrations VALUES (%s, %s)",
                        (mig.version, mig.name),
                    )
    async with await hostdb.connect(empty_db_dsn) as conn:
        org = await hostdb.create_org(conn)
        await hostdb.create_webhook(conn, org, receiver.url(), ["job.*"])
        await hostdb.insert_events_directly(conn, org, "job.created", 30)
        cur = await conn.execute("SELECT count(id) AS n FROM dispatcher.outbox")
        row = await cur.fetchone()
        assert row is not None and row["n"] == 30, "premise: old outbox rows carry ids"

        applied = await apply_migrations(empty_db_dsn)
        # Every later migration too (0013, 0014 change the outbox): the backlog survives them.
        assert applied[:3] == [
            "0008_outbox_without_sequence",
            "0009_due_since",
            "0010_intake_without_set",
        ]
        assert applied == [f"{m.version:04d}_{m.name}" for m in available() if m.version > 7]
        await hostdb.publish(conn, "job.created", {"after": True}, org)
        async with running_daemon(empty_db_dsn):
            await hostdb.wait_deliveries(conn, "status = 'success'", 31)
            await receiver.wait_for(31)
            cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.outbox")
            row = await cur.fetchone()
            assert row is not None and row["n"] == 0
            ids = [r.headers["webhook-id"] for r in receiver.requests]
            assert len(ids) == len(set(ids)) == 31


# 0040's index, as its header tells an operator to build it before migrating.
ORG_LIVE = (
    "CREATE INDEX CONCURRENTLY dispatcher_webhooks_org_live ON public.webhooks (org_id)"
    " WHERE deleted_at IS NULL AND status IN ('active', 'disabled')"
)


def interrupted_concurrent_build(dsn: str, statement: str) -> None:
    """Run a CREATE INDEX CONCURRENTLY that is cancelled while it waits for a writer's open
    transaction, as an operator's build cut short by a timeout or Ctrl-C: PostgreSQL leaves
    the index in the catalogue, marked invalid."""
    with psycopg.connect(dsn) as writer, psycopg.connect(dsn, autocommit=True) as builder:
        writer.execute("LOCK TABLE public.webhooks IN ROW EXCLUSIVE MODE")
        builder.execute("SET statement_timeout = '300ms'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            builder.execute(statement)
        writer.rollback()
        row = builder.execute(
            "SELECT indisvalid FROM pg_index"
            " WHERE indexrelid = 'public.dispatcher_webhooks_org_live'::regclass"
        ).fetchone()
        assert row == (False,), "premise: the interrupted build left an invalid index"


def applied(dsn: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {r[0] for r in conn.execute("SELECT version FROM dispatcher.schema_migrations")}


async def test_an_index_left_invalid_before_its_migration_stops_migrate_until_rebuilt(
    empty_db_dsn: str,
) -> None:
    """An operator's CREATE INDEX CONCURRENTLY cut short leaves an invalid index of the name
    a migration creates IF NOT EXISTS: migrate names it and how to rebuild it, and does not
    record that migration (so it is not skipped for good); once rebuilt, migrate finishes."""
    await apply_migrations(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX public.dispatcher_webhooks_org_live")
        conn.execute("DELETE FROM dispatcher.schema_migrations WHERE version >= 40")
    interrupted_concurrent_build(empty_db_dsn, ORG_LIVE)

    with pytest.raises(InvalidIndex) as refused:
        await apply_migrations(empty_db_dsn)
    message = str(refused.value)
    assert message.startswith("migration 0040_fan_out_webhooks_index was not applied: index ")
    assert "public.dispatcher_webhooks_org_live (on webhooks) is invalid" in message
    assert "REINDEX INDEX CONCURRENTLY public.dispatcher_webhooks_org_live" in message
    assert "DROP INDEX CONCURRENTLY public.dispatcher_webhooks_org_live" in message
    assert 40 not in applied(empty_db_dsn) and 41 not in applied(empty_db_dsn)

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("REINDEX INDEX CONCURRENTLY public.dispatcher_webhooks_org_live")
    assert await apply_migrations(empty_db_dsn) == [
        f"{m.version:04d}_{m.name}" for m in available() if m.version >= 40
    ]


async def test_an_index_left_invalid_after_its_migration_is_a_warning_of_migrate(
    empty_db_dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An index rebuilt by hand after its migration and cut short costs speed, not
    correctness: `migrate` still succeeds, and warns on stderr with the fix until the index
    is rebuilt."""
    await apply_migrations(empty_db_dsn)
    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("DROP INDEX public.dispatcher_webhooks_org_live")
    interrupted_concurrent_build(empty_db_dsn, ORG_LIVE)

    assert await apply_migrations(empty_db_dsn) == []
    assert await invalid_index_warnings(empty_db_dsn) == [
        "index public.dispatcher_webhooks_org_live (on webhooks) is invalid: a CREATE INDEX "
        "CONCURRENTLY of that name failed or was interrupted, and no query uses it; rebuild "
        "it without blocking writes: REINDEX INDEX CONCURRENTLY "
        "public.dispatcher_webhooks_org_live"
    ]
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", empty_db_dsn)
    saved = structlog.get_config()
    try:
        code = await asyncio.to_thread(cli.main, ["migrate"])
    finally:
        structlog.configure(**saved)
    out, err = capsys.readouterr()
    assert code == 0 and "schema is current" in out
    assert "warning: index public.dispatcher_webhooks_org_live (on webhooks) is invalid" in err

    with psycopg.connect(empty_db_dsn, autocommit=True) as conn:
        conn.execute("REINDEX INDEX CONCURRENTLY public.dispatcher_webhooks_org_live")
    assert await invalid_index_warnings(empty_db_dsn) == []
