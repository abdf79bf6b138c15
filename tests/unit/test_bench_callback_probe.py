"""bench/callback_probe.py's probe tells a callback that runs on the CPU from one that holds
the loop without it (the process off the CPU), and `report`'s summary groups them by task."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.callback_probe import PROBE, _window

SCRIPT = """
import asyncio, time
import probe  # the probe first, as the daemon imports it

async def spin():  # 3 ms on the CPU in one step
    t = time.thread_time()
    while time.thread_time() - t < 0.003:
        pass

async def nap():  # 3 ms holding the loop, off the CPU
    time.sleep(0.003)

async def main():
    for _ in range(5):
        await asyncio.create_task(spin())
        await asyncio.create_task(nap())

asyncio.run(main())
"""


def test_cpu_and_wall_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "probe.py").write_text(PROBE.replace("@OUT@", str(tmp_path)))
    (tmp_path / "main.py").write_text(SCRIPT)
    t0 = time.time()
    subprocess.run([sys.executable, "main.py"], cwd=tmp_path, check=True, timeout=60)
    [dump] = [json.loads(p.read_text()) for p in tmp_path.glob("callbacks_*.json")]
    got = _window(dump["iterations"], dump["slow"], t0, time.time())
    slow = got["callbacks_over_half_ms"]
    assert slow["task spin"]["n"] == 5
    assert slow["task nap"]["n"] == 5
    assert slow["task spin"]["cpu_ms_p50_max"][0] >= 2.5
    assert slow["task nap"]["wall_ms_p50_max"][0] >= 2.5
    assert slow["task nap"]["cpu_ms_p50_max"][1] < 1.0
    assert got["iteration_wall_ms"][3] >= 3.0
