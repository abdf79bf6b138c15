"""Self-tests for the scriptable HTTP receiver (tests/support/receiver.py)."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from support.receiver import Hang, Receiver, Reply, Reset

BODY = b'{"id":"evt_1","data":"\\u00e9"}\x00\xff\r\n  '


async def _post(url: str, body: bytes = b"{}", timeout: float = 5.0) -> tuple[int, bytes]:
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.post(url, data=body) as resp,
    ):
        return resp.status, await resp.read()


async def test_records_exact_bytes_and_metadata(receiver: Receiver) -> None:
    before = time.time()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            receiver.url("/hook") + "?a=1",
            data=BODY,
            headers={"Webhook-Id": "msg_1", "Content-Type": "application/json"},
        ) as resp,
    ):
        assert resp.status == 204

    [request] = receiver.requests
    assert request.body == BODY
    assert request.path == "/hook"
    assert request.query == "a=1"
    assert request.method == "POST"
    assert request.headers["webhook-id"] == "msg_1"
    assert request.headers["Content-Type"] == "application/json"
    assert before <= request.received_at <= time.time()
    assert receiver.url() == f"http://127.0.0.1:{receiver.port}/hook"


async def test_scripted_replies_in_order_last_repeats(receiver: Receiver) -> None:
    receiver.respond(
        "/flaky",
        Reply(500),
        Reply(429, headers={"Retry-After": "7"}),
        Reply(200, body=b"ok"),
    )
    results = [await _post(receiver.url("/flaky")) for _ in range(4)]
    assert results == [(500, b""), (429, b""), (200, b"ok"), (200, b"ok")]
    assert await _post(receiver.url("/other")) == (204, b"")
    assert len(receiver.requests_for("/flaky")) == 4


async def test_reply_headers_and_delay(receiver: Receiver) -> None:
    receiver.respond("/slow", Reply(201, body=b"x", headers={"X-Seen": "yes"}, delay=0.3))
    started = time.monotonic()
    async with aiohttp.ClientSession() as session, session.post(receiver.url("/slow")) as resp:
        assert (resp.status, resp.headers["X-Seen"]) == (201, "yes")
    assert time.monotonic() - started >= 0.3


async def test_hang_makes_client_time_out_but_is_recorded(receiver: Receiver) -> None:
    receiver.respond("/hang", Hang())
    with pytest.raises(asyncio.TimeoutError):
        await _post(receiver.url("/hang"), b"payload", timeout=0.5)
    [request] = await receiver.wait_for(1, path="/hang")
    assert request.body == b"payload"


async def test_hang_is_released_by_close() -> None:
    receiver = Receiver()
    await receiver.start()
    receiver.respond("/hang", Hang())
    pending = asyncio.ensure_future(_post(receiver.url("/hang"), timeout=30))
    await receiver.wait_for(1)
    started = time.monotonic()
    await receiver.close()
    assert time.monotonic() - started < 2
    with pytest.raises(aiohttp.ClientError):
        await pending


async def test_reset_gives_client_a_connection_error(receiver: Receiver) -> None:
    receiver.respond("/reset", Reset(), Reply(200))
    with pytest.raises(aiohttp.ClientConnectionError):
        await _post(receiver.url("/reset"), b"first")
    assert await _post(receiver.url("/reset")) == (200, b"")
    assert [r.body for r in receiver.requests] == [b"first", b"{}"]


async def test_wait_for_wakes_up_on_arrival(receiver: Receiver) -> None:
    waiter = asyncio.ensure_future(receiver.wait_for(2, path="/a", timeout=5))
    await _post(receiver.url("/a"))
    await _post(receiver.url("/b"))
    assert not waiter.done()
    await _post(receiver.url("/a"), b"second")
    requests = await waiter
    assert [r.body for r in requests] == [b"{}", b"second"]
    assert len(await receiver.wait_for(3)) == 3


async def test_wait_for_timeout_says_how_many_arrived(receiver: Receiver) -> None:
    await _post(receiver.url("/a"))
    with pytest.raises(
        AssertionError, match=r"at least 2 request\(s\) for '/a' within 0.2s, got 1"
    ):
        await receiver.wait_for(2, path="/a", timeout=0.2)
    with pytest.raises(AssertionError, match=r"in total within 0\.1s, got 1"):
        await receiver.wait_for(5, timeout=0.1)


def test_respond_needs_a_step() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        Receiver().respond("/x")
