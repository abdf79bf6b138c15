"""The benchmark's report: the floor rows compare drain1 with the floor only when both ran."""

from __future__ import annotations

from typing import Any

from bench.report import markdown

META = {
    "mode": "small",
    "timestamp": "20261130T000000Z",
    "commit": "0123456789abcdef",
    "cpus": 2,
    "loadavg_start": "0.1",
    "loadavg_end": "0.2",
    "postgres": "15",
    "event_loop": "uvloop",
}


def _floor(rate: float) -> dict[str, Any]:
    return {
        "deliveries_per_s": rate,
        "writes_per_row": 2,
        "daemon_cpu_s_per_1000": 0.14,
        "postgres_cpu_s_per_1000": 0.07,
        "receiver_cpu_s_per_1000": 0.06,
        "foreign_cpu_cores": 0.0,
    }


def _floor_row(report: str) -> str:
    return next(line for line in report.splitlines() if line.startswith("| floor | drain1's"))


def test_a_floor_run_alone_does_not_compare_it_with_a_drain1_that_did_not_run() -> None:
    res = {
        "scenarios": {"floor": _floor(4000.0)},
        "ratios": {"floor_to_ceiling": 0.6, "floor_to_paired_ceiling": 0.62},
        "meta": META,
    }
    row = _floor_row(markdown(res))
    assert "0.60x ceiling, 0.62x paired (>= 0.5)" in row
    assert "drain1" not in row.split("|")[4]
    assert "n/a" not in row


def test_a_floor_run_beside_drain1_says_how_far_drain1_is_from_it() -> None:
    res = {
        "scenarios": {"floor": _floor(4000.0)},
        "ratios": {
            "floor_to_ceiling": 0.6,
            "floor_to_paired_ceiling": 0.62,
            "drain1_to_floor_paired": 0.49,
        },
        "meta": META,
    }
    assert "; drain1 0.49x it, paired" in _floor_row(markdown(res))
