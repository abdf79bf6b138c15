"""The benchmark's small mode runs end to end, so it never rots.

Only completion and correctness are asserted (every scenario finished, every delivery row
ended `success`, the latency phase heard every event); speed is never asserted here: it
belongs to `python -m bench`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = {
    "ceiling",
    "intake",
    "drain1",
    "floor",
    "floor3",
    "drain",
    "ordered",
    "fanout",
    "slow",
    "hotquiet",
    "latency",
    "replicas",
    "cost",
}


@pytest.mark.timeout(180)  # ten scenarios on a shared machine
def test_bench_small_mode_completes_with_every_delivery_successful(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--small", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    scenarios = res["scenarios"]
    assert set(scenarios) == SCENARIOS

    drains = [
        scenarios[k]
        for k in ("drain1", "floor", "floor3", "drain", "fanout", "slow", "hotquiet", "cost")
    ]
    drains += [scenarios["replicas"]["1"], scenarios["replicas"]["2"]]
    for drain in drains:
        assert drain["statuses"] == {"success": drain["deliveries"]}
        assert drain["received"] >= drain["deliveries"]
        assert drain["exit_codes"] == [0] * drain["replicas"]
    latency = scenarios["latency"]
    assert latency["measured"] == latency["events"] > 0
    assert set(latency["statuses"]) == {"success"}
    hotquiet = scenarios["hotquiet"]
    assert hotquiet["quiet_p99_ms"] is not None  # every quiet event was heard
    assert scenarios["slow"]["cap_over_latency_per_s"] > 0
    assert scenarios["ceiling"]["http"]["errors"] == 0
    assert scenarios["intake"]["with_trigger_per_s"] > 0
    assert res["all_success"] is True
    assert "| drain |" in done.stdout  # the markdown table was printed
