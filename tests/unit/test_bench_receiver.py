"""The benchmark receiver counts the connections it accepts and the request heads' bytes
(bench/receiver.py): the figures that compare two trees' connection use per delivery."""

from __future__ import annotations

import asyncio

import aiohttp

from bench.receiver import ReceiverProcess


async def test_receiver_counts_connections_kept_alive_and_closed() -> None:
    receiver = ReceiverProcess()
    receiver.start()
    try:
        await receiver.reset()
        connector = aiohttp.TCPConnector(limit=2)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def post(headers: dict[str, str]) -> None:
                async with session.post(receiver.url(), data=b"x" * 10, headers=headers) as r:
                    assert r.status == 204

            for _ in range(5):  # ten requests, two at a time over two kept-alive connections
                await asyncio.gather(post({}), post({}))
            kept = await receiver.stats()
            await post({"Connection": "close"})  # one more, on a connection closed after it
            await asyncio.sleep(0.05)
            closed = await receiver.stats()
    finally:
        await receiver.aclose()
        receiver.stop()

    assert kept["count"] == 10 and kept["bytes"] == 100
    assert kept["connections"] == 2 and kept["open_max"] >= 2 and kept["close_asked"] == 0
    assert kept["head_bytes"] > 10 * len("Content-Length: 10\r\n")
    assert closed["count"] == 11 and closed["close_asked"] == 1
    assert closed["connections"] == 2  # the closing request reused a kept-alive connection
    assert closed["open"] == kept["open"] - 1
