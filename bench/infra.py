"""The benchmark's infrastructure: a throwaway PostgreSQL, fresh databases, daemons.

The cluster is ``tests/support/pg.py``'s PgCluster (imported by path) with its fast test
settings (fsync off, full_page_writes off, synchronous_commit on) and, when the server has
it, ``pg_stat_statements`` preloaded with tracking off until a scenario switches it on.

The benchmark itself connects as the role ``bench``; the daemon as ``postgres``. So
``pg_stat_statements`` rows of role ``postgres`` are the daemon's statements only.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dispatcher.queries import parse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.daemon import DaemonProcess  # noqa: E402  (needs tests/ on sys.path, above)
from support.pg import PgCluster  # noqa: E402  (likewise)

BENCH_ROLE = "bench"
DAEMON_ROLE = "postgres"
FLOOR_ROLE = "bench_floor"  # the floor pipeline (bench/floor_latency.py)
TEMPLATE = "bench_template"


@functools.cache
def q(name: str) -> str:
    """A named block of bench/bench.sql."""
    return parse((Path(__file__).parent / "bench.sql").read_text("utf-8"))[name]


def _pkglibdir(bindir: Path) -> Path | None:
    try:
        out = subprocess.run(
            [str(bindir / "pg_config"), "--pkglibdir"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out)


class BenchCluster:
    """PgCluster + a migrated template database + the bench role."""

    def __init__(self) -> None:
        from support.pg import find_bindir

        bindir = find_bindir()
        lib = _pkglibdir(bindir)
        self.has_pg_stat_statements = lib is not None and (lib / "pg_stat_statements.so").exists()
        settings: dict[str, str] = {}
        if self.has_pg_stat_statements:
            settings["shared_preload_libraries"] = "'pg_stat_statements'"
            settings["pg_stat_statements.track"] = "none"
        self.pg = PgCluster(bindir, settings=settings)
        self.server_version = ""

    def start(self) -> None:
        self.pg.start()
        with self.pg.connect() as conn:
            conn.execute(f"CREATE ROLE {BENCH_ROLE} LOGIN SUPERUSER")
            conn.execute(f"CREATE ROLE {FLOOR_ROLE} LOGIN SUPERUSER")
            if self.has_pg_stat_statements:
                conn.execute("CREATE EXTENSION pg_stat_statements")
            row = conn.execute("SHOW server_version").fetchone()
            self.server_version = str(row[0]) if row else "?"
        self.pg.create_database(TEMPLATE)
        self._migrate(self.pg.dsn(TEMPLATE))
        with self.pg.connect() as conn:
            conn.execute(f"ALTER DATABASE {TEMPLATE} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")

    @staticmethod
    def _migrate(dsn: str) -> None:
        import asyncio

        from dispatcher.migrations import apply_migrations

        asyncio.run(apply_migrations(dsn))

    def cleanup(self) -> None:
        self.pg.cleanup()

    # -------------------------------------------------------------- databases
    def fresh_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.pg.create_database(name, template=TEMPLATE)
        return name

    def empty_database(self, prefix: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        self.pg.create_database(name)
        return name

    def drop_database(self, name: str) -> None:
        self.pg.drop_database(name)

    def dsn(self, db: str, role: str = BENCH_ROLE) -> str:
        return str(self.pg.dsn(db, user=role))

    @contextmanager
    def admin(self, db: str = "postgres") -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A sync autocommit dict_row connection as the bench role."""
        with psycopg.connect(
            self.dsn(db), autocommit=True, row_factory=dict_row, connect_timeout=5
        ) as conn:
            yield conn

    def set_statement_tracking(self, on: bool, *, functions: bool = False) -> None:
        """pg_stat_statements on or off; with `functions`, PL/pgSQL and trigger calls are
        counted too (track_functions: two clock reads per call, so only where the counters
        are used, the drains; not in the latency phase, whose tail it would touch)."""
        if not self.has_pg_stat_statements:
            return
        with self.admin() as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET pg_stat_statements.track = {}").format(
                    sql.Literal("top" if on else "none")
                )
            )
            # trigger and PL/pgSQL function calls in pg_stat_user_functions (pg_counters)
            conn.execute(
                sql.SQL("ALTER SYSTEM SET track_functions = {}").format(
                    sql.Literal("pl" if on and functions else "none")
                )
            )
            conn.execute("SELECT pg_reload_conf()")

    def checkpoint(self) -> None:
        with self.admin() as conn:
            conn.execute("CHECKPOINT")

    def pids_by_kind(self) -> dict[str, list[int]]:
        """The server's processes by what they serve: ``postgres_daemon`` (the daemon's pool
        backends), ``postgres_daemon_listener`` (its LISTEN connections), ``postgres_bench``
        (the benchmark's publishers and probes), ``postgres_floor`` (the floor pipeline's),
        and the rest by process title: ``postgres_autovacuum_worker``, ``postgres_walwriter``,
        ``postgres_checkpointer``, ``postgres_background_writer``, ``postgres_postmaster``...
        (``backend_role``, ``process_kind``)."""
        pid = self.pg.postmaster_pid()
        if pid is None:
            return {}
        listeners = self.listener_pids()
        out: dict[str, list[int]] = {}
        for p in [pid, *(c for c, parent in _parents().items() if parent == pid)]:
            role = backend_role(p)
            if role == "other":
                kind = "postgres_" + process_kind(p).replace(" ", "_")
            elif role == "daemon" and p in listeners:
                kind = "postgres_daemon_listener"
            else:
                kind = f"postgres_{role}"
            out.setdefault(kind, []).append(p)
        return out

    def listener_pids(self) -> set[int]:
        """Backends of the daemon's role whose last statement was a LISTEN: its dedicated
        doorbell connections (dispatcher/listener.py), not the pool's."""
        try:
            with self.admin() as conn:
                rows = conn.execute(q("listener_pids"), {"role": DAEMON_ROLE}).fetchall()
        except psycopg.Error:
            return set()
        return {int(r["pid"]) for r in rows}

    def reaped_cpu_seconds(self) -> float:
        """CPU of the server's processes that ended and were reaped by the postmaster
        (cutime+cstime: autovacuum workers, closed backends). A process that starts and
        ends between two snapshots of ``cpu_seconds`` is in neither; it is here."""
        pid = self.pg.postmaster_pid()
        return proc_children_cpu(pid) if pid is not None else 0.0

    def pg_counters(self, db: str) -> dict[str, float]:
        """Cumulative server counters of database `db` (bench.sql `pg_counters`): WAL,
        tuples and vacuum/analyze runs of the delivery tables, trigger function calls
        (track_functions), commits, buffers, checkpoints. Subtract two snapshots."""
        with self.admin(db) as conn:
            conn.execute("SELECT pg_stat_clear_snapshot()")
            row = conn.execute(q("pg_counters")).fetchone()
        return {k: float(v or 0) for k, v in (row or {}).items()}

    def cpu_seconds(self) -> dict[int, float]:
        """utime+stime of every server process (postmaster and its children) by pid."""
        pid = self.pg.postmaster_pid()
        if pid is None:
            return {}
        pids = [pid, *(p for p, parent in _parents().items() if parent == pid)]
        return {p: proc_cpu(p) for p in pids}


def process_kind(pid: int) -> str:
    """What a PostgreSQL server process is, from its title: 'backend', 'autovacuum worker',
    'walwriter'... ('?' when it is gone)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return "?"
    if not title.startswith("postgres:"):
        return "postmaster"
    rest = title.removeprefix("postgres:").strip()
    for kind in (
        "autovacuum worker",
        "autovacuum launcher",
        "walwriter",
        "checkpointer",
        "background writer",
        "logical replication launcher",
        "stats collector",
    ):
        if rest.startswith(kind):
            return kind
    return "backend"


def backend_role(pid: int) -> str:
    """Whose PostgreSQL backend `pid` is: 'daemon', 'bench' or 'floor' (by its role),
    else 'other' (the postmaster and the background processes)."""
    if process_kind(pid) != "backend":
        return "other"
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "other"
    words = title.removeprefix("postgres:").split()
    role = words[0] if words else ""
    return {DAEMON_ROLE: "daemon", BENCH_ROLE: "bench", FLOOR_ROLE: "floor"}.get(role, "other")


def cpu_by_kind(before: Mapping[int, float], after: Mapping[int, float]) -> dict[str, float]:
    """cpu_delta split by process_kind (seconds)."""
    out: dict[str, float] = {}
    for pid, t in after.items():
        kind = process_kind(pid)
        out[kind] = out.get(kind, 0.0) + max(0.0, t - before.get(pid, 0.0))
    return out


def cpu_delta(before: Mapping[int, float], after: Mapping[int, float]) -> float:
    """CPU used between two per-pid snapshots (processes born in between count whole)."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


# ------------------------------------------------------------------ /proc (Linux)

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/<pid>/stat after the command name (field 3 is index 0)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return text.rsplit(")", 1)[1].split()


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields:
                out[int(entry.name)] = int(fields[1])
    return out


def proc_cpu(pid: int) -> float:
    """utime+stime of one process in seconds, from /proc/<pid>/stat (0 when gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / _TICK if fields else 0.0


def proc_children_cpu(pid: int) -> float:
    """cutime+cstime of one process in seconds: its children that ended and were reaped."""
    fields = _stat_fields(pid)
    return (int(fields[13]) + int(fields[14])) / _TICK if fields else 0.0


@dataclass(frozen=True)
class Sched:
    """The scheduler's account of a process (all its threads), from
    /proc/<pid>/task/<tid>/schedstat: seconds on a CPU, seconds runnable but waiting on a
    run queue ("waited for a CPU"), and timeslices run."""

    cpu_s: float = 0.0
    wait_s: float = 0.0
    slices: int = 0

    def __sub__(self, other: Sched) -> Sched:
        return Sched(
            max(0.0, self.cpu_s - other.cpu_s),
            max(0.0, self.wait_s - other.wait_s),
            max(0, self.slices - other.slices),
        )

    def __add__(self, other: Sched) -> Sched:
        return Sched(
            self.cpu_s + other.cpu_s, self.wait_s + other.wait_s, self.slices + other.slices
        )


def proc_sched(pid: int) -> Sched:
    """Sched of one process, summed over its live threads (zeros when it is gone). A thread
    that ended takes its figures with it: the processes measured here keep theirs."""
    total = Sched()
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return total
    for task in tasks:
        try:
            on_cpu, waited, slices = (task / "schedstat").read_text().split()[:3]
        except (OSError, ValueError):
            continue
        total = total + Sched(int(on_cpu) / 1e9, int(waited) / 1e9, int(slices))
    return total


SchedSnapshot = dict[str, dict[int, Sched]]


def sched_snapshot(kinds: Mapping[str, list[int]]) -> SchedSnapshot:
    """proc_sched of every pid, by kind of process."""
    return {kind: {p: proc_sched(p) for p in pids} for kind, pids in kinds.items()}


def sched_profile(
    before: SchedSnapshot, after: SchedSnapshot, seconds: float, deliveries: int
) -> dict[str, dict[str, float]]:
    """Per kind of process, between two snapshots: CPU and run-queue wait in ms per
    delivery, the wait as cores' worth (average number of its threads runnable but not
    running), and the mean wait per timeslice in ms. Processes born in between count whole."""
    out: dict[str, dict[str, float]] = {}
    per = 1000 / max(deliveries, 1)
    for kind, procs in after.items():
        total = Sched()
        for pid, s in procs.items():
            total = total + (s - before.get(kind, {}).get(pid, Sched()))
        if not total.slices and not total.cpu_s:
            continue
        out[kind] = {
            "cpu_ms_per_delivery": round(total.cpu_s * per, 4),
            "wait_ms_per_delivery": round(total.wait_s * per, 4),
            "cpu_cores": round(total.cpu_s / max(seconds, 1e-6), 3),
            "waiting_cores": round(total.wait_s / max(seconds, 1e-6), 3),
            "wait_ms_per_slice": round(total.wait_s * 1000 / max(total.slices, 1), 4),
            "slices": total.slices,
        }
    return out


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (for the share used by others)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK  # guest is inside user


def steal_seconds() -> float:
    """CPU seconds the hypervisor took from this VM's cores since boot (/proc/stat)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    return int(first[7]) / _TICK


def _status_kb(pid: int, key: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def catches_signal(pid: int, signum: int) -> bool:
    """Whether the process has a handler installed for ``signum`` (SigCgt of
    /proc/<pid>/status); False when it is gone. Python installs none for SIGTERM until asked
    (``loop.add_signal_handler``), so this tells a daemon or floor still starting (SIGTERM
    would kill it) from one that would stop cleanly."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    except OSError:
        pass
    return False


def proc_rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS:") / 1024


def proc_peak_rss_mb(pid: int) -> float:
    """VmHWM: the kernel's exact peak resident set of the process."""
    return _status_kb(pid, "VmHWM:") / 1024


@dataclass
class DaemonSpec:
    """How daemons are started: extra DISPATCHER_* variables on top of the bench's own."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, dsn: str, instance: str) -> dict[str, str]:
        return {
            "DISPATCHER_DATABASE_URL": dsn,
            "DISPATCHER_ALLOWED_TARGET_NETWORKS": "127.0.0.0/8",
            "DISPATCHER_LOG_FORMAT": "json",
            "DISPATCHER_METRICS_ADDRESS": "",
            "DISPATCHER_INSTANCE_NAME": instance,
            **self.extra_env,
        }

    def setting_int(self, key: str) -> int:
        """A daemon setting as the daemons get it (extra env, inherited env, else default)."""
        value = self.extra_env.get(key, os.environ.get(key))
        if value is not None:
            return int(value)
        from dispatcher.settings import Settings

        default = Settings.model_fields[key.removeprefix("DISPATCHER_").lower()].default
        return int(default)

    def log_level(self) -> str:
        """The daemons' log level as they get it (extra env, inherited env, else the default)."""
        value = self.extra_env.get("DISPATCHER_LOG_LEVEL", os.environ.get("DISPATCHER_LOG_LEVEL"))
        if value is not None:
            return value
        from dispatcher.settings import Settings

        return str(Settings.model_fields["log_level"].default)

    def effective(self) -> dict[str, str]:
        """The daemon's DISPATCHER_* settings that differ from its defaults (for the report)."""
        inherited = {k: v for k, v in os.environ.items() if k.startswith("DISPATCHER_")}
        shown = {**inherited, **self.env("", "bench")}
        shown.pop("DISPATCHER_DATABASE_URL", None)
        return dict(sorted(shown.items()))


# Where the daemons' output goes: a file the bench reads once they have stopped, as journald
# would take it from a pipe. In memory when /dev/shm exists and has room for a large drain's
# info lines (~470 bytes a delivery: ~50 MB per 100,000; a container's default /dev/shm is
# 64 MB, PostgreSQL's shared memory included), so disk writeback is no part of it; else the
# temporary directory. BENCH_DAEMON_LOG_DIR chooses.
DAEMON_LOG_ROOM = 512 * 2**20


def _daemon_log_dir() -> Path | None:
    chosen = os.environ.get("BENCH_DAEMON_LOG_DIR")
    if chosen:
        return Path(chosen)
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free >= DAEMON_LOG_ROOM:
        return shm
    return None


DAEMON_LOG_DIR = _daemon_log_dir()


def start_daemon(spec: DaemonSpec, dsn: str, instance: str) -> DaemonProcess:
    """A daemon at its default log level (info: a `delivery_attempt` line per attempt) unless
    DISPATCHER_LOG_LEVEL is set (`--daemon-env DISPATCHER_LOG_LEVEL=warning`, or inherited)."""
    daemon = DaemonProcess(spec.env(dsn, instance), ("run",), cwd=ROOT, log_dir=DAEMON_LOG_DIR)
    daemon.start()
    return daemon


def start_floor(
    dsn: str, instance: str, *, webhook: str, writes: int, real: tuple[str, ...] = ()
) -> DaemonProcess:
    """bench/floor.py in its own process, started and measured like a daemon; `real`: the
    daemon's pieces it uses instead of its own (--real, the ladder's rungs)."""
    argv = [sys.executable, "-m", "bench.floor", dsn, webhook, "--writes", str(writes)]
    if real:
        argv += ["--real", ",".join(real)]
    floor = DaemonProcess({"BENCH_INSTANCE": instance}, argv=argv, cwd=ROOT)
    floor.start()
    return floor


def stop_daemon(daemon: DaemonProcess, timeout: float = 30.0, signal: bool = True) -> int | None:
    """SIGTERM (once: a second one makes it exit at once), wait; the exit code, or None
    when it had to be killed."""
    if signal:
        daemon.terminate()
    try:
        return int(daemon.wait(timeout))
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(10)
        return None


def daemon_problems(daemon: DaemonProcess, limit: int = 5) -> list[str]:
    """Warning and error log lines (event names with their count), for the report."""
    counts: dict[str, int] = {}
    for rec in daemon.json_lines():
        if rec.get("level") in ("warning", "error", "critical"):
            key = f"{rec.get('level')}:{rec.get('event')}"
            counts[key] = counts.get(key, 0) + 1
    others = [line for line in daemon.lines() if line and not line.startswith("{")]
    out = [f"{k} x{n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])][:limit]
    if others:
        out.append(f"non-JSON output: {others[-1][:200]}")
    return out


def now() -> float:
    return time.time()
