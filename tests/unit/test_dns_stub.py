"""The fault test's stub DNS server (tests/support/dns_stub.py), queried on loopback UDP by a
real resolver (c-ares through aiodns) and by a plain socket."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest
from aiohttp.resolver import AsyncResolver
from support.dns_stub import TYPE_A, TYPE_AAAA, DnsStub, build_query, parse_response


async def _udp(stub: DnsStub, packet: bytes, timeout: float = 1.0) -> bytes | None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", stub.port))
        await loop.sock_sendall(sock, packet)
        try:
            async with asyncio.timeout(timeout):
                return await loop.sock_recv(sock, 4096)
        except TimeoutError:
            return None
    finally:
        sock.close()


async def test_a_query_in_the_zone_gets_one_a_record() -> None:
    stub = DnsStub(zone="fuzz.test")
    await stub.start()
    try:
        raw = await _udp(stub, build_query("B-All.Fuzz.Test", TYPE_A, qid=0xBEEF))
        assert raw is not None
        r = parse_response(raw)
        assert r["id"] == 0xBEEF and r["qr"] and r["aa"] and r["rcode"] == 0
        assert r["question"] == ("b-all.fuzz.test", TYPE_A, 1) and r["qdcount"] == 1
        assert r["answers"] == [(TYPE_A, 1, 1, "127.0.0.1")]
        assert r["length"] == len(raw)  # nothing after the answer

        raw = await _udp(stub, build_query("a.fuzz.test", TYPE_AAAA))
        assert raw is not None
        r = parse_response(raw)
        assert r["rcode"] == 0 and r["answers"] == []  # NODATA

        raw = await _udp(stub, build_query("example.com", TYPE_A))
        assert raw is not None
        assert parse_response(raw)["rcode"] == 3  # NXDOMAIN

        raw = await _udp(stub, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab")
        assert raw is not None and raw[:2] == b"\x12\x34" and raw[3] & 0xF == 1  # FORMERR
    finally:
        stub.close()


async def test_c_ares_resolves_through_the_stub_and_times_out_on_a_hang() -> None:
    stub = DnsStub(zone="fuzz.test")
    await stub.start()
    try:
        # the daemon's resolver: aiohttp's AsyncResolver on c-ares (aiodns)
        resolver = AsyncResolver(nameservers=[stub.address], timeout=0.3, tries=1)

        async def hosts(name: str) -> list[str]:
            return [r["host"] for r in await resolver.resolve(name, 80, socket.AF_INET)]

        assert await hosts("a.fuzz.test") == ["127.0.0.1"]
        with pytest.raises(OSError):
            await hosts("nothere.example")

        stub.hang("b-*.fuzz.test", seconds=1.5)
        started = time.monotonic()
        with pytest.raises(OSError, match=r"(?i)time"):  # no answer at all
            await hosts("b-all.fuzz.test")
        assert stub.swallowed["b-all.fuzz.test"] >= 1
        # another name is answered while b-* hangs
        assert await hosts("a.fuzz.test") == ["127.0.0.1"]
        # and the hang ends
        await asyncio.sleep(max(0.0, started + 1.6 - time.monotonic()))
        assert await hosts("b-all.fuzz.test") == ["127.0.0.1"]
        await resolver.close()
    finally:
        stub.close()
