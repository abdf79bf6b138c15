"""The quiet events' timeline inside the daemon during `hotquiet` (issue 12, branch hotq).

Not a scenario, and never run on a working tree: it edits a frozen copy (bench/README.md,
"Measuring a frozen tree") so that

- the daemon (`python -m dispatcher`) first imports a probe that wraps the loop's methods
  and writes, as JSON lines in OUT, every doorbell (`wake`), claim pass, fan-out and due
  scan (start, end, size, whether nested beside the loop's scan), every outcome statement
  of the recorder, and every attempt's start (`deliver` entered);
- `hotquiet` writes each run's quiet events (COMMIT times, delivery ids, arrivals, the
  delivery rows' `created_at`, the requests' signing times) to OUT.

`report` joins the two per quiet event: COMMIT -> doorbell heard -> fan-out sent -> the
statement's start in PostgreSQL -> fan-out returned -> attempt started -> signed ->
arrival, and prints each stage's percentiles, what the loop was running when the doorbell
rang (a due scan, a fan-out, nothing), and how busy each kind of statement kept its
connection. The wrappers cost the daemon a little CPU: take rates from runs without them.

Every record is followed by the loop thread's scheduler counters (`/proc/thread-self/
schedstat`: ns on a CPU, ns runnable but waiting for one); `report` interpolates them to split
each stretch of a quiet event's life into the loop on a CPU (running callbacks: the hot
webhook's, mostly), waiting for a CPU (the machine's scheduling), and neither (asleep in its
poll: waiting for PostgreSQL, the kernel or the receiver), as mean ms per event for all quiet
events of every run pooled, their slowest 5 % and their slowest 1 % (branch hqtail).

    python -m bench.loop_probe install /tmp/snap /tmp/probe_out
    cd /tmp/snap && flock /work/wt/_bench.lock /tmp/bvenv/bin/python -m bench --nice -15 \\
        --only hotquiet --repeat 2 --no-ceiling
    python -m bench.loop_probe report /tmp/probe_out
"""

from __future__ import annotations

import argparse
import bisect
import glob
import json
from collections import Counter
from pathlib import Path
from typing import Any

from bench.probe_install import ATTEMPT_WRAPS, install_probe

PROBE = (
    '''"""Written by bench/loop_probe.py into a frozen copy (never committed)."""
import atexit, json, os, time
from dispatcher import delivery as _dl, dispatch as _d, recorder as _r

_out = open(f"@OUT@/daemon_{os.getpid()}.jsonl", "w", buffering=1 << 20)
atexit.register(_out.flush)
_now = time.time


# the loop thread's own scheduler counters (ns on a CPU, ns runnable but waiting for one),
# stamped with every record: report splits any stretch of wall time into the loop running
# (callbacks), waiting for a CPU, and asleep in its poll (waiting for I/O)
_sched = os.open("/proc/thread-self/schedstat", os.O_RDONLY)


def _w(*a):
    c, d, _ = os.pread(_sched, 64, 0).split()
    _out.write(json.dumps(a) + "\\n" + json.dumps(("s", _now(), int(c), int(d))) + "\\n")


_wake = _d.Dispatcher.wake
def wake(self):
    _w("wake", _now(), len(self._inflight), self._passes)
    return _wake(self)
_d.Dispatcher.wake = wake

_cas = _d.Dispatcher._claim_and_start
async def _claim_and_start(self, free, outbox=True, scan=True):
    t0, p = _now(), self._passes
    try:
        return await _cas(self, free, outbox, scan)
    finally:
        _w("pass", t0, _now(), free, outbox, scan, p)
_d.Dispatcher._claim_and_start = _claim_and_start

_fo = _d.Dispatcher._fan_out
async def _fan_out(self, conn, params, events_wanted, claim):
    t0 = _now()
    ev, claimed = await _fo(self, conn, params, events_wanted, claim)
    ids = [str(c.id) for c in claimed[:50]]
    _w("fan_out", t0, _now(), events_wanted, claim, ev, ids, len(claimed), self._passes)
    return ev, claimed
_d.Dispatcher._fan_out = _fan_out

_cd = _d.Dispatcher._claim_due
async def _claim_due(self, conn, params, limit):
    t0 = _now()
    rows = await _cd(self, conn, params, limit)
    _w("claim_due", t0, _now(), limit, len(rows), self._passes)
    return rows
_d.Dispatcher._claim_due = _claim_due

_hear = _d.Dispatcher._claim_due_hearing_doorbell
async def _claim_due_hearing_doorbell(self, conn, params, limit):
    # the guard's inputs: may a doorbell during this scan be answered beside it?
    t0, p = _now(), self._passes
    stats = self._pool.get_stats()
    spare = self._s.concurrency - len(self._inflight) - limit
    try:
        return await _hear(self, conn, params, limit)
    finally:
        _w("hear", t0, _now(), spare, p, stats.get("pool_available", 0),
           stats.get("pool_size", 0), stats.get("requests_waiting", 0))
_d.Dispatcher._claim_due_hearing_doorbell = _claim_due_hearing_doorbell

'''
    + ATTEMPT_WRAPS
)

MAIN = '''"""`python -m dispatcher`, with bench/loop_probe.py's probe imported first."""

import dispatcher._loop_probe  # noqa: F401
from dispatcher.cli import main

raise SystemExit(main())
'''

# hotquiet, right after it has the delivery timeline: the anchor and what goes after it
ANCHOR = """        timeline = _with_signed(rows, _signed(arrivals, event_of))
        quiet_ms, hot_times = [], []"""
DUMP = """        timeline = _with_signed(rows, _signed(arrivals, event_of))
        with open(f"@OUT@/bench_{time.time():.3f}.json", "w") as _f:  # bench/loop_probe.py
            json.dump(
                {
                    "commits": commits,
                    "event_of": {str(k): str(v) for k, v in event_of.items()},
                    "arrivals": {"ids": list(arrivals["ids"]), "times": list(arrivals["times"])},
                    "timeline": {
                        str(k): {
                            kk: vv if vv is None or isinstance(vv, (int, float)) else str(vv)
                            for kk, vv in v.items()
                        }
                        for k, v in timeline.items()
                    },
                },
                _f,
            )
        quiet_ms, hot_times = [], []"""


def install(snapshot: Path, out: Path) -> None:
    install_probe(
        snapshot,
        out,
        module="_loop_probe",
        probe=PROBE,
        main=MAIN,
        scenario="hotquiet",
        anchor=ANCHOR,
        dump=DUMP,
    )
    print(f"probe installed in {snapshot}; output in {out}")


def _pct(xs: list[float], p: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))], 2)


class Sched:
    """The loop thread's scheduler counters over time (the probe's "s" records), interpolated:
    any stretch of the daemon's wall time split into on a CPU (the loop running callbacks,
    whoever's), waiting for a CPU (runnable, not running) and the rest (asleep in its poll:
    nothing ready, waiting for I/O)."""

    def __init__(self, log: list[list[Any]]) -> None:
        pts = sorted((x[1], x[2], x[3]) for x in log if x[0] == "s")
        self.t = [p[0] for p in pts]
        self.cpu = [p[1] / 1e6 for p in pts]  # ms
        self.wait = [p[2] / 1e6 for p in pts]

    def _at(self, xs: list[float], t: float) -> float | None:
        i = bisect.bisect_left(self.t, t)
        if i == 0 or i == len(self.t):
            return None  # outside the stamps: no figure rather than a guess
        t0, t1 = self.t[i - 1], self.t[i]
        f = (t - t0) / (t1 - t0) if t1 > t0 else 1.0
        return xs[i - 1] + f * (xs[i] - xs[i - 1])

    def split(self, a: float | None, b: float | None) -> dict[str, float] | None:
        """ms of [a, b] (time.time() seconds) on a CPU, waiting for one, and neither."""
        if a is None or b is None or b < a:
            return None
        c0, c1 = self._at(self.cpu, a), self._at(self.cpu, b)
        w0, w1 = self._at(self.wait, a), self._at(self.wait, b)
        if c0 is None or c1 is None or w0 is None or w1 is None:
            return None
        wall = (b - a) * 1000
        cpu, wait = c1 - c0, w1 - w0
        return {"wall": wall, "cpu": cpu, "wait": wait, "idle": wall - cpu - wait}


# the stretches of a quiet event's life split by Sched: (name, from, to) of _one's points
SPLITS = (
    ("commit_to_heard", "commit", "heard"),
    ("heard_to_fan_out_sent", "heard", "sent"),
    ("fan_out_statement", "sent", "returned"),
    ("fan_out_end_to_attempt", "returned", "run"),
    ("attempt_to_signed", "run", "signed"),
    ("signed_to_arrival", "signed", "arrival"),
    ("total", "commit", "arrival"),
)


def tail_split(rows: list[dict[str, Any]], share: float) -> dict[str, Any]:
    """The slowest `share` of `rows` (at least one): per stretch, the mean ms per event of wall
    time, of the loop thread on a CPU, waiting for one, and neither."""
    rows = sorted(rows, key=lambda r: r["total"])
    tail = rows[-max(1, round(len(rows) * share)) :]
    out: dict[str, Any] = {"events": len(tail), "total_ms_min": round(tail[0]["total"], 2)}
    for name, _, _ in SPLITS:
        xs = [r["split"][name] for r in tail if r["split"].get(name)]
        if xs:
            out[name] = {
                k: round(sum(x[k] for x in xs) / len(xs), 2)
                for k in ("wall", "cpu", "wait", "idle")
            }
    return out


def _beside_scan(
    by_kind: dict[str, list[list[Any]]], heard: float | None, f: list[Any] | None
) -> str | None:
    """For a doorbell heard during a due scan whose event a pass of the loop took (not a fan-out
    beside the scan): why it waited. `_claim_due_hearing_doorbell` answers one doorbell per
    scan, so a later one waits for the scan ("after the scan's doorbell fan-out"), as does one
    that rings while that fan-out still runs. None: not such a doorbell."""
    if heard is None or f is None or f[8] > 1:
        return None
    scan = next((x for x in by_kind.get("claim_due", []) if x[1] <= heard <= x[2]), None)
    if scan is None:
        return None
    fan_outs = by_kind.get("fan_out", [])
    if any(y is not f and scan[1] <= y[1] <= heard <= y[2] for y in fan_outs):
        return "while the scan's doorbell fan-out ran"
    if any(scan[1] <= y[1] and y[2] <= heard and y[8] > 1 for y in fan_outs):
        return "after the scan's doorbell fan-out"
    return "other"


def second_doorbells(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The quiet events whose doorbell came after its due scan's one doorbell fan-out: how
    many, their latency against the others', and how many of the slowest 5 % / 1 % they are."""
    rows = sorted(rows, key=lambda r: r["total"])
    second = [r["total"] for r in rows if r["beside_scan"] == "after the scan's doorbell fan-out"]
    others = [r["total"] for r in rows if r["beside_scan"] != "after the scan's doorbell fan-out"]

    def among(share: float) -> int:
        tail = rows[-max(1, round(len(rows) * share)) :]
        return sum(1 for r in tail if r["beside_scan"] == "after the scan's doorbell fan-out")

    return {
        "events": len(second),
        "of": len(rows),
        "total_p50_ms": _pct(second, 50),
        "others_total_p50_ms": _pct(others, 50),
        "in_slowest_5pct": among(0.05),
        "in_slowest_1pct": among(0.01),
        "p99_ms_all": _pct([r["total"] for r in rows], 99),
        "p99_ms_without_them": _pct(others, 99),
    }


STAGES = (
    "total",
    "commit_to_heard",
    "heard_to_fan_out_sent",
    "fan_out_sent_to_statement_start",
    "fan_out_statement",
    "fan_out_end_to_attempt",
    "attempt_to_signed",
    "signed_to_arrival",
)


def _one(bench: dict[str, Any], log: list[list[Any]]) -> dict[str, Any]:
    commits: dict[str, float] = bench["commits"]
    delivery_of = {v: k for k, v in bench["event_of"].items()}
    arrived = dict(zip(bench["arrivals"]["ids"], bench["arrivals"]["times"], strict=True))
    timeline = bench["timeline"]
    w0, w1 = min(commits.values()), max(commits.values())
    sched = Sched(log)
    wakes = sorted(x[1] for x in log if x[0] == "wake")
    runs = {x[1]: x[2] for x in log if x[0] == "run"}
    by_kind: dict[str, list[list[Any]]] = {}
    for x in log:
        by_kind.setdefault(x[0], []).append(x)
    fan_out_of = {i: x for x in by_kind.get("fan_out", []) for i in x[6]}
    statements = {}
    for kind in ("claim_due", "fan_out", "record", "pass"):
        xs = [x for x in by_kind.get(kind, []) if w0 <= x[1] <= w1]
        wall = [(x[2] - x[1]) * 1000 for x in xs]
        statements[kind] = {
            "per_s": round(len(xs) / max(w1 - w0, 1e-6), 1),
            "wall_ms_p50": _pct(wall, 50),
            "wall_ms_p90": _pct(wall, 90),
            "wall_ms_p99": _pct(wall, 99),
            "busy": round(sum(wall) / 1000 / max(w1 - w0, 1e-6), 2),
        }
    rows = []
    for event, commit in commits.items():
        d = delivery_of.get(event)
        if d is None or d not in arrived:
            continue
        t = timeline.get(event, {})
        i = bisect.bisect_left(wakes, commit)
        heard = wakes[i] if i < len(wakes) else None  # the first doorbell after COMMIT
        f = fan_out_of.get(d)
        run = runs.get(d)
        a = arrived[d]
        running = "nothing"
        if heard is not None:
            if any(x[1] <= heard <= x[2] for x in by_kind.get("claim_due", [])):
                running = "due scan"
            elif any(x[1] <= heard <= x[2] for x in by_kind.get("fan_out", [])):
                running = "fan-out"

        def ms(a_: float | None, b_: float | None) -> float | None:
            return None if a_ is None or b_ is None else (b_ - a_) * 1000

        points = {
            "commit": commit,
            "heard": heard,
            "sent": f[1] if f else None,
            "returned": f[2] if f else None,
            "run": run,
            "signed": t.get("signed"),
            "arrival": a,
        }
        rows.append(
            {
                "split": {n: sched.split(points[x], points[y]) for n, x, y in SPLITS},
                "total": (a - commit) * 1000,
                "commit_to_heard": ms(commit, heard),
                "heard_to_fan_out_sent": ms(heard, f[1] if f else None),
                "fan_out_sent_to_statement_start": ms(f[1] if f else None, t.get("written")),
                "fan_out_statement": ms(f[1], f[2]) if f else None,
                "fan_out_end_to_attempt": ms(f[2] if f else None, run),
                "attempt_to_signed": ms(run, t.get("signed")),
                "signed_to_arrival": ms(t.get("signed"), a),
                "running": running,
                "nested": bool(f and f[8] > 1),
                "beside_scan": _beside_scan(by_kind, heard, f),
            }
        )
    rows.sort(key=lambda r: r["total"])
    tail = rows[-max(2, len(rows) // 20) :]
    stages = {}
    for k in STAGES:
        v = [r[k] for r in rows if r[k] is not None]
        vt = [r[k] for r in tail if r[k] is not None]
        stages[k] = {
            "p50": _pct(v, 50),
            "p90": _pct(v, 90),
            "p99": _pct(v, 99),
            "slowest_5pct_median": _pct(vt, 50),
        }
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        g = groups.setdefault(f"{r['running']}, {'nested' if r['nested'] else 'in the loop'}", [])
        g.append(r)
    return {
        "events": len(rows),
        "rows": rows,
        "statements": statements,
        "stages_ms": stages,
        "doorbell_rang_during": dict(Counter(r["running"] for r in rows)),
        "doorbell_during_scan_not_beside": dict(
            Counter(r["beside_scan"] for r in rows if r["beside_scan"] is not None)
        ),
        "by_what_ran": {
            k: {
                "events": len(v),
                "heard_to_fan_out_sent_p50": _pct(
                    [
                        x["heard_to_fan_out_sent"]
                        for x in v
                        if x["heard_to_fan_out_sent"] is not None
                    ],
                    50,
                ),
                "heard_to_fan_out_sent_p90": _pct(
                    [
                        x["heard_to_fan_out_sent"]
                        for x in v
                        if x["heard_to_fan_out_sent"] is not None
                    ],
                    90,
                ),
                "total_p50": _pct([x["total"] for x in v], 50),
                "total_p90": _pct([x["total"] for x in v], 90),
            }
            for k, v in sorted(groups.items())
        },
    }


def report(out: Path) -> list[dict[str, Any]]:
    logs = [
        [json.loads(line) for line in open(f)]
        for f in sorted(glob.glob(str(out / "daemon_*.jsonl")))
    ]
    results = []
    for f in sorted(glob.glob(str(out / "bench_*.json"))):
        bench = json.loads(Path(f).read_text())
        w0, w1 = min(bench["commits"].values()), max(bench["commits"].values())
        # the daemon's log with the most doorbells inside this run's quiet window
        inside: list[int] = [sum(1 for e in x if e[0] == "wake" and w0 <= e[1] <= w1) for x in logs]
        most = max(inside, default=0)
        if not most:
            print(f"{f}: no daemon log covers its window")
            continue
        results.append({"run": Path(f).name, **_one(bench, logs[inside.index(most)])})
    pooled = [r for x in results for r in x.pop("rows")]
    if pooled:
        # every run's quiet events together: the loop thread's time in each stretch, for all
        # of them, the slowest 5 % and the slowest 1 %
        results.append(
            {
                "run": "all runs pooled: the loop thread during each stretch (mean ms per event)",
                "events": len(pooled),
                "all": tail_split(pooled, 1.0),
                "slowest_5pct": tail_split(pooled, 0.05),
                "slowest_1pct": tail_split(pooled, 0.01),
                "second_doorbells_during_a_scan": second_doorbells(pooled),
            }
        )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="put the probe into a frozen copy")
    i.add_argument("snapshot", type=Path)
    i.add_argument("out", type=Path)
    r = sub.add_parser("report", help="the quiet events' timeline, per run")
    r.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "install":
        install(args.snapshot, args.out)
    else:
        print(json.dumps(report(args.out), indent=1))


if __name__ == "__main__":
    main()
