"""delivery_claim_due sends a webhook's columns once per claim, and every delivery gets them.

The claim's rows carry their delivery's columns; the webhook's url, secret, headers, status,
previous secret and its org's retry policy come on one row per (webhook, org) of the rows
leased (issue 12, branch slimclaim). `claimed_rows` gives them to every delivery of that
webhook. Nothing is kept between claims: a webhook edited by the host between two claims is
what the second one's deliveries use.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import hostdb
import pytest
from psycopg.types.json import Jsonb

from dispatcher.admission import Admission
from dispatcher.backoff import RetryPolicy
from dispatcher.claims import Claimed, ClaimRowsIncomplete, claimed_rows
from dispatcher.queries import query
from dispatcher.ratelimit import RateLimits

WEBHOOK_COLUMNS = ("url", "secret", "headers", "webhook_status")


def _seen(d: Claimed) -> tuple[Any, ...]:
    """What a receiver would see of the webhook's settings in `d`'s attempt."""
    return d.url, d.secrets, tuple(d.headers.as_dict().items()), d.active


async def _due(conn: hostdb.Conn, hook: dict[str, Any], n: int) -> None:
    await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body, status, created_at)"
        " SELECT %s, %s, 'job.created', '{}', %s, '{}', '{}', 'pending',"
        "        now() - make_interval(secs => g)"
        " FROM generate_series(1, %s) g",
        (hook["org_id"], hook["id"], hook["url"], n),
    )


async def _hook(conn: hostdb.Conn, org: Any, url: str, **kw: Any) -> dict[str, Any]:
    hook = await hostdb.create_webhook(conn, org, url, ["*"], **kw)
    hook["org_id"] = org
    return hook


async def _claim(conn: hostdb.Conn) -> list[dict[str, Any]]:
    """The rows of one claim, as the daemon sends it, in a transaction rolled back: the
    rows stay due for the next claim."""
    admission: Admission[Claimed] = Admission(64, RateLimits())
    params = {**admission.claim_params(), "lease": 60.0, "limit": 64, "scan": 256}
    async with conn.transaction(force_rollback=True):
        cur = await conn.execute(query("delivery_claim_due"), params)
        return await cur.fetchall()


async def test_each_webhook_is_sent_once_and_every_delivery_gets_its_own(
    conn: hostdb.Conn,
) -> None:
    acme, globex = await hostdb.create_org(conn), await hostdb.create_org(conn, "Globex")
    await hostdb.set_retry_config(conn, globex, max_retries=6, base_delay_seconds=9)
    a = await _hook(conn, acme, "https://a.example/hook", headers={"X-Team": "a"})
    b = await _hook(conn, globex, "https://b.example/hook", headers={"X-Team": "b"})
    await conn.execute(
        "INSERT INTO dispatcher.webhook_secrets (webhook_id, previous_secret,"
        " previous_expires_at) VALUES (%s, 'whsec_old', '2030-01-01T00:00:00Z')",
        (b["id"],),
    )
    await _due(conn, a, 5)
    await _due(conn, b, 7)

    rows = await _claim(conn)

    assert len(rows) == 12
    for hook in (a, b):
        mine = [r for r in rows if r["webhook_id"] == hook["id"]]
        carrying = [r for r in mine if r["url"] is not None]
        assert len(carrying) == 1 and carrying[0]["hook_first"]
        assert all(r[c] is None for r in mine if not r["hook_first"] for c in WEBHOOK_COLUMNS)
    claimed = claimed_rows(rows, datetime.now(UTC))
    assert [d.id for d in claimed] == [r["id"] for r in rows]
    by_hook = {
        h["id"]: {(*_seen(d), d.policy) for d in claimed if d.webhook_id == h["id"]} for h in (a, b)
    }
    assert by_hook == {
        a["id"]: {(a["url"], (a["secret"],), (("X-Team", "a"),), True, RetryPolicy())},
        b["id"]: {
            (
                b["url"],
                (b["secret"], "whsec_old"),
                (("X-Team", "b"),),
                True,
                RetryPolicy(max_retries=6, base_delay_seconds=9),
            )
        },
    }


async def test_an_edit_committed_between_two_claims_is_what_the_second_one_uses(
    conn: hostdb.Conn,
) -> None:
    """The host's admin UI edits the webhook (URL, secret, headers; then switches it off)
    between claims: no delivery of the next claim uses what was there before."""
    org = await hostdb.create_org(conn)
    hook = await _hook(conn, org, "https://old.example/hook", headers={"X-Team": "old"})
    await _due(conn, hook, 4)
    now = datetime.now(UTC)
    before = claimed_rows(await _claim(conn), now)
    assert {_seen(d) for d in before} == {
        ("https://old.example/hook", (hook["secret"],), (("X-Team", "old"),), True)
    }

    await conn.execute(
        "UPDATE webhooks SET url = 'https://new.example/hook', secret = 'whsec_new',"
        " headers = %s, updated_at = now() WHERE id = %s",
        (Jsonb({"X-Team": "new"}), hook["id"]),
    )
    after = claimed_rows(await _claim(conn), now)
    assert len(after) == 4
    assert {_seen(d) for d in after} == {
        ("https://new.example/hook", ("whsec_new",), (("X-Team", "new"),), True)
    }

    await conn.execute("UPDATE webhooks SET status = 'inactive' WHERE id = %s", (hook["id"],))
    off = claimed_rows(await _claim(conn), now)
    assert off and not any(d.active for d in off)


def test_a_row_without_its_webhooks_columns_is_refused() -> None:
    """A claim row marked as not carrying its webhook's columns, with no row of the same
    webhook that does, is an error rather than a delivery with no URL or secret."""
    row = {"id": 1, "org_id": 2, "webhook_id": 3, "hook_first": False}
    with pytest.raises(ClaimRowsIncomplete):
        claimed_rows([row], datetime.now(UTC))
    with pytest.raises(ClaimRowsIncomplete):
        Claimed.from_row(row, datetime.now(UTC))
