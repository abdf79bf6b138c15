"""An asyncio TCP proxy on 127.0.0.1 for cutting the daemon off the database.

    proxy = TcpProxy("127.0.0.1", pg_cluster.port); await proxy.start()
    dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/db"
    await proxy.cut()          # RST every open connection, keep accepting
    proxy.blackhole(True)      # partition: bytes vanish, nothing is reset
    proxy.blackhole(False)     # heal: new connections work; partitioned ones get RST

A userspace proxy cannot hide the partition from TCP keepalives (the proxy's kernel
answers them), so only application-level timeouts notice a blackhole.
"""

from __future__ import annotations

import asyncio
import contextlib

from .net import LOOPBACK, set_linger_zero

CHUNK = 65536


class _Link:
    """One proxied connection: client <-> upstream (upstream is None if partitioned at accept)."""

    def __init__(
        self,
        client: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter | None,
        partitioned: bool,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.partitioned = partitioned
        self.tasks: list[asyncio.Task[None]] = []

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]

    def reset(self) -> None:
        for writer in self.writers():
            set_linger_zero(writer.get_extra_info("socket"))
            writer.transport.abort()

    def close(self) -> None:
        for writer in self.writers():
            writer.close()


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._blackholed = False

    @property
    def connection_count(self) -> int:
        """Currently open client connections."""
        return len(self._links)

    @property
    def blackholed(self) -> bool:
        return self._blackholed

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.cut()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> TcpProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def cut(self) -> None:
        """Abort every current connection with a TCP RST (both sides); keep accepting."""
        links = list(self._links)
        for link in links:
            link.reset()
        await self._settle(links)

    def blackhole(self, on: bool) -> None:
        """Partition (``True``) or heal (``False``) the path.

        While partitioned, all bytes in both directions are silently dropped and new
        connections are accepted but never forwarded. Connections that saw the
        partition lost bytes, so healing resets them; new connections forward normally.
        """
        self._blackholed = on
        if on:
            for link in self._links:
                link.partitioned = True
            return
        for link in [link for link in self._links if link.partitioned]:
            link.reset()

    async def _settle(self, links: list[_Link]) -> None:
        tasks = [task for link in links for task in link.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(handler)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await self._connect_upstream(writer)
        if upstream is None and not self._blackholed:
            return
        up_reader, up_writer = upstream if upstream else (None, None)
        link = _Link(writer, up_writer, partitioned=self._blackholed)
        self._links.add(link)
        link.tasks.append(asyncio.create_task(self._pump(link, reader, up_writer)))
        if up_reader is not None:
            link.tasks.append(asyncio.create_task(self._pump(link, up_reader, writer)))
        try:
            await asyncio.gather(*link.tasks)
        finally:
            self._links.discard(link)
            link.close()

    async def _connect_upstream(
        self, client: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        if self._blackholed:
            return None
        try:
            return await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            set_linger_zero(client.get_extra_info("socket"))
            client.transport.abort()
            return None

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None
    ) -> None:
        """Copy reader -> writer until EOF/error; drop bytes while the link is partitioned."""
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(CHUNK):
                if link.partitioned or writer is None:
                    continue
                writer.write(data)
                await writer.drain()
            if link.partitioned:
                return  # a partition swallows the FIN too; heal/cut/close resets the link
            link.close()  # one side finished: close both, like the peer hung up
