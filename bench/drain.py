"""Drain a backlog with 1..n daemons and measure it.

The backlog is already in ``dispatcher.outbox`` (published while no daemon ran). Then the
daemons start; the clock runs from the receiver's first arrival to the first poll of the
table (every 20 ms) that finds every delivery row ``success`` and the outbox empty, so the
rate counts durable outcomes, not just requests seen. While it runs, the receiver's count is
polled (every 20 ms) and each daemon's RSS sampled; CPU (utime+stime from /proc) of the
daemons, the PostgreSQL server processes and the receiver is taken at the first arrival and
at the end.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import dict_row

from bench.ceiling import run_http_ceiling
from bench.infra import (
    DAEMON_ROLE,
    BenchCluster,
    DaemonSpec,
    catches_signal,
    cpu_by_kind,
    cpu_delta,
    daemon_problems,
    machine_busy_seconds,
    proc_cpu,
    proc_peak_rss_mb,
    proc_rss_mb,
    q,
    sched_profile,
    sched_snapshot,
    start_daemon,
    steal_seconds,
    stop_daemon,
)
from bench.profile import Perf, Spy, summarize
from bench.receiver import ReceiverProcess
from dispatcher.queries import load

if TYPE_CHECKING:  # tests/ is on sys.path once bench.infra is imported
    from support.daemon import DaemonProcess

POLL = 0.02
STOP_WAIT_S = 30.0  # at most, from a daemon's spawn, until it catches SIGTERM
WAIT_SAMPLE_EVERY = 5  # polls: the daemon's backends' wait events every 100 ms


async def until_catching_sigterm(daemons: list[DaemonProcess], deadline: float) -> None:
    """Until every daemon still running catches SIGTERM, or time.time() passes ``deadline``."""
    for d in daemons:
        while d.proc.poll() is None and not catches_signal(d.proc.pid, signal.SIGTERM):
            if time.time() >= deadline:
                return
            await asyncio.sleep(POLL)


class BenchError(RuntimeError):
    """A scenario could not complete (daemon died, timeout, deliveries failed)."""


@dataclass
class Drain:
    cluster: BenchCluster
    receiver: ReceiverProcess
    spec: DaemonSpec
    timeout: float
    paired_requests: int = 0  # > 0: a short HTTP ceiling right before each drain
    perf_dir: Path | None = None  # --perf: `perf record` during each drain, files here

    floor_pid: int | None = None  # a floor pipeline running beside the drain (hotquiet)
    running: tuple[int, ...] = ()  # pids of the daemons of the drain in progress

    def kinds(self, daemons: list[int], floor: int | None = None) -> dict[str, list[int]]:
        """The processes of the benchmark by kind, for the scheduling profile."""
        out = {
            "daemon": daemons,
            "receiver": [self.receiver.pid],
            "bench": [os.getpid()],
            **({"floor": [floor]} if floor else {}),
            **self.cluster.pids_by_kind(),
        }
        return out

    def sched_window(self, daemons: list[int], floor: int | None = None) -> SchedWindow:
        return SchedWindow(lambda: self.kinds(daemons, floor))

    async def connect(self, db: str) -> psycopg.AsyncConnection[dict[str, Any]]:
        return await psycopg.AsyncConnection.connect(
            self.cluster.dsn(db), autocommit=True, row_factory=dict_row
        )

    async def run(
        self,
        db: str,
        expected: int,
        *,
        replicas: int = 1,
        track_sql: bool = False,
        profile: Path | None = None,
        during: Callable[[], Awaitable[Any]] | None = None,
        start: Callable[[str, str], Any] | None = None,
    ) -> dict[str, Any]:
        """`during`, when given, starts at the first arrival; its result is ``during``
        (the deliveries it causes must be counted in `expected`). `start(dsn, instance)`
        starts something else than the daemon (bench/floor.py), measured the same way."""
        paired_http = await self._paired_ceiling()
        paired = float(paired_http["requests_per_s"]) if paired_http else None
        await self.receiver.reset()
        async with await self.connect(db) as probe:
            await probe.execute(q("prepare_backlog"))
            self.cluster.checkpoint()
            if track_sql:
                self.cluster.set_statement_tracking(True, functions=True)
                with self.cluster.admin() as admin:
                    admin.execute(q("statements_reset"))
            counters0 = await asyncio.to_thread(self._counters, db)
            dsn = self.cluster.dsn(db, role=DAEMON_ROLE)
            starter = start or functools.partial(start_daemon, self.spec)
            daemons = [starter(dsn, f"bench-{i + 1}") for i in range(replicas)]
            try:
                t_spawn = time.time()
                self.running = tuple(d.proc.pid for d in daemons)
                spies: list[Spy] = []
                perfs: list[Perf] = []
                perf_out = self.perf_dir / f"{db}.perf.data" if self.perf_dir else None
                try:
                    result = await self._watch(
                        probe,
                        daemons,
                        expected,
                        t_spawn,
                        profile,
                        spies,
                        during,
                        perf_out,
                        perfs,
                        db,
                    )
                    result["peak_rss_mb"] = round(
                        max(proc_peak_rss_mb(d.proc.pid) for d in daemons), 1
                    )
                finally:
                    for spy in spies:
                        spy.stop()
                    for perf in perfs:
                        perf.stop()
                    # A daemon installs its SIGTERM handler once it has connected and checked the
                    # database; one still starting when a small drain ends (the second replica of
                    # `--small`) would die of the signal (exit -15), not stop cleanly. Each is
                    # signalled once it catches SIGTERM (at most STOP_WAIT_S from its spawn).
                    await until_catching_sigterm(daemons, t_spawn + STOP_WAIT_S)
                    for d in daemons:
                        d.terminate()
                    codes = [await asyncio.to_thread(stop_daemon, d, signal=False) for d in daemons]
                    if track_sql:
                        self.cluster.set_statement_tracking(False)
                result["exit_codes"] = codes
                # server counters of the drain's database per delivery (bench.sql pg_counters),
                # from the daemons' start to their exit: a backend reports its counters when
                # idle for a while or when it ends, so only the exit makes them whole
                await asyncio.sleep(0.2)
                counters1 = await asyncio.to_thread(self._counters, db)
                result["pg_counters_per_delivery"] = {
                    k: round((counters1[k] - counters0.get(k, 0.0)) / expected, 4)
                    for k in sorted(counters1)
                }
                result["daemon_warnings"] = sorted({p for d in daemons for p in daemon_problems(d)})
            finally:
                # a failed drain too (bench/run.py carries on with the next scenario): the
                # daemons' log dirs hold their info lines, in /dev/shm
                for d in daemons:
                    d.close()
            cur = await probe.execute(q("statuses"))
            result["statuses"] = {r["status"]: r["n"] for r in await cur.fetchall()}
            cur = await probe.execute(q("body_size"))
            row = await cur.fetchone()
            result["body_bytes"] = row["avg_bytes"] if row else None
        arrivals = await self.receiver.arrivals()
        result["received"] = len(arrivals["ids"])
        result["duplicates"] = len(arrivals["ids"]) - len(set(arrivals["ids"]))
        result["all_success"] = result["statuses"] == {"success": expected}
        if paired and paired_http:
            result["paired_ceiling_per_s"] = round(paired, 1)
            result["ratio_to_paired_ceiling"] = round(result["deliveries_per_s"] / paired, 3)
            # the paired ceiling's own CPU per request, seconds before the drain (the budget
            # a ratio is measured against, at the same moment: docs/performance.md, "bound")
            result["paired_ceiling_cpu_s_per_1000"] = {
                k: paired_http[f"{k}_cpu_s_per_1000"] for k in ("client", "receiver")
            }
        if track_sql:
            result["sql"] = self.sql_cost(db, expected)
        if profile is not None:
            result["profile"] = summarize(profile)
            result["profile_file"] = str(profile)
        for perf in perfs:
            result["perf_postgres"] = await asyncio.to_thread(perf.summarize, perf.pids)
            result["perf_process"] = await asyncio.to_thread(perf.summarize, perf.process_pids)
            result["perf_file"] = str(perf.out)
        return result

    async def _paired_ceiling(self) -> dict[str, Any] | None:
        """The HTTP ceiling measured just before the drain: machine noise changes over a run,
        and a ratio of two figures taken seconds apart shares most of it. Its figures, with
        the receiver's CPU per request as the `ceiling` scenario measures it."""
        if self.paired_requests <= 0:
            return None
        await self.receiver.reset()
        warmup = min(1000, self.paired_requests // 5)
        receiver_cpu = proc_cpu(self.receiver.pid)
        http: dict[str, Any] = await asyncio.to_thread(
            run_http_ceiling, self.receiver.url("/paired"), self.paired_requests, warmup
        )
        receiver_cpu = proc_cpu(self.receiver.pid) - receiver_cpu
        total = self.paired_requests + warmup
        http["receiver_cpu_s_per_1000"] = round(receiver_cpu / total * 1000, 3)
        return http

    async def _watch(
        self,
        probe: psycopg.AsyncConnection[dict[str, Any]],
        daemons: list[Any],
        expected: int,
        t_spawn: float,
        profile: Path | None,
        spies: list[Spy],
        during: Callable[[], Awaitable[Any]] | None = None,
        perf_out: Path | None = None,
        perfs: list[Perf] | None = None,
        db: str | None = None,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        pids = [d.proc.pid for d in daemons]
        first: float | None = None
        sched = self.sched_window(pids, self.floor_pid)
        cpu0: dict[str, Any] = {}
        rss: list[tuple[int, float]] = []
        stats: dict[str, Any] = {"count": 0}
        waits: dict[str, int] = {}
        polls = 0
        open_seen: list[tuple[int, float]] = []  # (received, connections open), one a poll
        side: asyncio.Task[Any] | None = None
        while stats["count"] < expected:
            self._check(daemons, deadline, f"{stats['count']}/{expected} received")
            if side is not None and side.done() and side.exception() is not None:
                raise BenchError(f"side workload failed: {side.exception()!r}")
            await asyncio.sleep(POLL)
            stats = await self.receiver.stats()
            if first is None and stats["count"]:
                first = float(stats["first"])
                cpu0 = self._cpu(pids)
                sched.start()
                if profile is not None:  # from the first delivery on: start-up is not profiled
                    spies.append(Spy(pids[0], profile))
                if perf_out is not None and perfs is not None:
                    perfs.append(Perf(perf_out))
                if during is not None:
                    side = asyncio.ensure_future(during())
            rss.append((stats["count"], sum(proc_rss_mb(p) for p in pids)))
            if first is not None:
                open_seen.append((stats["count"], float(stats.get("open", 0))))
            polls += 1
            if first is not None and polls % WAIT_SAMPLE_EVERY == 0:
                await self._sample_waits(probe, waits)
        while True:
            cur = await probe.execute(q("progress"))
            row = await cur.fetchone()
            assert row is not None
            if row["success"] >= expected and row["outbox"] == 0:
                break
            self._check(daemons, deadline, f"{row['success']}/{expected} rows success")
            await asyncio.sleep(POLL)
        t_done = time.time()
        cpu1 = self._cpu(pids)
        for perf in perfs or []:
            perf.stop()  # the drain only, not the shutdown
            perf.pids = sorted(set(cpu0["postgres"]) | set(cpu1["postgres"]))
            perf.process_pids = pids

        sched_result = sched.stop(expected)
        side_result = await side if side is not None else None
        assert first is not None
        seconds = t_done - first
        per_k = 1000 / expected

        def cpu(kind: str) -> float:
            if kind == "postgres":
                return cpu_delta(cpu0["postgres"], cpu1["postgres"])
            return float(cpu1[kind] - cpu0[kind])

        return {
            "deliveries": expected,
            "replicas": len(daemons),
            "seconds": round(seconds, 3),
            "deliveries_per_s": round(expected / seconds, 1),
            "received_per_s": round(expected / max(float(stats["last"]) - first, 1e-6), 1),
            "startup_s": round(first - t_spawn, 3),
            "record_lag_s": round(t_done - float(stats["last"]), 3),
            "daemon_cpu_s_per_1000": round(cpu("daemon") * per_k, 3),
            "postgres_cpu_s_per_1000": round(cpu("postgres") * per_k, 3),
            "receiver_cpu_s_per_1000": round(cpu("receiver") * per_k, 3),
            "daemon_cpu_share": round(cpu("daemon") / seconds / len(daemons), 3),
            # cores busy with processes outside the benchmark (other work on a shared box)
            "foreign_cpu_cores": round(
                (cpu("machine") - sum(cpu(k) for k in ("bench", "daemon", "postgres", "receiver")))
                / seconds,
                2,
            ),
            "postgres_cpu_s_per_1000_by_process": {
                kind: round(sec * per_k, 3)
                for kind, sec in sorted(cpu_by_kind(cpu0["postgres"], cpu1["postgres"]).items())
                if sec > 0
            },
            # server processes that ended in the window (autovacuum workers...): in no
            # snapshot of postgres_cpu_s_per_1000, counted here by the postmaster
            "postgres_reaped_cpu_s_per_1000": round(cpu("postgres_reaped") * per_k, 3),
            # the daemon's active backends by wait event, sampled every
            # WAIT_SAMPLE_EVERY polls (a backend on a CPU shows "running")
            "daemon_wait_samples": dict(sorted(waits.items(), key=lambda kv: -kv[1])),
            "rss_mb_at": _rss_at(rss, expected),
            "receiver_connections": _connections(stats, open_seen, expected),
            # per kind of process: CPU and run-queue wait ("waited for a CPU") per delivery
            "sched": sched_result,
            **({"during": side_result} if side is not None else {}),
        }

    def _cpu(self, pids: list[int]) -> dict[str, Any]:
        return {
            "machine": machine_busy_seconds(),
            "bench": proc_cpu(os.getpid()),
            "daemon": sum(proc_cpu(p) for p in pids),
            "postgres": self.cluster.cpu_seconds(),
            "postgres_reaped": self.cluster.reaped_cpu_seconds(),
            "receiver": proc_cpu(self.receiver.pid),
        }

    def _counters(self, db: str | None) -> dict[str, float]:
        if db is None:
            return {}
        try:
            return self.cluster.pg_counters(db)
        except psycopg.Error:
            return {}

    @staticmethod
    async def _sample_waits(
        probe: psycopg.AsyncConnection[dict[str, Any]], waits: dict[str, int]
    ) -> None:
        cur = await probe.execute(q("daemon_waits"), {"role": DAEMON_ROLE})
        for r in await cur.fetchall():
            waits[r["wait"]] = waits.get(r["wait"], 0) + int(r["n"])

    @staticmethod
    def _check(daemons: list[Any], deadline: float, progress: str) -> None:
        for d in daemons:
            if not d.is_running():
                raise BenchError(
                    f"daemon exited with {d.returncode} during the drain ({progress})\n{d.tail()}"
                )
        if time.monotonic() > deadline:
            raise BenchError(f"drain not finished within the timeout ({progress})")

    def sql_cost(self, db: str, deliveries: int, role: str = DAEMON_ROLE) -> dict[str, Any]:
        """Statements the daemon (or `role`) ran per delivery, from pg_stat_statements."""
        if not self.cluster.has_pg_stat_statements:
            return {"source": "unavailable: pg_stat_statements is not installed"}
        with self.cluster.admin() as admin:
            rows = admin.execute(q("statements_by_daemon"), {"db": db, "role": role}).fetchall()
        calls = sum(int(r["calls"]) for r in rows)
        by_name: dict[str, dict[str, float]] = {}
        for r in rows:  # one query may have several entries (e.g. parameter types differ)
            agg = by_name.setdefault(
                _name(r["query"]), {"calls": 0, "rows": 0, "total_ms": 0.0, "blocks": 0, "wal": 0}
            )
            agg["calls"] += int(r["calls"])
            agg["rows"] += int(r["rows"])
            agg["total_ms"] += float(r["total_exec_time"])
            agg["blocks"] += int(r["blocks"])
            agg["wal"] += int(r["wal_bytes"])
        top = sorted(by_name.items(), key=lambda kv: -kv[1]["total_ms"])[:6]
        return {
            "source": f"pg_stat_statements (top-level statements of the role {role})",
            "statements": calls,
            "statements_per_delivery": round(calls / deliveries, 4),
            "exec_ms_per_delivery": round(sum(r["total_exec_time"] for r in rows) / deliveries, 4),
            "blocks_per_delivery": round(sum(int(r["blocks"]) for r in rows) / deliveries, 2),
            "wal_bytes_per_delivery": round(sum(int(r["wal_bytes"]) for r in rows) / deliveries),
            "top": [
                {
                    "query": name,
                    "calls": int(a["calls"]),
                    "per_delivery": round(a["calls"] / deliveries, 4),
                    "rows_per_call": round(a["rows"] / max(a["calls"], 1), 1),
                    "mean_ms": round(a["total_ms"] / max(a["calls"], 1), 3),
                    "total_ms": round(a["total_ms"], 1),
                    # shared buffers touched (hit or read) and WAL written, per delivery
                    "blocks_per_delivery": round(a["blocks"] / deliveries, 2),
                    "wal_bytes_per_delivery": round(a["wal"] / deliveries),
                }
                for name, a in top
            ],
        }


class SchedWindow:
    """The scheduling profile of the benchmark's processes over a window: CPU and
    run-queue wait per delivery by kind of process (infra.sched_profile), plus the
    machine's steal time (a VM's vCPU not running at all)."""

    def __init__(self, kinds: Callable[[], dict[str, list[int]]]) -> None:
        self._kinds = kinds
        self._t0 = 0.0
        self._steal0 = 0.0
        self._busy0 = 0.0
        self._s0: dict[str, Any] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._steal0 = steal_seconds()
        self._busy0 = machine_busy_seconds()
        self._s0 = sched_snapshot(self._kinds())

    def stop(self, deliveries: int) -> dict[str, Any]:
        s1 = sched_snapshot(self._kinds())
        busy = machine_busy_seconds() - self._busy0
        seconds = time.monotonic() - self._t0
        out: dict[str, Any] = sched_profile(self._s0, s1, seconds, deliveries)
        ours = sum(v["cpu_cores"] for v in out.values())
        out["window"] = {
            "seconds": round(seconds, 3),
            "deliveries": deliveries,
            "steal_cores": round((steal_seconds() - self._steal0) / max(seconds, 1e-6), 3),
            # cores used by processes outside the benchmark meanwhile (other work)
            "foreign_cpu_cores": round(max(0.0, busy / max(seconds, 1e-6) - ours), 2),
        }
        return out


def _rss_at(samples: list[tuple[int, float]], expected: int) -> dict[str, float]:
    """A polled figure (the daemon RSS summed, connections open) when 10 %, 50 % and 90 %
    of the deliveries had arrived."""
    out: dict[str, float] = {}
    for pct in (10, 50, 90):
        mark = expected * pct / 100
        hit = next((mb for n, mb in samples if n >= mark), samples[-1][1] if samples else 0.0)
        out[f"{pct}%"] = round(hit, 1)
    return out


@functools.cache
def _dispatcher_queries() -> dict[str, str]:
    folder = resources.files("dispatcher").joinpath("sql")
    out: dict[str, str] = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            out.update(load(entry.read_text("utf-8")))
    # the floor's statements (bench/floor.py) run as the daemon's role too
    bench = load((Path(__file__).parent / "bench.sql").read_text("utf-8"))
    out.update({k: v for k, v in bench.items() if k.startswith("floor_")})
    return out


def _normal(text: str) -> str:
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith("--")]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


_WORD = re.compile(r"[a-z_][a-z0-9_.]*")
# words pg_stat_statements may show as a $n (constants), or not at all (in a literal)
_CONSTANT_WORDS = {"interval", "true", "false", "null"}
_MIN_WORDS = 6


def _words(text: str) -> list[str]:
    """The identifiers and keywords of a statement, in order: comments, string literals,
    parameters (%(name)s as written, $n as pg_stat_statements shows them) and constants
    left out, so a statement as written and as pg_stat_statements has it read the same."""
    text = re.sub(r"--[^\n]*", " ", text)
    text = re.sub(r"'(?:[^']|'')*'", " ", text)
    text = re.sub(r"%\(\w+\)s|\$\d+", " ", text)
    return [w for w in _WORD.findall(text.lower()) if w not in _CONSTANT_WORDS]


@functools.cache
def _query_words() -> dict[str, list[str]]:
    return {name: _words(body) for name, body in _dispatcher_queries().items()}


def _common(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _name(text: str) -> str:
    """The dispatcher query name a pg_stat_statements text belongs to, else its start: the
    one whose words it shares the longest start with (the variants of one block, such as
    delivery_fan_out and delivery_fan_out_lean, differ after a common start)."""
    words = _words(text)
    scored = [
        (_common(words, body), -abs(len(body) - len(words)), name)
        for name, body in _query_words().items()
    ]
    if scored:
        n, _, name = max(scored)
        # a short text (`SELECT $1`) only as a whole block, never by a common first word
        whole = n == len(words) == len(_query_words()[name])
        if n > 0 and (n >= _MIN_WORDS or whole):
            return name
    return _normal(text)[:60]


def _connections(
    stats: dict[str, Any], open_seen: list[tuple[int, float]], expected: int
) -> dict[str, Any]:
    """The receiver's view of the daemon's connections over the drain (from its last stats:
    the requests counted there are the drain's, the connections since the reset)."""
    count = max(int(stats.get("count", 0)), 1)
    return {
        "accepted": stats.get("connections"),
        "accepted_per_1000": round(1000 * int(stats.get("connections", 0)) / count, 2),
        "open_max": stats.get("open_max"),
        "open_polled_median": statistics.median(n for _, n in open_seen) if open_seen else None,
        "open_at": _rss_at(open_seen, expected),
        "head_bytes_per_request": round(int(stats.get("head_bytes", 0)) / count, 1),
        "body_bytes_per_request": round(int(stats.get("bytes", 0)) / count, 1),
        "close_asked": stats.get("close_asked"),
    }
