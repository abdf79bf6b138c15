"""Ordered delivery per aggregate_id and per-webhook sequence numbers: the admin side
(`webhooks set --ordered`, `deliveries list --after-seq`, `webhooks replay --from-seq`).

The rules live in SQL (0032_order_sequence.sql): ordering is enforced in the claim,
numbers are assigned at fan-out. This module only calls the org-scoped functions.
"""

from __future__ import annotations

from uuid import UUID

from dispatcher.admin.api import Conn, Row, _all, _required, org_of_webhook
from dispatcher.errors import InvalidInput

MAX_LIST = 1000
MAX_REPLAY = 100_000


async def set_ordered(conn: Conn, webhook: UUID, ordered: bool) -> Row:
    """Mark the webhook ordered (or not); returns its settings and last number."""
    org = await org_of_webhook(conn, webhook)
    await _required(conn, "seq_set_ordered", {"org": org, "id": webhook, "ordered": ordered})
    return await settings(conn, webhook)


async def settings(conn: Conn, webhook: UUID) -> Row:
    row = await _required(conn, "seq_settings", {"id": webhook})
    return {"webhook_id": webhook, **row}


async def deliveries_since(conn: Conn, webhook: UUID, after: int, *, limit: int = 50) -> list[Row]:
    """The webhook's deliveries numbered after `after`, lowest first."""
    if after < 0:
        raise InvalidInput(f"--after-seq must be 0 or more, not {after}")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidInput(f"--limit must be between 1 and {MAX_LIST} with --after-seq")
    org = await org_of_webhook(conn, webhook)
    return await _all(
        conn, "seq_deliveries_since", {"org": org, "id": webhook, "after": after, "limit": limit}
    )


async def replay_from(conn: Conn, webhook: UUID, start: int, *, limit: int = 1000) -> Row:
    """Send every numbered delivery from `start` on again (same webhook-id, same number)."""
    if start < 1:
        raise InvalidInput(f"--from-seq must be 1 or more, not {start}")
    if not 1 <= limit <= MAX_REPLAY:
        raise InvalidInput(f"--limit must be between 1 and {MAX_REPLAY}")
    org = await org_of_webhook(conn, webhook)
    row = await _required(
        conn, "seq_replay_from", {"org": org, "id": webhook, "from": start, "limit": limit}
    )
    return {"webhook_id": webhook, **row}
