"""Bounded DNS lookups (issue 10 item 9): time-bounded, capped per owner, closable."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp.abc import AbstractResolver

from dispatcher.dns import (
    BoundedResolver,
    LookupsBusy,
    LookupTimeout,
    lookup_owner,
    parse_dns_servers,
)


class Silent(AbstractResolver):
    """Never answers (a name whose DNS hangs); counts closes."""

    def __init__(self) -> None:
        self.closed = 0
        self.started = asyncio.Event()

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
        self.started.set()
        await asyncio.Event().wait()

    async def close(self) -> None:
        self.closed += 1


async def test_a_lookup_that_never_answers_ends_after_the_timeout() -> None:
    inner = Silent()
    resolver = BoundedResolver(lambda: inner, timeout=0.2, per_owner=4)
    with pytest.raises(LookupTimeout, match=r"timed out after 0.2 s \(DISPATCHER_DNS_TIMEOUT\)"):
        await resolver.resolve("hang.test", 443)
    assert resolver.waiting == 0
    await resolver.close()
    assert inner.closed == 1


async def test_one_owner_holds_at_most_its_cap_and_others_are_not_affected() -> None:
    inner = Silent()
    resolver = BoundedResolver(lambda: inner, timeout=30, per_owner=2)

    async def lookup(owner: str, host: str) -> Any:
        lookup_owner.set(owner)
        return await resolver.resolve(host, 443)

    held = [asyncio.create_task(lookup("org-a", f"h{i}.test")) for i in range(2)]
    await inner.started.wait()
    await asyncio.sleep(0)
    assert resolver.waiting == 2
    with pytest.raises(LookupsBusy, match="DISPATCHER_DNS_MAX_PER_ORG"):
        await lookup("org-a", "h3.test")
    other = asyncio.create_task(lookup("org-b", "b.test"))
    await asyncio.sleep(0.05)
    assert resolver.waiting == 3 and not other.done()  # org-b got its own lookup
    for task in [*held, other]:
        task.cancel()
    await asyncio.gather(*held, other, return_exceptions=True)
    assert resolver.waiting == 0


def test_dns_servers_are_checked() -> None:
    assert parse_dns_servers("") == []
    assert parse_dns_servers(" 1.1.1.1, 127.0.0.1:5353 ,[::1]:53") == [
        "1.1.1.1",
        "127.0.0.1:5353",
        "[::1]:53",
    ]
    for bad in ("dns.example", "1.2.3.4:0", "1.2.3.4:x", "[::1]:99999"):
        with pytest.raises(ValueError, match="not a DNS server address"):
            parse_dns_servers(bad)
