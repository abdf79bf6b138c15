"""Where a slow endpoint's request spends its time beyond the receiver's 50 ms (issue 12).

The receiver stamps every ``/slow/`` request (``GET /_bench/trace``): handler entered, body
read, sleep returned, response written, and the client's port; the bare client
(``bench.ceiling``, with ``BENCH_CLIENT_TRACE=DIR``) stamps every POST: sent, headers back,
body read, with its delivery id. All ``time.time()`` on one machine: one clock. Scenario
``slow`` reports the receiver's side for its drain (``timeline``) and its bare client
(``bare_client_timeline``); this module also runs alone:

    python -m bench.slow_timeline bare DIR [--requests 2000] [--concurrency 32]
        # the receiver and the bare client alone (no database): what `slow` pairs with
    python -m bench.slow_timeline report DIR [--concurrency 32]
        # again, from the traces a `bare` run left in DIR

Per request (ms, mean / p50 / p90): ``read`` entered -> body read; ``sleep`` body read ->
the sleep returned (50 ms and the timer's error); ``write`` -> response written; ``inside``
all three; ``outside`` on one connection, a response written -> the next request's handler
entered (the client's turnaround, loopback both ways, the receiver's loop before the
handler). With the client's trace, ``outside`` splits into ``back`` (written -> the client
has the headers) and ``out`` (the client begins its next POST -> the receiver's handler
entered), and ``turn`` (body read -> next POST on that connection). ``cycle`` =
concurrency / rate: a slot's period (``inside`` + ``outside`` + start and end of the run);
``wave``: mean run of requests whose sleeps returned within 1 ms of the one before.
From the request's own ``X-InTime-Timestamp`` (when the client signed it, ms, +0.5 ms to
centre the truncation; the daemon and the bare client both sign with
``dispatcher.request.build_request``), ``outside`` also splits into ``to_signed`` (answer
written -> the next request on that connection signed: the client's turnaround up to its
signature) and ``signed_to_entered`` (-> the receiver's handler entered: the client's HTTP
write, loopback, the receiver's loop).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import itertools
import json
import os
import statistics
import sys
from collections import defaultdict
from datetime import datetime
from typing import Any

from bench.ceiling import run_http_ceiling
from bench.infra import proc_sched
from bench.receiver import ReceiverProcess

MS = 1000.0


def dist(values: list[float]) -> str:
    if not values:
        return "-"
    v = sorted(values)

    def p(q: float) -> float:
        return v[min(len(v) - 1, int(q * len(v)))]

    return f"{statistics.fmean(v):.2f} / {p(0.5):.2f} / {p(0.9):.2f}"


def signed_at(row: list[Any]) -> float | None:
    """When the request was signed (its X-InTime-Timestamp, centred in its millisecond)."""
    if len(row) < 8 or not row[7]:
        return None
    return datetime.fromisoformat(row[7]).timestamp() + 0.0005


def receiver_report(rows: list[list[Any]], concurrency: int) -> dict[str, Any]:
    rows = [r for r in rows if "/slow/" in r[0]]
    if not rows:
        return {}
    rows.sort(key=lambda r: r[2])
    n = len(rows)
    span = max(r[5] for r in rows) - rows[0][2]
    rate = n / span
    read = [(r[3] - r[2]) * MS for r in rows]
    sleep = [(r[4] - r[3]) * MS for r in rows]
    write = [(r[5] - r[4]) * MS for r in rows]
    inside = [(r[5] - r[2]) * MS for r in rows]
    by_conn: dict[int, list[list[Any]]] = defaultdict(list)
    for r in rows:
        by_conn[r[1]].append(r)
    outside = [(b[2] - a[5]) * MS for rs in by_conn.values() for a, b in itertools.pairwise(rs)]
    pairs = [(a, b, signed_at(b)) for rs in by_conn.values() for a, b in itertools.pairwise(rs)]
    to_signed = [(s - a[5]) * MS for a, _, s in pairs if s is not None]
    signed_to_entered = [(b[2] - s) * MS for _, b, s in pairs if s is not None]
    woke = sorted(r[4] for r in rows)
    runs, run = [], 1
    for a, b in itertools.pairwise(woke):
        if b - a < 0.001:
            run += 1
        else:
            runs.append(run)
            run = 1
    runs.append(run)
    cycle = concurrency / rate * MS
    return {
        "requests": n,
        "connections": len(by_conn),
        "rate_per_s": round(rate, 1),
        "to_cap_over_latency": round(rate / (concurrency / 0.05), 3),
        "cycle_ms": round(cycle, 2),
        "inside_ms": dist(inside),
        "read_ms": dist(read),
        "sleep_ms": dist(sleep),
        "write_ms": dist(write),
        "outside_ms": dist(outside),
        "outside_implied_ms": round(cycle - statistics.fmean(inside), 2),
        "to_signed_ms": dist(to_signed),
        "signed_to_entered_ms": dist(signed_to_entered),
        "wave_mean": round(statistics.fmean(runs), 1),
        "wave_max": max(runs),
    }


def client_report(client: dict[str, Any], rows: list[list[Any]]) -> dict[str, Any]:
    """Join the client's POSTs to the receiver's requests by delivery id; a slot is a
    connection (the receiver's port for the request)."""
    rec = {r[6]: r for r in rows if "/slow/" in r[0]}
    by_conn: dict[int, list[tuple[list[float], list[Any]]]] = defaultdict(list)
    for c in client["trace"]:
        r = rec.get(c[0])
        if r is not None:
            by_conn[r[1]].append((c, r))
    back, body, turn, out, whole = [], [], [], [], []
    for pairs in by_conn.values():
        pairs.sort(key=lambda p: p[0][1])
        for i, (c, r) in enumerate(pairs):
            out.append((r[2] - c[1]) * MS)
            back.append((c[2] - r[5]) * MS)
            body.append((c[3] - c[2]) * MS)
            whole.append((c[3] - c[1]) * MS)
            if i + 1 < len(pairs):
                turn.append((pairs[i + 1][0][1] - c[3]) * MS)
    n = len(client["trace"])
    secs = client["end"] - client["start"]
    return {
        "requests": n,
        "joined": sum(len(p) for p in by_conn.values()),
        "rate_per_s": round(n / secs, 1),
        "post_ms": dist(whole),
        "out_ms": dist(out),
        "back_ms": dist(back),
        "body_ms": dist(body),
        "turn_ms": dist(turn),
    }


def report(directory: str, concurrency: int) -> dict[str, Any]:
    """`receiver_report` of DIR/receiver.json, and `client_report` of each client trace."""
    with open(os.path.join(directory, "receiver.json")) as f:
        rows = json.load(f)
    out: dict[str, Any] = {"receiver": receiver_report(rows, concurrency)}
    for path in sorted(glob.glob(os.path.join(directory, "client-*.json"))):
        with open(path) as f:
            out[os.path.basename(path)[:-5]] = client_report(json.load(f), rows)
    return out


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f)


async def bare(directory: str, requests: int, concurrency: int) -> dict[str, Any]:
    """The receiver and the traced bare client alone; the traces are left in `directory`
    (the receiver's as ``receiver.json``, without the client's warm-up round)."""
    os.environ["BENCH_CLIENT_TRACE"] = directory
    receiver = ReceiverProcess()
    receiver.start()
    try:
        sched0 = proc_sched(receiver.pid)
        figures = await asyncio.to_thread(
            run_http_ceiling, receiver.url("/slow/bare"), requests, concurrency, concurrency
        )
        sched = proc_sched(receiver.pid) - sched0
        rows = await receiver.trace()
    finally:
        await receiver.aclose()
        receiver.stop()
    path = os.path.join(directory, "receiver.json")
    await asyncio.to_thread(write_json, path, rows[concurrency:])
    total = requests + concurrency
    keep = ("requests_per_s", "client_cpu_s_per_1000", "client_runq_wait_s_per_1000")
    out = {k: round(figures[k], 3) for k in keep}
    out["receiver_cpu_s_per_1000"] = round(sched.cpu_s / total * 1000, 3)
    out["receiver_runq_wait_s_per_1000"] = round(sched.wait_s / total * 1000, 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["bare", "report"])
    p.add_argument("dir")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args(argv)
    os.makedirs(a.dir, exist_ok=True)
    out: dict[str, Any] = {}
    if a.mode == "bare":
        out["run"] = asyncio.run(bare(a.dir, a.requests, a.concurrency))
    out.update(report(a.dir, a.concurrency))
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
