"""Rules written once per language agree across the two (issue 15, "one home per rule").

The organization's retry policy: dispatcher.retry_policy_v1 (0037) and backoff.RetryPolicy,
over the whole range of the host's integer columns, NULLs and unknown strategies included,
and the SQL helpers built on it. The "not active" text: dispatcher.not_active_v1 (0038) and
transitions.NOT_ACTIVE. The statements that call the SQL home still plan as before: the
call is inlined, never evaluated per row."""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from datetime import timedelta
from typing import Any

import hostdb
import orjson
import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.admission import FAILING_AFTER, probe_delay
from dispatcher.backoff import RANGES, STRATEGIES, RetryPolicy
from dispatcher.queries import query
from dispatcher.transitions import NOT_ACTIVE

INT4 = (-(2**31), 2**31 - 1)
INT_FIELDS = tuple(RANGES)
COLUMNS = (
    "max_retries integer, retry_strategy text, base_delay_seconds integer, "
    "max_delay_seconds integer, enable_jitter boolean, enable_dlq boolean, "
    "dlq_retention_days integer"
)
FIELDS = tuple(f.name for f in dataclasses.fields(RetryPolicy))


def edges(low: int, high: int, default: int) -> list[int | None]:
    """NULL, the ends of int4, and every boundary of the range."""
    return [None, INT4[0], -5, 0, low - 1, low, low + 1, default, high - 1, high, high + 1, INT4[1]]


def in_sql(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """dispatcher.retry_policy_v1 of each raw row (absent keys are NULL), in order."""
    cur = conn.execute(
        "SELECT (dispatcher.retry_policy_v1(r.max_retries, r.retry_strategy,"
        " r.base_delay_seconds, r.max_delay_seconds, r.enable_jitter, r.enable_dlq,"
        f" r.dlq_retention_days)).* FROM ROWS FROM (jsonb_to_recordset(%s::jsonb) AS ({COLUMNS}))"
        " WITH ORDINALITY AS r ORDER BY r.ordinality",
        (orjson.dumps(rows).decode(),),
    )
    names = [c.name for c in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def in_python(row: dict[str, Any]) -> dict[str, Any]:
    """RetryPolicy.from_row of the row as the daemon reads it (every column, NULL or not)."""
    policy, _ = RetryPolicy.from_row({name: row.get(name) for name in FIELDS})
    return dataclasses.asdict(policy)


def assert_agree(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> None:
    for row, got in zip(rows, in_sql(conn, rows), strict=True):
        assert got == in_python(row), row


def test_sql_and_python_clamp_every_value_alike(db_dsn: str) -> None:
    default = RetryPolicy()
    rows: list[dict[str, Any]] = [{}]  # no row at all (a LEFT JOIN's NULLs): the defaults
    for name, (low, high) in RANGES.items():
        rows += [{name: v} for v in edges(low, high, getattr(default, name))]
        rows += [{name: v} for v in range(low - 2, high + 3)]  # the whole range, one by one
    rows += [{"retry_strategy": s} for s in (*STRATEGIES, None, "bogus", "Linear", "", "fixed ")]
    rows += [{b: v} for b in ("enable_jitter", "enable_dlq") for v in (None, True, False)]
    with psycopg.connect(db_dsn) as conn:
        assert_agree(conn, rows)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.fixed_dictionaries(
            {},
            optional={
                **{name: st.none() | st.integers(*INT4) for name in INT_FIELDS},
                "retry_strategy": st.none() | st.sampled_from([*STRATEGIES, "bogus", ""]),
                "enable_jitter": st.none() | st.booleans(),
                "enable_dlq": st.none() | st.booleans(),
            },
        ),
        min_size=20,
        max_size=20,
    )
)
def test_sql_and_python_agree_on_any_row(db_dsn: str, rows: list[dict[str, Any]]) -> None:
    with psycopg.connect(db_dsn) as conn:
        assert_agree(conn, rows)


async def test_the_defaults_are_the_host_columns_defaults(conn: hostdb.Conn) -> None:
    """No arguments: RetryPolicy(); and a row the host inserts with nothing but its org gets
    the same values from the table's column defaults (0001_host_tables.sql)."""
    cur = await conn.execute("SELECT (dispatcher.retry_policy_v1()).*")
    assert await cur.fetchone() == dataclasses.asdict(RetryPolicy())
    org = await hostdb.create_org(conn)
    cur = await conn.execute(
        f"INSERT INTO integration_retry_config (org_id) VALUES (%s) RETURNING {', '.join(FIELDS)}",
        (org,),
    )
    assert await cur.fetchone() == dataclasses.asdict(RetryPolicy())


async def test_the_org_helpers_read_the_policy_as_python_does(conn: hostdb.Conn) -> None:
    """max_attempts_v1, dlq_retention_v1 (per organization) and probe_delay_v1 (per failing
    webhook) give what RetryPolicy.from_row of the same row gives, for rows in and out of
    range, and for an organization without a row."""
    configs: list[dict[str, int] | None] = [
        None,
        {},
        {"max_retries": 0, "dlq_retention_days": 0, "base_delay_seconds": 0},
        {"max_retries": -7, "dlq_retention_days": -1, "max_delay_seconds": -1},
        {"max_retries": 11, "dlq_retention_days": 91, "base_delay_seconds": 61},
        {"max_retries": INT4[1], "dlq_retention_days": INT4[1], "max_delay_seconds": INT4[1]},
        {"max_retries": 7, "dlq_retention_days": 45, "base_delay_seconds": 2},
    ]
    for config in configs:
        org = await hostdb.create_org(conn)
        if config is not None:
            await hostdb.set_retry_config(conn, org, **config)
        cur = await conn.execute("SELECT * FROM integration_retry_config WHERE org_id = %s", (org,))
        policy, _ = RetryPolicy.from_row(await cur.fetchone())
        cur = await conn.execute(
            "SELECT dispatcher.max_attempts_v1(%s) AS attempts,"
            " dispatcher.dlq_retention_v1(%s) AS keep",
            (org, org),
        )
        assert await cur.fetchone() == {
            "attempts": policy.max_attempts,
            "keep": timedelta(days=policy.dlq_retention_days),
        }, config
    for base, top in itertools.product(
        [None, INT4[0], 0, 1, 5, 60, 61, INT4[1]], [None, INT4[0], 0, 1, 300, 3600, 3601, INT4[1]]
    ):
        policy, _ = RetryPolicy.from_row({"base_delay_seconds": base, "max_delay_seconds": top})
        for streak in (FAILING_AFTER, FAILING_AFTER + 3, FAILING_AFTER + 40):
            cur = await conn.execute(
                "SELECT dispatcher.probe_delay_v1(%s, %s, %s, %s) AS delay",
                (streak, base, top, FAILING_AFTER),
            )
            row = await cur.fetchone()
            assert row is not None
            assert row["delay"] == probe_delay(policy, streak), (base, top)


async def candidates(conn: hostdb.Conn) -> str:
    """The query of dispatcher.claim_candidates_v2 (0044, 0045), its arguments as the
    claim's parameters: what that function plans (PL/pgSQL, once per session)."""
    cur = await conn.execute(
        "SELECT prosrc FROM pg_proc WHERE oid = 'dispatcher.claim_candidates_v2'::regproc"
    )
    source = str((await cur.fetchone() or {})["prosrc"])
    text = source.split("RETURN QUERY", 1)[1].rsplit(";", 1)[0]
    for name, cast in (("full_ids", "uuid[]"), ("failing_after", "integer"), ("scan", "integer")):
        text = text.replace(f"claim_candidates_v2.{name}", f"%({name})s::{cast}")
    assert "claim_candidates_v2" not in text, text
    return text


async def test_the_statements_that_read_the_policy_inline_it(conn: hostdb.Conn) -> None:
    """The SQL home costs the hot statements nothing: the planner folds every call into the
    bare expression (a call left in the plan would run per row)."""
    params = {
        "lease": 90,
        "room_ids": [],
        "room_left": [],
        "full_ids": [],
        "hook_cap": 8,
        "failing_after": FAILING_AFTER,
        "batch": 10,
        "claim": 5,
        "only": None,
        "limit": 10,
        "scan": 40,
        "days": 30,
    }
    for name in (
        "delivery_fan_out",
        "delivery_claim_due",
        "purge_dlq",
        "purge_held",
        "purge_finished",
    ):
        assert "retry_policy_v1" in query(name) or name == "delivery_claim_due"
        cur = await conn.execute("EXPLAIN (VERBOSE, COSTS OFF) " + query(name), params)
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
        if name == "delivery_claim_due":  # its candidate scan is planned inside 0044's function
            cur = await conn.execute(
                "EXPLAIN (VERBOSE, COSTS OFF) " + await candidates(conn), params
            )
            plan += "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
        for function in ("retry_policy_v1", "probe_delay_v1", "webhook_claimable_v1"):
            assert function not in plan, (name, function, plan)
        # the claim's candidates read the policy in a subquery, only for a failing webhook
        assert "LEAST(GREATEST(COALESCE(rc." in plan or (
            name == "delivery_claim_due" and "LEAST(GREATEST(COALESCE((SubPlan" in plan
        ), (name, plan)


async def test_the_not_active_text_is_one_in_sql_and_python(conn: hostdb.Conn) -> None:
    cur = await conn.execute("SELECT dispatcher.not_active_v1() AS text")
    row = await cur.fetchone()
    assert row is not None
    assert row["text"] == NOT_ACTIVE
    # The partial index of a disable's streak (0020) spells it out: the same text.
    cur = await conn.execute(
        "SELECT pg_get_expr(i.indpred, i.indrelid) AS pred FROM pg_index i"
        " WHERE i.indexrelid = 'dispatcher_deliveries_streak'::regclass"
    )
    row = await cur.fetchone()
    assert row is not None
    pred = row["pred"]
    assert f"error_message = '{NOT_ACTIVE}'::text" in pred.replace("(", "").replace(")", ""), pred
    # ... and the streak's condition, calling the function, is the index's: no Filter left.
    async with conn.transaction(force_rollback=True):
        await conn.execute("SET LOCAL enable_seqscan = off")
        cur = await conn.execute(
            "EXPLAIN (COSTS OFF) SELECT d.id FROM webhook_deliveries d"
            " WHERE d.webhook_id = %s AND (d.status = 'dlq'"
            " OR (d.status = 'failed' AND d.error_message = dispatcher.not_active_v1()))",
            (uuid.uuid4(),),
        )
        plan = "\n".join(row["QUERY PLAN"] for row in await cur.fetchall())
    assert "dispatcher_deliveries_streak" in plan and "Filter" not in plan, plan
