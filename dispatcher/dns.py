"""DNS lookups for webhook targets: bounded in time, off the shared thread pool, capped per org.

A tenant whose names never answer must not hold up anyone else. So each lookup

* runs on c-ares (aiodns) in the event loop, not on a thread: no pool for hung lookups to fill,
  and nothing shared with the database's host-name lookup (psycopg resolves on the loop's
  default executor, which webhook lookups never touch). Without aiodns, lookups get a small
  thread pool of their own (``DISPATCHER_DNS_THREADS``), never the default executor;
* ends after ``DISPATCHER_DNS_TIMEOUT`` seconds (``LookupTimeout``: the endpoint's DNS failed,
  retried like any network error);
* counts against its organization: at most ``DISPATCHER_DNS_MAX_PER_ORG`` lookups of one org
  wait at once; one more fails at once with ``LookupsBusy`` (retried later, not charged to
  the endpoint) instead of holding an attempt slot.

``DISPATCHER_DNS_SERVERS`` points c-ares at given servers (``ip`` or ``ip:port``) instead of
/etc/resolv.conf. The owner of a lookup is the ``lookup_owner`` context variable, set by the
sender for each attempt (the org id); lookups without one count per host name.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from aiohttp.abc import AbstractResolver, ResolveResult

__all__ = [
    "BoundedResolver",
    "DnsFailure",
    "LookupTimeout",
    "LookupsBusy",
    "bounded_resolver",
    "lookup_owner",
    "parse_dns_servers",
    "system_resolver",
]

lookup_owner: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "lookup_owner", default=None
)


class DnsFailure(OSError):
    """Base of the lookup failures raised here. An OSError without errno, so aiohttp wraps
    it in ClientConnectorDNSError like any resolver failure; ``strerror`` is the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.strerror = message

    def __str__(self) -> str:
        return str(self.strerror)


class LookupTimeout(DnsFailure):
    """The name's DNS did not answer within DISPATCHER_DNS_TIMEOUT."""


class LookupsBusy(DnsFailure):
    """The organization already has DISPATCHER_DNS_MAX_PER_ORG lookups waiting."""


def parse_dns_servers(value: str) -> list[str]:
    """``"1.1.1.1, 127.0.0.1:5353, [::1]:53"`` -> the list c-ares takes; ValueError naming a
    bad entry. ``""`` gives ``[]`` (the system's resolv.conf)."""
    servers: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, port = entry, ""
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            host, port = entry.split(":")
        try:
            ipaddress.ip_address(host)
            if port and not 0 < int(port) < 65536:
                raise ValueError(port)
        except ValueError:
            raise ValueError(
                f"{entry!r} is not a DNS server address (ip, ip:port or [ipv6]:port)"
            ) from None
        servers.append(entry)
    return servers


class _PoolResolver(AbstractResolver):
    """getaddrinfo on a small thread pool of its own (used only without aiodns)."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dns")

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        infos = await loop.run_in_executor(
            self._pool,
            socket.getaddrinfo,
            host,
            port,
            family,
            socket.SOCK_STREAM,
            0,
            socket.AI_ADDRCONFIG,
        )
        results: list[ResolveResult] = []
        for fam, _, proto, _, address in infos:
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address[0]),
                    port=int(address[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        return results

    async def close(self) -> None:
        # Threads stuck in getaddrinfo are not waited for: the stop never hangs on them.
        self._pool.shutdown(wait=False, cancel_futures=True)


def system_resolver(servers: list[str], timeout: float, threads: int) -> AbstractResolver:
    """c-ares (aiodns) when installed, else getaddrinfo on a pool of ``threads`` threads.
    Must be called with a running loop."""
    try:
        import aiodns  # noqa: F401  (AsyncResolver needs it)
        from aiohttp.resolver import AsyncResolver
    except ImportError:
        if servers:
            raise RuntimeError(
                "DISPATCHER_DNS_SERVERS needs the aiodns package (c-ares): pip install aiodns"
            ) from None
        return _PoolResolver(threads)
    # c-ares retries a lost query within the budget; the BoundedResolver bounds the total.
    return AsyncResolver(nameservers=servers or None, timeout=max(timeout / 2, 0.1), tries=3)


class BoundedResolver(AbstractResolver):
    """Wraps a resolver: each lookup ends within ``timeout`` seconds, and one owner (org)
    holds at most ``per_owner`` lookups at once. ``make`` builds the inner resolver on first
    use (inside the running loop)."""

    def __init__(
        self, make: Callable[[], AbstractResolver], *, timeout: float, per_owner: int
    ) -> None:
        self._make = make
        self._inner: AbstractResolver | None = None
        self._timeout = timeout
        self._per_owner = per_owner
        self._held: collections.Counter[str] = collections.Counter()

    @property
    def waiting(self) -> int:
        """Lookups in progress (all owners)."""
        return sum(self._held.values())

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        owner = lookup_owner.get() or f"host:{host}"
        if self._held[owner] >= self._per_owner:
            raise LookupsBusy(
                f"{self._per_owner} DNS lookups of this organization are already waiting "
                f"(DISPATCHER_DNS_MAX_PER_ORG); {host!r} is looked up on a later attempt"
            )
        if self._inner is None:
            self._inner = self._make()
        self._held[owner] += 1
        try:
            async with asyncio.timeout(self._timeout):
                return await self._inner.resolve(host, port, family)
        except TimeoutError:
            raise LookupTimeout(
                f"DNS lookup of {host!r} timed out after {self._timeout:g} s "
                "(DISPATCHER_DNS_TIMEOUT)"
            ) from None
        finally:
            self._held[owner] -= 1
            if self._held[owner] <= 0:
                del self._held[owner]

    async def close(self) -> None:
        if self._inner is not None:
            inner, self._inner = self._inner, None
            await inner.close()


def bounded_resolver(
    servers: str,
    timeout: float,
    per_owner: int,
    threads: int,
    inner: AbstractResolver | None = None,
) -> BoundedResolver:
    """The resolver of the settings' ``DISPATCHER_DNS_*`` values (``inner`` replaces the
    system resolver, for tests)."""
    parsed = parse_dns_servers(servers)

    def make() -> AbstractResolver:
        return inner if inner is not None else system_resolver(parsed, timeout, threads)

    return BoundedResolver(make, timeout=timeout, per_owner=per_owner)
