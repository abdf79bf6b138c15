"""Endpoint health (0028_webhook_health.sql): the view dispatcher.webhook_health, its
org-scoped function, `dispatcher webhooks health` and the per-webhook gauges of /metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from datetime import timedelta
from typing import Any

import hostdb
import psycopg
import pytest
import structlog
from prometheus_client import CollectorRegistry, generate_latest

from dispatcher import cli, webhook_health
from dispatcher.queries import query

Conn = hostdb.Conn
URL = "https://93.184.216.34/hook"


async def one(conn: Conn, sql: str, params: Any = ()) -> dict[str, Any]:
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    assert row is not None
    return dict(row)


async def attempt(
    conn: Conn,
    hook: dict[str, Any],
    *,
    ago: timedelta,
    ok: bool,
    ms: int,
    error: str | None = None,
    status: int | None = None,
) -> None:
    """One row of attempt history, as delivery_record_outcomes writes it."""
    await conn.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
        " outcome, response_status, duration_ms, error_message, attempted_at)"
        " VALUES (gen_random_uuid(), %s, %s, 2, %s, %s, %s, %s, now() - %s)",
        (
            hook["org_id"],
            hook["id"],
            "delivered" if ok else "retryable",
            status if status is not None else (200 if ok else 503),
            ms,
            error,
            ago,
        ),
    )


async def delivery(
    conn: Conn,
    hook: dict[str, Any],
    status: str,
    *,
    attempt_number: int = 1,
    created_ago: timedelta = timedelta(minutes=1),
    delivered_ago: timedelta | None = None,
    next_retry_in: timedelta | None = None,
    ms: int | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, attempt_number, max_attempts, duration_ms,"
        " created_at, delivered_at, next_retry_at)"
        " VALUES (%s, %s, 'job.created', '{}', %s, '{}', '{}', %s, %s, 4, %s, now() - %s::interval,"
        "         now() - %s::interval, now() + %s::interval)",
        (
            hook["org_id"],
            hook["id"],
            hook["url"],
            status,
            attempt_number,
            ms,
            created_ago,
            delivered_ago,
            next_retry_in,
        ),
    )


async def hold(conn: Conn, hook: dict[str, Any], n: int) -> None:
    await conn.execute(
        "INSERT INTO dispatcher.held (webhook_id, event_id, org_id, event_created_at)"
        " SELECT %s, gen_random_uuid(), %s, now() - i * interval '1 minute'"
        " FROM generate_series(1, %s) i",
        (hook["id"], hook["org_id"], n),
    )


async def health(conn: Conn, hook: dict[str, Any]) -> dict[str, Any]:
    return await one(
        conn, "SELECT * FROM dispatcher.webhook_health WHERE webhook_id = %s", (hook["id"],)
    )


@pytest.fixture
async def crafted(conn: Conn) -> dict[str, Any]:
    """Webhook `a` with a known recent history and queue, `b` disabled with held events,
    `c` of another organization, `gone` soft-deleted."""
    org = await hostdb.create_org(conn, "Acme")
    other = await hostdb.create_org(conn, "Other")
    a = await hostdb.create_webhook(conn, org, URL, name="alpha")
    b = await hostdb.create_webhook(conn, org, URL, name="beta")
    c = await hostdb.create_webhook(conn, other, URL, name="gamma")
    gone = await hostdb.create_webhook(conn, org, URL, name="deleted")
    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (gone["id"],))
    m = timedelta(minutes=1)
    h = timedelta(hours=1)
    # last hour: 3 attempts in history (2 failed), 2 first-try successes
    await attempt(conn, a, ago=20 * m, ok=False, ms=200, error="connect timeout", status=0)
    await attempt(conn, a, ago=10 * m, ok=False, ms=100, error=None, status=503)
    await attempt(conn, a, ago=5 * m, ok=True, ms=300)
    await delivery(conn, a, "success", delivered_ago=2 * m, ms=50)
    await delivery(conn, a, "success", delivered_ago=3 * m, ms=60)
    # earlier today: 2 failed attempts, 1 first-try success
    await attempt(conn, a, ago=5 * h, ok=False, ms=1000, error="HTTP 502")
    await attempt(conn, a, ago=6 * h, ok=False, ms=1000, error="HTTP 502")
    await delivery(conn, a, "success", created_ago=5 * h, delivered_ago=5 * h, ms=70)
    # not counted: older than a day; a success after retries (its attempt is in history);
    # another webhook's attempts
    await attempt(conn, a, ago=30 * h, ok=True, ms=5)
    await delivery(conn, a, "success", created_ago=50 * h, delivered_ago=49 * h, ms=5)
    await delivery(conn, a, "success", attempt_number=2, delivered_ago=m, ms=7)
    await attempt(conn, c, ago=m, ok=False, ms=9, error="other org")
    # the queue: one first attempt in flight, one retry waiting, three due
    await delivery(conn, a, "pending", next_retry_in=timedelta(seconds=60))
    await delivery(conn, a, "retrying", next_retry_in=timedelta(minutes=5))
    await delivery(conn, a, "pending", created_ago=5 * m)
    await delivery(conn, a, "pending", created_ago=m)
    await delivery(conn, a, "retrying", created_ago=h, next_retry_in=-7 * m)
    await delivery(conn, a, "failed", created_ago=m, delivered_ago=m)  # not queued
    await hold(conn, b, 2)
    return {"org": org, "other": other, "a": a, "b": b, "c": c, "gone": gone}


async def test_view_counts_rates_percentiles_and_queue(conn, crafted):
    row = await health(conn, crafted["a"])
    now = (await one(conn, "SELECT now() AS now"))["now"]
    assert (row["attempts_1h"], row["successes_1h"], row["success_rate_1h"]) == (
        5,
        3,
        0.6,
    )
    assert (row["attempts_24h"], row["successes_24h"], row["success_rate_24h"]) == (
        8,
        4,
        0.5,
    )
    # durations, last hour: 50 60 100 200 300; last day: also 70 1000 1000
    assert (row["p50_ms_1h"], row["p95_ms_1h"]) == (100, 300)
    assert (row["p50_ms_24h"], row["p95_ms_24h"]) == (100, 1000)
    # the latest failure, although a success came after it; no message: the status
    assert row["last_error"] == "HTTP 503" and row["last_error_status"] == 503
    assert timedelta(minutes=9) < now - row["last_error_at"] < timedelta(minutes=11)
    assert (row["in_flight"], row["retry_waiting"], row["due"]) == (1, 1, 3)
    assert timedelta(minutes=6) < now - row["oldest_due_at"] < timedelta(minutes=8)
    assert (row["held"], row["oldest_held_at"], row["disabled_since"]) == (0, None, None)


async def test_a_webhook_without_history_has_zeros_and_no_rates(conn, crafted):
    row = await health(conn, crafted["b"])
    assert (row["attempts_1h"], row["attempts_24h"], row["due"], row["in_flight"]) == (0, 0, 0, 0)
    assert row["success_rate_1h"] is None and row["p95_ms_24h"] is None
    assert row["last_error"] is None and row["held"] == 2


async def test_disabled_since_is_when_the_status_changed(conn, crafted):
    b = crafted["b"]
    before = (await one(conn, "SELECT clock_timestamp() AS t"))["t"]
    # the host's auto-disable trigger sets status in an UPDATE naming only the count
    await conn.execute("UPDATE webhooks SET consecutive_failures = 10 WHERE id = %s", (b["id"],))
    after = (await one(conn, "SELECT clock_timestamp() AS t"))["t"]
    await conn.execute(
        "UPDATE webhooks SET last_triggered_at = now() + interval '1 hour' WHERE id = %s",
        (b["id"],),
    )  # a later counter write does not move it
    row = await health(conn, b)
    assert row["status"] == "disabled"
    assert before <= row["disabled_since"] <= after
    await conn.execute("UPDATE webhooks SET status = 'active' WHERE id = %s", (b["id"],))
    assert (await health(conn, b))["disabled_since"] is None


async def test_the_view_leaves_out_soft_deleted_webhooks(conn, crafted):
    cur = await conn.execute("SELECT webhook_id FROM dispatcher.webhook_health")
    ids = {r["webhook_id"] for r in await cur.fetchall()}
    assert ids == {crafted[k]["id"] for k in ("a", "b", "c")}


async def test_the_function_is_scoped_to_the_organization(conn, crafted):
    org, other = crafted["org"], crafted["other"]
    cur = await conn.execute("SELECT * FROM dispatcher.webhook_health(%s)", (org,))
    rows = await cur.fetchall()
    assert [r["name"] for r in rows] == ["alpha", "beta"]
    cur = await conn.execute(
        "SELECT * FROM dispatcher.webhook_health(%s, %s)", (org, crafted["a"]["id"])
    )
    assert [r["webhook_id"] for r in await cur.fetchall()] == [crafted["a"]["id"]]
    with pytest.raises(psycopg.errors.InsufficientPrivilege) as err:
        await conn.execute(
            "SELECT * FROM dispatcher.webhook_health(%s, %s)", (other, crafted["a"]["id"])
        )
    assert err.value.diag.schema_name == "dispatcher"
    with pytest.raises(psycopg.errors.NoDataFound):
        await conn.execute("SELECT * FROM dispatcher.webhook_health(%s)", (uuid.uuid4(),))
    with pytest.raises(psycopg.errors.NoDataFound):
        await conn.execute(
            "SELECT * FROM dispatcher.webhook_health(%s, %s)", (org, crafted["gone"]["id"])
        )
    with pytest.raises(psycopg.errors.NullValueNotAllowed):
        await conn.execute("SELECT * FROM dispatcher.webhook_health(NULL)")


# -- the CLI ---------------------------------------------------------------------------------


@pytest.fixture
def run(db_dsn, monkeypatch, capsys):
    monkeypatch.setenv("DISPATCHER_DATABASE_URL", db_dsn)

    def main(argv: list[str]) -> int:
        try:
            return cli.main(argv)
        except SystemExit as exc:
            return int(exc.code or 0)

    async def run_(*argv: str) -> tuple[int, str, str]:
        saved = structlog.get_config()
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        capsys.readouterr()
        try:
            code = await asyncio.to_thread(main, list(argv))
        finally:
            structlog.configure(**saved)
            root.handlers[:] = handlers
            root.setLevel(level)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run_


async def test_cli_table_of_an_organization(run, crafted):
    code, out, err = await run("webhooks", "health", "--org", str(crafted["org"]))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "ID", "STATUS", "1H"]
    alpha = next(line for line in lines if line.startswith("alpha"))
    for part in ("5 (60.0%)", "8 (50.0%)", "100/300ms", "HTTP 503"):
        assert part in alpha, (part, alpha)
    assert alpha.split()[-5:-2] == ["3", "1", "0"]  # due, in flight, held
    assert not any("gamma" in line or "deleted" in line for line in lines)


async def test_cli_one_webhook_text_and_json(run, crafted):
    a = str(crafted["a"]["id"])
    code, out, _ = await run("webhooks", "health", a)
    assert code == 0
    text = dict(line.split(": ", 1) for line in out.splitlines())
    assert text["name"].strip() == "alpha"
    assert text["last hour"].strip() == "5 (60.0%) attempts (succeeded), p50/p95 100/300ms"
    assert text["due now"].strip() == "3" and text["in flight"].strip() == "1"
    assert text["last error"].strip().startswith("HTTP 503, ")
    code, out, _ = await run("webhooks", "health", a, "--json")
    data = json.loads(out)
    assert data["webhook_id"] == a and data["attempts_24h"] == 8 and data["due"] == 3
    assert data["success_rate_1h"] == 0.6 and data["held"] == 0
    code, out, _ = await run("webhooks", "health", "--json")
    assert code == 0
    assert {r["name"] for r in json.loads(out)} == {"alpha", "beta", "gamma"}


async def test_cli_refuses_a_webhook_of_another_org_and_unknown_ids(run, crafted):
    code, out, err = await run(
        "webhooks", "health", str(crafted["a"]["id"]), "--org", str(crafted["other"])
    )
    assert code != 0 and out == ""
    assert err.startswith("dispatcher: error: ") and "does not belong" in err
    code, out, err = await run("webhooks", "health", str(uuid.uuid4()))
    assert code != 0 and out == "" and "does not exist" in err
    code, out, err = await run("webhooks", "health", "not-a-uuid")
    assert code != 0 and out == "" and "WEBHOOK" in err


# -- /metrics ----------------------------------------------------------------------------------


def series(registry: CollectorRegistry, name: str) -> dict[str, float]:
    """webhook_id -> value of the unwindowed gauge `name`."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == name:
                out[sample.labels["webhook_id"]] = sample.value
    return out


async def test_metrics_carry_the_top_n_webhooks_by_backlog(db_dsn, conn):
    org = await hostdb.create_org(conn, "Acme")
    hooks = [await hostdb.create_webhook(conn, org, URL, name=f"h{i}") for i in range(6)]
    for i, hook in enumerate(hooks):
        for _ in range(i):  # h5 has the largest backlog
            await delivery(conn, hook, "pending")
    await hold(conn, hooks[0], 9)  # ranks after every backlog, before nothing at all
    registry = CollectorRegistry()
    gauges = webhook_health.WebhookHealthGauges(registry)
    async with await psycopg.AsyncConnection.connect(
        db_dsn, row_factory=psycopg.rows.dict_row
    ) as c:
        assert await webhook_health.refresh(c, gauges, 3) == 3
        due = series(registry, "dispatcher_webhook_due_deliveries")
        assert due == {str(hooks[5]["id"]): 5, str(hooks[4]["id"]): 4, str(hooks[3]["id"]): 3}
        text = generate_latest(registry).decode()
        ids = {
            line.split('webhook_id="')[1][:36] for line in text.splitlines() if "webhook_id" in line
        }
        assert len(ids) == 3
        # a webhook that leaves the top N leaves /metrics
        await conn.execute(
            "DELETE FROM webhook_deliveries WHERE webhook_id = ANY(%s)",
            ([hooks[5]["id"], hooks[4]["id"]],),
        )
        await webhook_health.refresh(c, gauges, 3)
        due = series(registry, "dispatcher_webhook_due_deliveries")
        assert set(due) == {str(hooks[i]["id"]) for i in (3, 2, 1)}
        await webhook_health.refresh(c, gauges, 7)
        assert series(registry, "dispatcher_webhook_held_events")[str(hooks[0]["id"])] == 9
        assert len(series(registry, "dispatcher_webhook_due_deliveries")) == 6
        assert await webhook_health.refresh(c, gauges, 0) == 0
        assert "webhook_id" not in generate_latest(registry).decode()


async def test_the_daemon_publishes_them_from_its_gauges_loop(conn, start_daemon):
    org = await hostdb.create_org(conn, "Acme")
    hooks = [await hostdb.create_webhook(conn, org, URL, name=f"h{i}") for i in range(4)]
    # Switched off by hand in this session: no webhook.disabled lifecycle events (0026), which
    # every other disabled webhook (subscribed to everything) would hold as well.
    await conn.execute("SET dispatcher.lifecycle_events = off")
    for i, hook in enumerate(hooks):
        await conn.execute("UPDATE webhooks SET status = 'disabled' WHERE id = %s", (hook["id"],))
        await hold(conn, hook, i + 1)  # held events: nothing for the daemon to send
    d = await start_daemon(metrics_webhooks_top=2)
    registry = d.app.metrics.registry
    for _ in range(150):
        held = series(registry, "dispatcher_webhook_held_events")
        if held:
            break
        await asyncio.sleep(0.2)
    assert held == {str(hooks[3]["id"]): 4, str(hooks[2]["id"]): 3}
    since = series(registry, "dispatcher_webhook_disabled_since_timestamp_seconds")
    assert set(since) == set(held)


# -- cost: an index on recent attempts, never a full scan ----------------------------------------


def scans(plan: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    """(node type, relation, index) of every node of an EXPLAIN (FORMAT JSON) plan."""
    out = [(plan["Node Type"], plan.get("Relation Name"), plan.get("Index Name"))]
    for child in plan.get("Plans", []):
        out.extend(scans(child))
    return out


async def test_the_plans_read_recent_attempts_through_indexes(conn):
    """On a history big enough for the planner to prefer an index (30 days of attempts
    and deliveries, a day is 3% of it), neither history table is scanned whole."""
    org = await hostdb.create_org(conn, "Acme")
    await conn.execute(
        "INSERT INTO webhooks (id, org_id, name, url, secret, events)"
        " SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(i), 12, '0'))::uuid, %s,"
        "        'hook ' || i, %s, repeat('a', 64), ARRAY['*']"
        " FROM generate_series(1, 100) i",
        (org, URL),
    )
    await conn.execute(
        "INSERT INTO dispatcher.attempts (delivery_id, org_id, webhook_id, attempt_number,"
        " outcome, response_status, duration_ms, error_message, attempted_at)"
        " SELECT gen_random_uuid(), %s,"
        "        ('00000000-0000-4000-8000-' || lpad(to_hex(1 + i %% 100), 12, '0'))::uuid,"
        "        2, CASE WHEN i %% 3 = 0 THEN 'delivered' ELSE 'retryable' END, 503,"
        "        i %% 2000, 'HTTP 503', now() - (i %% 43200) * interval '1 minute'"
        " FROM generate_series(1, 150000) i",
        (org,),
    )
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, attempt_number, max_attempts, duration_ms,"
        " created_at, delivered_at)"
        " SELECT %s, ('00000000-0000-4000-8000-' || lpad(to_hex(1 + i %% 100), 12, '0'))::uuid,"
        "        'job.created', '{}', %s, '{}', '{}',"
        "        CASE WHEN i %% 500 = 0 THEN 'pending' ELSE 'success' END, 1, 4, i %% 1000,"
        "        now() - (i %% 43200) * interval '1 minute',"
        "        CASE WHEN i %% 500 <> 0 THEN now() - (i %% 43200) * interval '1 minute' END"
        " FROM generate_series(1, 150000) i",
        (org, URL),
    )
    await conn.execute("ANALYZE dispatcher.attempts")
    await conn.execute("ANALYZE webhook_deliveries")
    await conn.execute("ANALYZE webhooks")
    one_hook = "00000000-0000-4000-8000-000000000007"
    statements = {
        "every webhook": ("SELECT * FROM dispatcher.webhook_health", ()),
        "one webhook": (
            "SELECT * FROM dispatcher.webhook_health WHERE webhook_id = %s",
            (one_hook,),
        ),
        "one organization": (
            "SELECT * FROM dispatcher.webhook_health WHERE org_id = %s",
            (org,),
        ),
        "metrics top 20": (query("gauges_webhook_health_top"), {"top": 20}),
    }
    # dispatcher.attempts is partitioned by day (0024): its partitions' indexes are children
    # of attempts_webhook_recent and are named after the partition.
    cur = await conn.execute(
        "SELECT ch.relname AS child, p.relname AS parent FROM pg_inherits i"
        " JOIN pg_class ch ON ch.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
        " WHERE ch.relkind = 'i'"
    )
    parent_index = {r["child"]: r["parent"] for r in await cur.fetchall()}
    # ... and the days ahead are empty partitions, which a plan rightly reads whole
    cur = await conn.execute(
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relname LIKE 'attempts%%'"
        " AND reltuples < 1000"
    )
    empty = {r["relname"] for r in await cur.fetchall()}
    for what, (sql, params) in statements.items():
        cur = await conn.execute("EXPLAIN (FORMAT JSON) " + sql, params)
        row = await cur.fetchone()
        assert row is not None
        nodes = scans(row["QUERY PLAN"][0]["Plan"])
        full = [
            n
            for n in nodes
            if n[0] == "Seq Scan"
            and n[1] is not None
            and n[1] not in empty
            and (n[1].startswith("attempts") or n[1] == "webhook_deliveries")
        ]
        assert full == [], (what, nodes)
        used = {parent_index.get(n[2], n[2]) for n in nodes if n[2] is not None}
        assert {"attempts_webhook_recent", "dispatcher_deliveries_first_success"} <= used, (
            what,
            nodes,
        )
    # and the figures of that history are right for one webhook: 30 days of one attempt a
    # minute per 100 webhooks... spot-check against a direct count
    cur = await conn.execute(
        "SELECT (SELECT count(*) FROM dispatcher.attempts WHERE webhook_id = %(w)s"
        "          AND attempted_at >= now() - interval '1 day')"
        "     + (SELECT count(*) FROM webhook_deliveries WHERE webhook_id = %(w)s"
        "          AND status = 'success' AND attempt_number = 1"
        "          AND delivered_at >= now() - interval '1 day') AS n",
        {"w": one_hook},
    )
    expected = (await cur.fetchone())["n"]
    cur = await conn.execute(
        "SELECT attempts_24h FROM dispatcher.webhook_health WHERE webhook_id = %s", (one_hook,)
    )
    assert (await cur.fetchone())["attempts_24h"] == expected > 0


async def test_the_view_applies_the_hosts_row_level_security(conn, crafted):
    """security_invoker (PostgreSQL 15+): a tenant role under the host's kind of policy sees
    only its organization's webhooks, and only their history and queue."""
    role = f"tenant_{uuid.uuid4().hex[:8]}"
    await conn.execute(f"CREATE ROLE {role} NOLOGIN")
    await conn.execute(f"GRANT USAGE ON SCHEMA dispatcher TO {role}")
    await conn.execute(
        f"GRANT SELECT ON webhook_deliveries, webhooks, dispatcher.webhook_health,"
        f" dispatcher.attempts, dispatcher.held, dispatcher.webhook_status_since TO {role}"
    )
    for table in ("webhook_deliveries", "webhooks"):
        await conn.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        await conn.execute(
            f"CREATE POLICY tenant ON {table} USING (org_id = current_setting('app.org_id')::uuid)"
        )
    try:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ROLE {role}")
            await conn.execute("SELECT set_config('app.org_id', %s, true)", (str(crafted["org"]),))
            cur = await conn.execute("SELECT name, due FROM dispatcher.webhook_health ORDER BY 1")
            assert [(r["name"], r["due"]) for r in await cur.fetchall()] == [
                ("alpha", 3),
                ("beta", 0),
            ]
    finally:
        for table in ("webhook_deliveries", "webhooks"):
            await conn.execute(f"DROP POLICY tenant ON {table}")
            await conn.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
        await conn.execute(f"DROP OWNED BY {role}")
        await conn.execute(f"DROP ROLE {role}")
