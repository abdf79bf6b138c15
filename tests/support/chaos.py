"""The chaos harness: steady load, faults, and the accounting of what arrived.

    harness = Chaos(cluster, dbname, receiver, lease=5)
    await harness.setup()                    # org, four webhooks with patterns
    daemon = await harness.start_daemon()
    harness.start_load(rate=25)              # publish_event() at a steady rate
    ... inject a fault, then: await harness.recovered(at=fault_end) ...
    await harness.stop_load(); await harness.drain()
    result = await harness.verify("kill -9 and restart", faults=3)

Accounting is exact: the publisher records an event only once its commit is known (after a
connection loss it looks the event up by its aggregate id); the expected deliveries are the
(event, webhook) pairs whose pattern matches (dispatcher.demo.patterns); a pair is delivered when
the receiver answered 2xx to its delivery id; a duplicate is every further 2xx-answered
receipt of a delivery id already answered 2xx.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from aiohttp import web
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dispatcher.demo.patterns import matches

from .daemon import DaemonProcess
from .net import bound_socket
from .pg import PgCluster

WEBHOOKS = {
    "/all": ["*"],
    "/jobs": ["job.*"],
    "/candidates": ["candidate.*"],
    "/created": ["job.created"],
}
EVENT_TYPES = ["job.created", "job.updated", "candidate.hired", "system.ping"]
REPORT_PATH = Path(__file__).resolve().parents[2] / "build" / "chaos" / "reliability.json"


# --- receiver ------------------------------------------------------------------------------------


@dataclass
class Receipt:
    delivery_id: str
    path: str
    at: float
    status: int | None = None  # None: hung or cut off before an answer


class ChaosReceiver:
    """An aiohttp receiver whose behaviour per path switches at run time: "ok" (2xx after
    ``delay``), "error" (500) or "hang" (no answer until the mode changes or the client
    gives up)."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay
        self.receipts: list[Receipt] = []
        self._modes: dict[str, str] = defaultdict(lambda: "ok")
        self._mode_changed = asyncio.Event()
        self._closing = asyncio.Event()
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def start(self) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        server = web.Server(self._handle, handler_cancellation=True)
        self._runner = web.ServerRunner(server, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, sock, backlog=512).start()

    async def close(self) -> None:
        self._closing.set()
        self._mode_changed.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def set_mode(self, path: str, mode: str) -> None:
        assert mode in ("ok", "error", "hang")
        self._modes[path] = mode
        self._mode_changed.set()
        self._mode_changed = asyncio.Event()

    def answered_ok(self) -> Counter[str]:
        return Counter(r.delivery_id for r in self.receipts if r.status and r.status < 300)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        receipt = Receipt(
            request.headers.get("X-InTime-Delivery", "?"), request.path, time.monotonic()
        )
        self.receipts.append(receipt)
        while self._modes[request.path] == "hang" and not self._closing.is_set():
            await self._mode_changed.wait()
        if self._modes[request.path] == "error":
            receipt.status = 500
            return web.Response(status=500)
        if self.delay:
            await asyncio.sleep(self.delay)
        receipt.status = 204
        return web.Response(status=204)


# --- results -------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    faults: int
    events: int
    deliveries: int  # expected (event, webhook) pairs
    lost: int
    duplicates: int
    duplicates_allowed: int  # attempts in flight at the kills (upper bound)
    recover_seconds: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def recover_max(self) -> float:
        return max(self.recover_seconds, default=0.0)

    def row(self) -> str:
        recover = f"{self.recover_max:.1f} s" if self.recover_seconds else "-"
        median = (
            sorted(self.recover_seconds)[len(self.recover_seconds) // 2]
            if (self.recover_seconds)
            else 0.0
        )
        return (
            f"| {self.scenario} | {self.faults} | {self.events} | {self.deliveries} | "
            f"{self.lost} | {self.duplicates} (≤ {self.duplicates_allowed}) | "
            f"{recover} (median {median:.1f} s) |"
        )


TABLE_HEAD = (
    "| scenario | faults | events | deliveries | lost | duplicates (allowed) | "
    "time to recover (max) |\n|---|---|---|---|---|---|---|"
)


def table(results: list[Result]) -> str:
    return "\n".join([TABLE_HEAD, *(r.row() for r in results)])


def write_report(results: list[Result], path: Path = REPORT_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "scenarios": [{**asdict(r), "recover_max": r.recover_max} for r in results],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


# --- harness -------------------------------------------------------------------------------------


@dataclass
class Published:
    event_id: uuid.UUID
    event_type: str
    at: float


class Chaos:
    def __init__(
        self,
        cluster: PgCluster,
        dbname: str,
        receiver: ChaosReceiver,
        *,
        lease: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self.receiver = receiver
        self.lease = lease
        self.extra_env = env or {}
        self.dsn = cluster.dsn(dbname)
        self.org = uuid.uuid4()
        self.webhooks: dict[uuid.UUID, list[str]] = {}
        self.published: list[Published] = []
        self.daemons: list[DaemonProcess] = []
        self.duplicates_allowed = 0
        self._load: asyncio.Task[None] | None = None
        self._stop_load = asyncio.Event()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self.started = time.monotonic()

    # -- setup -----------------------------------------------------------------------------
    async def setup(self) -> None:
        async with await self._connect() as conn:
            await conn.execute(
                "INSERT INTO organizations (id, name, slug) VALUES (%s, 'Chaos', %s)",
                (self.org, f"chaos-{self.org.hex[:8]}"),
            )
            # Retries every second (at most 2 s apart while an endpoint keeps failing), and
            # enough of them that a flapping endpoint never exhausts a delivery.
            await conn.execute(
                "INSERT INTO integration_retry_config (org_id, max_retries, retry_strategy, "
                "base_delay_seconds, max_delay_seconds, enable_jitter) "
                "VALUES (%s, 10, 'fixed', 1, 2, false)",
                (self.org,),
            )
            for path, patterns in WEBHOOKS.items():
                cur = await conn.execute(
                    "INSERT INTO webhooks (org_id, name, url, events) VALUES (%s, %s, %s, %s) "
                    "RETURNING id",
                    (self.org, path, self.receiver.url(path), patterns),
                )
                row = await cur.fetchone()
                assert row is not None
                self.webhooks[row["id"]] = patterns

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, row_factory=dict_row, connect_timeout=5
        )

    # -- daemons ---------------------------------------------------------------------------
    def daemon_env(self, dsn: str | None = None) -> dict[str, str]:
        return {
            "DISPATCHER_DATABASE_URL": dsn or self.dsn,
            "DISPATCHER_METRICS_ADDRESS": "",
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_POLL_INTERVAL": "0.5",
            "DISPATCHER_LEASE_SECONDS": str(self.lease),
            "DISPATCHER_HTTP_TIMEOUT": "2",
            "DISPATCHER_SHUTDOWN_GRACE": "3",
            "DISPATCHER_CONCURRENCY": "32",
            **self.extra_env,
        }

    async def start_daemon(self, dsn: str | None = None, name: str = "") -> DaemonProcess:
        env = self.daemon_env(dsn)
        if name:
            env["DISPATCHER_INSTANCE_NAME"] = name
        daemon = DaemonProcess(env)
        self.daemons.append(daemon)
        daemon.start()
        await daemon.wait_for_log("ready", timeout=30)
        return daemon

    async def kill(self, daemon: DaemonProcess) -> int:
        """kill -9; returns how many deliveries were leased (claimed, not yet recorded) at
        that moment: an upper bound of the attempts it had in flight."""
        daemon.kill()
        await daemon.wait_exit(10)
        async with await self._connect() as conn:
            cur = await conn.execute(
                "SELECT count(*) AS n FROM webhook_deliveries "
                "WHERE status IN ('pending', 'retrying') AND next_retry_at > now()"
            )
            row = await cur.fetchone()
        leased = int(row["n"]) if row else 0
        self.duplicates_allowed += leased
        return leased

    async def stop_daemons(self) -> list[int]:
        codes = []
        for daemon in self.daemons:
            if daemon.is_running():
                daemon.terminate()
                codes.append(await daemon.wait_exit(30))
        return codes

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.close()

    def logs(self) -> str:
        return "\n".join(f"--- {d!r}\n{d.tail(60)}" for d in self.daemons)

    # -- load ------------------------------------------------------------------------------
    def start_load(self, rate: float = 25.0) -> None:
        assert self._load is None
        self._load = asyncio.create_task(self._publish_forever(rate))

    async def more_published(self, count: int, timeout: float = 60.0) -> None:
        """Wait until ``count`` more events have been published (the load keeps running)."""
        target = len(self.published) + count
        deadline = time.monotonic() + timeout
        while len(self.published) < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"the load published {len(self.published)}/{target}")
            await asyncio.sleep(0.05)

    async def stop_load(self) -> None:
        if self._load is not None:
            # Stop between two publishes: a publish cancelled mid-way could commit an event
            # the accounting never hears of.
            self._stop_load.set()
            await asyncio.wait_for(self._load, 30)
            self._load = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _publish_forever(self, rate: float) -> None:
        period = 1.0 / rate
        next_at = time.monotonic()
        for n in itertools.count():
            if self._stop_load.is_set():
                return
            event_type = EVENT_TYPES[n % len(EVENT_TYPES)]
            await self._publish_one(event_type, n)
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_load.wait(), max(0.0, next_at - time.monotonic()))

    async def _publish_one(self, event_type: str, n: int) -> None:
        aggregate = uuid.uuid4()
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connect()
                cur = await self._conn.execute(
                    "SELECT publish_event(%s, %s, %s, NULL, '{}'::jsonb, %s) AS id",
                    (event_type, aggregate, Jsonb({"seq": n}), self.org),
                )
                row = await cur.fetchone()
                assert row is not None
                self.published.append(Published(row["id"], event_type, time.monotonic()))
                return
            except psycopg.OperationalError:
                # The commit may or may not have happened: look it up once reconnected.
                with contextlib.suppress(Exception):
                    if self._conn is not None:
                        await self._conn.close()
                self._conn = None
                found = await self._lookup(aggregate)
                if found is not None:
                    self.published.append(Published(found, event_type, time.monotonic()))
                    return
                await asyncio.sleep(0.2)

    async def _lookup(self, aggregate: uuid.UUID) -> uuid.UUID | None:
        while True:
            try:
                async with await self._connect() as conn:
                    cur = await conn.execute(
                        "SELECT id FROM events WHERE aggregate_id = %s", (aggregate,)
                    )
                    row = await cur.fetchone()
                    return row["id"] if row else None
            except psycopg.OperationalError:
                await asyncio.sleep(0.2)

    # -- accounting ------------------------------------------------------------------------
    def expected_pairs(self, events: list[Published]) -> set[tuple[uuid.UUID, uuid.UUID]]:
        return {
            (e.event_id, hook)
            for e in events
            for hook, patterns in self.webhooks.items()
            if any(matches(p, e.event_type) for p in patterns)
        }

    async def _delivered(self, events: list[Published]) -> tuple[int, int]:
        """(delivered, expected) for these events, from the database."""
        expected = self.expected_pairs(events)
        ids = list({e.event_id for e in events})
        while True:
            try:
                async with await self._connect() as conn:
                    cur = await conn.execute(
                        "SELECT count(DISTINCT (event_id, webhook_id)) AS n "
                        "FROM webhook_deliveries WHERE event_id = ANY(%s) AND status = 'success'",
                        (ids,),
                    )
                    row = await cur.fetchone()
                    return (int(row["n"]) if row else 0), len(expected)
            except psycopg.OperationalError:
                await asyncio.sleep(0.2)

    async def recovered(self, at: float, timeout: float = 60.0) -> float:
        """Seconds from ``at`` (the fault's end) until every event published before it is
        delivered to every matching webhook."""
        before = [e for e in self.published if e.at <= at]
        deadline = time.monotonic() + timeout
        while True:
            done, expected = await self._delivered(before)
            if done >= expected:
                return time.monotonic() - at
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"not recovered {timeout}s after the fault: {done}/{expected} delivered\n"
                    + self.logs()
                )
            await asyncio.sleep(0.1)

    async def drain(self, timeout: float = 60.0) -> None:
        await self.recovered(time.monotonic(), timeout)

    async def verify(self, scenario: str, faults: int, recover: list[float]) -> Result:
        """Every expected pair delivered once in the database; nothing else but the
        dispatcher's own lifecycle events (webhook.recovered after a streak of failures,
        webhook.disabled, delivery.dead_lettered: migration 0026) to the webhooks they match
        (the one they are about too, once it is healthy again: webhook.recovered); count the
        receiver's duplicates."""
        expected = self.expected_pairs(self.published)
        async with await self._connect() as conn:
            cur = await conn.execute(
                "SELECT event_id, webhook_id, status, id FROM webhook_deliveries WHERE org_id = %s",
                (self.org,),
            )
            rows = await cur.fetchall()
            cur = await conn.execute(
                "SELECT id, event_type FROM events WHERE org_id = %s"
                " AND metadata #> '{dispatcher,lifecycle}' = 'true'::jsonb",
                (self.org,),
            )
            lifecycle = await cur.fetchall()
        lifecycle_pairs = {
            (e["id"], hook)
            for e in lifecycle
            for hook, patterns in self.webhooks.items()
            if any(matches(p, e["event_type"]) for p in patterns)
        }
        pairs = Counter((r["event_id"], r["webhook_id"]) for r in rows)
        fanned_twice = [p for p, n in pairs.items() if n > 1]
        unexpected = set(pairs) - expected - lifecycle_pairs
        not_success = [r for r in rows if r["status"] != "success"]
        answered = self.receiver.answered_ok()
        ids_of = {(r["event_id"], r["webhook_id"]): str(r["id"]) for r in rows}
        lost = sum(1 for p in expected if p not in ids_of or answered[ids_of[p]] == 0)
        duplicates = sum(n - 1 for n in answered.values() if n > 1)
        assert not fanned_twice, f"fan-out created {len(fanned_twice)} duplicate deliveries"
        assert not unexpected, f"{len(unexpected)} deliveries for non-matching webhooks"
        assert not not_success, f"{len(not_success)} deliveries not successful: {not_success[:3]}"
        return Result(
            scenario=scenario,
            faults=faults,
            events=len(self.published),
            deliveries=len(expected),
            lost=lost,
            duplicates=duplicates,
            duplicates_allowed=self.duplicates_allowed,
            recover_seconds=[round(r, 2) for r in recover],
            wall_seconds=round(time.monotonic() - self.started, 1),
        )
