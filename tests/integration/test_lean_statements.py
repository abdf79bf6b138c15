"""The lean variants of delivery_fan_out and delivery_record_outcomes (issue 12): made by
dispatcher/queries.py from the one text in dispatcher/sql/delivery.sql, without the
ordered-key parts (0032).

- the lean fan-out does nothing while some webhook is ordered, and says so in its marker row
  (snapshot-consistent gate); the full one then acts; once no webhook is ordered, the lean
  one acts again;
- where the lean fan-out acts, it writes and returns exactly what the full one does (both
  run on the same state, rolled back in between);
- the claim rows say which deliveries are of an ordered key (`keyed`), and the daemon uses
  the lean statements while no webhook is ordered, the full ones (and ordered delivery
  works) once one is.
"""

from __future__ import annotations

import uuid
from typing import Any

import hostdb
import psycopg
from psycopg.types.json import Jsonb
from support.order_receiver import OrderReceiver

from dispatcher import dispatch, recorder
from dispatcher.admission import Admission
from dispatcher.claims import Claimed
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits

Conn = hostdb.Conn
URL = "https://93.184.216.34/hook"  # never sent to: no daemon runs in the SQL-level tests


async def publish(conn: Conn, org: uuid.UUID, key: uuid.UUID | None, n: int, kind: str) -> None:
    await conn.execute(
        "SELECT publish_event(%s, %s, %s, NULL, '{}'::jsonb, %s)",
        (kind, key, Jsonb({"n": n}), org),
    )


async def set_ordered(conn: Conn, org: uuid.UUID, hook: uuid.UUID, ordered: bool) -> None:
    await conn.execute("SELECT dispatcher.set_webhook_ordered(%s, %s, %s)", (org, hook, ordered))


def fan_out_args(*, claim: int = 10, hook_cap: int | None = None) -> dict[str, Any]:
    room = Admission[Claimed](4, RateLimits()).claim_params()
    if hook_cap is not None:
        room["hook_cap"] = hook_cap
    return {**room, "lease": 60.0, "batch": 50, "claim": claim, "only": None}


async def run(conn: Conn, name: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    cur = await conn.execute(query(name), args)
    return [dict(r) for r in await cur.fetchall()]


async def outbox(conn: Conn) -> int:
    cur = await conn.execute("SELECT count(*) AS n FROM dispatcher.outbox")
    row = await cur.fetchone()
    return int(row["n"]) if row else -1


async def test_the_lean_fan_out_refuses_while_a_webhook_is_ordered(conn: Conn) -> None:
    org = await hostdb.create_org(conn)
    plain = await hostdb.create_webhook(conn, org, URL, ["candidate.*"])
    key = uuid.uuid4()
    await publish(conn, org, key, 0, "candidate.updated")
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows[-1]["id"] is None and rows[-1]["ordered_refused"] is False
    assert rows[-1]["events_claimed"] == 1 and await outbox(conn) == 0
    [made] = rows[:-1]
    assert made["webhook_id"] == plain["id"] and made["keyed"] is False

    ordered = await hostdb.create_webhook(conn, org, URL, ["candidate.*"])
    await set_ordered(conn, org, ordered["id"], True)
    await publish(conn, org, key, 1, "candidate.updated")
    await publish(conn, org, None, 2, "candidate.updated")  # no key: not keyed
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows == [{**rows[-1], "ordered_refused": True}]  # the marker row alone
    assert rows[-1]["events_claimed"] == 0 and rows[-1]["deliveries_created"] == 0
    assert await outbox(conn) == 2  # untouched, for the full statement

    rows = await run(conn, "delivery_fan_out", fan_out_args())
    assert rows[-1]["ordered_refused"] is False and rows[-1]["events_claimed"] == 2
    # started at once: both events to the plain webhook, the unkeyed one to the ordered one;
    # the keyed one to the ordered webhook waits for delivery_claim_due (0032)
    started = {(r["webhook_id"], r["keyed"]) for r in rows[:-1]}
    assert len(rows) - 1 == 3
    assert started == {(plain["id"], False), (ordered["id"], False)}
    cur = await conn.execute(
        "SELECT d.id FROM webhook_deliveries d JOIN dispatcher.delivery_sequence s"
        " ON s.delivery_id = d.id WHERE s.order_key IS NOT NULL"
    )
    [keyed_id] = [r["id"] for r in await cur.fetchall()]
    due = await run(conn, "delivery_claim_due", {**fan_out_args(), "limit": 10, "scan": 40})
    assert [(r["id"], r["keyed"]) for r in due] == [(keyed_id, True)]
    assert Claimed.from_row(due[0], due[0]["claim"]).keyed
    await conn.execute(  # an unkeyed delivery due again (its lease ran out): not keyed
        "UPDATE webhook_deliveries SET next_retry_at = now() - interval '1 second'"
        " WHERE webhook_id = %s",
        (plain["id"],),
    )
    due_again = await run(conn, "delivery_claim_due", {**fan_out_args(), "limit": 10, "scan": 40})
    assert len(due_again) == 3 and not any(r["keyed"] for r in due_again)
    # a row from a statement that does not say (the default): the full outcome statement
    assert Claimed.from_row({**due[0], "keyed": None}, due[0]["claim"]).keyed

    await set_ordered(conn, org, ordered["id"], False)  # the settings row stays, not ordered
    await publish(conn, org, key, 3, "candidate.updated")
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows[-1]["ordered_refused"] is False and rows[-1]["events_claimed"] == 1


async def test_an_ordered_webhook_no_fan_out_can_match_does_not_stop_the_lean_fan_out(
    conn: Conn,
) -> None:
    """An ordered webhook soft-deleted in the host's UI (its settings row stays: only a hard
    delete cascades) or switched off by a person (inactive) is matched by no fan-out, so the
    lean statement acts; one switched off automatically (disabled) holds events, and its keys
    count, so the lean statement refuses while it is ordered."""
    org = await hostdb.create_org(conn)
    plain = await hostdb.create_webhook(conn, org, URL, ["candidate.*"])
    ordered = await hostdb.create_webhook(conn, org, URL, ["candidate.*"])
    await set_ordered(conn, org, ordered["id"], True)
    key = uuid.uuid4()

    await conn.execute("UPDATE webhooks SET deleted_at = now() WHERE id = %s", (ordered["id"],))
    await publish(conn, org, key, 0, "candidate.updated")
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows[-1]["ordered_refused"] is False and rows[-1]["events_claimed"] == 1
    assert [r["webhook_id"] for r in rows[:-1]] == [plain["id"]]

    await conn.execute(
        "UPDATE webhooks SET deleted_at = NULL, status = 'inactive' WHERE id = %s",
        (ordered["id"],),
    )
    await publish(conn, org, key, 1, "candidate.updated")
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows[-1]["ordered_refused"] is False and rows[-1]["events_claimed"] == 1

    await conn.execute("UPDATE webhooks SET status = 'disabled' WHERE id = %s", (ordered["id"],))
    await publish(conn, org, key, 2, "candidate.updated")
    rows = await run(conn, "delivery_fan_out_lean", fan_out_args())
    assert rows == [{**rows[-1], "ordered_refused": True}]


async def _state(conn: Conn, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a fan-out returned and wrote, with its random delivery ids replaced by
    (event, webhook)."""
    cur = await conn.execute("SELECT id, event_id, webhook_id FROM webhook_deliveries")
    ids = {r["id"]: (r["event_id"], r["webhook_id"]) for r in await cur.fetchall()}
    returned = sorted(
        (repr(sorted({**r, "id": ids.get(r["id"])}.items())) for r in rows if r["id"] is not None),
    )
    marker = {k: v for k, v in rows[-1].items() if k != "ordered_refused"}
    tables: dict[str, list[Any]] = {}
    for name, sql in {
        "deliveries": "SELECT event_id, webhook_id, status, next_retry_at, attempt_number,"
        " max_attempts, request_body, request_headers, request_url, event_type"
        " FROM webhook_deliveries",
        "sequence": "SELECT d.event_id, d.webhook_id, s.sequence, s.order_key, s.parked_until"
        " FROM dispatcher.delivery_sequence s JOIN webhook_deliveries d ON d.id = s.delivery_id",
        "counters": "SELECT webhook_id, last FROM dispatcher.webhook_sequences",
        "held": "SELECT webhook_id, event_id FROM dispatcher.held",
        "outbox": "SELECT event_id, retry_at, misses FROM dispatcher.outbox",
    }.items():
        cur = await conn.execute(sql)
        tables[name] = sorted(repr(sorted(dict(r).items())) for r in await cur.fetchall())
    return {"returned": returned, "marker": marker, **tables}


async def test_lean_and_full_fan_outs_do_the_same_without_ordered_webhooks(
    conn: Conn, db_dsn: str
) -> None:
    """Unordered shapes: several webhooks per event, keys (aggregate ids) that order nothing
    here, a disabled webhook (held), a failing one (created, not started), one whose row
    someone holds (left in the outbox), a per-webhook cap and a claim smaller than the
    batch. Both statements run on the same state in one transaction (same now()), the
    first rolled back."""
    org = await hostdb.create_org(conn)
    other = await hostdb.create_org(conn, "Other")
    await hostdb.set_retry_config(conn, org, max_retries=2, base_delay_seconds=7)
    await hostdb.create_webhook(conn, org, URL, ["job.*"], headers={"X-A": "1"})
    await hostdb.create_webhook(conn, org, URL, ["job.created"])
    await hostdb.create_webhook(conn, org, URL, ["*"], status="disabled")
    await hostdb.create_webhook(conn, org, URL, ["job.*"], status="inactive")
    failing = await hostdb.create_webhook(conn, org, URL, ["job.created"])
    await conn.execute(
        "UPDATE webhooks SET consecutive_failures = 5 WHERE id = %s", (failing["id"],)
    )
    held_row = await hostdb.create_webhook(conn, other, URL, ["*"])
    keys = [uuid.uuid4(), uuid.uuid4()]
    for n in range(8):
        await publish(conn, org, keys[n % 2] if n % 3 else None, n, "job.created")
    await publish(conn, org, keys[0], 8, "job.deleted")
    await publish(conn, other, keys[1], 9, "job.created")
    await publish(conn, other, None, 10, "job.created")

    holder = await psycopg.AsyncConnection.connect(db_dsn)
    try:
        await holder.execute("SELECT 1 FROM webhooks WHERE id = %s FOR UPDATE", (held_row["id"],))
        args = fan_out_args(claim=5, hook_cap=3)
        states = {}
        async with conn.transaction():
            for name in ("delivery_fan_out", "delivery_fan_out_lean"):
                async with conn.transaction(force_rollback=True):
                    rows = await run(conn, name, args)
                    states[name] = await _state(conn, rows)
    finally:
        await holder.rollback()
        await holder.close()
    full, lean = states["delivery_fan_out"], states["delivery_fan_out_lean"]
    # premises: every shape is there
    assert full["marker"]["events_claimed"] == 9 and full["marker"]["events_deferred"] == 2
    assert len(full["returned"]) == 5 and len(full["held"]) == 9
    assert any(
        "'pending'" in d and "None" in d.split("next_retry_at")[1] for d in full["deliveries"]
    )
    assert lean == full


async def test_the_daemon_uses_the_lean_statements_until_a_webhook_is_ordered(
    conn: Conn, start_daemon: Any, monkeypatch: Any
) -> None:
    """And ordered delivery still works after: a keyed delivery's outcome (full statement,
    chosen by the claim rows' `keyed`) releases the next delivery of its key at once; the
    lean one would leave it parked for 30 s, past this test's wait."""
    used: list[str] = []

    def spy(name: str) -> Any:
        used.append(name)
        return query(name)

    monkeypatch.setattr(dispatch, "query", spy)
    monkeypatch.setattr(recorder, "query", spy)
    org = await hostdb.create_org(conn)
    key = uuid.uuid4()
    async with OrderReceiver() as receiver:
        hook = await hostdb.create_webhook(conn, org, receiver.url(), ["candidate.*"])
        await start_daemon()
        for n in range(3):
            await publish(conn, org, key, n, "candidate.updated")
        await receiver.wait_delivered(3, timeout=30)
        await hostdb.wait_deliveries(conn, "status = 'success'", 3)
        assert "delivery_fan_out_lean" in used and "delivery_record_outcomes_lean" in used
        assert "delivery_fan_out" not in used and "delivery_record_outcomes" not in used

        used.clear()
        await set_ordered(conn, org, hook["id"], True)
        for n in range(3, 7):
            await publish(conn, org, key, n, "candidate.updated")
        await receiver.wait_delivered(7, timeout=20)
        [arrived] = receiver.order_by_key().values()
        assert set(arrived[:3]) == {0, 1, 2} and arrived[3:] == [3, 4, 5, 6]  # in order
        assert "delivery_fan_out" in used and "delivery_record_outcomes" in used
