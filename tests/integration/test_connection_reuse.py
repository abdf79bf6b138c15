"""Many attempts to one endpoint travel over a few kept-alive connections, never one each.

Issue 12 (docs/performance.md, "branch fanconn") counted the TCP connections a receiver
accepts per delivery, old tree against new: the sender reuses its connections (HTTP/1.1
keep-alive, the answer read to its end so the connection goes back to the pool). This pins
it: a connection per attempt would cost the receiver and the daemon a handshake each, and
nothing else in the suite would notice. A raw TCP server on loopback counts what it accepts.
"""

from __future__ import annotations

import asyncio
import uuid

from support.hostile import RawConnection, RawServer
from support.sending import loopback_sender

from dispatcher.outcomes import Outcome
from dispatcher.sender import Target

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "AAAAAAAAAAA="
IN_FLIGHT = 8  # attempts at once, well under the connector's limit
ATTEMPTS = 200


async def _answer_ok(conn: RawConnection) -> None:
    """200 with a short body on every request of the connection (keep-alive)."""
    while True:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


async def test_attempts_to_one_endpoint_reuse_their_connections() -> None:
    async with loopback_sender() as sender, RawServer(_answer_ok) as server:

        async def one() -> Outcome:
            target = Target(str(uuid.uuid4()), "order.paid", server.url(), "{}", (SECRET,))
            result = await sender.attempt(target)
            assert result.response_body == "ok"
            return result.outcome

        outcomes: list[Outcome] = []
        for _ in range(ATTEMPTS // IN_FLIGHT):
            outcomes += await asyncio.gather(*(one() for _ in range(IN_FLIGHT)))
        accepted, requests = server.connections, server.requests

    assert outcomes == [Outcome.DELIVERED] * ATTEMPTS
    assert requests == ATTEMPTS
    # at most one connection per attempt in flight at once, opened once and kept
    assert accepted <= IN_FLIGHT
