"""A slow endpoint's slot turn inside the daemon during `slow` (issue 12, branch slowpath).

Not a scenario, and never run on a working tree: it edits a frozen copy (bench/README.md,
"Measuring a frozen tree") so that

- the daemon (`python -m dispatcher`) first imports a probe that stamps (``time.time()``, by
  delivery id, JSON lines in OUT) each attempt's task starting (``Attempts.deliver``), its
  request being signed (``Sender.prepare``), its answer in hand (``Sender._post`` returned),
  its done callback (``Dispatcher._done``), and which queued row that callback started;
- `slow` writes the receiver's trace of its drain (``GET /_bench/trace``) to OUT.

`report` joins them per slot turn, from an answer written by the receiver to the next
request on that slot (the row the answer's done callback started) entering the receiver's
handler: ``back`` (written -> the answer in the daemon's hand), ``to_done`` (-> the done
callback: outcome to the recorder, the task's end, one loop hop), ``to_task`` (-> the queued
row's task runs: one more hop), ``to_signed`` (-> signed), ``to_entered`` (-> the
receiver's handler: aiohttp's write, loopback, the receiver's loop), and ``outside``, their
sum. The stamps cost the daemon a little: take rates from runs without them.

    python -m bench.slot_probe install /tmp/snap /tmp/slot_out
    cd /tmp/snap && PYTHONPATH=/tmp/snap flock /work/wt/_bench.lock /tmp/bvenv/bin/python \\
        -m bench --nice -15 --only slow --repeat 3 --no-ceiling
    python -m bench.slot_probe report /tmp/slot_out
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from bench.probe_install import install_probe
from bench.slow_timeline import dist

PROBE = '''"""Written by bench/slot_probe.py into a frozen copy (never committed)."""
import atexit, json, os, time
from dispatcher import delivery as _dl, dispatch as _d, sender as _s

_out = open(f"@OUT@/daemon_{os.getpid()}.jsonl", "w", buffering=1 << 20)
atexit.register(_out.flush)
_now = time.time
_ending = []  # the delivery whose done callback is running


def _w(*a):
    _out.write(json.dumps(a) + "\\n")


_deliver = _dl.Attempts.deliver
async def deliver(self, d):
    _w("task", str(d.id), _now())
    return await _deliver(self, d)
_dl.Attempts.deliver = deliver

_prepare = _s.Sender.prepare
def prepare(self, target):
    _w("signed", target.delivery_id, _now())
    return _prepare(self, target)
_s.Sender.prepare = prepare

_post = _s.Sender._post
async def _post_(self, prepared):
    try:
        return await _post(self, prepared)
    finally:
        _w("answer", prepared.request.headers.get("X-InTime-Delivery", ""), _now())
_s.Sender._post = _post_

_done = _d.Dispatcher._done
def done(self, key, d, task):
    _w("done", str(d.id), _now())
    _ending.append(str(d.id))
    try:
        return _done(self, key, d, task)
    finally:
        _ending.pop()
_d.Dispatcher._done = done

_start = _d.Dispatcher._start
def start(self, d):
    if _ending:
        _w("next", _ending[-1], str(d.id))
    return _start(self, d)
_d.Dispatcher._start = start
'''

MAIN = '''"""`python -m dispatcher`, with bench/slot_probe.py's probe imported first."""

import dispatcher._slot_probe  # noqa: F401
from dispatcher.cli import main

raise SystemExit(main())
'''

# slow, right after the drain's timeline: keep the receiver's trace
ANCHOR = """        result["timeline"] = receiver_report(await self.receiver.trace(), cap)"""
DUMP = """        _rows = await self.receiver.trace()  # bench/slot_probe.py
        result["timeline"] = receiver_report(_rows, cap)
        with open(f"@OUT@/receiver_{time.time():.3f}.json", "w") as _f:
            json.dump(_rows, _f)"""

STAGES = ("back", "to_done", "to_task", "to_signed", "to_entered", "outside")


def install(snapshot: Path, out: Path) -> None:
    install_probe(
        snapshot,
        out,
        module="_slot_probe",
        probe=PROBE,
        main=MAIN,
        scenario="slow",
        anchor=ANCHOR,
        dump=DUMP,
    )
    print(f"probe installed in {snapshot}; output in {out}")


def slot_turns(stamps: list[list[Any]], rows: list[list[Any]]) -> dict[str, list[float]]:
    """Per slot turn (ms): each stage from an answer written to the next request entering
    the receiver. `stamps`: the probe's lines; `rows`: the receiver's trace of the drain."""
    rec = {r[6]: r for r in rows}
    at: dict[str, dict[str, float]] = defaultdict(dict)
    turns = []
    for kind, ident, value in stamps:
        if kind == "next":
            turns.append((ident, value))
        else:
            at[kind].setdefault(ident, value)
    out: dict[str, list[float]] = {k: [] for k in STAGES}
    for a, b in turns:
        try:
            points = (
                rec[a][5],
                at["answer"][a],
                at["done"][a],
                at["task"][b],
                at["signed"][b],
                rec[b][2],
            )
        except KeyError:
            continue  # not both on the slow path, or a stamp missing (the run's end)
        for name, x, y in zip(STAGES, points, points[1:], strict=False):
            out[name].append((y - x) * 1000)
        out["outside"].append((points[-1] - points[0]) * 1000)
    return out


def report(out: Path) -> list[dict[str, Any]]:
    """One entry per drain: the daemon's stamps and the receiver's trace, paired in order."""
    daemons = sorted(glob.glob(str(out / "daemon_*.jsonl")), key=os.path.getmtime)
    receivers = sorted(glob.glob(str(out / "receiver_*.json")), key=os.path.getmtime)
    runs = []
    for dfile, rfile in zip(daemons, receivers, strict=False):
        with open(dfile) as f:
            stamps = [json.loads(line) for line in f if line.strip()]
        with open(rfile) as f:
            rows = json.load(f)
        turns = slot_turns(stamps, rows)
        entry: dict[str, Any] = {"requests": len(rows), "turns": len(turns["outside"])}
        entry.update({f"{k}_ms": dist(v) for k, v in turns.items()})
        runs.append(entry)
    return runs


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("install")
    i.add_argument("snapshot", type=Path)
    i.add_argument("out", type=Path)
    r = sub.add_parser("report")
    r.add_argument("out", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "install":
        install(a.snapshot, a.out)
    else:
        print(json.dumps(report(a.out), indent=1))


if __name__ == "__main__":
    main()
