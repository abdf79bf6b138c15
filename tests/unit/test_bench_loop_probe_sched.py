"""bench/loop_probe.py splits a stretch of the daemon's wall time by the loop thread's own
scheduler counters: on a CPU (callbacks running), waiting for a CPU, and asleep (I/O), and
pools the slowest quiet events of every run."""

from __future__ import annotations

import os
import time
from typing import Any

from bench.loop_probe import Sched, _beside_scan, second_doorbells, tail_split


def _stamp(log: list[list[Any]], fd: int) -> None:
    cpu, wait, _ = os.pread(fd, 64, 0).split()  # as the probe reads it
    log.append(["s", time.time(), int(cpu), int(wait)])


def test_a_spin_is_on_the_cpu_and_a_sleep_is_neither() -> None:
    fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
    log: list[list[Any]] = []
    try:
        _stamp(log, fd)
        a = time.time()
        t = time.thread_time()
        while time.thread_time() - t < 0.03:  # 30 ms on the CPU
            pass
        b = time.time()
        _stamp(log, fd)
        time.sleep(0.03)  # 30 ms asleep
        c = time.time()
        _stamp(log, fd)
    finally:
        os.close(fd)
    sched = Sched(log)
    spin, nap = sched.split(a, b), sched.split(b, c)
    assert spin is not None and nap is not None
    assert spin["cpu"] + spin["wait"] >= 0.9 * spin["wall"]  # running or runnable
    assert nap["idle"] >= 25 and nap["cpu"] < 5
    assert sched.split(c, c + 1) is None  # past the last stamp: no guess
    assert sched.split(b, a) is None


def test_interpolated_between_stamps_and_split_adds_up() -> None:
    # 10 ms of wall between stamps: 4 ms on a CPU, 2 ms waiting, the rest asleep
    log = [["s", 100.0, 0, 0], ["s", 100.010, 4_000_000, 2_000_000]]
    got = Sched(log).split(100.0025, 100.0075)  # the middle half
    assert got is not None
    assert abs(got["wall"] - 5) < 1e-6
    assert abs(got["cpu"] - 2) < 1e-6 and abs(got["wait"] - 1) < 1e-6
    assert abs(got["idle"] - 2) < 1e-6


def test_tail_split_takes_the_slowest_and_means_each_stretch() -> None:
    rows = [
        {"total": float(t), "split": {"total": {"wall": t, "cpu": t / 2, "wait": 1, "idle": 0}}}
        for t in range(1, 201)
    ]
    one = tail_split(rows, 0.01)
    assert one["events"] == 2 and one["total_ms_min"] == 199
    assert one["total"] == {"wall": 199.5, "cpu": 99.75, "wait": 1, "idle": 0}
    assert tail_split(rows, 1.0)["events"] == 200


def test_a_second_doorbell_during_a_due_scan_is_told_apart() -> None:
    # a due scan from 1.000 to 1.030; the first doorbell's fan-out beside it (nested: passes 2)
    # from 1.002 to 1.008; a second doorbell at 1.010 waits, its event taken by the loop's next
    # pass (passes 1) at 1.031; a third rings at 1.005, while the first fan-out still runs
    scan = ["claim_due", 1.000, 1.030, 64, 62, 1]
    beside = ["fan_out", 1.002, 1.008, 1, 1, 1, ["a"], 1, 2]
    after = ["fan_out", 1.031, 1.035, 1, 1, 2, ["b", "c"], 2, 1]
    by_kind = {"claim_due": [scan], "fan_out": [beside, after]}
    assert _beside_scan(by_kind, 1.010, after) == "after the scan's doorbell fan-out"
    assert _beside_scan(by_kind, 1.005, after) == "while the scan's doorbell fan-out ran"
    assert _beside_scan(by_kind, 1.003, beside) is None  # answered beside the scan
    assert _beside_scan(by_kind, 1.040, after) is None  # no scan running when it rang
    rows: list[dict[str, Any]] = [{"total": float(t), "beside_scan": None} for t in range(1, 99)]
    rows += [
        {"total": 200.0 + t, "beside_scan": "after the scan's doorbell fan-out"} for t in (1, 2)
    ]
    got = second_doorbells(rows)
    assert got["events"] == 2 and got["of"] == 100
    assert got["in_slowest_1pct"] == 1 and got["in_slowest_5pct"] == 2
    assert got["p99_ms_without_them"] == 97.0 and got["p99_ms_all"] == 201.0
