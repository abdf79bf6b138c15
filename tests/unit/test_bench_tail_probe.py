"""bench/tail_probe.py joins each `latency` event with what the daemon's probe and the sampler
saw over its window. Synthetic logs and samples: nothing is timed."""

from __future__ import annotations

from typing import Any

import pytest

from bench.tail_probe import Sampled, _daemon_rows, _overlap, _phase


def test_only_the_part_of_a_span_inside_the_window_counts() -> None:
    spans = [(0.0, 1.0), (2.0, 3.0), (2.5, 4.0)]
    starts = [s for s, _ in spans]
    assert _overlap(spans, starts, 0.5, 2.6) == pytest.approx(0.5 + 0.6 + 0.1)
    assert _overlap(spans, starts, 1.2, 1.8) == 0.0


def _row(t: float, psi_us: int, kinds: dict[str, tuple[float, float]]) -> list[Any]:
    """A sampler row: kinds as (on-CPU s, waited s), cumulative."""
    per = {k: [int(on * 1e9), int(w * 1e9)] for k, (on, w) in kinds.items()}
    return [t, psi_us, 3, per]


def test_a_window_weighs_each_sample_interval_by_its_overlap() -> None:
    rows = [
        _row(0.0, 0, {"daemon": (0, 0), "machine": (0, 0)}),
        _row(0.010, 2000, {"daemon": (0.004, 0.002), "machine": (0.012, 0)}),
        _row(0.020, 2000, {"daemon": (0.010, 0.002), "machine": (0.020, 0)}),
    ]
    s = Sampled(rows)
    w = s.window(0.005, 0.015)  # half of each interval
    assert w["psi"] == pytest.approx(0.001)
    assert w["cpu"]["daemon"] == pytest.approx(0.002 + 0.003)
    assert w["wait"]["daemon"] == pytest.approx(0.001)
    # other people's CPU: the machine's busy time less every process followed
    assert w["cpu"]["machine"] - w["cpu"]["daemon"] == pytest.approx(0.005)


def test_an_event_gets_its_stages_its_fan_out_and_what_ran_beside_it() -> None:
    bench = {
        "commits": {"e1": 10.000, "e2": 10.005},
        "arrived": {"e1": 10.004, "e2": 10.012},
        "timeline": {"e1": {"signed": 10.0032}, "e2": {"signed": 10.0105}},
        "event_of": {"d1": "e1", "d2": "e2"},
    }
    log: list[list[Any]] = [
        ["wake", 10.0003, 0, 0],
        ["fan_out", 10.0005, 10.0025, 1, ["d1"], 1],
        ["run", "d1", 10.0028],
        ["record", 10.0045, 10.0070, 1],  # e1's outcome, beside e2's fan-out
        ["wake", 10.0052, 0, 0],
        ["fan_out", 10.0055, 10.0095, 1, ["d2"], 1],
        ["due", 10.0060, 10.0080, 0, 1],
        ["run", "d2", 10.0100],
        ["gc", 10.0101, 10.0102, 0, 5],
    ]
    sampled = Sampled([_row(9.0, 0, {}), _row(11.0, 0, {})])
    rows = {r["event"]: r for r in _daemon_rows(bench, log, sampled)}
    e1, e2 = rows["e1"], rows["e2"]
    assert e1["total_ms"] == pytest.approx(4.0)
    assert e1["commit_to_heard"] == pytest.approx(0.3)
    assert e1["fan_out"] == pytest.approx(2.0)
    assert e1["fan_out_beside_outcome_ms"] == 0.0
    assert e2["fan_out_beside_outcome_ms"] == pytest.approx(1.5)
    assert e2["fan_out_beside_due_ms"] == pytest.approx(2.0)
    assert e2["due_scan_phase_ms"] == pytest.approx(1.0)  # the scan began 1 ms after COMMIT
    assert e2["gc_ms"] == pytest.approx(0.1)
    assert e2["fan_out_to_run"] == pytest.approx(0.5)


def test_the_nearest_scan_may_come_before_or_after() -> None:
    assert _phase([1.0, 1.05], 1.049) == pytest.approx(1.0)
    assert _phase([1.0, 1.05], 1.002) == pytest.approx(-2.0)
    assert _phase([], 1.0) is None
