"""Tests for dispatcher.ssrf: address classification, literal parsing, URL checks, resolver."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from dispatcher.ssrf import (
    GuardedResolver,
    InvalidTarget,
    IPNetwork,
    TargetRefused,
    check_address,
    parse_ip_literal,
    parse_networks,
    refused_cause,
    validate_url,
)

ip = ipaddress.ip_address
LOOPBACK_V4 = [ipaddress.IPv4Network("127.0.0.0/8")]

# --- parse_ip_literal --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0.0.0.0", "0.0.0.0"),
        ("3232235777", "192.168.1.1"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("93.184.216.34", "93.184.216.34"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("[::]", "::"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("fe80::1%25eth0", "fe80::1"),
        ("[2606:4700:4700::1111]", "2606:4700:4700::1111"),
    ],
)
def test_parse_ip_literal(host: str, expected: str) -> None:
    assert parse_ip_literal(host) == ip(expected)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "example.com",
        "localhost",
        "cafe",
        "deadbeef",
        "a.b",
        "1e100.net",
        "0x",
        "1.2.3.4.5",
        "256.1.1.1",
        "08.0.0.1",
        "4294967296",
        "127.0.0.1..",
        "127.0.0.1 ",
        " 127.0.0.1",
        "[127.0.0.1]",
        "[example.com]",
        "::zz",
        "127.0.0.%31",
    ],
)
def test_parse_ip_literal_rejects_names(host: str) -> None:
    assert parse_ip_literal(host) is None


# --- check_address: refused --------------------------------------------------------------------

REFUSED: list[tuple[str, str]] = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.0.1", "private"),
    ("169.254.169.254", "metadata"),
    ("169.254.1.1", "link-local"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "this network"),
    ("255.255.255.255", "broadcast"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "documentation"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.0.0.8", "IETF protocol"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local"),
    ("fc00::1", "unique-local"),
    ("fd12:3456::1", "unique-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation"),
    ("100::1", "discard-only"),
    ("4000::1", "outside global unicast"),
    ("5f00::1", "outside global unicast"),
    # IPv4-mapped
    ("::ffff:127.0.0.1", "IPv4-mapped for 127.0.0.1 is a loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped for 10.0.0.1 is a private"),
    ("::ffff:169.254.169.254", "IPv4-mapped for 169.254.169.254 is the link-local cloud metadata"),
    ("::ffff:0.0.0.0", "IPv4-mapped for 0.0.0.0 is the unspecified"),
    # IPv4-compatible
    ("::127.0.0.1", "IPv4-compatible for 127.0.0.1"),
    ("::10.0.0.1", "IPv4-compatible for 10.0.0.1"),
    ("::2", "IPv4-compatible for 0.0.0.2"),
    # NAT64 well-known prefix, and the local-use prefix (refused outright)
    ("64:ff9b::127.0.0.1", "NAT64 for 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 for 169.254.169.254"),
    ("64:ff9b::10.0.0.1", "NAT64 for 10.0.0.1"),
    ("64:ff9b:1::93.184.216.34", "local-use NAT64"),
    # 6to4
    ("2002:7f00:1::1", "6to4 for 127.0.0.1"),
    ("2002:a00:1::", "6to4 for 10.0.0.1"),
    ("2002:c0a8:101::5", "6to4 for 192.168.1.1"),
    # Teredo: RFC 4380 example (client 192.0.2.45), loopback client, private server
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo (client) for 192.0.2.45"),
    ("2001:0:5db8:d822::80ff:fffe", "Teredo (client) for 127.0.0.1"),
    ("2001:0:a00:1::f7f7:f7f7", "Teredo (server) for 10.0.0.1"),
]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_check_address_refuses(address: str, why: str) -> None:
    with pytest.raises(TargetRefused) as info:
        check_address(ip(address), [])
    message = str(info.value)
    assert why in message
    assert "set DISPATCHER_ALLOWED_TARGET_NETWORKS to include" in message
    assert not isinstance(info.value, InvalidTarget)


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refusal_suggests_a_working_allow_entry(address: str, why: str) -> None:
    with pytest.raises(TargetRefused) as info:
        check_address(ip(address), [])
    allowed = parse_networks(",".join(info.value.allow))
    check_address(ip(address), allowed)  # the suggested entry lets it through


def test_refusal_message_names_host_address_and_cidr() -> None:
    with pytest.raises(TargetRefused) as info:
        check_address(ip("10.1.2.3"), [], host="intranet.example")
    assert str(info.value) == (
        "refused target 'intranet.example' (resolves to 10.1.2.3): 10.1.2.3 is a private "
        "address (10.0.0.0/8). If this target is intended, set "
        "DISPATCHER_ALLOWED_TARGET_NETWORKS to include 10.1.2.3/32"
    )
    assert info.value.allow == ("10.1.2.3/32",)
    assert info.value.addresses == ("10.1.2.3",)
    assert isinstance(info.value, OSError)


def test_refusal_of_mapped_address_suggests_embedded_ipv4() -> None:
    with pytest.raises(TargetRefused) as info:
        check_address(ip("::ffff:10.0.0.1"), [])
    assert info.value.allow == ("10.0.0.1/32",)


# --- check_address: accepted -------------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "93.184.216.34",
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "169.253.255.255",
        "9.255.255.255",
        "11.0.0.0",
        "192.169.0.1",
        "198.20.0.1",
        "223.255.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:82b::200e",
        "::ffff:93.184.216.34",
        "::93.184.216.34",
        "64:ff9b::93.184.216.34",
        "2002:5db8:d822::1",
        "2001:0:5db8:d822::f7f7:f7f7",
    ],
)
def test_check_address_accepts_public(address: str) -> None:
    check_address(ip(address), [])


def test_check_address_accepts_link_local_with_scope_when_allowed() -> None:
    check_address(ipaddress.IPv6Address("fe80::1%eth0"), [ipaddress.IPv6Network("fe80::/10")])
    with pytest.raises(TargetRefused):
        check_address(ipaddress.IPv6Address("fe80::1%eth0"), [])


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.0/8"),
        ("::127.0.0.1", "127.0.0.0/8"),
        ("64:ff9b::7f00:1", "127.0.0.0/8"),
        ("2002:7f00:1::1", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("10.0.0.1", "10.0.0.0/8, 192.168.0.0/16"),
        ("192.168.5.5", "10.0.0.0/8, 192.168.0.0/16"),
        ("fd00::1", "fd00::/8"),
        ("169.254.169.254", "169.254.169.254/32"),
        ("64:ff9b:1::1", "64:ff9b:1::/48"),
    ],
)
def test_allowed_networks_let_through(address: str, allowed: str) -> None:
    check_address(ip(address), parse_networks(allowed))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("::1", "127.0.0.0/8"),
        ("10.0.0.1", "127.0.0.0/8"),
        ("127.0.0.1", "::1/128"),
        ("169.254.169.254", "169.254.0.0/24"),
        ("::ffff:10.0.0.1", "127.0.0.0/8"),
    ],
)
def test_allowed_networks_are_narrow(address: str, allowed: str) -> None:
    with pytest.raises(TargetRefused):
        check_address(ip(address), parse_networks(allowed))


# --- parse_networks ----------------------------------------------------------------------------


def test_parse_networks() -> None:
    assert parse_networks("") == []
    assert parse_networks("  ,  ") == []
    assert parse_networks(" 10.0.0.0/8 , ::1, 127.0.0.1 ,, [fd00::1], fc00::/7") == [
        ipaddress.IPv4Network("10.0.0.0/8"),
        ipaddress.IPv6Network("::1/128"),
        ipaddress.IPv4Network("127.0.0.1/32"),
        ipaddress.IPv6Network("fd00::1/128"),
        ipaddress.IPv6Network("fc00::/7"),
    ]


def test_parse_networks_host_bits_set_suggests() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.1/8'.*did you mean 10\.0\.0\.0/8"):
        parse_networks("127.0.0.0/8, 10.0.0.1/8")


@pytest.mark.parametrize("bad", ["nonsense", "300.0.0.0/8", "10.0.0.0/33", "10.0.0.0/8/8", "*"])
def test_parse_networks_bad_entry(bad: str) -> None:
    with pytest.raises(ValueError, match="DISPATCHER_ALLOWED_TARGET_NETWORKS"):
        parse_networks(f"10.0.0.0/8,{bad}")


# --- validate_url ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://example.com/hook?x=1", "example.com"),
        ("http://93.184.216.34:8080/x", "93.184.216.34"),
        ("  https://hooks.example.org/a  ", "hooks.example.org"),
        ("HTTPS://Example.COM/", "example.com"),
        ("http://[2606:4700:4700::1111]/", "2606:4700:4700::1111"),
        ("http://localhost:8080/", "localhost"),  # names are the resolver's job
    ],
)
def test_validate_url_accepts(url: str, host: str) -> None:
    parsed = validate_url(url, [])
    assert parsed.host == host
    assert parsed.scheme in ("http", "https")


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("ftp://example.com/", "scheme 'ftp'"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("example.com/hook", "scheme '(none)'"),
        ("http:///x", "no host"),
        ("http://[::1/", "malformed"),
        ("http://example.com:99999/", "malformed"),
        ("http://example.com:0/", "port 0"),
        ("http://user@example.com/", "credentials"),
        ("http://:hunter2@example.com/", "credentials"),
        ("http://ex%41mple.com/", "percent-encoded"),
        ("http://0x5db8d822/", "write 93.184.216.34"),
        ("http://1572395042/", "write 93.184.216.34"),
    ],
)
def test_validate_url_invalid(url: str, fragment: str) -> None:
    with pytest.raises(InvalidTarget) as info:
        validate_url(url, [])
    assert fragment in str(info.value)


def test_validate_url_does_not_echo_password() -> None:
    with pytest.raises(InvalidTarget) as info:
        validate_url("https://bob:s3cr3t-pa55@example.com/hook", [])
    assert "s3cr3t-pa55" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.1/",
        "http://0x7f000001/",
        "http://127.1/",
        "http://127.0.0.1./",
        "http://127.0.0.%31/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]:8080/",
        "http://[::127.0.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::]/",
        "http://0.0.0.0:5432/",
        "http://0/",
        "http://[::]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xa9fea9fe/",
        "http://10.0.0.1/",
        "https://192.168.1.1:8443/",
        "http://[fe80::1%25eth0]/",
        "http://[fd00::1]/",
        "http://100.64.0.1/",
    ],
)
def test_validate_url_refuses_special_literals(url: str) -> None:
    with pytest.raises(TargetRefused) as info:
        validate_url(url, [])
    assert not isinstance(info.value, InvalidTarget)
    assert "DISPATCHER_ALLOWED_TARGET_NETWORKS" in str(info.value)


def test_validate_url_with_allowed_loopback() -> None:
    assert validate_url("http://127.0.0.1:8080/hook", LOOPBACK_V4).port == 8080
    # The host's spelling is the interpreter's: str() of an IPv4-mapped IPv6 address is
    # "::ffff:7f00:1" up to Python 3.12 and "::ffff:127.0.0.1" from 3.13. Compare addresses.
    mapped = validate_url("http://[::ffff:127.0.0.1]/", LOOPBACK_V4).host
    assert mapped is not None
    assert ipaddress.ip_address(mapped) == ipaddress.ip_address("::ffff:7f00:1")
    # Allowed, but the spelling is refused (aiohttp itself rejects some of these forms).
    for url in ("http://127.1/", "http://0x7f.1/", "http://2130706433/"):
        with pytest.raises(InvalidTarget, match="non-canonical"):
            validate_url(url, LOOPBACK_V4)
    with pytest.raises(TargetRefused):
        validate_url("http://[::1]/", LOOPBACK_V4)


# --- GuardedResolver with a scripted inner resolver ---------------------------------------------


class ScriptedResolver(AbstractResolver):
    """Returns scripted addresses; never touches the network."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self.calls: list[tuple[str, int, int]] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=0,
            )
            for a in self.addresses
        ]

    async def close(self) -> None:
        self.closed = True


async def test_resolver_refuses_name_with_one_private_address() -> None:
    inner = ScriptedResolver(["93.184.216.34", "10.0.0.1"])
    resolver = GuardedResolver([], inner)
    with pytest.raises(TargetRefused) as info:
        await resolver.resolve("mixed.example", 443)
    message = str(info.value)
    assert "'mixed.example' (resolves to 93.184.216.34, 10.0.0.1)" in message
    assert "10.0.0.1 is a private address" in message
    assert message.endswith("set DISPATCHER_ALLOWED_TARGET_NETWORKS to include 10.0.0.1/32")
    assert info.value.host == "mixed.example"
    assert inner.calls == [("mixed.example", 443, socket.AF_INET)]


async def test_resolver_lists_every_refused_address() -> None:
    resolver = GuardedResolver([], ScriptedResolver(["10.0.0.1", "::1", "8.8.8.8"]))
    with pytest.raises(TargetRefused) as info:
        await resolver.resolve("bad.example", 80)
    assert info.value.allow == ("10.0.0.1/32", "::1/128")


async def test_resolver_returns_checked_public_addresses() -> None:
    inner = ScriptedResolver(["93.184.216.34", "2606:4700:4700::1111"])
    results = await GuardedResolver([], inner).resolve("ok.example", 443, socket.AF_UNSPEC)
    assert [r["host"] for r in results] == ["93.184.216.34", "2606:4700:4700::1111"]
    assert [r["port"] for r in results] == [443, 443]
    assert all(r["hostname"] == "ok.example" for r in results)
    assert all(r["flags"] & socket.AI_NUMERICHOST for r in results)


@pytest.mark.parametrize("address", ["::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe", "0.0.0.0", "::"])
async def test_resolver_refuses_embedded_and_unspecified(address: str) -> None:
    with pytest.raises(TargetRefused):
        await GuardedResolver([], ScriptedResolver([address])).resolve("x.example", 80)


async def test_resolver_refuses_non_ip_answer() -> None:
    with pytest.raises(TargetRefused, match="not an IP address"):
        await GuardedResolver([], ScriptedResolver(["evil.example"])).resolve("x.example", 80)


async def test_resolver_allowed_networks() -> None:
    inner = ScriptedResolver(["10.0.0.1", "10.0.0.2"])
    results = await GuardedResolver(parse_networks("10.0.0.0/8"), inner).resolve("db.internal")
    assert [r["host"] for r in results] == ["10.0.0.1", "10.0.0.2"]


@pytest.mark.parametrize("host", ["0x7f.1", "127.1", "2130706433", "[::1]", "::ffff:127.0.0.1"])
async def test_resolver_checks_literals_without_lookup(host: str) -> None:
    inner = ScriptedResolver(["93.184.216.34"])
    with pytest.raises(TargetRefused):
        await GuardedResolver([], inner).resolve(host, 80)
    assert inner.calls == []


async def test_resolver_literal_public_returns_canonical_address() -> None:
    inner = ScriptedResolver([])
    results = await GuardedResolver([], inner).resolve("0x5db8d822", 80)
    assert [(r["host"], r["port"], r["family"]) for r in results] == [
        ("93.184.216.34", 80, socket.AF_INET)
    ]
    assert inner.calls == []


async def test_resolver_close_closes_inner() -> None:
    inner = ScriptedResolver([])
    await GuardedResolver([], inner).close()
    assert inner.closed


def test_refused_cause() -> None:
    refused = TargetRefused("no")
    try:
        try:
            raise refused
        except TargetRefused as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert refused_cause(outer) is refused
    try:
        try:
            raise refused
        except TargetRefused:
            raise KeyError("during handling") from None
    except KeyError as implicit:
        # `from None` keeps __context__; the walk still finds it.
        assert refused_cause(implicit) is refused
    assert refused_cause(ExceptionGroup("g", [ValueError(), refused])) is refused
    assert refused_cause(ValueError("unrelated")) is None
    assert refused_cause(refused) is refused


# --- real aiohttp client and server ---------------------------------------------------------


@asynccontextmanager
async def hook_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    received: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield port, received
    finally:
        await runner.cleanup()


def guarded_session(resolver: GuardedResolver) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(resolver=resolver, family=socket.AF_INET)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10))


async def test_real_request_to_localhost_is_refused_and_never_sent() -> None:
    resolver = GuardedResolver([])
    async with hook_server() as (port, received), guarded_session(resolver) as session:
        with pytest.raises(aiohttp.ClientConnectorDNSError) as info:
            await session.post(f"http://localhost:{port}/", data=b'{"event":"x"}')
        cause = refused_cause(info.value)
        assert cause is not None
        assert "127.0.0.1 is a loopback address" in str(cause)
        assert "localhost" in str(info.value)
        assert received == []
    await resolver.close()


async def test_real_request_to_localhost_allowed_succeeds() -> None:
    resolver = GuardedResolver(LOOPBACK_V4)
    async with hook_server() as (port, received), guarded_session(resolver) as session:
        async with session.post(f"http://localhost:{port}/", data=b'{"event":"x"}') as resp:
            assert resp.status == 200
            assert await resp.text() == "ok"
        assert received == [b'{"event":"x"}']
    await resolver.close()


async def test_refusal_happens_before_any_connection() -> None:
    """A name resolving to an allowed and a refused address: nothing connects to either."""
    accepted: list[int] = []

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inner = ScriptedResolver(["127.0.0.1", "10.0.0.1"])
    resolver = GuardedResolver(LOOPBACK_V4, inner)
    try:
        async with guarded_session(resolver) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as info:
                await session.post(f"http://hook.example:{port}/", data=b"{}")
        assert isinstance(refused_cause(info.value), TargetRefused)
        assert inner.calls == [("hook.example", port, socket.AF_INET)]
        await asyncio.sleep(0.05)
        assert accepted == []
    finally:
        server.close()
        await server.wait_closed()
        await resolver.close()


async def test_aiohttp_skips_resolver_for_ip_literals_so_validate_url_is_needed() -> None:
    """aiohttp never calls the resolver for an IP-literal host: validate_url must run first."""
    resolver = GuardedResolver([])
    async with hook_server() as (port, received), guarded_session(resolver) as session:
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(TargetRefused):
            validate_url(url, [])
        async with session.post(url, data=b"{}") as resp:
            assert resp.status == 200
        assert received == [b"{}"]
    await resolver.close()


def test_ipnetwork_alias_is_usable() -> None:
    nets: list[IPNetwork] = parse_networks("10.0.0.0/8")
    assert nets == [ipaddress.IPv4Network("10.0.0.0/8")]
