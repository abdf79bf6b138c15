"""The randomized fault test's harness: a seeded schedule of faults, a publisher, a flapping
receiver that knows which process sent each request, a sampler of leased rows, and the oracle.

    run = FuzzRun(cluster, dbname, seed=7, seconds=30)
    report = await run.execute()      # setup, load + faults, drain, stop, oracle
    assert report.ok, report.text()   # the text names the seed to reproduce

Everything random comes from ``random.Random(seed)`` (the fault schedule, the receiver's
flaps) and ``random.Random(seed + 1)`` (what the publisher publishes), so a printed seed
gives the same schedule again; the timing of the processes does not repeat exactly.

The oracle (docs/reliability.md, "The randomized fault test", states it for readers):

- **delivered**: every committed event reaches (2xx) every webhook of its org that is active
  and subscribed; a rolled-back event reaches none; the inactive webhook gets nothing.
- **no duplicate**: a receipt of an (event, webhook) pair after a 2xx receipt of that pair is
  a duplicate. It is allowed only when the process that sent the 2xx receipt (found from the
  TCP connection's owner in /proc; a connection without a live owner was the process
  SIGKILLed in the 2 s before it was read) was SIGKILLed after that receipt, before the duplicate
  arrived and within one lease of that receipt: the answer had arrived but its outcome had
  not been written when it died. An outcome still unwritten a lease after its answer is a
  defect whatever follows; a graceful stop (SIGTERM) excuses nothing.
- **webhook-id stable**: every receipt of one (event, webhook) pair carries one webhook-id.
- **no stuck row**: a pending/retrying row seen due for more than ``STUCK_MARGIN`` seconds
  (its lease ended, or its retry time came, and no process took it) while the database was
  up and a daemon was running is stuck, unless its own webhook was failing (3+ consecutive failures:
  one probe at a time), held by the host, or not active, or waiting for an open delivery of
  its key on an ordered webhook; a parked row (behind one) is stuck if it stays parked that
  long once its key is free; no row is leased further ahead than the lease, nor parked
  further ahead than PARK.
- **in order per key** (fuzz_oracle.order_per_key): on the ORDERED webhooks, no request of
  an event arrives before the first 2xx of the previous event of its aggregate_id (in commit
  order), and the event's X-InTime-Sequence is higher; a late copy of the earlier one is
  at-least-once, not disorder.
- **no tenant waits on another**: the healthy org's events published away from global faults
  (process kills and stops, PostgreSQL restarts, backend kills, no daemon running) reach its
  endpoint within ``TENANT_BOUND`` seconds while the other org's endpoints flap and its rows
  are held; at least ``TENANT_MIN_CHECKED`` of them are checked.
- **every fault carried out**, and **graceful stops exit 0**.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dispatcher.demo.patterns import matches

from .daemon import DaemonProcess
from .dns_stub import DnsStub
from .fuzz_oracle import Report, judge
from .fuzz_receiver import FlappingReceiver, Receipt
from .fuzz_schedule import (
    DAEMONS,
    DNS_TIMEOUT,
    DNS_ZONE,
    DRAIN_TIMEOUT,
    EVENT_TYPES,
    FLAPPING,
    GLOBAL_KINDS,
    HTTP_TIMEOUT,
    KEYED,
    KEYS,
    LEASE,
    ORDERED,
    PARK,
    STUCK_MARGIN,
    WEBHOOKS,
    WEIGHTS,
    Fault,
    dns_hang_state,
    schedule,
)
from .pg import PgCluster

__all__ = ["WEBHOOKS", "FuzzRun", "Published", "Receipt", "Report"]

# --- the run --------------------------------------------------------------------------------


@dataclass
class Published:
    event_id: str
    org: str
    event_type: str
    committed: bool
    at: float  # monotonic, after the commit (or rollback) returned
    ambiguous: bool = False  # the commit's answer was lost; found afterwards
    key: str = ""  # aggregate_id: the ordering key on ORDERED webhooks


@dataclass
class Slot:
    """One of the DAEMONS process slots; a fault replaces its process."""

    index: int
    process: DaemonProcess | None = None
    started: float = 0.0


class FuzzRun:
    def __init__(self, cluster: PgCluster, dbname: str, *, seed: int, seconds: float) -> None:
        self.cluster = cluster
        self.dbname = dbname
        self.dsn = cluster.dsn(dbname)
        self.seed = seed
        self.seconds = seconds
        self.pub_rng = random.Random(seed + 1)
        # per org, the aggregate ids most events carry: a key's events go one at a time to
        # the ORDERED webhooks
        self.keys = {
            org: [str(uuid.UUID(int=self.pub_rng.getrandbits(128))) for _ in range(KEYS)]
            for org in "AB"
        }
        self.kinds = [k for k in WEIGHTS if k != "dns_hang" or dns_hang_state() == "on"]
        self.faults = schedule(seed, seconds, self.kinds)
        self.counts: Counter[str] = Counter()
        self.orgs = {"A": str(uuid.uuid4()), "B": str(uuid.uuid4())}
        self.hooks: dict[str, str] = {}  # path -> webhook id
        self.published: list[Published] = []
        self.slots = [Slot(i) for i in range(DAEMONS)]
        self.all_daemons: list[DaemonProcess] = []
        self.kills: list[tuple[int, float]] = []  # (pid, when) of each SIGKILL
        self.exit_codes: list[tuple[int, int]] = []  # (pid, code) of graceful stops
        self.global_windows: list[tuple[float, float]] = []
        self.blackouts: list[tuple[float, float]] = []  # database down or no daemon running
        self.held: list[tuple[str, float, float]] = []  # (webhook id, from, until)
        self.failing_seen: dict[str, list[float]] = defaultdict(list)
        self.disabled: set[str] = set()
        # the dispatcher's own lifecycle events (migration 0026): event id -> (org, type)
        self.lifecycle: dict[str, tuple[str, str]] = {}
        self.stuck: dict[str, str] = {}
        # the latest a row was seen still due past its due time, unexcused (s; the sampler
        # sees rows due for more than 1 s, every 0.5 s)
        self.longest_due = 0.0
        self.lease_too_long: list[str] = []
        self.holds_taken = 0
        self.harness_errors: list[str] = []  # a fault that could not be carried out
        self.due_seen: dict[tuple[str, str], float] = {}
        self.receiver = FlappingReceiver(self._pids, hang_for=HTTP_TIMEOUT + 1.5)
        self.dns = DnsStub(zone=DNS_ZONE)
        self.dns_generation = 0  # B's host names are b-<generation>.fuzz.test
        self.dns_hangs: list[tuple[float, float]] = []  # (from, until) of each dns_hang
        self.dns_attempts: dict[str, int] = {}  # org -> attempts that failed on DNS
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._no_daemon_since: float | None = None
        self.t0 = 0.0

    def _pids(self) -> list[int]:
        return [d.pid for d in self.all_daemons if d.pid is not None]

    async def _connect(self, autocommit: bool = True) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=autocommit, row_factory=dict_row, connect_timeout=5
        )

    # -- setup ---------------------------------------------------------------------------
    def hook_url(self, org: str, path: str) -> str:
        """A webhook's URL: a host name the stub DNS server resolves to the receiver's
        loopback address (org A's never hangs; org B's hang in a dns_hang fault)."""
        host = "a" if org == "A" else f"b-{self.dns_generation}"
        return f"http://{host}.{DNS_ZONE}:{self.receiver.port}{path}"

    async def setup(self) -> None:
        await self.receiver.start()
        await self.dns.start()
        async with await self._connect() as conn:
            for org, org_id in self.orgs.items():
                await conn.execute(
                    "INSERT INTO organizations (id, name, slug) VALUES (%s, %s, %s)",
                    (org_id, f"Fuzz {org}", f"fuzz-{org_id[:8]}"),
                )
                await conn.execute(
                    "INSERT INTO integration_retry_config (org_id, max_retries, retry_strategy, "
                    "base_delay_seconds, max_delay_seconds, enable_jitter) "
                    "VALUES (%s, 10, 'fixed', 1, 2, false)",
                    (org_id,),
                )
            for (org, path), (patterns, status) in WEBHOOKS.items():
                cur = await conn.execute(
                    "INSERT INTO webhooks (org_id, name, url, events, status) "
                    "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                    (self.orgs[org], path, self.hook_url(org, path), patterns, status),
                )
                row = await cur.fetchone()
                assert row is not None
                self.hooks[path] = str(row["id"])
                if path in ORDERED:
                    await conn.execute(
                        "SELECT dispatcher.set_webhook_ordered(%s, %s, true)",
                        (self.orgs[org], row["id"]),
                    )

    def daemon_env(self, slot: int, **extra: str) -> dict[str, str]:
        return {
            "DISPATCHER_DATABASE_URL": self.dsn,
            "DISPATCHER_METRICS_ADDRESS": "",
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_POLL_INTERVAL": "0.5",
            "DISPATCHER_LEASE_SECONDS": str(LEASE),
            "DISPATCHER_HTTP_TIMEOUT": str(HTTP_TIMEOUT),
            "DISPATCHER_SHUTDOWN_GRACE": "3",
            "DISPATCHER_CONCURRENCY": "32",
            "DISPATCHER_INTEGRATIONS_ENABLED": "false",
            "DISPATCHER_INSTANCE_NAME": f"fuzz-{slot}-{len(self.all_daemons)}",
            "DISPATCHER_DNS_SERVERS": self.dns.address,
            "DISPATCHER_DNS_TIMEOUT": str(DNS_TIMEOUT),
            **extra,
        }

    async def _start(self, slot: Slot, **extra: str) -> None:
        daemon = DaemonProcess(self.daemon_env(slot.index, **extra))
        self.all_daemons.append(daemon)
        daemon.start()
        slot.process = daemon
        slot.started = time.monotonic()
        with contextlib.suppress(AssertionError):  # a restart may race a database restart
            await daemon.wait_for_log("ready", timeout=30)

    async def _stop_slot(self, slot: Slot, sig: str) -> None:
        daemon = slot.process
        if daemon is None or not daemon.is_running():
            return
        slot.process = None
        if sig == "sigkill":
            pid = daemon.pid
            assert pid is not None
            self.kills.append((pid, time.monotonic()))
            daemon.kill()
            await daemon.wait_exit(10)
        else:
            ready = bool(daemon.events("ready"))
            daemon.terminate()
            code = await daemon.wait_exit(30)
            # Before "ready" no signal handler may be installed yet and nothing is claimed:
            # dying of the signal itself is what systemd expects then.
            if ready or code != -15:
                self.exit_codes.append((daemon.pid or 0, code))

    # -- the phases ------------------------------------------------------------------------
    async def execute(self) -> Report:
        started = time.monotonic()
        await self.setup()
        await asyncio.gather(*(self._start(s) for s in self.slots))
        self.t0 = time.monotonic()
        publisher = asyncio.create_task(self._publish_forever())
        sampler = asyncio.create_task(self._sample_forever())
        try:
            await self._run_faults()
            await self._heal()
            self._stop.set()
            await asyncio.wait_for(publisher, 30)
            drained = await self._drain()
            for slot in self.slots:
                await self._stop_slot(slot, "sigterm")
            with contextlib.suppress(psycopg.OperationalError):
                await self._count_dns_attempts()
        finally:
            self._stop.set()
            sampler.cancel()
            publisher.cancel()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(sampler, publisher, *self._tasks, return_exceptions=True)
            await self.receiver.close()
            self.dns.close()
        report = await self.oracle(drained)
        report.figures["wall_seconds"] = round(time.monotonic() - started, 1)
        return report

    async def _count_dns_attempts(self) -> None:
        """Per org, the attempts recorded as failed lookups (timed out or over the org's
        cap): proof that dns_hang reached the daemons, and that A's never failed."""
        async with await self._connect() as conn:
            for org, org_id in self.orgs.items():
                cur = await conn.execute(
                    "SELECT count(*) AS n FROM dispatcher.attempts WHERE org_id = %s "
                    "AND (error_message LIKE 'cannot resolve%%' "
                    "     OR error_message LIKE '%%DISPATCHER_DNS_MAX_PER_ORG%%')",
                    (org_id,),
                )
                row = await cur.fetchone()
                self.dns_attempts[org] = int(row["n"]) if row else 0

    def close(self) -> None:
        for daemon in self.all_daemons:
            daemon.close()

    def logs(self, lines: int = 30) -> str:
        return "\n".join(f"--- {d!r}\n{d.tail(lines)}" for d in self.all_daemons[-DAEMONS:])

    async def _run_faults(self) -> None:
        for fault in self.faults:
            delay = self.t0 + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self.counts[fault.kind] += 1
            print(f"fault {fault}", flush=True)
            start = time.monotonic()
            await self._inject(fault)
            # Losing the LISTEN connection delays a wake-up by at most the poll interval.
            if fault.kind in GLOBAL_KINDS and fault.args.get("which") != "listen":
                self.global_windows.append((start, time.monotonic() + 1.0))
        end = self.t0 + self.seconds
        if end > time.monotonic():
            await asyncio.sleep(end - time.monotonic())

    def _background(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.harness_errors.append(f"{task.get_coro()!r}: {task.exception()!r}")

    async def _inject(self, fault: Fault) -> None:
        a = fault.args
        if fault.kind in ("sigkill", "sigterm"):
            slot = self.slots[a["daemon"]]
            if slot.process is None:
                return  # already down: its restart is pending
            self._background(self._stop_and_restart(slot, fault.kind, a["restart_after"]))
        elif fault.kind == "pg_restart":
            self.blackouts.append((time.monotonic(), float("inf")))
            try:
                await asyncio.to_thread(self.cluster.restart, a["mode"])
            finally:
                self.blackouts[-1] = (self.blackouts[-1][0], time.monotonic() + 1.0)
        elif fault.kind == "backend_kill":
            await self._kill_backends(a["which"])
        elif fault.kind == "hold_webhook":
            self._background(self._hold(a["path"], a["seconds"], deliveries=False))
        elif fault.kind == "hold_deliveries":
            self._background(self._hold(a["path"], a["seconds"], deliveries=True))
        elif fault.kind == "statement_timeout":
            slot = self.slots[a["daemon"]]
            if slot.process is None:
                return
            self._background(self._tight_timeout(slot, a["ms"], a["seconds"]))
        elif fault.kind == "term_in_slow_claim":
            slot = self.slots[a["daemon"]]
            if slot.process is None:
                return
            self._background(self._hold(a["path"], a["seconds"], deliveries=False))
            self._background(self._term_later(slot, a["seconds"] - 1.0))
        elif fault.kind == "flap":
            self._background(self._flap(a["path"], a["steps"]))
        elif fault.kind == "dns_hang":
            await self._dns_hang(a["seconds"])

    async def _dns_hang(self, seconds: float) -> None:
        """B's host names stop answering for ``seconds``. Every process caches a name it
        resolved (aiohttp, 60 s) and keeps connections open, so a hang of a name already
        looked up would touch only processes started during it: B's webhooks are moved to
        a fresh name as well (an admin's URL edit to a host whose DNS hangs), which every
        process must look up while it hangs. A webhook row held by the host keeps its
        name (the edit waits at most 1 s for the lock)."""
        start = time.monotonic()
        self.dns.hang(f"b-*.{DNS_ZONE}", seconds)
        self.dns_hangs.append((start, start + seconds))
        self.dns_generation += 1
        try:
            async with await self._connect() as conn:
                for (org, path), _ in WEBHOOKS.items():
                    if org != "B":
                        continue
                    try:
                        async with conn.transaction():
                            await conn.execute("SET LOCAL lock_timeout = '1s'")
                            await conn.execute(
                                "UPDATE webhooks SET url = %s WHERE id = %s",
                                (self.hook_url(org, path), self.hooks[path]),
                            )
                    except psycopg.errors.LockNotAvailable:
                        print(f"dns_hang: {path} held, its name not changed", flush=True)
        except psycopg.OperationalError as exc:
            print(f"dns_hang: names not changed: {exc}", flush=True)

    async def _stop_and_restart(self, slot: Slot, sig: str, after: float) -> None:
        await self._stop_slot(slot, sig)
        self._track_no_daemon()
        await asyncio.sleep(after)
        await self._start(slot)  # what systemd does
        self._track_no_daemon()

    def _track_no_daemon(self) -> None:
        running = any(s.process is not None and s.process.is_running() for s in self.slots)
        now = time.monotonic()
        if not running and self._no_daemon_since is None:
            self._no_daemon_since = now
        elif running and self._no_daemon_since is not None:
            self.blackouts.append((self._no_daemon_since, now + 1.0))
            self.global_windows.append((self._no_daemon_since, now + 1.0))
            self._no_daemon_since = None

    async def _kill_backends(self, which: str) -> None:
        where = "application_name LIKE 'webhook-dispatcher/%%' AND datname = current_database()"
        if which == "listen":
            where += " AND query LIKE 'LISTEN%%'"
        limit = " LIMIT 1" if which == "one" else ""
        with contextlib.suppress(psycopg.OperationalError):
            async with await self._connect() as conn:
                await conn.execute(
                    f"SELECT pg_terminate_backend(pid) FROM (SELECT pid FROM pg_stat_activity "
                    f"WHERE {where} ORDER BY pid{limit}) p"
                )

    async def _hold(self, path: str, seconds: float, *, deliveries: bool) -> None:
        """A host transaction holding one webhook's row, or some of its due and leased
        delivery rows, FOR UPDATE for ``seconds``."""
        hook = self.hooks[path]
        start = time.monotonic()
        try:
            conn = await self._connect(autocommit=False)
        except psycopg.OperationalError as exc:
            print(f"hold on {path} not taken: {exc}", flush=True)
            return
        async with conn:
            try:
                await conn.execute("SET LOCAL lock_timeout = '2s'")
                if deliveries:
                    await conn.execute(
                        "SELECT id FROM webhook_deliveries WHERE webhook_id = %s "
                        "AND status IN ('pending', 'retrying') LIMIT 50 FOR UPDATE",
                        (hook,),
                    )
                else:
                    await conn.execute("SELECT id FROM webhooks WHERE id = %s FOR UPDATE", (hook,))
                self.holds_taken += 1
                await asyncio.sleep(seconds)
            except psycopg.OperationalError as exc:
                print(f"hold on {path} broken: {exc}", flush=True)
            finally:
                self.held.append((hook, start, time.monotonic() + 1.0))
                with contextlib.suppress(psycopg.Error):
                    await conn.rollback()

    async def _term_later(self, slot: Slot, after: float) -> None:
        """SIGTERM a process whose fan-out waits on a held webhook row, one second before
        the hold ends: the claim returns inside the shutdown grace."""
        await asyncio.sleep(after)
        self.global_windows.append((time.monotonic(), time.monotonic() + 1.0))
        await self._stop_and_restart(slot, "sigterm", 0.5)

    async def _tight_timeout(self, slot: Slot, ms: int, seconds: float) -> None:
        """Replace the slot's process by one with a tiny statement_timeout for a while."""
        await self._stop_slot(slot, "sigterm")
        await self._start(slot, DISPATCHER_STATEMENT_TIMEOUT_MS=str(ms))
        await asyncio.sleep(seconds)
        if slot.process is not None and slot.process.env.get("DISPATCHER_STATEMENT_TIMEOUT_MS"):
            await self._stop_slot(slot, "sigterm")
            await self._start(slot)

    async def _flap(self, path: str, steps: list[tuple[str, float]]) -> None:
        try:
            for mode, seconds in steps:
                self.receiver.modes[path] = mode
                await asyncio.sleep(seconds)
        finally:
            self.receiver.modes[path] = "ok"

    async def _heal(self) -> None:
        """End of the fault phase: every background fault finished, every endpoint
        answering, every slot running a normally configured process."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=60)
        for path in FLAPPING:
            self.receiver.modes[path] = "ok"
        for slot in self.slots:
            proc = slot.process
            if proc is not None and proc.env.get("DISPATCHER_STATEMENT_TIMEOUT_MS"):
                await self._stop_slot(slot, "sigterm")
            if slot.process is None or not slot.process.is_running():
                await self._start(slot)
        self._track_no_daemon()

    # -- publisher -------------------------------------------------------------------------
    async def _publish_forever(self) -> None:
        conn: psycopg.AsyncConnection[Any] | None = None
        while not self._stop.is_set():
            rng = self.pub_rng
            org = "A" if rng.random() < 0.35 else "B"
            event_type = rng.choice(EVENT_TYPES)
            direct = rng.random() < 0.3
            commit = rng.random() < 0.85
            aggregate = rng.choice(self.keys[org]) if rng.random() < KEYED else str(uuid.uuid4())
            token = uuid.uuid4().hex  # finds the event if the commit's answer is lost
            try:
                if conn is None or conn.closed:
                    conn = await self._connect(autocommit=False)
                await self._publish_one(conn, org, event_type, aggregate, token, direct, commit)
            except psycopg.Error:
                with contextlib.suppress(Exception):
                    if conn is not None:
                        await conn.close()
                conn = None
                if commit:  # the commit may or may not have happened
                    found = await self._lookup(token)
                    if found is not None:
                        self.published.append(
                            Published(
                                found, org, event_type, True, time.monotonic(), True, aggregate
                            )
                        )
                await asyncio.sleep(0.2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), rng.uniform(0.02, 0.12))
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _publish_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        org: str,
        event_type: str,
        aggregate: str,
        token: str,
        direct: bool,
        commit: bool,
    ) -> None:
        payload = Jsonb({"n": len(self.published), "direct": direct, "token": token})
        if direct:  # host code that inserts without publish_event (no NOTIFY)
            cur = await conn.execute(
                "INSERT INTO events (event_type, event_category, aggregate_id, payload, org_id) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING id",
                (event_type, event_type.split(".")[0], aggregate, payload, self.orgs[org]),
            )
        else:
            cur = await conn.execute(
                "SELECT publish_event(%s, %s::uuid, %s, NULL, '{}'::jsonb, %s) AS id",
                (event_type, aggregate, payload, self.orgs[org]),
            )
        row = await cur.fetchone()
        assert row is not None
        if commit:
            await conn.commit()
        else:
            await conn.rollback()
        self.published.append(
            Published(str(row["id"]), org, event_type, commit, time.monotonic(), key=aggregate)
        )

    async def _lookup(self, token: str) -> str | None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                async with await self._connect() as conn:
                    cur = await conn.execute(
                        "SELECT id FROM events WHERE org_id = ANY(%s::uuid[]) "
                        "AND payload->>'token' = %s",
                        (list(self.orgs.values()), token),
                    )
                    row = await cur.fetchone()
                    return str(row["id"]) if row else None
            except psycopg.OperationalError:
                await asyncio.sleep(0.2)
        raise AssertionError(f"could not look up event {token} after a lost commit")

    # -- sampler ---------------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        """Every 0.5 s: rows due for longer than STUCK_MARGIN, rows leased too far ahead,
        failing and disabled webhooks."""
        while True:
            try:
                async with await self._connect() as conn:
                    while True:
                        await self._sample(conn)
                        await asyncio.sleep(0.5)
            except psycopg.OperationalError:
                await asyncio.sleep(0.3)

    async def _sample(self, conn: psycopg.AsyncConnection[Any]) -> None:
        now = time.monotonic()
        cur = await conn.execute(
            "SELECT id::text, status, coalesce(consecutive_failures, 0) AS cf FROM webhooks "
            "WHERE org_id = ANY(%s::uuid[])",
            (list(self.orgs.values()),),
        )
        for w in await cur.fetchall():
            if w["cf"] >= 3:
                self.failing_seen[w["id"]].append(now)
            if w["status"] == "disabled":
                self.disabled.add(w["id"])
        # parked: a keyed delivery fan-out put behind an open one of its key (next_retry_at is
        # its token); blocked: the previous delivery of its key is open (order_free_v1)
        cur = await conn.execute(
            "SELECT d.id::text, d.webhook_id::text, d.status, "
            "coalesce(d.next_retry_at, d.created_at)::text AS due, "
            "extract(epoch FROM now() - coalesce(d.next_retry_at, d.created_at))::float AS late, "
            "coalesce(d.next_retry_at = s.parked_until, false) AS parked, "
            "coalesce(NOT dispatcher.order_free_v1(s.webhook_id, s.order_key, s.sequence), "
            "         false) AS blocked "
            "FROM webhook_deliveries d "
            "LEFT JOIN dispatcher.delivery_sequence s ON s.delivery_id = d.id "
            "WHERE d.org_id = ANY(%s::uuid[]) AND d.status IN ('pending', 'retrying') "
            "AND (coalesce(d.next_retry_at, d.created_at) < now() - interval '1 second' "
            "  OR d.next_retry_at > now() + make_interval(secs => %s) "
            "  OR d.next_retry_at = s.parked_until)",
            (list(self.orgs.values()), LEASE + 1.0),
        )
        for r in await cur.fetchall():
            if r["parked"]:
                if -r["late"] > PARK + 1.0:
                    self.lease_too_long.append(f"{r['id']} parked {-r['late']:.1f} s ahead")
            elif r["late"] < 0:
                self.lease_too_long.append(f"{r['id']} leased {-r['late']:.1f} s ahead")
                continue
            if r["blocked"]:
                continue  # waits for its key's open delivery, which is judged itself
            # Due since it became visible (a row created by a statement that waited on a
            # lock carries that statement's start as its creation time); a parked row once
            # its key is free (the recorder should have made it due).
            since = self.due_seen.setdefault((r["id"], r["due"]), now)
            if self._excused(r["webhook_id"], since, now):
                continue
            self.longest_due = max(self.longest_due, now - since if r["parked"] else r["late"])
            if now - since < STUCK_MARGIN:
                continue
            how = "parked with its key free" if r["parked"] else "seen due and untaken"
            self.stuck.setdefault(
                r["id"],
                f"delivery {r['id']} ({self._path(r['webhook_id'])}) {r['status']}, {how} "
                f"for {now - since:.1f} s at t+{now - self.t0:.1f}s with the "
                "database up and a daemon running",
            )

    def _excused(self, hook: str, since: float, now: float) -> bool:
        def overlaps(windows: list[tuple[float, float]]) -> bool:
            return any(a <= now and b >= since for a, b in windows)

        if overlaps(self.blackouts) or hook in self.disabled:
            return True
        if self._no_daemon_since is not None:
            return True
        if overlaps([(a, b) for h, a, b in self.held if h == hook]):
            return True
        return any(since - 2.5 <= t <= now for t in self.failing_seen.get(hook, []))

    def _path(self, hook: str) -> str:
        return next((p for p, h in self.hooks.items() if h == hook), hook)

    # -- drain -----------------------------------------------------------------------------
    async def _drain(self) -> bool:
        """Until every expected pair has a 2xx receipt and nothing is left to send."""
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            if not self._missing():
                with contextlib.suppress(psycopg.OperationalError):
                    async with await self._connect() as conn:
                        cur = await conn.execute(
                            "SELECT (SELECT count(*) FROM webhook_deliveries "
                            "        WHERE org_id = ANY(%s::uuid[]) "
                            "        AND status IN ('pending', 'retrying')) "
                            "     + (SELECT count(*) FROM dispatcher.outbox) AS left",
                            (list(self.orgs.values()),),
                        )
                        row = await cur.fetchone()
                        if row is not None and row["left"] == 0:
                            return True
            await asyncio.sleep(0.3)
        return False

    def expected(self) -> set[tuple[str, str]]:
        """(event id, path) pairs owed: committed events x active subscribed webhooks of
        their org that were never auto-disabled during the run."""
        owed = set()
        for e in self.published:
            if not e.committed:
                continue
            for (org, path), (patterns, status) in WEBHOOKS.items():
                if org != e.org or status != "active" or self.hooks[path] in self.disabled:
                    continue
                if any(matches(p, e.event_type) for p in patterns):
                    owed.add((e.event_id, path))
        return owed

    def _ok_pairs(self) -> set[tuple[str, str]]:
        return {
            (r.event_id, r.path)
            for r in self.receiver.receipts
            if r.status is not None and r.status < 300
        }

    def _missing(self) -> set[tuple[str, str]]:
        return self.expected() - self._ok_pairs()

    # -- oracle ----------------------------------------------------------------------------

    async def oracle(self, drained: bool) -> Report:
        await self._read_lifecycle()
        return judge(self, drained)

    async def _read_lifecycle(self) -> None:
        """The lifecycle events the dispatcher published itself during the run (a flapping
        webhook's webhook.recovered, ...): owed to the webhooks of their org they match."""
        org_of = {org_id: org for org, org_id in self.orgs.items()}
        with contextlib.suppress(psycopg.OperationalError):
            async with await self._connect() as conn:
                cur = await conn.execute(
                    "SELECT id::text, org_id::text, event_type FROM events"
                    " WHERE org_id = ANY(%s::uuid[])"
                    " AND metadata #> '{dispatcher,lifecycle}' = 'true'::jsonb",
                    (list(self.orgs.values()),),
                )
                for row in await cur.fetchall():
                    self.lifecycle[row["id"]] = (org_of[row["org_id"]], row["event_type"])
