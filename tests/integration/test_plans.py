"""The outcome statement reaches delivery rows by primary key in every plan (issue 12).

psycopg prepares a statement after five runs, and PostgreSQL may then keep a generic plan
for it, made once from the statistics of that moment and kept while the table grows. Made
while ``webhook_deliveries`` looked small, the generic plan of delivery_record_outcomes read
every pending row through the partial index dispatcher_deliveries_due_since (a bitmap heap
scan and a hash join) to lock a few dozen outcomes' rows: ~80 shared buffers per delivery
instead of ~24 in a one-webhook drain (docs/performance.md, "the outcome statement's plan").
These tests build that situation (statistics of an empty table, then a backlog) and read
the plans, generic and custom, from EXPLAIN: deterministic, no timing.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import hostdb
import pytest
from psycopg import sql
from support.outcomes import delivered

from bench.statement_cpu import fan_out_params
from dispatcher.admission import FAILING_AFTER
from dispatcher.queries import query
from dispatcher.recorder import outcomes_json

BACKLOG = 3000
OUTCOMES = 44


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, executed or not."""
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(nodes(child))
    return out


def numbered(text: str) -> tuple[str, list[str]]:
    """psycopg's %(name)s placeholders as $1, $2... for PREPARE; the names in order."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    return re.sub(r"%\((\w+)\)s", number, text), names


async def backlog_with_stale_statistics(
    conn: hostdb.Conn, rows: int = BACKLOG
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One webhook; statistics taken while webhook_deliveries was empty (as after a bench's
    or a host's ANALYZE before the backlog), then `rows` pending rows of which OUTCOMES are
    leased. Autovacuum off for the table, so the statistics stay as they are."""
    await conn.execute("ALTER TABLE webhook_deliveries SET (autovacuum_enabled = false)")
    await conn.execute("ANALYZE webhook_deliveries")
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
    hook["org_id"] = org
    await more_pending(conn, hook, rows)
    cur = await conn.execute(
        "UPDATE webhook_deliveries SET next_retry_at = now() + interval '30 seconds'"
        " WHERE id IN (SELECT id FROM webhook_deliveries ORDER BY created_at LIMIT %s)"
        " RETURNING id, org_id, webhook_id, next_retry_at",
        (OUTCOMES,),
    )
    return hook, list(await cur.fetchall())


async def more_pending(conn: hostdb.Conn, hook: dict[str, Any], rows: int) -> None:
    """`rows` more pending deliveries of `hook`, each with a ~1 KB body, due now."""
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, created_at)"
        " SELECT %s, %s, 'job.created', '{}', 'https://example.com/hook', '{}',"
        "        repeat('x', 900), 'pending', now() - make_interval(secs => g)"
        " FROM generate_series(1, %s) g",
        (hook["org_id"], hook["id"], rows),
    )


def outcomes(rows: list[dict[str, Any]]) -> str:
    """First attempts answered 204, as the recorder writes them (its own OutcomeRow JSON)."""
    now = datetime.now(UTC)
    return outcomes_json(
        [
            delivered(
                r["id"],
                r["webhook_id"],
                r["org_id"],
                r["next_retry_at"],
                response_status=204,
                duration_ms=1,
                started_at=now,
                ended_at=now,
                seq=i,
            )
            for i, r in enumerate(rows)
        ]
    )


DELIVERY_INDEXES = re.compile(r"webhook_deliveries|dispatcher_deliveries_|idx_webhook_deliveries")


def primary_key_only(plan: dict[str, Any]) -> None:
    """Every node of `plan` that reads webhook_deliveries is a primary-key probe: an index
    scan of its primary key, or a bitmap heap scan fed only by bitmap scans of it, on `id`."""
    reads = [
        n
        for n in nodes(plan)
        if n.get("Relation Name") == "webhook_deliveries" and n["Node Type"] != "ModifyTable"
    ]
    assert reads, plan
    for n in reads:
        if n["Node Type"] == "Bitmap Heap Scan":
            feeding = [b for b in nodes(n) if b["Node Type"] == "Bitmap Index Scan"]
            assert feeding, n
            probes = [(b["Index Name"], b["Index Cond"]) for b in feeding]
        else:
            probes = [(n.get("Index Name"), n.get("Index Cond"))]
            assert n["Node Type"] == "Index Scan", (n["Node Type"], n.get("Filter"))
        for index, cond in probes:
            assert index == "webhook_deliveries_pkey", probes
            assert str(cond).startswith(("(id = ", "((id = ")), probes
    other = [
        (n["Node Type"], n.get("Index Name"))
        for n in nodes(plan)
        if DELIVERY_INDEXES.match(str(n.get("Index Name")))
        and n["Index Name"] != "webhook_deliveries_pkey"
    ]
    assert not other, other


# Both variants of the hot statements (dispatcher/queries.py): the lean one is what runs
# while no webhook is ordered, the full one otherwise.
VARIANTS = pytest.mark.parametrize("variant", ["", "_lean"], ids=["full", "lean"])


@VARIANTS
@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize(
    ("mode", "first"),
    [("force_generic_plan", BACKLOG), ("force_generic_plan", 150), ("force_custom_plan", BACKLOG)],
)
async def test_outcome_rows_are_reached_only_by_primary_key(
    request: pytest.FixtureRequest, database: str, mode: str, first: int, variant: str
) -> None:
    """On the standalone schema and on the host's (its own indexes on status and
    next_retry_at), generic and custom: every node of delivery_record_outcomes' plan that
    reads webhook_deliveries is a primary-key probe, and the outcomes are recorded. With
    `first` < BACKLOG the generic plan is made while the table holds `first` rows and kept
    while the backlog grows to BACKLOG (a drain's first outcomes come while the fan-out is
    still filling the table)."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        hook, leased = await backlog_with_stale_statistics(conn, first)
        text, names = numbered(str(query("delivery_record_outcomes" + variant)))
        assert names == ["rows"]
        rows = outcomes(leased)
        await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        await conn.execute(sql.SQL("PREPARE record AS {}").format(sql.SQL(text)))
        execute = sql.SQL("EXECUTE record({})").format(sql.Literal(rows))
        explain = sql.SQL("EXPLAIN (FORMAT JSON) {}").format(execute)
        cur = await conn.execute(explain)  # the generic plan is made here, and kept
        await more_pending(conn, hook, BACKLOG - first)
        cur = await conn.execute(explain)
        got = await cur.fetchone()
        assert got is not None
        primary_key_only(got["QUERY PLAN"][0]["Plan"])
        # and the statement so planned still does its work
        cur = await conn.execute(execute)
        done = await cur.fetchone()
        assert done is not None
        assert (done["recorded"], done["busy"], done["lost"]) == (OUTCOMES, [], [])
        cur = await conn.execute(
            "SELECT count(*) AS n FROM webhook_deliveries WHERE status = 'success'"
        )
        assert (await cur.fetchone() or {})["n"] == OUTCOMES
    finally:
        await conn.close()


# --------------------------------------------------------------------------- fan-out
# delivery_fan_out takes its outbox rows by ctid (the outbox has no key) and writes them four
# ways: kept and backed off (unreadable), kept for a held webhook row (deferred), kept behind
# an ordered key (ordered_later), deleted (claimed). Written `ctid = ANY (ARRAY(...))`, each
# write was a Tid Scan only while the outbox looked big at plan time: the TID path is costed
# at ten tuples of unknown length times random_page_cost, more than a sequential scan of a
# table of a dozen pages, and the generic plan then kept the sequential scans while the
# outbox's dead rows piled up between two of its vacuums (242 shared buffers per call for one
# event in bench run 20261130T134446Z). Written as joins, each row is a parameterized Tid Scan
# (one tuple per row), and each write that finds no row (in a normal pass: all but the
# DELETE; in an empty pass: all four) does not run at all (a one-time filter on its CTE),
# whatever its plan.

FAN_OUT_PARAMS = fan_out_params(batch=256, claim=256)  # the benchmark's, one definition
KEPT_WRITES = ("CTE unreadable", "CTE deferred", "CTE ordered_later")


def outbox_reads(plan: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The nodes that read dispatcher.outbox, by the CTE they are in ("" for none)."""
    out: dict[str, list[dict[str, Any]]] = {}

    def walk(node: dict[str, Any], cte: str) -> None:
        cte = node["Subplan Name"] if str(node.get("Subplan Name")).startswith("CTE ") else cte
        if (
            node.get("Relation Name") == "outbox" or str(node.get("Index Name")) == "outbox_oldest"
        ) and node["Node Type"] != "ModifyTable":
            out.setdefault(cte, []).append(node)
        for child in node.get("Plans", []):
            walk(child, cte)

    walk(plan, "")
    return out


def fan_out_prepared(variant: str = "") -> tuple[str, sql.Composed]:
    """delivery_fan_out (or its `variant`) with $n placeholders, and FAN_OUT_PARAMS as
    EXECUTE's arguments."""
    text, names = numbered(str(query("delivery_fan_out" + variant)))
    args = sql.SQL(", ").join(
        sql.SQL("{}::uuid").format(sql.Literal(FAN_OUT_PARAMS[n]))
        if n == "only"
        else sql.Literal(FAN_OUT_PARAMS[n])
        for n in names
    )
    return text, args


async def explain_fan_out(
    conn: Any, mode: str, variant: str = "", *, buffers: bool = False
) -> dict[str, Any]:
    """The root node of delivery_fan_out's (or its `variant`'s) plan, run once under
    EXPLAIN ANALYZE as a prepared statement with `plan_cache_mode` = `mode`."""
    text, args = fan_out_prepared(variant)
    await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
    await conn.execute(sql.SQL("PREPARE fan AS {}").format(sql.SQL(text)))
    options = "ANALYZE, BUFFERS, FORMAT JSON" if buffers else "ANALYZE, FORMAT JSON"
    cur = await conn.execute(sql.SQL("EXPLAIN ({}) EXECUTE fan({})").format(sql.SQL(options), args))
    got = await cur.fetchone()
    assert got is not None
    root: dict[str, Any] = got["QUERY PLAN"][0]["Plan"]
    return root


async def drained_outbox(conn: hostdb.Conn, events: int) -> uuid.UUID:
    """One webhook; `events` events fanned out (the outbox left with their dead rows, no live
    one), then statistics, as a working database has them. Autovacuum off for the tables the
    statement reads: an ANALYZE between the two EXPLAINs would replan it on the grown outbox."""
    for table in ("dispatcher.outbox", "public.webhook_deliveries", "public.events"):
        await conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
    await hostdb.insert_events_directly(conn, org, "job.created", events)
    params = fan_out_params(batch=500, claim=0)
    while True:
        cur = await conn.execute(query("delivery_fan_out"), params)
        if int((await cur.fetchall())[-1]["events_claimed"]) == 0:
            break
    await conn.execute("ANALYZE")
    return org


@VARIANTS
@pytest.mark.parametrize(
    ("mode", "first", "by_tid", "fresh"),
    [
        ("force_generic_plan", 2000, True, 1),
        ("force_custom_plan", 2000, True, 1),
        ("force_generic_plan", 400, False, 1),
        ("force_generic_plan", 1, False, 1),
        # a pass that finds no event (a poll, a doorbell whose event another pass took)
        ("force_generic_plan", 400, False, 0),
    ],
)
async def test_fan_out_reaches_outbox_rows_by_tid(
    db_dsn: str, mode: str, first: int, by_tid: bool, fresh: int, variant: str
) -> None:
    """The plan of delivery_fan_out for one fresh event, made when the outbox held the dead
    rows of `first` events fanned out and reused after 5,000 more dead rows: every outbox row
    written is reached by a Tid Scan (or, for picking, the outbox_oldest index), and the
    writes with nothing to write read no outbox page. Made when the outbox was a few pages
    (`first` 400, a bench warm-up's; or 1), the planner rightly prefers a sequential scan of
    those pages to a TID fetch (random_page_cost) for picking and deleting, and keeps it while
    the outbox grows: only the second part holds there (docs/performance.md, fanlean)."""
    conn = await hostdb.connect(db_dsn)
    try:
        org = await drained_outbox(conn, first)
        text, args = fan_out_prepared(variant)
        if fresh:
            await hostdb.insert_events_directly(conn, org, "job.created", fresh)
        await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        await conn.execute(sql.SQL("PREPARE fan AS {}").format(sql.SQL(text)))
        execute = sql.SQL("EXECUTE fan({})").format(args)
        await conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) {}").format(execute))  # planned here
        # dead rows, as between two of the outbox's vacuums
        await conn.execute(
            "INSERT INTO dispatcher.outbox (event_id)"
            " SELECT gen_random_uuid() FROM generate_series(1, 5000)"
        )
        await conn.execute(
            "DELETE FROM dispatcher.outbox o WHERE o.misses IS NULL"
            " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = o.event_id)"
        )
        cur = await conn.execute(
            sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}").format(execute)
        )
        got = await cur.fetchone()
        assert got is not None
        reads = outbox_reads(got["QUERY PLAN"][0]["Plan"])
        # nothing to keep (nor, without an event, to delete): not one outbox page read
        for cte in KEPT_WRITES if fresh else (*KEPT_WRITES, "CTE claimed"):
            ran = [
                (n["Node Type"], n["Shared Hit Blocks"] + n["Shared Read Blocks"])
                for n in reads.get(cte, [])
                if n["Shared Hit Blocks"] + n["Shared Read Blocks"] > 0
            ]
            assert not ran, (cte, ran)
        if by_tid:
            for cte, found in reads.items():
                for n in found:
                    kind = (n["Node Type"], n.get("Index Name"))
                    assert kind in {("Tid Scan", None), ("Index Scan", "outbox_oldest")}, (
                        cte,
                        kind,
                        n.get("Filter"),
                    )
            claimed = reads["CTE claimed"]
            assert [n.get("TID Cond", "").startswith("(ctid = ") for n in claimed] == [True]
        # and the statement so planned did its work: one event, one delivery
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM dispatcher.outbox) AS outbox,"
            " (SELECT count(*) FROM webhook_deliveries) AS deliveries"
        )
        assert await cur.fetchone() == {"outbox": 0, "deliveries": first + fresh}
    finally:
        await conn.close()


async def test_fan_out_finds_an_events_webhooks_by_index(db_dsn: str) -> None:
    """2,000 orgs with a webhook each, one of them disabled: the generic plan of
    delivery_fan_out for one event reads webhooks by index (0040), not by a sequential scan
    of every org's webhooks, and still holds the disabled webhook's event."""
    conn = await hostdb.connect(db_dsn)
    try:
        await conn.execute(
            "INSERT INTO organizations (id, name, slug)"
            " SELECT gen_random_uuid(), 'org ' || g, 'org-' || g FROM generate_series(1, 2000) g"
        )
        await conn.execute(
            "INSERT INTO webhooks (org_id, name, url, secret, events, headers, status)"
            " SELECT id, 'hook', 'https://example.com/hook', md5(id::text), ARRAY['*'], '{}',"
            "        CASE WHEN slug = 'org-7' THEN 'disabled' ELSE 'active' END"
            " FROM organizations"
        )
        cur = await conn.execute("SELECT id FROM organizations WHERE slug IN ('org-7', 'org-8')")
        orgs = [r["id"] for r in await cur.fetchall()]
        for org in orgs:
            await hostdb.insert_events_directly(conn, org, "job.created", 1)
        await conn.execute("ANALYZE")
        plan = await explain_fan_out(conn, "force_generic_plan", buffers=True)
        reads = [
            (n["Node Type"], n.get("Index Name"))
            for n in nodes(plan)
            if n.get("Relation Name") == "webhooks"
        ]
        assert reads and all(kind != "Seq Scan" for kind, _ in reads), reads
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM webhook_deliveries) AS deliveries,"
            " (SELECT count(*) FROM dispatcher.held) AS held,"
            " (SELECT count(*) FROM dispatcher.outbox) AS outbox"
        )
        assert await cur.fetchone() == {"deliveries": 1, "held": 1, "outbox": 0}
    finally:
        await conn.close()


# The rows a fan-out creates (one per delivery) pass through several CTEs: matched, ranked,
# and the delivery rows, the numbers and the rows returned made from them. Joined back on id,
# those CTEs were planned from their estimates (one to three rows) as nested loops, each
# rescanning a CTE of every created row once per created row: 2 x n^2 tuples read for a
# fan-out of n deliveries, in every plan (docs/performance.md, branch drain16).
PER_DELIVERY_CTES = {"matched", "ranked", "numbered", "inserted", "sequenced"}


@VARIANTS
@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
async def test_fan_out_reads_each_created_row_once_per_use(
    db_dsn: str, mode: str, variant: str
) -> None:
    """The 16-webhook drain's fan-out (16 orgs of one webhook, 64 events): no CTE holding
    a row per delivery is scanned more than once where it is read, in the generic plan
    psycopg's prepared statement settles on or in a custom one; and the statement so planned
    still creates, leases and numbers every delivery (1..4 for each webhook)."""
    conn = await hostdb.connect(db_dsn)
    try:
        for i in range(16):
            org = await hostdb.create_org(conn, f"Org{i}")
            await hostdb.create_webhook(conn, org, f"https://example.com/{i}", ["*"])
            await hostdb.insert_events_directly(conn, org, "job.created", 4)
        await conn.execute("ANALYZE")
        plan = await explain_fan_out(conn, mode, variant)
        rescanned = [
            (n["CTE Name"], n["Actual Loops"], n["Actual Rows"])
            for n in nodes(plan)
            if n["Node Type"] == "CTE Scan"
            and n["CTE Name"] in PER_DELIVERY_CTES
            and n["Actual Loops"] > 1
        ]
        assert not rescanned, rescanned
        cur = await conn.execute(
            "SELECT count(*) AS deliveries, count(*) FILTER (WHERE d.next_retry_at > now())"
            " AS leased, array_agg(s.sequence ORDER BY s.sequence) AS numbers"
            " FROM webhook_deliveries d JOIN dispatcher.delivery_sequence s"
            " ON s.delivery_id = d.id AND s.webhook_id = d.webhook_id"
            " GROUP BY s.webhook_id"
        )
        # each webhook's four deliveries leased and numbered 1..4: no gap, no duplicate
        assert (
            await cur.fetchall() == [{"deliveries": 4, "leased": 4, "numbers": [1, 2, 3, 4]}] * 16
        )
    finally:
        await conn.close()


# --------------------------------------------------------------------------- claim
# delivery_claim_due reads its candidates through the partial index
# dispatcher_deliveries_due_since in the order they became due, locks them SKIP LOCKED and
# stops at its scan limit. Planned with its parameters (psycopg's first five runs, the server's
# next five custom plans) and the statistics of a table empty at its last ANALYZE, it read
# every due row by a bitmap scan and sorted them instead (docs/performance.md, "delivery_claim_
# due's plan"); 0044 plans the candidate scan with bitmap scans and sorts off. Counted by the
# index's own statistics (entries returned, in this transaction): no auto_explain needed, on
# every server version, whatever holds the scan.

CLAIM = 44


def claim_params(hook: dict[str, Any]) -> dict[str, Any]:
    """The daemon's parameters for one webhook with room for CLAIM rows."""
    return {
        **fan_out_params(batch=CLAIM, claim=CLAIM),
        "room_ids": [hook["id"]],
        "room_left": [CLAIM],
        "hook_cap": CLAIM,
        "limit": CLAIM,
        "scan": 4 * CLAIM,
    }


@pytest.mark.pgmatrix  # PostgreSQL 16 and 18 plan the same: CI checks it
@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize(
    ("mode", "prepare"),
    [
        ("auto", False),  # psycopg's first runs: unprepared, planned with the parameters
        ("force_custom_plan", True),
        ("force_generic_plan", True),
    ],
)
async def test_claim_reads_the_due_index_in_order_up_to_its_limit(
    request: pytest.FixtureRequest, database: str, mode: str, prepare: bool
) -> None:
    """BACKLOG due rows (OUTCOMES of them leased), statistics of the empty table: one claim,
    custom or generic, returns no more than about its scan limit (4 x CLAIM) of entries from
    dispatcher_deliveries_due_since, not every due row, and leases the CLAIM rows that became
    due first (the same rows as before 0044)."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        hook, _ = await backlog_with_stale_statistics(conn)
        cur = await conn.execute(
            "SELECT id FROM webhook_deliveries"
            " WHERE status IN ('pending', 'retrying')"
            "   AND coalesce(next_retry_at, created_at) <= now()"
            " ORDER BY coalesce(next_retry_at, created_at), created_at LIMIT %s",
            (CLAIM,),
        )
        first_due = {r["id"] for r in await cur.fetchall()}
        await conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Identifier(mode)))
        params = claim_params(hook)
        # entries returned by the index, as this backend counts them (not yet reported:
        # earlier transactions' counts too, hence the difference)
        returned = sql.SQL(
            "SELECT pg_stat_get_xact_tuples_returned("
            "'public.dispatcher_deliveries_due_since'::regclass) AS n"
        )
        async with conn.transaction():
            cur = await conn.execute(returned)
            before = int((await cur.fetchone() or {})["n"])
            cur = await conn.execute(query("delivery_claim_due"), params, prepare=prepare)
            claimed = {r["id"] for r in await cur.fetchall()}
            cur = await conn.execute(returned)
            read = int((await cur.fetchone() or {})["n"]) - before
        assert claimed == first_due, (len(claimed), len(first_due & claimed))
        # an ordered read: the scan's 176 entries and the leased rows' old ones at most; a
        # bitmap returns every due entry (BACKLOG - OUTCOMES)
        assert read <= 4 * CLAIM + OUTCOMES, read
    finally:
        await conn.close()


# The claim locks up to its scan (4 x its limit) of candidates and leases at most each
# webhook's room of them. The org's retry policy is needed for a candidate only when its
# webhook is failing (the probe's spacing), and for the rows leased (their columns): 0045
# reads it for those alone, where 0044 probed integration_retry_config once per candidate
# (docs/performance.md, "where drain1's live PostgreSQL CPU goes").

ROOM = 8


def policy_scans() -> sql.SQL:
    """Scans of integration_retry_config and its indexes in this transaction (each probe of
    a nested loop's inner index scan is one)."""
    return sql.SQL(
        "SELECT pg_stat_get_xact_numscans('public.integration_retry_config'::regclass)"
        " + coalesce((SELECT sum(pg_stat_get_xact_numscans(i.indexrelid)) FROM pg_index i"
        "             WHERE i.indrelid = 'public.integration_retry_config'::regclass), 0) AS n"
    )


@pytest.mark.pgmatrix
@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize("prepare", [False, True])
async def test_claim_reads_the_retry_policy_for_the_rows_it_leases_only(
    request: pytest.FixtureRequest, database: str, prepare: bool
) -> None:
    """400 due rows of one webhook with room for ROOM: the claim reads its 4 x CLAIM
    candidates, leases ROOM, and reads the org's policy no more than once per leased row;
    the rows carry that policy."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        org = await hostdb.create_org(conn)
        await hostdb.set_retry_config(
            conn, org, max_retries=7, retry_strategy="linear", base_delay_seconds=11
        )
        hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
        hook["org_id"] = org
        await more_pending(conn, hook, 400)
        params = {**claim_params(hook), "room_left": [ROOM]}
        async with conn.transaction():
            cur = await conn.execute(policy_scans())
            before = int((await cur.fetchone() or {})["n"])
            cur = await conn.execute(query("delivery_claim_due"), params, prepare=prepare)
            rows = await cur.fetchall()
            cur = await conn.execute(policy_scans())
            scans = int((await cur.fetchone() or {})["n"]) - before
        assert len(rows) == ROOM
        assert {(r["max_retries"], r["retry_strategy"], r["base_delay_seconds"]) for r in rows} == {
            (7, "linear", 11)
        }
        # 0044: one probe per candidate (4 x CLAIM = 176)
        assert scans <= ROOM + 1, scans
    finally:
        await conn.close()


# (failures past FAILING_AFTER, seconds since the last, the org's (base, max) under which the
# claim leaves the row alone, the (base, max) under which it takes it, the column that shows it)
SPACING = {
    # FAILING_AFTER in a row, 8 s ago: base 30 s holds it back; the default base of 5 s not
    "base_delay": (0, 8, (30, 300), (5, 300), "base_delay_seconds"),
    # five more, 20 s ago: base 5 s doubles to 160 s, held back under a max of 300 s; a max of
    # 10 s caps the spacing (the org's max_delay_seconds is read, not a default)
    "max_delay": (5, 20, (5, 300), (5, 10), "max_delay_seconds"),
}


@pytest.mark.pgmatrix
@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize("case", sorted(SPACING))
async def test_a_failing_webhook_is_spaced_by_its_orgs_policy_in_the_claim(
    request: pytest.FixtureRequest, database: str, case: str
) -> None:
    """A failing webhook's due row is left alone by the claim until its org's policy spaces
    the next probe (webhook_claimable_v1 reads the policy through 0045's subqueries), and
    then taken: one probe at a time."""
    extra, ago, held, taken, column = SPACING[case]
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        org = await hostdb.create_org(conn)
        hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
        hook["org_id"] = org
        await conn.execute(
            "UPDATE webhooks SET consecutive_failures = %s,"
            " last_failure_at = now() - make_interval(secs => %s) WHERE id = %s",
            (FAILING_AFTER + extra, ago, hook["id"]),
        )
        await more_pending(conn, hook, 3)
        params = {**claim_params(hook), "room_ids": [], "room_left": []}
        await hostdb.set_retry_config(
            conn, org, base_delay_seconds=held[0], max_delay_seconds=held[1]
        )
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(query("delivery_claim_due"), params)
            assert await cur.fetchall() == []
        await hostdb.set_retry_config(
            conn, org, base_delay_seconds=taken[0], max_delay_seconds=taken[1]
        )
        async with conn.transaction(force_rollback=True):
            cur = await conn.execute(query("delivery_claim_due"), params)
            rows = await cur.fetchall()
        expected = taken[0] if column == "base_delay_seconds" else taken[1]
        assert [(r["failing"], r[column]) for r in rows] == [(True, expected)]
    finally:
        await conn.close()


def secret_scans() -> sql.SQL:
    """Scans of dispatcher.webhook_secrets and its indexes in this transaction."""
    return sql.SQL(
        "SELECT pg_stat_get_xact_numscans('dispatcher.webhook_secrets'::regclass)"
        " + coalesce((SELECT sum(pg_stat_get_xact_numscans(i.indexrelid)) FROM pg_index i"
        "             WHERE i.indrelid = 'dispatcher.webhook_secrets'::regclass), 0) AS n"
    )


@pytest.mark.pgmatrix
@pytest.mark.parametrize("database", ["db_dsn", "host_db_dsn"])
@pytest.mark.parametrize("prepare", [False, True])
async def test_claim_reads_the_previous_secret_once_per_leased_row(
    request: pytest.FixtureRequest, database: str, prepare: bool
) -> None:
    """A webhook whose secret was rotated: every leased row carries the previous secret and
    its expiry, read with one probe of webhook_secrets per row at most (two scalar
    subqueries read it twice before)."""
    conn = await hostdb.connect(request.getfixturevalue(database))
    try:
        org = await hostdb.create_org(conn)
        hook = await hostdb.create_webhook(conn, org, "https://example.com/hook", ["*"])
        hook["org_id"] = org
        await conn.execute(
            "INSERT INTO dispatcher.webhook_secrets (webhook_id, previous_secret,"
            " previous_expires_at) VALUES (%s, 'whsec_old', '2030-01-01T00:00:00Z')",
            (hook["id"],),
        )
        await more_pending(conn, hook, 40)
        params = {**claim_params(hook), "room_left": [ROOM]}
        async with conn.transaction():
            cur = await conn.execute(secret_scans())
            before = int((await cur.fetchone() or {})["n"])
            cur = await conn.execute(query("delivery_claim_due"), params, prepare=prepare)
            rows = await cur.fetchall()
            cur = await conn.execute(secret_scans())
            scans = int((await cur.fetchone() or {})["n"]) - before
        assert len(rows) == ROOM
        assert {(r["previous_secret"], r["previous_expires_at"].year) for r in rows} == {
            ("whsec_old", 2030)
        }
        assert scans <= ROOM + 1, scans
    finally:
        await conn.close()
