"""The exact bytes a receiver gets from one attempt: request line, every header in order, body.

The sender's per-request work is trimmed for speed (issue 12, docs/performance.md "pyhot":
aiohttp's default headers from a request class instead of ``skip_auto_headers``); this pins
what must not move with it. The expected head is written out here from the recorded
headers (which carry this attempt's id, timestamps and signatures), with aiohttp's own
additions spelled out: ``Host`` first, then ours in the order the dispatcher builds them,
then ``Accept: */*`` and ``Content-Length``. No ``Accept-Encoding`` (the dispatcher asks
for no compressed answer), no ``Connection`` (keep-alive is HTTP/1.1's default), no cookie.
A raw TCP server on loopback reads what arrives.
"""

from __future__ import annotations

import uuid

from support.hostile import RawConnection, RawServer
from support.sending import loopback_sender

from dispatcher.outcomes import Outcome
from dispatcher.request import USER_AGENT, read_custom_headers
from dispatcher.sender import Target

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "AAAAAAAAAAA="
BODY = '{"type":"order.paid","data":{"id":"ord_1","amount":4200,"note":"caf\u00e9"}}'


class _Answer204:
    """Answers every request on a connection 204 and keeps what arrived: (head, body)."""

    def __init__(self) -> None:
        self.got: list[tuple[bytes, bytes]] = []

    async def __call__(self, conn: RawConnection) -> None:
        while True:  # keep-alive: every request on this connection
            head = await conn.read_request()
            self.got.append((head, conn.request_body))
            await conn.send(b"HTTP/1.1 204 No Content\r\nDate: Mon, 30 Nov 2026 GMT\r\n\r\n")


def _expected_head(server: RawServer, path: str, recorded: dict[str, str], length: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in recorded.items()]
    if not any(name.lower() == "accept" for name in recorded):
        lines.append("Accept: */*")  # aiohttp's default, unless the webhook sets its own
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


async def test_request_bytes_exact() -> None:
    behaviour = _Answer204()
    async with loopback_sender() as sender, RawServer(behaviour) as server:
        delivery_id, msg_id = str(uuid.uuid4()), str(uuid.uuid4())
        plain = Target(
            delivery_id,
            "order.paid",
            server.url("/hook"),
            BODY,
            (SECRET,),
            msg_id=msg_id,
            sequence=17,
        )
        custom = Target(
            str(uuid.uuid4()),
            "order.paid",
            server.url("/hook?a=1"),
            BODY,
            (SECRET, "whsec_" + "B" * 43 + "="),
            read_custom_headers({"X-Tenant": "acme", "Accept": "application/json"}),
            msg_id=msg_id,
            traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        results = [await sender.attempt(plain), await sender.attempt(custom)]

    got = behaviour.got
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert len(got) == 2
    body = BODY.encode("utf-8")
    for (head, sent), result, path in zip(got, results, ["/hook", "/hook?a=1"], strict=True):
        assert sent == body
        recorded = result.request_headers
        assert recorded is not None
        assert head == _expected_head(server, path, recorded, len(body))

    # the parts of the recorded headers this test relies on, spelled out once
    first = results[0].request_headers
    assert first is not None
    assert list(first) == [
        "Content-Type",
        "User-Agent",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "X-InTime-Event",
        "X-InTime-Delivery",
        "X-InTime-Timestamp",
        "X-InTime-Signature",
        "X-InTime-Sequence",
    ]
    assert first["User-Agent"] == USER_AGENT
    assert first["webhook-id"] == msg_id and first["X-InTime-Delivery"] == delivery_id
    assert first["X-InTime-Sequence"] == "17"
    second = results[1].request_headers
    assert second is not None
    # a webhook's own Accept replaces aiohttp's default; the custom headers come first
    assert list(second)[:2] == ["X-Tenant", "Accept"] and "traceparent" in second
    assert b"\r\nAccept: application/json\r\n" in got[1][0]
    assert b"*/*" not in got[1][0]
