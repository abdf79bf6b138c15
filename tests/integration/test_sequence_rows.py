"""A delivery's sequence number (0032) goes with the delivery (0033: a statement trigger,
not a foreign key checked once per fanned-out row)."""

from __future__ import annotations

import uuid

import hostdb


async def _numbered_delivery(
    conn: hostdb.Conn, org: uuid.UUID, hook: uuid.UUID, n: int
) -> uuid.UUID:
    cur = await conn.execute(
        "INSERT INTO webhook_deliveries (org_id, webhook_id, event_type, payload, request_url,"
        " request_headers, request_body) VALUES (%s, %s, 'job.created', '{}',"
        " 'https://example.com/hook', '{}', '{}') RETURNING id",
        (org, hook),
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute(
        "INSERT INTO dispatcher.delivery_sequence (delivery_id, webhook_id, sequence)"
        " VALUES (%s, %s, %s)",
        (row["id"], hook, n),
    )
    return row["id"]


async def _numbers(conn: hostdb.Conn) -> list[int]:
    cur = await conn.execute("SELECT sequence FROM dispatcher.delivery_sequence ORDER BY 1")
    return [r["sequence"] for r in await cur.fetchall()]


async def test_a_deleted_delivery_takes_its_number_with_it(conn):
    org = await hostdb.create_org(conn)
    hook = (await hostdb.create_webhook(conn, org, "https://example.com/hook"))["id"]
    first = await _numbered_delivery(conn, org, hook, 1)
    await _numbered_delivery(conn, org, hook, 2)
    await conn.execute("DELETE FROM webhook_deliveries WHERE id = %s", (first,))
    assert await _numbers(conn) == [2]


async def test_a_deleted_webhook_takes_its_deliveries_numbers(conn):
    org = await hostdb.create_org(conn)
    gone = (await hostdb.create_webhook(conn, org, "https://example.com/a"))["id"]
    kept = (await hostdb.create_webhook(conn, org, "https://example.com/b"))["id"]
    await _numbered_delivery(conn, org, gone, 1)
    await _numbered_delivery(conn, org, gone, 2)
    await _numbered_delivery(conn, org, kept, 7)
    # the host's hard delete: webhook_deliveries cascade from webhooks
    await conn.execute("DELETE FROM webhooks WHERE id = %s", (gone,))
    assert await _numbers(conn) == [7]
