"""The `delivery_attempt` line a real attempt writes (docs/operations.md, "Logs"): one JSON
object per attempt, its fields in a fixed order with the attempt's values, nothing more."""

from __future__ import annotations

import re

import hostdb
from support.daemon import daemon_env
from support.receiver import Reply

FIELDS = [
    "delivery_id",
    "webhook_id",
    "event_id",
    "org_id",
    "event_type",
    "attempt",
    "max_attempts",
    "outcome",
    "status",
    "response_status",
    "duration_ms",
    "retry_in",
    "error",
    "notes",
    "event",
    "level",
    "timestamp",
]
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


async def test_each_attempt_writes_one_line_with_the_documented_fields(
    conn, receiver, db_dsn, daemon_factory
):
    org = await hostdb.create_org(conn)
    ok = await hostdb.create_webhook(conn, org, receiver.url("/ok"), ["job.*"])
    bad = await hostdb.create_webhook(conn, org, receiver.url("/bad"), ["order.*"])
    receiver.respond("/ok", Reply(204))
    receiver.respond("/bad", Reply(503, body=b"busy"))
    daemon = daemon_factory(daemon_env(db_dsn))  # the default level: info
    await daemon.wait_for_log("ready", timeout=20)
    delivered_event = await hostdb.publish(conn, "job.created", {"n": 1}, org)
    failed_event = await hostdb.publish(conn, "order.paid", {"n": 2}, org)
    await daemon.wait_for_log("delivery_attempt", timeout=20, count=2)

    lines = {line["webhook_id"]: line for line in daemon.events("delivery_attempt")}
    cur = await conn.execute(
        "SELECT id, webhook_id, event_id FROM webhook_deliveries WHERE webhook_id IN (%s, %s)",
        (ok["id"], bad["id"]),
    )
    deliveries = {str(row["webhook_id"]): row for row in await cur.fetchall()}

    delivered = lines[str(ok["id"])]
    assert list(delivered) == FIELDS
    assert delivered == {
        "delivery_id": str(deliveries[str(ok["id"])]["id"]),
        "webhook_id": str(ok["id"]),
        "event_id": str(delivered_event),
        "org_id": str(org),
        "event_type": "job.created",
        "attempt": 1,
        "max_attempts": delivered["max_attempts"],
        "outcome": "delivered",
        "status": "success",
        "response_status": 204,
        "duration_ms": delivered["duration_ms"],
        "retry_in": None,
        "error": None,
        "notes": None,
        "event": "delivery_attempt",
        "level": "info",
        "timestamp": delivered["timestamp"],
    }
    assert isinstance(delivered["max_attempts"], int) and delivered["max_attempts"] >= 1
    assert isinstance(delivered["duration_ms"], int) and delivered["duration_ms"] >= 0
    assert ISO_UTC.match(delivered["timestamp"]), delivered["timestamp"]

    failed = lines[str(bad["id"])]
    assert list(failed) == FIELDS
    assert failed["delivery_id"] == str(deliveries[str(bad["id"])]["id"])
    assert failed["event_id"] == str(failed_event)
    assert (failed["event_type"], failed["attempt"], failed["response_status"]) == (
        "order.paid",
        1,
        503,
    )
    assert failed["status"] == "retrying" and failed["outcome"] != "delivered"
    assert isinstance(failed["retry_in"], float | int) and failed["retry_in"] > 0
    assert isinstance(failed["error"], str) and failed["error"]
