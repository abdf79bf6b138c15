"""The ladder's scenarios (bench/floor.py --real, issue 12) run end to end in small mode, so
they never rot; they are not part of a default run. Completion and correctness only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNGS = ("rung_request", "rung_fanout", "rung_claim", "rung_outcome")


@pytest.mark.timeout(120)
def test_bench_ladder_rungs_complete_with_every_delivery_successful(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "bench", "--small", "--no-ceiling"),
            *("--only", ",".join(RUNGS), "--output", str(out)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    res = json.loads(out.read_text())
    assert res["errors"] == {}
    assert list(res["scenarios"]) == list(RUNGS)
    for i, name in enumerate(RUNGS):
        drain = res["scenarios"][name]
        assert drain["real"] == ["request", "fanout", "claim", "outcome"][: i + 1]
        assert drain["statuses"] == {"success": drain["deliveries"]}
        assert drain["exit_codes"] == [0]
    assert "| rung_outcome |" in done.stdout
