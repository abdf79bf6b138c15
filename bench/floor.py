"""The durable floor: the least work an at-least-once dispatcher that records every attempt in
the host's ``webhook_deliveries`` must do, run as its own process (issue 12).

    python -m bench.floor DSN WEBHOOK_ID [--writes 2|3] [--batch N] [--cap N]

It drains ``dispatcher.outbox`` to ONE webhook (its id, URL and secret read once at start):

- ``--writes 2`` (scenario ``floor``): per batch, one statement deletes N outbox rows and
  inserts their delivery rows already leased (``floor_take``); each row is POSTed once
  (aiohttp, one HMAC signature, at most ``--cap`` requests in flight, 32 like the daemon's
  per-webhook cap); one statement per batch writes the outcomes (``floor_record``). Two
  writes of each delivery row.
- ``--writes 3`` (scenario ``floor3``): the same, but the rows are inserted ``pending``
  (``floor_take_pending``) and leased by a second statement that finds them through the
  due index (``floor_lease``): the pending-then-leased path of drain1, three writes per row.

Nothing else: no pattern matching (one webhook, known up front), no ordering or sequence
numbers, no lease re-checks, no metrics, no retries (a failed attempt is recorded
``retrying``, left for someone else). The sessions get the daemon's speed settings
(``default_toast_compression=lz4`` when the server has it, dispatcher/db.py). It runs until
SIGTERM (exit 0), polling an empty outbox every 50 ms, like the daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import aiohttp
import psycopg
from psycopg.rows import dict_row

from bench.infra import q
from bench.receiver import run_loop
from dispatcher.queries import query
from dispatcher.signing import sign_standard_with_keys, standard_webhooks_key

LEASE_SECONDS = 90
RESPONSE_BODY_CHARS = 10_000
IDLE_POLL = 0.05

Conn = psycopg.AsyncConnection[dict[str, Any]]


@dataclass
class Row:
    id: str
    body: bytes


@dataclass
class Outcomes:
    ids: list[UUID] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    codes: list[int | None] = field(default_factory=list)
    bodies: list[str | None] = field(default_factory=list)
    ms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class Floor:
    def __init__(self, dsn: str, webhook: UUID, *, writes: int, batch: int, cap: int) -> None:
        self.dsn = dsn
        self.webhook = webhook
        self.writes = writes
        self.batch = batch
        self.cap = cap
        self.queue: deque[Row] = deque()
        self.outcomes = Outcomes()
        self.in_flight = 0
        self.wake_fetch = asyncio.Event()
        self.wake_send = asyncio.Event()
        self.wake_record = asyncio.Event()
        self.stopping = asyncio.Event()
        self.params: dict[str, Any] = {}

    async def _connect(self) -> Conn:
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, row_factory=dict_row, application_name="bench-floor"
        )
        cur = await conn.execute(query("db_server_has_lz4"))
        row = await cur.fetchone()
        if row and row["lz4"]:  # the daemon's session setting (dispatcher/db.py)
            await conn.execute("SET default_toast_compression = lz4")
        return conn

    async def run(self) -> None:
        take = await self._connect()
        record = await self._connect()
        cur = await take.execute(q("floor_webhook"), {"webhook": self.webhook})
        hook = await cur.fetchone()
        if hook is None:
            raise SystemExit(f"webhook {self.webhook} not found")
        self.url = str(hook["url"])
        self.keys = [standard_webhooks_key(str(hook["secret"]))]
        self.params = {
            "webhook": self.webhook,
            "url": self.url,
            "max_attempts": hook["max_attempts"],
            "batch": self.batch,
            "lease": LEASE_SECONDS,
        }
        connector = aiohttp.TCPConnector(limit=self.cap)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tasks = [
                asyncio.create_task(self._fetcher(take)),
                asyncio.create_task(self._recorder(record)),
                *(asyncio.create_task(self._sender(session)) for _ in range(self.cap)),
            ]
            stop = asyncio.create_task(self.stopping.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for t in [stop, *tasks]:
                t.cancel()
            await asyncio.gather(stop, *tasks, return_exceptions=True)
        await take.close()
        await record.close()
        for t in done:  # a task that ended by itself failed: the exit status says so
            if t is not stop and not t.cancelled() and t.exception() is not None:
                raise RuntimeError("bench.floor failed") from t.exception()

    # ------------------------------------------------------------------ fetch
    async def _fetcher(self, conn: Conn) -> None:
        """Keeps at least `cap` leased rows waiting beside the `cap` in flight."""
        while True:
            if len(self.queue) >= self.cap:
                self.wake_fetch.clear()
                await self.wake_fetch.wait()
                continue
            rows = await self._take(conn)
            if rows:
                self.queue.extend(rows)
                self.wake_send.set()
            else:
                await asyncio.sleep(IDLE_POLL)

    async def _take(self, conn: Conn) -> list[Row]:
        if self.writes == 2:
            cur = await conn.execute(q("floor_take"), self.params, prepare=True)
        else:
            # three writes: insert pending rows for the next batch when none are left, then
            # lease a batch of pending rows found through the due index
            cur = await conn.execute(q("floor_lease"), self.params, prepare=True)
            if cur.rowcount <= 0:
                await conn.execute(q("floor_take_pending"), self.params, prepare=True)
                cur = await conn.execute(q("floor_lease"), self.params, prepare=True)
        return [Row(str(r["id"]), r["request_body"].encode()) for r in await cur.fetchall()]

    # ------------------------------------------------------------------ send
    async def _sender(self, session: aiohttp.ClientSession) -> None:
        while True:
            if not self.queue:
                self.wake_send.clear()
                await self.wake_send.wait()
                continue
            row = self.queue.popleft()
            if len(self.queue) < self.cap:
                self.wake_fetch.set()
            self.in_flight += 1
            try:
                await self._post(session, row)
            finally:
                self.in_flight -= 1
            self.wake_record.set()

    async def _post(self, session: aiohttp.ClientSession, row: Row) -> None:
        unix = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "webhook-id": row.id,
            "webhook-timestamp": unix,
            "webhook-signature": sign_standard_with_keys(row.id, unix, row.body, self.keys),
            "X-InTime-Delivery": row.id,
        }
        t0 = time.perf_counter()
        code: int | None = None
        text: str | None = None
        try:
            async with session.post(self.url, data=row.body, headers=headers) as resp:
                code = resp.status
                raw = await resp.content.read(RESPONSE_BODY_CHARS * 4)
                text = raw.decode("utf-8", "replace")[:RESPONSE_BODY_CHARS]
        except (aiohttp.ClientError, TimeoutError) as exc:
            text = type(exc).__name__
        o = self.outcomes
        o.ids.append(UUID(row.id))
        o.statuses.append("success" if code is not None and 200 <= code < 300 else "retrying")
        o.codes.append(code)
        o.bodies.append(text)
        o.ms.append(int((time.perf_counter() - t0) * 1000))

    # ------------------------------------------------------------------ record
    async def _recorder(self, conn: Conn) -> None:
        """One statement per batch: whatever ended while the previous one ran (at least
        `cap` outcomes, or all there are once nothing is in flight)."""
        while True:
            busy = self.in_flight or self.queue or not self.outcomes
            if len(self.outcomes) < self.cap and busy:
                self.wake_record.clear()
                await self.wake_record.wait()
                continue
            batch, self.outcomes = self.outcomes, Outcomes()
            await conn.execute(
                q("floor_record"),
                {
                    "ids": batch.ids,
                    "statuses": batch.statuses,
                    "codes": batch.codes,
                    "bodies": batch.bodies,
                    "ms": batch.ms,
                },
                prepare=True,
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__.split("\n")[0])
    p.add_argument("dsn")
    p.add_argument("webhook", type=UUID)
    p.add_argument("--writes", type=int, choices=(2, 3), default=2)
    p.add_argument("--batch", type=int, default=64, help="events per take statement")
    p.add_argument("--cap", type=int, default=32, help="requests in flight (per-webhook cap)")
    return p.parse_args(argv)


async def _main(args: argparse.Namespace) -> None:
    floor = Floor(args.dsn, args.webhook, writes=args.writes, batch=args.batch, cap=args.cap)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, floor.stopping.set)
    await floor.run()


def main(argv: list[str] | None = None) -> int:
    run_loop(_main(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
