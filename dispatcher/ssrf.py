"""SSRF guard: refuse webhook targets that point into private, local or special networks.

Webhook URLs are written by tenants, so a URL must not be able to make the dispatcher talk to
loopback, the cloud metadata endpoint, the private network it runs in, and so on. Two layers:

* ``validate_url`` (before a request): syntax, scheme, credentials, and any IP-literal host in
  every spelling a resolver accepts (``127.0.0.1``, ``2130706433``, ``0x7f.1``, ``0177.0.0.1``,
  ``127.1``, ``[::ffff:127.0.0.1]``...). aiohttp never calls the resolver for an IP-literal host,
  so this layer is the only one that sees those URLs: always call it.
* ``GuardedResolver`` (inside aiohttp's ``TCPConnector``): checks every address a name resolves
  to and refuses the whole name if any address is refused; the connector then connects to exactly
  the addresses that were checked (numeric hosts, no second lookup), so DNS rebinding between
  check and connect is impossible.

Operators open holes with ``DISPATCHER_ALLOWED_TARGET_NETWORKS`` (``parse_networks``): an address
inside an allowed network is never refused. For addresses that embed an IPv4 address (IPv4-mapped,
IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4, Teredo) the verdict is that of the embedded IPv4
address(es), so ``::ffff:10.0.0.1`` is refused like ``10.0.0.1`` and ``64:ff9b::93.184.216.34``
(DNS64) is accepted like ``93.184.216.34``.

Errors: ``TargetRefused`` (a subclass of ``OSError``, so aiohttp wraps it in
``ClientConnectorDNSError`` like any resolver failure; ``refused_cause`` digs it out) and its
subclass ``InvalidTarget`` for URLs that are unusable regardless of networks (malformed, wrong
scheme, no host, credentials, non-canonical IPv4 spelling). Both mean: do not send, do not retry.

No I/O except ``GuardedResolver.resolve`` (DNS through the wrapped resolver).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

__all__ = [
    "ALLOW_ENV",
    "GuardedResolver",
    "IPAddress",
    "IPNetwork",
    "InvalidTarget",
    "TargetRefused",
    "check_address",
    "host_name_problem",
    "parse_ip_literal",
    "parse_networks",
    "refused_cause",
    "validate_url",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOW_ENV = "DISPATCHER_ALLOWED_TARGET_NETWORKS"

_NUMERIC_FLAGS = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
_V4_LITERAL_CHARS = frozenset("0123456789abcdefABCDEFxX.")


class TargetRefused(OSError):
    """The dispatcher refuses to send to this target.

    ``host`` is the URL host (or name resolved), ``addresses`` the offending addresses,
    ``allow`` the CIDRs that ``DISPATCHER_ALLOWED_TARGET_NETWORKS`` would need to include (empty
    for an InvalidTarget). ``str()`` is the full message; it is also set as ``strerror`` so that
    aiohttp's ``ClientConnectorError`` text includes it.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        addresses: Sequence[str] = (),
        allow: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.strerror = message
        self.message = message
        self.host = host
        self.addresses = tuple(addresses)
        self.allow = tuple(allow)

    def __str__(self) -> str:
        return self.message


class InvalidTarget(TargetRefused):
    """The webhook URL itself is unusable (malformed, bad scheme, no host, credentials...)."""


# --- address classification ------------------------------------------------------------------


def _nets(*rules: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), what) for cidr, what in rules)


# Most specific first: the first match names the reason.
_V4_RULES = _nets(
    ("255.255.255.255/32", "the limited broadcast address"),
    ("0.0.0.0/32", "the unspecified address"),
    ("0.0.0.0/8", "a 'this network' address"),
    ("127.0.0.0/8", "a loopback address"),
    ("10.0.0.0/8", "a private address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("169.254.169.254/32", "the link-local cloud metadata address"),
    ("169.254.0.0/16", "a link-local address"),
    ("100.64.0.0/10", "a carrier-grade NAT (shared) address"),
    ("192.0.0.0/24", "an IETF protocol assignment address"),
    ("192.0.2.0/24", "a documentation address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved (former 6to4 relay) address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_V6_RULES = _nets(
    ("::/128", "the unspecified address"),
    ("::1/128", "the loopback address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001:2::/48", "a benchmarking address"),
    ("2001:10::/28", "a deprecated ORCHID address"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("fc00::/7", "a unique-local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_COMPAT = ipaddress.IPv6Network("::/96")
_V6_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True, slots=True)
class _Refusal:
    reason: str  # full clause, e.g. "10.0.0.1 is a private address (10.0.0.0/8)"
    allow: str  # CIDR that would let it through


def _without_scope(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
        return ipaddress.IPv6Address(int(addr))
    return addr


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """IPv4 addresses an IPv6 address stands for or carries, with the form's name."""
    if addr.ipv4_mapped is not None:
        return [("IPv4-mapped", addr.ipv4_mapped)]
    low32 = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _V6_COMPAT:
        return [("IPv4-compatible", low32)]
    if addr in _V6_NAT64:
        return [("NAT64", low32)]
    if addr.sixtofour is not None:
        return [("6to4", addr.sixtofour)]
    if addr.teredo is not None:
        server, client = addr.teredo
        return [("Teredo (server)", server), ("Teredo (client)", client)]
    return []


def _rule_reason(addr: IPAddress) -> tuple[str, str] | None:
    """(what, network) for a special-purpose address, or None for a global unicast one."""
    rules = _V4_RULES if addr.version == 4 else _V6_RULES
    for net, what in rules:
        if addr in net:
            return what, str(net)
    if isinstance(addr, ipaddress.IPv6Address) and addr not in _V6_GLOBAL_UNICAST:
        return "a reserved address (outside global unicast)", str(_V6_GLOBAL_UNICAST)
    # Backstop: whatever Python's own registry knows to be special.
    if (
        not addr.is_global
        or addr.is_multicast
        or addr.is_private
        or addr.is_reserved
        or addr.is_loopback
        or addr.is_link_local
        or addr.is_unspecified
    ):
        return "not a globally routable address", "IANA special-purpose registry"
    return None


def _verdict(addr: IPAddress, allowed: Sequence[IPNetwork]) -> _Refusal | None:
    addr = _without_scope(addr)
    if any(addr.version == net.version and addr in net for net in allowed):
        return None
    if isinstance(addr, ipaddress.IPv6Address) and int(addr) > 1:
        embedded = _embedded_ipv4(addr)
        for form, v4 in embedded:
            inner = _verdict(v4, allowed)
            if inner is not None:
                return _Refusal(f"{addr} is {form} for {inner.reason}", inner.allow)
        if embedded:
            return None
    special = _rule_reason(addr)
    if special is None:
        return None
    what, network = special
    return _Refusal(f"{addr} is {what} ({network})", f"{addr}/{addr.max_prefixlen}")


def _refused(
    host: str | None, addresses: Sequence[str], refusals: Sequence[_Refusal]
) -> TargetRefused:
    allow = list(dict.fromkeys(r.allow for r in refusals))
    reasons = "; ".join(r.reason for r in refusals)
    if host is None or [host] == list(addresses):
        subject = f"refused target {addresses[0]}" if addresses else "refused target"
    else:
        subject = f"refused target {host!r} (resolves to {', '.join(addresses)})"
    message = (
        f"{subject}: {reasons}. If this target is intended, "
        f"set {ALLOW_ENV} to include {', '.join(allow)}"
    )
    return TargetRefused(message, host=host, addresses=addresses, allow=allow)


def check_address(
    addr: IPAddress, allowed: Sequence[IPNetwork], *, host: str | None = None
) -> None:
    """Raise TargetRefused unless ``addr`` may be contacted.

    Refused: loopback, private, link-local (incl. 169.254.169.254), CGNAT 100.64/10, unique-local,
    site-local, multicast, unspecified, broadcast, reserved, documentation, benchmarking and other
    special-purpose ranges; IPv6 outside 2000::/3; IPv6 forms whose embedded IPv4 is refused.
    An address inside one of ``allowed`` is accepted. ``host`` only names the target in messages.
    """
    refusal = _verdict(addr, allowed)
    if refusal is not None:
        raise _refused(host, [str(_without_scope(addr))], [refusal])


# --- parsing -----------------------------------------------------------------------------------


def parse_networks(value: str) -> list[IPNetwork]:
    """Parse a comma-separated list of CIDRs or plain addresses (``""`` gives ``[]``).

    Whitespace and empty entries are ignored; ``[v6]`` brackets are accepted for plain addresses.
    Raises ValueError naming the bad entry (including a CIDR with host bits set, e.g.
    ``10.0.0.1/8``, with a suggestion).
    """
    networks: list[IPNetwork] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry:
            continue
        text = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
        try:
            networks.append(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            hint = ""
            try:
                hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
            except ValueError:
                pass
            raise ValueError(
                f"{ALLOW_ENV}: {entry!r} is not an IP network (CIDR such as 10.0.0.0/8) "
                f"or address: {exc}{hint}"
            ) from None
    return networks


def _parse_v6(text: str) -> ipaddress.IPv6Address | None:
    text = text.split("%", 1)[0]  # drop a zone id: "fe80::1%eth0", "fe80::1%25eth0"
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """Return the address when ``host`` is an IP literal in any spelling a resolver accepts.

    Accepts IPv6 with or without ``[...]`` (zone ids dropped), dotted-quad IPv4 and the legacy
    ``inet_aton`` forms: ``2130706433``, ``0x7f000001``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``,
    with an optional single trailing dot. Returns None for a DNS name.
    """
    if not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        return _parse_v6(host[1:-1])
    if ":" in host:
        return _parse_v6(host)
    text = host[:-1] if host.endswith(".") and not host.endswith("..") else host
    if not text or not set(text) <= _V4_LITERAL_CHARS:
        return None
    try:
        packed = socket.inet_aton(text)
    except OSError:
        return None
    return ipaddress.IPv4Address(packed)


def _parse_resolved(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return _parse_v6(host) if ":" in host else None


def validate_url(url: str, allowed: Sequence[IPNetwork]) -> URL:
    """Check a webhook URL before any request; return it parsed.

    Raises InvalidTarget for an empty or malformed URL, a scheme other than http/https, a missing
    host, port 0, credentials in the URL, a percent-encoded host, or a non-canonical IPv4 spelling
    (``127.1`` and friends, after the address check); raises TargetRefused when the host is an IP
    literal that ``check_address`` refuses. DNS names are left to ``GuardedResolver``.
    Surrounding whitespace is stripped.
    """
    text = url.strip()
    if not text:
        raise InvalidTarget("invalid webhook URL: it is empty")
    try:
        parsed = URL(text)
    except (ValueError, TypeError) as exc:
        raise InvalidTarget(f"invalid webhook URL: it is malformed ({exc})") from None
    if parsed.scheme not in ("http", "https"):
        shown = parsed.scheme or "(none)"
        raise InvalidTarget(f"invalid webhook URL: scheme {shown!r} is not http or https")
    raw_host = parsed.raw_host
    if not parsed.absolute or not raw_host:
        raise InvalidTarget("invalid webhook URL: it has no host")
    try:
        host = parsed.host or raw_host
    except UnicodeError:
        raise InvalidTarget(
            f"invalid webhook URL: host {raw_host!r} is not a valid IDNA name"
        ) from None
    if parsed.raw_user is not None or parsed.raw_password is not None:
        raise InvalidTarget(
            f"invalid webhook URL for host {host!r}: it contains credentials (user:password@); "
            "put them in the webhook's custom headers instead"
        )
    if parsed.explicit_port == 0:
        raise InvalidTarget(f"invalid webhook URL for host {host!r}: port 0")
    literal: IPAddress | None = None
    for candidate in dict.fromkeys((raw_host, host, unquote(raw_host))):
        found = parse_ip_literal(candidate)
        if found is not None:
            check_address(found, allowed, host=host)
            if literal is None:
                literal = found
    if "%" in raw_host and ":" not in raw_host:
        raise InvalidTarget(f"invalid webhook URL: host {raw_host!r} is percent-encoded")
    if isinstance(literal, ipaddress.IPv4Address) and raw_host != str(literal):
        raise InvalidTarget(
            f"invalid webhook URL: host {raw_host!r} is a non-canonical spelling of the IPv4 "
            f"address {literal}; write {literal}"
        )
    if literal is None:
        problem = host_name_problem(raw_host)
        if problem is not None:
            raise InvalidTarget(f"invalid webhook URL: host {raw_host!r} {problem}")
    return parsed


MAX_HOST_NAME = 253
MAX_LABEL = 63
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def host_name_problem(host: str) -> str | None:
    """What makes ``host`` (a DNS name in its ASCII form, IDNA already applied) unusable,
    or None: an empty label (``api..example.com``), a label over 63 characters, a name over
    253, a character outside letters, digits, ``-`` and ``_``, a label that starts or ends
    with ``-``, or an ``xn--`` label that is not valid punycode. The resolver would raise
    UnicodeError on most of these; the same rules are the SQL API's
    (``dispatcher.webhook_url_problem``, migration 0016)."""
    name = host[:-1] if host.endswith(".") else host
    if not name:
        return "is empty"
    if len(name) > MAX_HOST_NAME:
        return f"is {len(name)} characters long (at most {MAX_HOST_NAME})"
    for label in name.split("."):
        if not label:
            return "has an empty label (two dots in a row, or a leading dot)"
        if len(label) > MAX_LABEL:
            return f"has a label of {len(label)} characters (at most {MAX_LABEL})"
        if not set(label) <= _LABEL_CHARS:
            return "has a character that is not a letter, digit, '-' or '_'"
        if label.startswith("-") or label.endswith("-"):
            return f"has a label that starts or ends with '-' ({label!r})"
        if label[:4].lower() == "xn--":
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                return f"has an invalid IDNA (punycode) label {label!r}"
    return None


# --- resolver ----------------------------------------------------------------------------------


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses names resolving to any refused address.

    Use as ``aiohttp.TCPConnector(resolver=GuardedResolver(allowed))``. ``inner`` is the resolver
    doing the lookups (default: aiohttp's ``ThreadedResolver``, i.e. the system's getaddrinfo,
    created on first use); ``close()`` closes it. The returned results are the inner resolver's,
    each checked, with numeric-host flags, so the connector connects to exactly these addresses.
    IP-literal hosts (any spelling ``parse_ip_literal`` knows) are checked without a lookup.
    """

    def __init__(
        self, allowed: Sequence[IPNetwork] = (), inner: AbstractResolver | None = None
    ) -> None:
        self._allowed = tuple(allowed)
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` and check every address; raise TargetRefused if any is refused."""
        literal = parse_ip_literal(host)
        if literal is not None:
            check_address(literal, self._allowed, host=host)
            literal_family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            return [
                ResolveResult(
                    hostname=host,
                    host=str(literal),
                    port=port,
                    family=literal_family,
                    proto=0,
                    flags=_NUMERIC_FLAGS,
                )
            ]
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        addresses = [r["host"] for r in results]
        refusals: list[_Refusal] = []
        checked: list[ResolveResult] = []
        for result in results:
            addr = _parse_resolved(result["host"])
            if addr is None:
                raise TargetRefused(
                    f"refused target {host!r}: the resolver returned {result['host']!r}, "
                    "which is not an IP address",
                    host=host,
                    addresses=addresses,
                )
            refusal = _verdict(addr, self._allowed)
            if refusal is not None:
                refusals.append(refusal)
            checked.append(
                ResolveResult(
                    hostname=result["hostname"],
                    host=result["host"],
                    port=result["port"],
                    family=result["family"],
                    proto=result["proto"],
                    flags=result["flags"] | _NUMERIC_FLAGS,
                )
            )
        if refusals:
            raise _refused(host, addresses, refusals)
        return checked

    async def close(self) -> None:
        """Close the inner resolver."""
        if self._inner is not None:
            await self._inner.close()


def refused_cause(exc: BaseException) -> TargetRefused | None:
    """Find the TargetRefused behind an exception (aiohttp wraps resolver errors), or None.

    Walks ``__cause__``, ``__context__``, aiohttp's ``os_error`` and exception-group members.
    """
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, TargetRefused):
            return current
        linked = (current.__cause__, current.__context__, getattr(current, "os_error", None))
        stack.extend(e for e in linked if isinstance(e, BaseException))
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
    return None
