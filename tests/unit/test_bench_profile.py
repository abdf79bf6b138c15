"""The benchmark's latency profile: the scheduler's figures per kind of process, and the
split of each event's latency into stages (bench/infra.py, bench/scenarios.py)."""

from __future__ import annotations

import os

from bench.infra import Sched, proc_sched, sched_profile
from bench.scenarios import DAEMON_STAGES, latency_figures, stages


def test_proc_sched_reads_this_process_and_zero_for_a_gone_one() -> None:
    sum(range(200_000))  # some CPU of our own
    mine = proc_sched(os.getpid())
    assert mine.cpu_s > 0
    assert mine.slices > 0
    assert proc_sched(2**22 + 12345) == Sched()


def test_sched_profile_is_per_kind_per_delivery_and_counts_new_processes_whole() -> None:
    before = {"daemon": {10: Sched(1.0, 0.5, 100)}, "receiver": {20: Sched(2.0, 0.0, 5)}}
    after = {
        "daemon": {10: Sched(1.2, 0.9, 140), 11: Sched(0.1, 0.1, 10)},  # 11 was born since
        "receiver": {20: Sched(2.0, 0.0, 5)},  # did nothing: left out
    }
    out = sched_profile(before, after, seconds=2.0, deliveries=100)
    assert set(out) == {"daemon"}
    d = out["daemon"]
    assert d["cpu_ms_per_delivery"] == 3.0  # (0.2 + 0.1) s / 100
    assert d["wait_ms_per_delivery"] == 5.0  # (0.4 + 0.1) s / 100
    assert d["waiting_cores"] == 0.25
    assert d["slices"] == 50
    assert d["wait_ms_per_slice"] == 10.0


def test_stages_put_the_tails_extra_milliseconds_in_the_stage_that_took_them() -> None:
    commits, arrived, timeline = {}, {}, {}
    for i in range(200):
        e = f"e{i}"
        commits[e] = 1000.0 + i
        late = 0.030 if i in (7, 150) else 0.0  # two events wait 30 ms before the fan-out
        written = commits[e] + 0.001 + late
        timeline[e] = {"written": written, "signed": written + 0.001, "recorded": None}
        arrived[e] = written + 0.002
    out = stages(commits, arrived, timeline, DAEMON_STAGES)
    assert out["events"] == 200
    assert out["slowest_events"] == 2
    assert out["median_all"]["commit_to_fan_out_start"] == 1.0
    assert out["median_slowest_1pct"]["commit_to_fan_out_start"] == 31.0
    assert out["tail_excess_ms"]["commit_to_fan_out_start"] == 30.0
    assert out["tail_excess_ms"]["fan_out_start_to_signed"] == 0.0
    assert out["tail_excess_ms"]["signed_to_arrival"] == 0.0
    assert out["median_slowest_1pct"]["arrival_to_recorded"] is None


def test_latency_figures_count_an_event_never_heard_as_infinitely_late() -> None:
    commits = {f"e{i}": 100.0 for i in range(10)}
    arrived = {f"e{i}": 100.0 + (i + 1) / 1000 for i in range(9)}  # e9 never arrived
    out = latency_figures(commits, dict.fromkeys(commits, 99.999), arrived)
    assert out["measured"] == 9
    assert out["undelivered_after_30s"] == 1
    assert out["p50_ms"] == 5.0
    assert out["max_ms"] is None  # infinite
    assert out["from_commit_sent_p50_ms"] == 6.0
