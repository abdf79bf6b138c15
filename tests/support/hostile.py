"""Hostile and broken webhook receivers: raw asyncio TCP servers on 127.0.0.1.

They do what an aiohttp.web server cannot: bodies that never end, headers that
never end, bytes trickled one at a time, invalid HTTP, a reset in the middle of
the request, an accept that never comes, TLS with a self-signed certificate.

    async with RawServer(endless_body()) as server:
        url = server.url("/hook")
        ...
    server.connections        # TCP connections accepted
    server.bytes_received     # request bytes read, all connections
    server.bytes_sent         # response bytes written, all connections

Every behaviour is an ``async def behaviour(conn: RawConnection) -> None``; the
server closes the connection when it returns (or aborts it when it raises).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gzip
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp.abc import AbstractResolver, ResolveResult

from .net import LOOPBACK, set_linger_zero

HEAD_LIMIT = 1 << 20
CHUNK = 64 * 1024


@dataclass
class RawConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer
    request_head: bytes = b""
    request_body: bytes = b""

    async def read_request(self) -> bytes:
        """Read the request head and its Content-Length body; returns the head."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.server.bytes_received += len(head)
        self.request_head = head
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length:
            self.request_body = await self.reader.readexactly(length)
            self.server.bytes_received += length
        self.server.requests += 1
        return head

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.server.bytes_sent += len(data)

    def reset(self) -> None:
        """Abort with a TCP RST."""
        set_linger_zero(self.writer.get_extra_info("socket"))
        self.writer.transport.abort()

    async def hold(self) -> None:
        """Keep the connection open, reading and discarding, until the peer or the server
        closes it."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await self.reader.read(CHUNK):
                self.server.bytes_received += len(data)
        await self.server.closing.wait()


Behaviour = Callable[[RawConnection], Awaitable[None]]


@dataclass
class RawServer:
    behaviour: Behaviour
    ssl_context: ssl.SSLContext | None = None
    host: str = LOOPBACK
    port: int = 0
    connections: int = 0
    requests: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self) -> None:
        if self.host == "::":
            # Dual stack: IPv6 and IPv4 (mapped) on one socket; asyncio would set V6ONLY.
            sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(("::", self.port))
            self._server = await asyncio.start_server(self._accept, sock=sock, ssl=self.ssl_context)
        else:
            self._server = await asyncio.start_server(
                self._accept, self.host, self.port, ssl=self.ssl_context
            )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.closing.set()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> RawServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def url(self, path: str = "/hook", scheme: str | None = None, host: str | None = None) -> str:
        scheme = scheme or ("https" if self.ssl_context else "http")
        host = host or (LOOPBACK if self.host == "::" else self.host)
        return f"{scheme}://{host}:{self.port}{path}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        conn = RawConnection(reader, writer, self)
        try:
            await self.behaviour(conn)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away: that is what these servers provoke
        except asyncio.CancelledError:
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()


# --- behaviours ----------------------------------------------------------------------------------


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} Whatever"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def endless_body(status: int = 200, *, chunked: bool = True) -> Behaviour:
    """A body that never ends, sent as fast as the client reads it (chunked, or with a
    Content-Length of 10 GB)."""

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        if chunked:
            await conn.send(_head(status, {"Transfer-Encoding": "chunked"}))
            chunk = b"%x\r\n%s\r\n" % (CHUNK, b"x" * CHUNK)
        else:
            await conn.send(_head(status, {"Content-Length": str(10 << 30)}))
            chunk = b"y" * CHUNK
        while True:
            await conn.send(chunk)

    return run


def gzip_bomb(status: int = 200, size: int = 1 << 30) -> Behaviour:
    """A small gzip body (~1 MB) that inflates to ``size`` bytes."""
    data = gzip.compress(b"\0" * min(size, 64 << 20), compresslevel=9)
    copies = max(size // (64 << 20), 1)

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        body = data * copies  # concatenated gzip members
        await conn.send(
            _head(status, {"Content-Encoding": "gzip", "Content-Length": str(len(body))})
        )
        await conn.send(body)
        await conn.hold()

    return run


def trickle_body(status: int = 200, interval: float = 1.0, length: int = 100_000) -> Behaviour:
    """Status and headers at once, then the body one byte every ``interval`` seconds."""

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(_head(status, {"Content-Length": str(length)}))
        for _ in range(length):
            await conn.send(b"z")
            await asyncio.sleep(interval)

    return run


def endless_headers(interval: float = 0.0) -> Behaviour:
    """A status line, then header lines for ever (one every ``interval`` seconds)."""

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\n")
        n = 0
        while True:
            n += 1
            await conn.send(b"X-Filler-%d: %s\r\n" % (n, b"f" * 64))
            await asyncio.sleep(interval)

    return run


def endless_header_line() -> Behaviour:
    """A status line, then one header line that never ends."""

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\r\nX-Long: ")
        while True:
            await conn.send(b"a" * 4096)

    return run


def reset_mid_request(after: int = 64) -> Behaviour:
    """Read ``after`` bytes of the request, then reset the connection."""

    async def run(conn: RawConnection) -> None:
        data = await conn.reader.readexactly(after)
        conn.server.bytes_received += len(data)
        conn.reset()

    return run


def never_answer() -> Behaviour:
    """Accept, read the request, never answer."""

    async def run(conn: RawConnection) -> None:
        await conn.read_request()
        await conn.hold()

    return run


def reply_raw(payload: bytes, *, then_hold: bool = False, at_once: bool = False) -> Behaviour:
    """Read the request (unless ``at_once``), write ``payload`` as the whole answer, close
    (or hold)."""

    async def run(conn: RawConnection) -> None:
        if at_once:
            data = await conn.reader.read(CHUNK)
            conn.server.bytes_received += len(data)
        else:
            await conn.read_request()
        await conn.send(payload)
        if then_hold:
            await conn.hold()

    return run


def record_only() -> Behaviour:
    """Count connections and bytes; answer nothing (for "nothing was sent" checks)."""

    async def run(conn: RawConnection) -> None:
        await conn.hold()

    return run


# --- an accept that never comes ----------------------------------------------------------------


class UnacceptingListener:
    """A listening socket whose accept queue is full: new connections get no SYN-ACK.

    ``listen(0)`` admits one connection to the queue; we take that place ourselves and never
    call accept(), so the kernel drops every later SYN and the client's connect() hangs.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((LOOPBACK, 0))
        self._sock.listen(0)
        self.port = self._sock.getsockname()[1]
        self._filler = socket.create_connection((LOOPBACK, self.port))

    def url(self, path: str = "/hook") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def connect_hangs(self, timeout: float = 0.5) -> bool:
        """Check the premise: a plain connect() does not complete within ``timeout``."""
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.settimeout(timeout)
        try:
            probe.connect((LOOPBACK, self.port))
        except TimeoutError:
            return True
        except OSError:
            return False
        finally:
            probe.close()
        return False

    def close(self) -> None:
        self._filler.close()
        self._sock.close()

    def __enter__(self) -> UnacceptingListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- TLS -----------------------------------------------------------------------------------------


def self_signed_context(directory: Path, host: str = LOOPBACK) -> ssl.SSLContext:
    """A server SSLContext with a fresh self-signed certificate for ``host``."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hostile.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


# --- the daemon's memory -------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --- hostile DNS ---------------------------------------------------------------------------------


class ScriptedResolver(AbstractResolver):
    """An aiohttp resolver whose answers are scripted per name: each lookup takes the next
    answer, the last one repeats. Wrap it in dispatcher.ssrf.GuardedResolver (Sender does).

        ScriptedResolver({"rebind.test": [["127.0.0.1"], ["10.0.0.1"]]})
    """

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self._answers = {name: [list(a) for a in script] for name, script in answers.items()}
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        import ipaddress

        self.calls.append(host)
        script = self._answers.get(host)
        if not script:
            raise OSError(socket.EAI_NONAME, f"scripted resolver: no answer for {host!r}")
        answer = script.pop(0) if len(script) > 1 else script[0]
        results: list[ResolveResult] = []
        for address in answer:
            version = ipaddress.ip_address(address).version
            results.append(
                {
                    "hostname": host,
                    "host": address,
                    "port": port,
                    "family": socket.AF_INET6 if version == 6 else socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
            )
        return results

    async def close(self) -> None:
        return None
