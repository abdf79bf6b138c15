"""What else was going on when an event of `latency` was slow (issue 12, branch lat5).

Not a scenario, and never run on a working tree: like bench/loop_probe.py it edits a frozen
copy (bench/README.md, "Measuring a frozen tree") so that

- the daemon first imports a probe that writes, as JSON lines in OUT, every doorbell heard
  (`wake`), fan-out (start, end, events, the deliveries it started, nested or not), due scan,
  outcome write (the recorder's statement), every other statement by name (heartbeat, gauges,
  counters, retention...), every wait for a pool connection, every cyclic GC collection
  (gc.callbacks) and every attempt's start;
- `latency` starts a sampler process (`sample`, below) before its floor part and stops it
  after the daemon's, and writes the floor's and the daemon's events (COMMIT times,
  arrivals, the rows' stage times) to OUT;
- the sampler reads every INTERVAL (5 ms): the machine's CPU pressure (/proc/pressure/cpu
  "some": microseconds during which a runnable task waited for a CPU), the runnable count
  (/proc/stat procs_running), and schedstat (on CPU, waited for a CPU) of the bench's
  children (daemon, floor, receiver) and of the PostgreSQL server's processes by kind
  (the daemon's backends, autovacuum workers, checkpointer, walwriter...).

`report` takes each measured event's window, COMMIT returned -> arrival, and lists for the
slowest events what overlapped it: a due scan, an outcome write, other statements, a pool
wait, a GC collection, a fan-out of two events or more, another event's fan-out before its
own, autovacuum or checkpointer CPU, the machine's CPU pressure and the share of it not the
pipeline's; then, per condition, how often it overlapped the slowest 1 % / 2 % against all
events, for the daemon and, where it applies, the floor in the same run. The wrappers and the
sampler cost a little CPU: take rates and percentiles of record from runs without them.

    python -m bench.tail_probe install /tmp/snap /tmp/tail_out
    cd /tmp/snap && flock /work/wt/_bench.lock /tmp/bvenv/bin/python -m bench --nice -15 \\
        --only latency --no-ceiling
    python -m bench.tail_probe report /tmp/tail_out [--slowest 40]
"""

from __future__ import annotations

import argparse
import bisect
import glob
import itertools
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.probe_install import ATTEMPT_WRAPS, install_probe

PROBE = (
    '''"""Written by bench/tail_probe.py into a frozen copy (never committed)."""
import atexit, gc, json, os, time
import psycopg, psycopg_pool
from dispatcher import delivery as _dl, dispatch as _d, queries as _q, recorder as _r

_out = open(f"@OUT@/daemon_{os.getpid()}.jsonl", "w", buffering=1 << 20)
atexit.register(_out.flush)
_now = time.time


def _w(*a):
    _out.write(json.dumps(a) + "\\n")


_wake = _d.Dispatcher.wake
def wake(self):
    _w("wake", _now(), len(self._inflight), self._passes)
    return _wake(self)
_d.Dispatcher.wake = wake

_fo = _d.Dispatcher._fan_out
async def _fan_out(self, conn, params, events_wanted, claim):
    t0, p = _now(), self._passes
    ev, claimed = await _fo(self, conn, params, events_wanted, claim)
    _w("fan_out", t0, _now(), ev, [str(c.id) for c in claimed[:50]], p)
    return ev, claimed
_d.Dispatcher._fan_out = _fan_out

_cd = _d.Dispatcher._claim_due
async def _claim_due(self, conn, params, limit):
    t0, p = _now(), self._passes
    rows = await _cd(self, conn, params, limit)
    _w("due", t0, _now(), len(rows), p)
    return rows
_d.Dispatcher._claim_due = _claim_due

'''
    + ATTEMPT_WRAPS
    + """
_names = {}
_exe = psycopg.AsyncConnection.execute
async def execute(self, query, *a, **k):
    if not _names:
        _names.update({v: n for n, v in _q._all().items()})
    t0 = _now()
    try:
        return await _exe(self, query, *a, **k)
    finally:
        name = _names.get(query) if isinstance(query, str) else None
        _w("sql", t0, _now(), name or str(query)[:30])
psycopg.AsyncConnection.execute = execute

_get = psycopg_pool.AsyncConnectionPool.getconn
async def getconn(self, timeout=None):
    t0 = _now()
    try:
        return await _get(self, timeout)
    finally:
        _w("pool", t0, _now())
psycopg_pool.AsyncConnectionPool.getconn = getconn

_gc0 = [0.0]
def _gc(phase, info):
    if phase == "start":
        _gc0[0] = _now()
    else:
        _w("gc", _gc0[0], _now(), info.get("generation"), info.get("collected"))
gc.callbacks.append(_gc)
"""
)

MAIN = '''"""`python -m dispatcher`, with bench/tail_probe.py's probe imported first."""

import dispatcher._tail_probe  # noqa: F401
from dispatcher.cli import main

raise SystemExit(main())
'''

_EVENTS = """
        with open(f"@OUT@/@KIND@_{time.time():.3f}.json", "w") as _f:  # bench/tail_probe.py
            json.dump(
                {
                    "commits": commits,
                    "arrived": arrived,
                    "timeline": {
                        str(k): {
                            kk: vv if vv is None or isinstance(vv, (int, float)) else str(vv)
                            for kk, vv in v.items()
                        }
                        for k, v in timeline.items()
                    },
                    "event_of": @EVENT_OF@,
                },
                _f,
            )
"""
# (anchor, what goes in its place) in bench/scenarios.py; install_probe does the first
PATCHES = (
    (  # the sampler, from before the floor's part to after the daemon's
        """        floor = None
        if self.cfg.latency_floor:
            # The floor alone""",
        """        _sampler = subprocess.Popen(  # bench/tail_probe.py
            [sys.executable, "-m", "bench.tail_probe", "sample", "@OUT@",
             str(self.cluster.pg.postmaster_pid())]
        )
        floor = None
        if self.cfg.latency_floor:
            # The floor alone""",
    ),
    (
        """        sql_cost = self.d.sql_cost(db, max(len(commits), 1))
""",
        """        _sampler.send_signal(signal.SIGTERM)  # bench/tail_probe.py
        await asyncio.to_thread(_sampler.wait)
        sql_cost = self.d.sql_cost(db, max(len(commits), 1))
""",
    ),
    (
        """        arrived = _arrived(arrivals, None)
""",
        """        arrived = _arrived(arrivals, None)
"""
        + _EVENTS.replace("@KIND@", "floor").replace("@EVENT_OF@", "{}"),
    ),
)
ANCHOR = """        arrived = _arrived(arrivals, event_of)
        figures = latency_figures(commits, pub.commit_sent, arrived)
        commit_ms"""
DUMP = (
    """        arrived = _arrived(arrivals, event_of)
"""
    + _EVENTS.replace("@KIND@", "daemon").replace("@EVENT_OF@", "event_of")
    + """        figures = latency_figures(commits, pub.commit_sent, arrived)
        commit_ms"""
)


def install(snapshot: Path, out: Path, *, sampler_only: bool = False) -> None:
    """The probe, the sampler and the dumps; `sampler_only`: the daemon left as it is (its
    own `python -m dispatcher`, no wrappers): the run's CPU and latency without the probe's
    cost, the per-event report then without the daemon's side."""
    main = (snapshot / "dispatcher" / "__main__.py").read_text() if sampler_only else MAIN
    install_probe(
        snapshot,
        out,
        module="_tail_probe",
        probe=PROBE,
        main=main,
        scenario="latency",
        anchor=ANCHOR,
        dump=DUMP,
    )
    scenarios = snapshot / "bench" / "scenarios.py"
    text = scenarios.read_text()
    for anchor, new in PATCHES:
        if text.count(anchor) != 1:
            raise SystemExit(f"{scenarios}: anchor not found once (bench changed?): {anchor!r}")
        text = text.replace(anchor, new.replace("@OUT@", str(out)), 1)
    for mod in ("signal", "sys"):
        if f"\nimport {mod}\n" not in text:
            text = text.replace("\nimport asyncio\n", f"\nimport asyncio\nimport {mod}\n", 1)
    scenarios.write_text(text)
    print(f"probe installed in {snapshot}; output in {out}")


# -- the sampler ---------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def _tasks(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _kind(pid: int, parent: int) -> str:
    from bench.infra import backend_role, process_kind

    if parent != os.getppid():
        role = backend_role(pid)
        if role == "other":
            return "pg_" + process_kind(pid).replace(" ", "_")
        return f"pg_{role}"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    for word, kind in (
        ("dispatcher", "daemon"),
        ("floor_latency", "floor"),
        ("receiver", "receiver"),
        ("tail_probe", "sampler"),
    ):
        if word in cmd:
            return kind
    return "bench_child"


def sample(out: Path, postmaster: int, interval: float) -> None:
    """Until SIGTERM: every `interval` s one row [t, cpu pressure us, procs_running,
    {kind: [on-CPU ns, waited ns]} summed over the processes of that kind, and "machine":
    [the cores' busy time from /proc/stat, in ticks made ns, 0]]; written to
    OUT/sampler_<t>.json at the end. Per-process counters are cumulative: the report
    differences consecutive rows per kind (a process born or gone changes its kind's sum)."""
    os.setpriority(os.PRIO_PROCESS, 0, 0)  # not the bench's -15: it should not get first turn
    rows: list[list[Any]] = []
    kinds: dict[int, str] = {}
    stop = False

    def on_term(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    # os.pread, not a buffered file's seek(0): that re-reads nothing inside its buffer
    psi = os.open("/proc/pressure/cpu", os.O_RDONLY)
    stat = os.open("/proc/stat", os.O_RDONLY)
    bench = os.getppid()
    tick = os.sysconf("SC_CLK_TCK")
    while not stop:
        t = time.time()
        some = int(os.pread(psi, 4096, 0).split(b"\n", 1)[0].rsplit(b"total=", 1)[1])
        text = os.pread(stat, 65536, 0)
        cpu = [int(x) for x in text.split(b"\n", 1)[0].split()[1:9]]
        busy_ns = (sum(cpu) - cpu[3] - cpu[4]) * 1_000_000_000 // tick  # all but idle, iowait
        running = int(text.split(b"procs_running", 1)[1].split()[0])
        per: dict[str, list[int]] = {}
        pids = [(bench, bench)] + [(p, bench) for p in _children(bench) if p != postmaster]
        pids += [(postmaster, postmaster)] + [(p, postmaster) for p in _children(postmaster)]
        for pid, parent in pids:
            kind = kinds.get(pid)
            if kind is None and pid == bench:
                kind = kinds[pid] = "bench"
            if kind is None:
                kind = "pg_postmaster" if pid == postmaster else _kind(pid, parent)
                if pid == postmaster or kind not in ("pg_postmaster", "gone", "bench_child"):
                    kinds[pid] = kind  # just forked, a process still has its parent's title
            # every thread of the bench's children (the floor, the publisher's threads);
            # PostgreSQL's processes have one
            tasks = [pid] if parent == postmaster else _tasks(pid)
            acc = per.setdefault(kind, [0, 0])
            for tid in tasks:
                try:
                    on, waited = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:2]
                except (OSError, ValueError):
                    continue
                acc[0] += int(on)
                acc[1] += int(waited)
        per["machine"] = [busy_ns, 0]
        rows.append([t, some, running, per])
        time.sleep(max(0.0, interval - (time.time() - t)))
    (out / f"sampler_{time.time():.3f}.json").write_text(json.dumps(rows))


# -- the report ------------------------------------------------------------------------


def _overlap(spans: list[tuple[float, float]], starts: list[float], a: float, b: float) -> float:
    """Seconds of [a, b] covered by `spans` (sorted by start; `starts` their starts)."""
    total = 0.0
    i = bisect.bisect_left(starts, b)
    j = i - 1
    while j >= 0:
        s, e = spans[j]
        if e > a:
            total += max(0.0, min(e, b) - max(s, a))
        if s < a - 5.0:  # no span lasts 5 s here
            break
        j -= 1
    return total


class Sampled:
    """The sampler's rows as per-interval deltas: CPU pressure, per-kind on-CPU and waited."""

    def __init__(self, rows: list[list[Any]]) -> None:
        self.t = [r[0] for r in rows[1:]]
        self.t0 = [r[0] for r in rows[:-1]]
        self.psi = [(b[1] - a[1]) / 1e6 for a, b in itertools.pairwise(rows)]
        self.running = [b[2] for b in rows[1:]]
        self.cpu: dict[str, list[float]] = {}
        self.wait: dict[str, list[float]] = {}
        kinds = {k for r in rows for k in r[3]}
        for k in kinds:
            on, wt = [], []
            for a, b in itertools.pairwise(rows):
                x, y = a[3].get(k, [0, 0]), b[3].get(k, [0, 0])
                on.append(max(0, y[0] - x[0]) / 1e9)
                wt.append(max(0, y[1] - x[1]) / 1e9)
            self.cpu[k], self.wait[k] = on, wt

    def window(self, a: float, b: float) -> dict[str, Any]:
        """Sums over the sample intervals that overlap [a, b], each weighted by its overlap."""
        i = bisect.bisect_left(self.t, a)
        out: dict[str, Any] = {"psi": 0.0, "running_max": 0, "cpu": {}, "wait": {}}
        while i < len(self.t) and self.t0[i] < b:
            s, e = self.t0[i], self.t[i]
            w = max(0.0, min(e, b) - max(s, a)) / max(e - s, 1e-9)
            out["psi"] += self.psi[i] * w
            out["running_max"] = max(out["running_max"], self.running[i])
            for k in self.cpu:
                out["cpu"][k] = out["cpu"].get(k, 0.0) + self.cpu[k][i] * w
                out["wait"][k] = out["wait"].get(k, 0.0) + self.wait[k][i] * w
            i += 1
        return out


_OURS = ("daemon", "floor", "receiver", "pg_daemon", "pg_floor", "pg_bench", "bench_child", "bench")


def _features(w: dict[str, Any], span: float) -> dict[str, float]:
    cpu = w["cpu"]
    ours = sum(v for k, v in cpu.items() if k in _OURS)
    tracked = sum(v for k, v in cpu.items() if k != "machine")
    pg_bg = sum(
        v for k, v in cpu.items() if k.startswith("pg_") and k not in _OURS and k != "pg_other"
    )
    return {
        "pressure_ms": w["psi"] * 1000,
        "running_max": w["running_max"],
        "autovacuum_ms": (cpu.get("pg_autovacuum_worker", 0) + cpu.get("pg_autovacuum_launcher", 0))
        * 1000,
        "checkpointer_ms": cpu.get("pg_checkpointer", 0) * 1000,
        "pg_background_ms": pg_bg * 1000,
        "pipeline_cpu_ms": ours * 1000,
        "pipeline_waited_ms": sum(v for k, v in w["wait"].items() if k in _OURS) * 1000,
        # the machine's busy time (10 ms ticks: one event's figure is coarse) less every
        # process the sampler follows (itself too): other people's work
        "foreign_ms": (cpu.get("machine", 0) - tracked) * 1000,
        "span_ms": span * 1000,
    }


def _phase(starts: list[float], t: float) -> float | None:
    """Milliseconds from `t` to the nearest start in `starts` (negative: it came before)."""
    i = bisect.bisect_left(starts, t)
    near = [x for x in starts[max(0, i - 1) : i + 1]]
    return round((min(near, key=lambda x: abs(x - t)) - t) * 1000, 3) if near else None


def _daemon_rows(
    bench: dict[str, Any], log: list[list[Any]], sampled: Sampled
) -> list[dict[str, Any]]:
    commits: dict[str, float] = bench["commits"]
    arrived: dict[str, float] = bench["arrived"]
    timeline = bench["timeline"]
    delivery_of = {v: k for k, v in bench["event_of"].items()}
    by: dict[str, list[list[Any]]] = {}
    for x in log:
        by.setdefault(x[0], []).append(x)
    wakes = sorted(x[1] for x in by.get("wake", []))
    runs = {x[1]: x[2] for x in by.get("run", [])}
    fan_of = {i: x for x in by.get("fan_out", []) for i in x[4]}
    fan_outs = sorted((x[1], x[2]) for x in by.get("fan_out", []) if x[3] > 0)

    def spans(xs: list[list[Any]]) -> tuple[list[tuple[float, float]], list[float]]:
        s = sorted((x[1], x[2]) for x in xs)
        return s, [a for a, _ in s]

    due = spans(by.get("due", []))
    rec = spans(by.get("record", []))
    other_sql = spans(
        [
            x
            for x in by.get("sql", [])
            if not str(x[3]).startswith(
                ("delivery_fan_out", "delivery_claim_due", "delivery_record")
            )
            and "outcome" not in str(x[3])
        ]
    )
    other_names = sorted(
        (x[1], x[2], x[3])
        for x in by.get("sql", [])
        if not str(x[3]).startswith(("delivery_fan_out", "delivery_claim_due", "delivery_record"))
        and "outcome" not in str(x[3])
    )
    pool_waits = spans([x for x in by.get("pool", []) if x[2] - x[1] > 0.0002])
    gcs = spans(by.get("gc", []))
    fo_starts = [a for a, _ in fan_outs]
    out = []
    for event, commit in commits.items():
        d = delivery_of.get(event)
        if event not in arrived or d is None:
            continue
        a = arrived[event]
        t = timeline.get(event, {})
        f = fan_of.get(d)
        i = bisect.bisect_left(wakes, commit)
        heard = wakes[i] if i < len(wakes) else None
        run = runs.get(d)
        signed = t.get("signed")

        def ms(x: float | None, y: float | None) -> float | None:
            return None if x is None or y is None else round((y - x) * 1000, 3)

        # another event's fan-out started between COMMIT and this event's own fan-out
        before_own = 0
        if f is not None:
            j = bisect.bisect_left(fo_starts, commit)
            while j < len(fo_starts) and fo_starts[j] < f[1]:
                before_own += 1
                j += 1
        names = sorted({n for s, e, n in other_names if s < a and e > commit})
        row = {
            "event": event,
            "commit": commit,
            "total_ms": (a - commit) * 1000,
            "commit_to_heard": ms(commit, heard),
            "heard_to_fan_out": ms(heard, f[1] if f else None),
            "fan_out": ms(f[1], f[2]) if f else None,
            "fan_out_to_run": ms(f[2] if f else None, run),
            "run_to_signed": ms(run, signed),
            "signed_to_arrival": ms(signed, a),
            "fan_out_events": f[3] if f else None,
            "due_scan_phase_ms": _phase(due[1], commit),
            "nested": bool(f and f[5] > 1),
            "fan_outs_before_own": before_own,
            "due_scan_ms": _overlap(*due, commit, a) * 1000,
            # the same, over its own fan-out statement only (not a longer window's chance)
            "fan_out_beside_due_ms": _overlap(*due, f[1], f[2]) * 1000 if f else 0.0,
            "fan_out_beside_outcome_ms": _overlap(*rec, f[1], f[2]) * 1000 if f else 0.0,
            "fan_out_beside_other_sql_ms": _overlap(*other_sql, f[1], f[2]) * 1000 if f else 0.0,
            "outcome_write_ms": _overlap(*rec, commit, a) * 1000,
            "other_sql_ms": _overlap(*other_sql, commit, a) * 1000,
            "other_sql": names,
            "pool_wait_ms": _overlap(*pool_waits, commit, a) * 1000,
            "gc_ms": _overlap(*gcs, commit, a) * 1000,
            **_features(sampled.window(commit, a), a - commit),
        }
        out.append(row)
    return out


def _debiased(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Checks that a long window's chance of overlapping something does not bias.

    - due scans run every CLAIM_DUE_EVERY whatever the events do: latency by the distance
      from COMMIT to the nearest scan's start;
    - the previous event's outcome write beside this event's fan-out: only 1-event fan-outs
      whose previous event took 2-4 ms (the same local load, roughly), with and without."""

    def lat(rs: list[dict[str, Any]], key: str = "total_ms") -> list[Any]:
        t = [r[key] for r in rs if r.get(key) is not None]
        return [len(t), _pct(t, 50), _pct(t, 90), _pct(t, 99)]

    phase: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        p = r.get("due_scan_phase_ms")
        if p is None:
            continue
        k = (
            "scan starts 0-3 ms after COMMIT"
            if 0 <= p < 3
            else "scan started 0-3 ms before COMMIT"
            if -3 < p < 0
            else "scan 3-8 ms away"
            if abs(p) < 8
            else "no scan within 8 ms"
        )
        phase.setdefault(k, []).append(r)
    by_commit = sorted(rows, key=lambda r: r["commit"])
    pairs: dict[str, list[dict[str, Any]]] = {"beside an outcome write": [], "alone": []}
    for prev, r in itertools.pairwise(by_commit):
        if r.get("fan_out_events") == 1 and 2.0 <= prev["total_ms"] <= 4.0:
            beside = r.get("fan_out_beside_outcome_ms", 0) > 0
            pairs["beside an outcome write" if beside else "alone"].append(r)
    return {
        "latency_by_due_scan_phase": {k: lat(v) for k, v in sorted(phase.items())},
        "one_event_fan_out_after_a_2_4_ms_event": {
            k: {"latency": lat(v), "fan_out_ms": lat(v, "fan_out")} for k, v in pairs.items()
        },
    }


def _quiet_and_loaded(rows: list[dict[str, Any]], cores: dict[int, dict[str, float]]) -> Any:
    """Latency pooled over the seconds when other people used < 0.1 core, and >= 0.4."""
    t0 = min(r["commit"] for r in rows)
    out = {}
    for name, lo, hi in (("quiet", -1e9, 0.1), ("loaded", 0.4, 1e9)):
        secs = {k for k, v in cores.items() if lo <= v["foreign"] < hi}
        t = [r["total_ms"] for r in rows if int(r["commit"] - t0) in secs]
        out[name] = {"seconds": len(secs), "events": len(t), "p50": _pct(t, 50), "p99": _pct(t, 99)}
    return out


def _floor_rows(bench: dict[str, Any], sampled: Sampled) -> list[dict[str, Any]]:
    """Each event's latency and what the sampler saw over it (no stages)."""
    out = []
    for event, commit in bench["commits"].items():
        a = bench["arrived"].get(event)
        if a is None:
            continue
        out.append(
            {
                "event": event,
                "commit": commit,
                "total_ms": (a - commit) * 1000,
                **_features(sampled.window(commit, a), a - commit),
            }
        )
    return out


CONDITIONS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "due scan overlapped": lambda r: r.get("due_scan_ms", 0) > 0,
    "outcome write overlapped": lambda r: r.get("outcome_write_ms", 0) > 0,
    "other statement overlapped": lambda r: r.get("other_sql_ms", 0) > 0,
    "pool wait > 0.2 ms": lambda r: r.get("pool_wait_ms", 0) > 0,
    "GC collection": lambda r: r.get("gc_ms", 0) > 0,
    "fan-out of 2+ events": lambda r: (r.get("fan_out_events") or 1) > 1,
    "another fan-out before its own": lambda r: r.get("fan_outs_before_own", 0) > 0,
    "nested fan-out (beside a due scan)": lambda r: r.get("nested", False),
    "its fan-out beside a due scan": lambda r: r.get("fan_out_beside_due_ms", 0) > 0,
    "its fan-out beside an outcome write": lambda r: r.get("fan_out_beside_outcome_ms", 0) > 0,
    "its fan-out beside another statement": lambda r: r.get("fan_out_beside_other_sql_ms", 0) > 0,
    "foreign CPU > 0.5 core over its span": lambda r: r["foreign_ms"] > 0.5 * r["span_ms"],
    "autovacuum CPU": lambda r: r["autovacuum_ms"] > 0.05,
    "checkpointer CPU": lambda r: r["checkpointer_ms"] > 0.05,
    "CPU pressure > 1 ms": lambda r: r["pressure_ms"] > 1.0,
    "CPU pressure > 25 % of its span": lambda r: r["pressure_ms"] > 0.25 * r["span_ms"],
    "runnable > 2 at a sample": lambda r: r["running_max"] > 2,
}
STAGES = (
    "commit_to_heard",
    "heard_to_fan_out",
    "fan_out",
    "fan_out_to_run",
    "run_to_signed",
    "signed_to_arrival",
)


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, max(0, math.ceil(p / 100 * len(xs)) - 1))], 2)


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = sorted(rows, key=lambda r: r["total_ms"])
    n = len(rows)
    groups = {
        "all": rows,
        "fastest_50pct": rows[: n // 2],
        "slowest_2pct": rows[-max(1, n // 50) :],
        "slowest_1pct": rows[-max(1, n // 100) :],
    }
    share = {
        name: {
            g: round(sum(1 for r in rs if cond(r)) / max(len(rs), 1), 3) for g, rs in groups.items()
        }
        for name, cond in CONDITIONS.items()
        if "heard_to_fan_out" in rows[0]
        or name.startswith(("autovacuum", "checkpointer", "CPU", "runnable", "foreign"))
    }

    def latency(rs: list[dict[str, Any]]) -> list[Any]:
        t = [r["total_ms"] for r in rs]
        return [len(t), _pct(t, 50), _pct(t, 90), _pct(t, 99)]

    # events with and without each condition: [events, p50, p90, p99] ms
    split = {
        name: {
            "with": latency([r for r in rows if cond(r)]),
            "without": latency([r for r in rows if not cond(r)]),
        }
        for name, cond in CONDITIONS.items()
        if name in share
    }
    # second by second: latency, and the CPU of the pipeline, its wait and other people's
    t0 = rows and min(r["commit"] for r in rows)
    seconds: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        seconds.setdefault(int(r["commit"] - t0), []).append(r)
    med: dict[str, Any] = {}
    for g, rs in groups.items():
        keys = [
            "total_ms",
            "pressure_ms",
            "pipeline_cpu_ms",
            "pipeline_waited_ms",
            "foreign_ms",
            *[s for s in STAGES if s in rows[0]],
        ]
        med[g] = {k: _pct([r[k] for r in rs if r.get(k) is not None], 50) for k in keys}
    return {
        "events": n,
        "p50_ms": _pct([r["total_ms"] for r in rows], 50),
        "p99_ms": _pct([r["total_ms"] for r in rows], 99),
        "share_with_condition": share,
        "latency_with_and_without": split,
        "medians": med,
        "by_second": {k: latency(v) for k, v in sorted(seconds.items())},
    }


def _cores_by_second(rows: list[dict[str, Any]], sampled: Sampled) -> dict[int, dict[str, float]]:
    """Per second of the run (from its first COMMIT): cores' worth of the pipeline's CPU, of
    its processes' waits for a CPU, of other people's CPU, of PostgreSQL's background work."""
    t0 = min(r["commit"] for r in rows)
    out = {}
    for k in range(int(max(r["commit"] for r in rows) - t0) + 1):
        f = _features(sampled.window(t0 + k, t0 + k + 1), 1.0)
        out[k] = {
            "pipeline": round(f["pipeline_cpu_ms"] / 1000, 2),
            "pipeline_waiting": round(f["pipeline_waited_ms"] / 1000, 2),
            "foreign": round(f["foreign_ms"] / 1000, 2),
            "pg_background": round(f["pg_background_ms"] / 1000, 3),
        }
    return out


def _load(path: str) -> Any:
    return json.loads(Path(path).read_text())


def report(out: Path, slowest: int) -> list[dict[str, Any]]:
    results = []
    samplers = sorted(glob.glob(str(out / "sampler_*.json")))
    logs = [
        [json.loads(line) for line in open(f)]
        for f in sorted(glob.glob(str(out / "daemon_*.jsonl")))
    ]
    for f in sorted(glob.glob(str(out / "daemon_*.json"))):
        bench = _load(f)
        w0, w1 = min(bench["commits"].values()), max(bench["commits"].values())
        sampled = next(
            (Sampled(s) for s in map(_load, samplers) if s and s[0][0] <= w0 and s[-1][0] >= w1),
            None,
        )
        inside = [sum(1 for e in x if e[0] == "wake" and w0 <= e[1] <= w1) for x in logs]
        if sampled is None:
            print(f"{f}: no sampler covers its window", file=sys.stderr)
            continue
        if max(inside, default=0):
            rows = _daemon_rows(bench, logs[inside.index(max(inside))], sampled)
        else:  # --sampler-only: the machine's side alone
            rows = _floor_rows(bench, sampled)
        floors = [
            _load(g)
            for g in sorted(glob.glob(str(out / "floor_*.json")))
            if sampled.t0[0] <= min(_load(g)["commits"].values()) <= sampled.t[-1]
        ]
        one: dict[str, Any] = {"run": Path(f).name, "daemon": _summary(rows)}
        cores = _cores_by_second(rows, sampled)
        one["daemon"]["cores_by_second"] = cores
        one["daemon"]["quiet_and_loaded_seconds"] = _quiet_and_loaded(rows, cores)
        if "fan_out" in rows[0]:
            one["daemon"]["debiased"] = _debiased(rows)
        if floors:
            frows = _floor_rows(floors[-1], sampled)
            fcores = _cores_by_second(frows, sampled)
            one["floor"] = {
                **_summary(frows),
                "cores_by_second": fcores,
                "quiet_and_loaded_seconds": _quiet_and_loaded(frows, fcores),
            }
        keep = sorted(rows, key=lambda r: r["total_ms"])[-slowest:]
        one["slowest"] = [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in r.items() if k != "event"}
            for r in reversed(keep)
        ]
        results.append(one)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="put the probe into a frozen copy")
    i.add_argument("snapshot", type=Path)
    i.add_argument("out", type=Path)
    i.add_argument("--sampler-only", action="store_true", help="no probe in the daemon")
    s = sub.add_parser("sample", help="the sampler (started by the patched latency scenario)")
    s.add_argument("out", type=Path)
    s.add_argument("postmaster", type=int)
    s.add_argument("--interval", type=float, default=0.005)
    r = sub.add_parser("report", help="the slow events and what overlapped them, per run")
    r.add_argument("out", type=Path)
    r.add_argument("--slowest", type=int, default=40)
    args = ap.parse_args()
    if args.cmd == "install":
        install(args.snapshot, args.out, sampler_only=args.sampler_only)
    elif args.cmd == "sample":
        sample(args.out, args.postmaster, args.interval)
    else:
        print(json.dumps(report(args.out, args.slowest), indent=1))


if __name__ == "__main__":
    main()
