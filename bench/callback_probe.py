"""How long the daemon's event loop runs each callback during `hotquiet` (issue 12, loopq).

Not a scenario, and never run on a working tree: like bench/loop_probe.py (which it installs
too, for the quiet window's COMMIT times), it edits a frozen copy so that the daemon first
imports a probe that times every callback the loop runs, in wall time and in the thread's
CPU time, and per loop iteration the callbacks' sum. `report` keeps what ran inside each
run's quiet window and prints:

- per iteration: wall and CPU ms (p50 / p90 / p99 / max), callbacks per iteration, and the
  share of the loop's wall time spent in iterations longer than 1 / 2 / 5 / 10 ms (a quiet
  event's hop waits for the rest of the iteration it lands in);
- CPU over wall of the callbacks: below 1 the process was off the CPU (preempted) while a
  callback ran, which no change of the loop's code shortens;
- the callbacks over 0.5 ms wall, grouped by what ran (a task's coroutine, or the callback's
  name), with their CPU: the long synchronous stretches, if any.

uvloop's callbacks cannot be wrapped, so the probe runs the daemon on asyncio's own loop with
its Python Task: every figure is inflated (rates and latencies from other runs), but what is
long, what is CPU and what is waiting for a CPU hold.

    python -m bench.callback_probe install /tmp/snap /tmp/probe_out
    cd /tmp/snap && flock /work/wt/_bench.lock /tmp/bvenv/bin/python -m bench --nice -15 \\
        --only hotquiet --repeat 1 --no-ceiling
    python -m bench.callback_probe report /tmp/probe_out
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
from pathlib import Path
from typing import Any

from bench import loop_probe

PROBE = '''"""Written by bench/callback_probe.py into a frozen copy (never committed)."""
import atexit, json, os, sys, time
from asyncio import base_events, events, tasks

sys.modules["uvloop"] = None  # asyncio's own loop: its Handle and Task can be wrapped
tasks.Task = tasks._PyTask
_pc, _tt, _now = time.perf_counter, time.thread_time, time.time
_it = [0.0, 0, 0.0]  # this iteration: wall s, callbacks, CPU s
_iters, _slow = [], []


def _label(h):
    cb = h._callback
    me = getattr(cb, "__self__", None)
    if isinstance(me, tasks._PyTask):
        coro, chain = me.get_coro(), []
        c = coro
        while c is not None and len(chain) < 8:
            fr = getattr(c, "cr_frame", None) or getattr(c, "gi_frame", None)
            if fr is not None:
                chain.append(f"{fr.f_code.co_qualname}:{fr.f_lineno}")
            c = getattr(c, "cr_await", None) or getattr(c, "gi_yieldfrom", None)
        # an empty chain: the task ended in this step
        return "task " + getattr(coro, "__qualname__", "?"), " > ".join(chain) or "(ended)"
    name = getattr(cb, "__qualname__", None) or repr(cb)[:80]
    proto = getattr(me, "_protocol", None)
    return name + (f"[{type(proto).__qualname__}]" if proto is not None else ""), ""


_run = events.Handle._run
def _hrun(self):
    t0, c0 = _pc(), _tt()
    _run(self)
    d, c = _pc() - t0, _tt() - c0
    _it[0] += d
    _it[1] += 1
    _it[2] += c
    if d > 0.0005:
        try:
            what, where = _label(self)
        except Exception as e:
            what, where = f"? {e!r}", ""
        _slow.append((_now(), round(d * 1000, 3), round(c * 1000, 3), what, where))
events.Handle._run = _hrun

_ro = base_events.BaseEventLoop._run_once
def _run_once(self):
    _it[0], _it[1], _it[2] = 0.0, 0, 0.0
    _ro(self)
    if _it[1]:
        _iters.append((_now(), round(_it[0] * 1000, 3), _it[1], round(_it[2] * 1000, 3)))
base_events.BaseEventLoop._run_once = _run_once


@atexit.register
def _dump():
    with open(f"@OUT@/callbacks_{os.getpid()}.json", "w") as f:
        json.dump({"iterations": _iters, "slow": _slow}, f)
'''


def install(snapshot: Path, out: Path) -> None:
    loop_probe.install(snapshot, out)
    (snapshot / "dispatcher" / "_callback_probe.py").write_text(PROBE.replace("@OUT@", str(out)))
    main = snapshot / "dispatcher" / "__main__.py"
    text = main.read_text()
    main.write_text(
        text.replace(
            "import dispatcher._loop_probe",
            "import dispatcher._callback_probe  # noqa: F401\nimport dispatcher._loop_probe",
            1,
        )
    )
    print(f"callback probe installed in {snapshot}; output in {out}")


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))], 2) if xs else 0.0


def _window(iters: list[list[Any]], slow: list[list[Any]], w0: float, w1: float) -> dict[str, Any]:
    its = [x for x in iters if w0 <= x[0] <= w1]
    wall, cpu = [x[1] for x in its], [x[3] for x in its]
    busy = sum(wall) or 1e-9
    groups: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    for t, ms, c, what, _ in slow:
        if w0 <= t <= w1:
            groups[what].append((ms, c))
    return {
        "window_s": round(w1 - w0, 2),
        "iterations": len(its),
        "loop_busy": round(busy / 1000 / max(w1 - w0, 1e-6), 3),
        "callbacks_cpu_over_wall": round(sum(cpu) / busy, 3),
        "iteration_wall_ms": [_pct(wall, p) for p in (50, 90, 99, 100)],
        "iteration_cpu_ms": [_pct(cpu, p) for p in (50, 90, 99, 100)],
        "callbacks_per_iteration": [_pct([x[2] for x in its], p) for p in (50, 90, 99, 100)],
        "wall_share_in_iterations_over_ms": {
            str(th): round(sum(x for x in wall if x > th) / busy, 3) for th in (1, 2, 5, 10)
        },
        "callbacks_over_half_ms": {
            what: {
                "n": len(v),
                "wall_ms_p50_max": [_pct([w for w, _ in v], 50), _pct([w for w, _ in v], 100)],
                "cpu_ms_p50_max": [_pct([c for _, c in v], 50), _pct([c for _, c in v], 100)],
                "cpu_ms_sum": round(sum(c for _, c in v), 1),
            }
            for what, v in sorted(groups.items(), key=lambda kv: -sum(c for _, c in kv[1]))[:12]
        },
    }


def report(out: Path) -> list[dict[str, Any]]:
    dumps = [json.loads(Path(f).read_text()) for f in glob.glob(str(out / "callbacks_*.json"))]
    results = []
    for f in sorted(glob.glob(str(out / "bench_*.json"))):
        commits = json.loads(Path(f).read_text())["commits"]
        w0, w1 = min(commits.values()), max(commits.values())
        for d in dumps:
            if any(w0 <= x[0] <= w1 for x in d["iterations"]):
                results.append({"run": Path(f).name, **_window(d["iterations"], d["slow"], w0, w1)})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install", help="put the probes into a frozen copy")
    i.add_argument("snapshot", type=Path)
    i.add_argument("out", type=Path)
    r = sub.add_parser("report", help="the loop's callbacks in each run's quiet window")
    r.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.cmd == "install":
        install(args.snapshot, args.out)
    else:
        print(json.dumps(report(args.out), indent=1))


if __name__ == "__main__":
    main()
