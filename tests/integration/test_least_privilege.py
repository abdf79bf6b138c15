"""Least privilege: the daemon runs under the `dispatcher` role of sql/least_privilege.sql,
stops at start with one line and ExitCode.PERMISSION when a grant is missing, and its
connections carry statement and idle-in-transaction timeouts.

Every test runs twice: on the standalone schema and on the host's (tests/integration/
host_schema.sql: the host's real publish_event, RLS on its tables, Supabase roles), where the
script is applied by the host's non-superuser owner and the login role has BYPASSRLS, as
docs/host-adoption.md says."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

import hostdb
import psycopg
import pytest
import pytest_asyncio
from psycopg import sql
from support.daemon import daemon_env
from support.receiver import Reply

from dispatcher import preflight
from dispatcher.errors import ExitCode, PermissionDenied

SCRIPT = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")
PASSWORD = "lp-" + uuid.uuid4().hex


@dataclass
class Role:
    name: str
    dsn: str  # connects as the login role, with a password
    owner_dsn: str


def _with_user(dsn: str, user: str, password: str) -> str:
    # postgresql://postgres@127.0.0.1:port/db -> postgresql://user:password@127.0.0.1:port/db
    rest = dsn.split("@", 1)[1]
    return f"postgresql://{user}:{password}@{rest}"


@pytest.fixture(params=["standalone", "host"])
def db_dsn(request: pytest.FixtureRequest, db_dsn: str) -> str:
    """The standalone database (conftest's db_dsn), or one shaped like the real host."""
    if request.param == "host":
        return str(request.getfixturevalue("host_db_dsn"))
    return db_dsn


def on_host(request: pytest.FixtureRequest) -> bool:
    return bool(request.node.callspec.params["db_dsn"] == "host")


@pytest_asyncio.fixture
async def dispatcher_role(db_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[Role]:
    """The script applied by the owner; a fresh LOGIN role that is a member of `dispatcher`
    (on the host: by its non-superuser owner, and the login role gets BYPASSRLS)."""
    name = f"disp_{uuid.uuid4().hex[:12]}"
    owner_dsn = hostdb.host_owner_dsn(db_dsn) if on_host(request) else db_dsn
    async with await psycopg.AsyncConnection.connect(owner_dsn, autocommit=True) as owner:
        await owner.execute(SCRIPT)
    if on_host(request):
        # Roles are cluster-wide: `dispatcher` may have been created by the superuser (the
        # standalone variant). On PostgreSQL 16+ only its creator, or a role with ADMIN
        # OPTION on it, may grant it; on a real host the owner creates it and has that.
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as su:
            await su.execute(f"GRANT dispatcher TO {hostdb.HOST_OWNER} WITH ADMIN OPTION")
    async with await psycopg.AsyncConnection.connect(owner_dsn, autocommit=True) as owner:
        await owner.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE dispatcher").format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )
    if on_host(request):
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as su:
            await su.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(name)))
    try:
        yield Role(name, _with_user(db_dsn, name, PASSWORD), db_dsn)
    finally:
        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as owner:
            await owner.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            await owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
            await owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


async def _as_role(role: Role) -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(role.dsn, autocommit=True)


async def test_script_is_idempotent_and_grants_nothing_more(dispatcher_role, conn):
    await conn.execute(SCRIPT)  # a refresh
    await conn.execute(SCRIPT)
    async with await _as_role(dispatcher_role) as c:
        await preflight.check_privileges(c)
        cur = await c.execute(
            "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls "
            "FROM pg_roles WHERE rolname = 'dispatcher'"
        )
        assert await cur.fetchone() == (False, False, False, False)
        # What it must not do: rewrite a webhook's target, read other host tables, DDL.
        for statement in (
            "UPDATE webhooks SET url = 'http://evil.example/'",
            "UPDATE integrations SET config = '{}'",
            "TRUNCATE webhook_deliveries",
            "DELETE FROM webhooks",
            "DELETE FROM events",
            "INSERT INTO dispatcher.schema_migrations (version, name) VALUES (9999, 'x')",
            "CREATE TABLE dispatcher.evil (id int)",
            "CREATE TABLE public.evil (id int)",
            "SELECT * FROM organizations",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await c.execute(statement)


async def test_full_scenario_runs_under_the_dispatcher_role(
    dispatcher_role, conn, receiver, daemon_factory
):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        max_retries=1,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        enable_jitter=False,
    )
    ok = await hostdb.create_webhook(conn, org, receiver.url("/ok"), ["job.*"])
    flaky = await hostdb.create_webhook(conn, org, receiver.url("/flaky"), ["job.*"])
    dead = await hostdb.create_webhook(conn, org, receiver.url("/dead"), ["job.*"])
    gone = await hostdb.create_webhook(conn, org, receiver.url("/gone"), ["job.*"])
    off = await hostdb.create_webhook(conn, org, receiver.url("/off"), ["job.*"], status="inactive")
    held = await hostdb.create_webhook(conn, org, receiver.url("/held"), ["job.*"])
    await conn.execute(
        "UPDATE webhooks SET status = 'disabled', consecutive_failures = 10 WHERE id = %s",
        (held["id"],),
    )
    # An event a fan-out held just after this webhook's release: the sweep queues it.
    orphan = await hostdb.create_webhook(conn, org, receiver.url("/orphan"), ["job.*"])
    for status in ("disabled", "active"):  # released just now
        await conn.execute("UPDATE webhooks SET status = %s WHERE id = %s", (status, orphan["id"]))
    [late] = await hostdb.insert_events_directly(conn, org, "job.late", 1)
    await conn.execute("DELETE FROM dispatcher.outbox WHERE event_id = %s", (late,))
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " SELECT %s, id, org_id, created_at FROM events WHERE id = %s",
        (orphan["id"], late),
    )
    receiver.respond("/flaky", Reply(500), Reply(200))
    receiver.respond("/dead", Reply(503))
    receiver.respond("/gone", Reply(410))

    daemon = daemon_factory(_daemon_env(dispatcher_role.dsn))
    await daemon.wait_for_log("ready", timeout=20)
    await hostdb.publish(conn, "job.created", {"n": 1}, org)  # publish_event + NOTIFY
    await hostdb.insert_events_directly(conn, org, "job.imported", 3)  # no NOTIFY

    by_hook = {
        ok["id"]: ("success", 4),
        flaky["id"]: ("success", 4),
        dead["id"]: ("dlq", 4),
        gone["id"]: ("failed", 4),
    }
    for hook_id, (status, n) in by_hook.items():
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = %s", n, (hook_id, status), timeout=30
        )
    await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'success'", 5, (orphan["id"],), timeout=30
    )
    # Switched off by a person: nothing. Disabled: held (written as the role), then
    # delivered when the host enables it again.
    assert await hostdb.deliveries(conn, "webhook_id = %s", (off["id"],)) == []
    cur = await conn.execute(
        "SELECT count(*) AS n FROM dispatcher.held WHERE webhook_id = %s", (held["id"],)
    )
    assert (await cur.fetchone())["n"] == 4
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (held["id"],))
    await conn.execute("UPDATE webhooks SET consecutive_failures = 0 WHERE id = %s", (held["id"],))
    await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status = 'success'", 4, (held["id"],), timeout=30
    )
    assert (await hostdb.webhook(conn, gone["id"]))["status"] == "disabled"
    assert (await hostdb.webhook(conn, dead["id"]))["consecutive_failures"] >= 2
    cur = await conn.execute(
        "SELECT webhook_id, count(*) AS n FROM dispatcher.attempts GROUP BY webhook_id"
    )
    attempts = {r["webhook_id"]: r["n"] for r in await cur.fetchall()}
    # History of every attempt of deliveries that did not succeed at once (written as the role).
    # The gone webhook: its first 410 disables it, and a row of it leased before that answer
    # but not started yet is given back unsent and ends 'Webhook is not active' without an
    # attempt (branch breakit); how many of the other three were already in flight is timing.
    gone_attempts = attempts.pop(gone["id"], 0)
    assert attempts == {flaky["id"]: 2, dead["id"]: 8}
    assert 1 <= gone_attempts <= 4, gone_attempts
    # Lifecycle events (0026): a delivery.dead_lettered published as the role from
    # record_outcomes (one: the others fall under the per-webhook rate limit), none refused.
    cur = await conn.execute(
        "SELECT event_type, aggregate_id, payload FROM events"
        " WHERE event_type IN ('webhook.disabled', 'delivery.dead_lettered')"
    )
    lifecycle = await cur.fetchall()
    disabled = sorted(r["aggregate_id"] for r in lifecycle if r["event_type"] == "webhook.disabled")
    assert disabled == sorted([gone["id"], held["id"], orphan["id"]])
    assert [
        r["payload"]["webhook_id"] for r in lifecycle if r["event_type"] == "delivery.dead_lettered"
    ] == [str(dead["id"])]
    cur = await conn.execute(
        "SELECT coalesce(sum(not_published), 0) AS n, coalesce(sum(suppressed), 0) AS s"
        " FROM dispatcher.lifecycle_limits"
    )
    assert dict(await cur.fetchone()) == {"n": 0, "s": 3}
    text = daemon.text()
    assert "InsufficientPrivilege" not in text and "permission denied" not in text.lower()
    cur = await conn.execute(
        "SELECT DISTINCT usename FROM pg_stat_activity WHERE application_name LIKE "
        "'webhook-dispatcher/%%' AND datname = current_database()"
    )
    assert [r["usename"] for r in await cur.fetchall()] == [dispatcher_role.name]
    assert daemon.is_running()
    daemon.terminate()
    assert await daemon.wait_exit(20) == ExitCode.OK


@pytest.mark.parametrize(
    ("revoke", "named"),
    [
        (
            "REVOKE UPDATE (status) ON public.webhooks FROM dispatcher",
            "UPDATE (status) on public.webhooks",
        ),
        ("REVOKE DELETE ON dispatcher.outbox FROM dispatcher", "DELETE on dispatcher.outbox"),
        (
            "REVOKE INSERT ON public.webhook_deliveries FROM dispatcher",
            "INSERT on public.webhook_deliveries",
        ),
        ("REVOKE USAGE ON SCHEMA dispatcher FROM dispatcher", "USAGE on schema dispatcher"),
        (
            "REVOKE EXECUTE ON FUNCTION public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)"
            " FROM dispatcher; REVOKE EXECUTE ON FUNCTION public.publish_event(text, uuid, jsonb,"
            " uuid, jsonb, uuid) FROM PUBLIC",
            "EXECUTE on function public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)",
        ),
    ],
)
async def test_check_privileges_names_what_is_missing(dispatcher_role, conn, revoke, named):
    await conn.execute(revoke)
    async with await _as_role(dispatcher_role) as c:
        with pytest.raises(PermissionDenied) as caught:
            await preflight.check_privileges(c)
    message = str(caught.value)
    assert named in message, message
    assert dispatcher_role.name in message and "least_privilege.sql" in message
    assert "\n" not in message
    assert caught.value.exit_code == ExitCode.PERMISSION


def _revoke(need: preflight.Need) -> str:
    """The statement that takes `need` away (from PUBLIC too: some are PUBLIC's by default)."""
    on = {
        "schema": f"SCHEMA {need.schema}",
        "tables": f"ALL TABLES IN SCHEMA {need.schema}",
        "function": f"FUNCTION {need.schema}.{need.name}({', '.join(need.args or ())})",
    }.get(need.kind, f"{need.schema}.{need.name}")
    columns = f" ({need.col})" if need.kind == "column" else ""
    return f"REVOKE {need.priv}{columns} ON {on} FROM dispatcher, PUBLIC"


async def test_every_grant_of_the_script_is_checked_at_start(dispatcher_role, conn):
    """The start-up check reads its list from least_privilege.sql: the script grants all it
    checks (nothing missing), and each grant, taken away alone, is named."""

    async def missing_as_role() -> list[str]:
        await conn.execute(
            sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(dispatcher_role.name))
        )
        return await preflight.missing_privileges(conn)

    async with conn.transaction(force_rollback=True):
        assert await missing_as_role() == []
    cur = await conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'dispatcher' AND c.relkind IN ('r', 'p')"
    )
    own_tables = {row["relname"] for row in await cur.fetchall()}
    assert len(preflight.CORE) > 10 and len(preflight.INTEGRATIONS) > 10
    for need in preflight.CORE + preflight.INTEGRATIONS:
        async with conn.transaction(force_rollback=True):
            await conn.execute(_revoke(need))
            missing = await missing_as_role()
        if need.kind == "tables":
            expected = [
                f"{need.priv} on {need.schema}.{t}" for t in sorted(own_tables - {*need.excluded})
            ]
        elif need.kind == "column":
            expected = [f"{need.priv} ({need.col}) on {need.schema}.{need.name}"]
        else:
            expected = [need.describe()]
        assert missing == expected, need


async def test_integration_needs_are_skipped_when_integrations_are_off(dispatcher_role, conn):
    await conn.execute("REVOKE SELECT ON public.integrations FROM dispatcher")
    async with await _as_role(dispatcher_role) as c:
        await preflight.check_privileges(c, integrations=False)
        with pytest.raises(PermissionDenied, match=r"SELECT on public\.integrations"):
            await preflight.check_privileges(c)


async def test_row_level_security_that_would_hide_rows_is_refused(dispatcher_role, conn, request):
    if on_host(request):
        pytest.skip("the host's tables all have RLS already: see the test below")
    await conn.execute("ALTER TABLE public.webhooks ENABLE ROW LEVEL SECURITY")
    # A policy for the host's end users (PUBLIC) does not count.
    await conn.execute("CREATE POLICY users ON public.webhooks USING (false)")
    async with await _as_role(dispatcher_role) as c:
        with pytest.raises(PermissionDenied, match=r"would see no rows of public\.webhooks"):
            await preflight.check_privileges(c)
    await conn.execute("CREATE POLICY dispatcher_all ON public.webhooks TO dispatcher USING (true)")
    async with await _as_role(dispatcher_role) as c:
        await preflight.check_privileges(c)
    await conn.execute("DROP POLICY dispatcher_all ON public.webhooks")
    await conn.execute(
        sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(dispatcher_role.name))
    )
    async with await _as_role(dispatcher_role) as c:
        await preflight.check_privileges(c)


async def test_daemon_refuses_to_start_without_a_grant(dispatcher_role, conn, daemon_factory):
    await conn.execute("REVOKE UPDATE (status) ON public.webhooks FROM dispatcher")
    daemon = daemon_factory(_daemon_env(dispatcher_role.dsn))
    async with asyncio.timeout(30):
        while daemon.is_running() and not daemon.events("ready"):
            await asyncio.sleep(0.05)
    assert not daemon.events("ready"), "the daemon started without UPDATE (status) on webhooks"
    assert await daemon.wait_exit(10) == ExitCode.PERMISSION
    lines = [line for line in daemon.lines() if not line.startswith("{")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("dispatcher: error: the database role")
    assert "UPDATE (status) on public.webhooks" in lines[0]
    assert PASSWORD not in daemon.text()


async def test_connections_carry_statement_and_idle_in_transaction_timeouts(start_daemon):
    running = await start_daemon(
        statement_timeout_ms=1500, idle_in_transaction_timeout_ms=700, pool_min_size=3
    )
    pool = running.app.pool
    assert pool is not None
    # Every pool connection (take several at once so they are distinct backends).
    async with contextlib.AsyncExitStack() as stack:
        conns = [await stack.enter_async_context(pool.connection()) for _ in range(3)]
        pids = set()
        for c in conns:
            cur = await c.execute(
                "SELECT current_setting('statement_timeout') AS st, "
                "current_setting('idle_in_transaction_session_timeout') AS idle, "
                "pg_backend_pid() AS pid"
            )
            row = await cur.fetchone()
            assert (row["st"], row["idle"]) == ("1500ms", "700ms")
            pids.add(row["pid"])
        assert len(pids) == 3
        # In effect, not just set: a long statement is cancelled.
        with pytest.raises(psycopg.errors.QueryCanceled):
            await conns[0].execute("SELECT pg_sleep(5)")
        # An idle transaction is ended by the server.
        c = conns[1]
        with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout):
            async with c.transaction():
                await c.execute("SELECT 1")
                await asyncio.sleep(1.5)
                await c.execute("SELECT 1")


async def test_on_the_host_rls_is_refused_without_bypassrls(dispatcher_role, conn, request):
    if not on_host(request):
        pytest.skip("host schema only")
    await conn.execute(
        sql.SQL("ALTER ROLE {} NOBYPASSRLS").format(sql.Identifier(dispatcher_role.name))
    )
    async with await _as_role(dispatcher_role) as c:
        with pytest.raises(PermissionDenied, match=r"would see no rows of public\.events"):
            await preflight.check_privileges(c)


async def test_host_publish_event_works_under_the_role(dispatcher_role, conn):
    """The integrations worker publishes through the host's own publish_event, which writes
    nine columns (user_email and status too): it must work as the role, for real."""
    org = await hostdb.create_org(conn)
    async with await _as_role(dispatcher_role) as c:
        cur = await c.execute(
            "SELECT publish_event('integration.health.degraded', gen_random_uuid(),"
            " '{}'::jsonb, NULL, '{}'::jsonb, %s)",
            (org,),
        )
        row = await cur.fetchone()
        assert row is not None
    cur = await conn.execute("SELECT event_type, org_id FROM events WHERE id = %s", (row[0],))
    assert await cur.fetchone() == {"event_type": "integration.health.degraded", "org_id": org}


async def test_start_up_check_calls_publish_event_for_real(dispatcher_role, conn, request):
    """A grant publish_event needs is caught by calling the function, whatever columns it
    writes (on the host: user_email, which a column list of ours did not name), and nothing
    the call wrote stays."""
    column = sql.Identifier("user_email" if on_host(request) else "payload")
    await conn.execute(
        sql.SQL("REVOKE INSERT ({}) ON public.events FROM dispatcher").format(column)
    )
    cur = await conn.execute("SELECT count(*) AS n FROM events")
    before = (await cur.fetchone())["n"]
    async with await _as_role(dispatcher_role) as c:
        with pytest.raises(PermissionDenied) as caught:
            await preflight.check_privileges(c)
        await preflight.check_privileges(c, integrations=False)
    message = str(caught.value)
    assert "public.publish_event(text, uuid, jsonb, uuid, jsonb, uuid)" in message, message
    assert "permission denied for table events" in message, message
    await conn.execute(sql.SQL("GRANT INSERT ({}) ON public.events TO dispatcher").format(column))
    async with await _as_role(dispatcher_role) as c:
        await preflight.check_privileges(c)
    cur = await conn.execute("SELECT count(*) AS n FROM events")
    assert (await cur.fetchone())["n"] == before, "the check's event was rolled back"
    cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.outbox")
    assert (await cur.fetchone())["n"] == 0


def _daemon_env(dsn: str, **extra: str) -> dict[str, str]:
    return daemon_env(dsn, DISPATCHER_HTTP_TIMEOUT="2", **extra)
