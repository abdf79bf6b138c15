"""py-spy attached to a daemon during a drain, and a summary of where its CPU went.

py-spy samples the running process (``--nonblocking``, idle frames excluded, so only samples
where the daemon was on the CPU count) and writes collapsed stacks ("raw" format, one
``frame;frame;... count`` per line: feed it to speedscope or flamegraph.pl for a picture).
``summarize`` turns it into the top self frames, top inclusive frames and self time by
package. Attaching to another process needs root (or ptrace rights). Extra py-spy options
come from ``$BENCH_PYSPY_ARGS`` (e.g. ``--native`` to see into C extensions).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


class Spy:
    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        exe = py_spy()
        if exe is None:
            raise RuntimeError("py-spy is not installed: .venv/bin/pip install py-spy")
        self.out = out
        self._log = out.with_suffix(".log").open("wb")
        extra = os.environ.get("BENCH_PYSPY_ARGS", "").split()
        # --native needs to pause the process while it samples (py-spy refuses otherwise).
        mode = [] if "--native" in extra else ["--nonblocking"]
        self.proc = subprocess.Popen(
            [
                exe,
                "record",
                "-p",
                str(pid),
                "-o",
                str(out),
                "-f",
                "raw",
                "-r",
                str(rate),
                *mode,
                "--nolineno",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        """Stop sampling (SIGINT makes py-spy write its output) and wait for the file."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        if not self.out.exists():
            log = self.out.with_suffix(".log").read_text(errors="replace").strip()
            raise RuntimeError(f"py-spy wrote no profile: {log[-500:]}")


def _key(frame: str) -> tuple[str, str]:
    """(function label, package) of one raw frame such as ``post (aiohttp/client.py)``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip(), "?"
    func, file = m.group("func"), m.group("file")
    if "/" in file:
        package = file.split("/", 1)[0]
        if package == "dispatcher":
            package = file.removesuffix(".py").replace("/", ".")
    else:
        package = file.removesuffix(".py") or "?"
    return f"{func} ({file})", package


def summarize(path: Path, top: int = 15) -> dict[str, Any]:
    """Top frames by self and inclusive samples, and self samples by package, as percent."""
    self_samples: Counter[str] = Counter()
    incl_samples: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_key(f) for f in stack.split(";") if f]
        frames = [f for f in frames if not f[0].startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        leaf, package = frames[-1]
        self_samples[leaf] += count
        by_package[package] += count
        for label in {f[0] for f in frames}:
            incl_samples[label] += count

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"frame": k, "percent": round(100 * v / total, 1)} for k, v in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self": pct(self_samples) if total else [],
        "inclusive": pct(incl_samples) if total else [],
        "self_by_package": pct(by_package) if total else [],
    }


class Perf:
    """``perf record`` on every CPU during a drain (the ``--perf`` option), summarised later
    for the PostgreSQL server processes alone (their pids: other work on the machine is left
    out). Sampling only, no call graphs: self time by symbol."""

    def __init__(self, out: Path, freq: int = 999) -> None:
        exe = shutil.which("perf")
        if exe is None:
            raise RuntimeError("perf is not installed")
        self.exe = exe
        self.out = out
        self._log = out.with_suffix(".log").open("wb")
        self.pids: list[int] = []  # the PostgreSQL server processes, set when the drain ends
        self.process_pids: list[int] = []  # the daemons (or the floor)
        self.proc = subprocess.Popen(
            [exe, "record", "-a", "-F", str(freq), "-o", str(out)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()

    def summarize(self, pids: list[int], top: int = 25) -> dict[str, Any]:
        """Self samples of `pids` by symbol and by shared object, as percent of theirs."""
        if not self.out.exists() or not pids:
            return {"samples": 0, "symbols": [], "objects": []}
        argv = [self.exe, "report", "-i", str(self.out), "--stdio", "--no-children", "-q"]
        argv += ["--pid", ",".join(str(p) for p in pids), "-F", "overhead,sample,dso,sym"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        by_sym: list[dict[str, Any]] = []
        by_dso: Counter[str] = Counter()
        total = 0
        for line in done.stdout.splitlines():
            parts = line.split(None, 3)
            if len(parts) < 4 or not parts[0].endswith("%"):
                continue
            samples, dso, sym = int(parts[1]), parts[2], parts[3].strip()
            total += samples
            by_dso[dso] += samples
            by_sym.append(
                {
                    "symbol": sym.removeprefix("[.] ").removeprefix("[k] "),
                    "dso": dso,
                    "samples": samples,
                }
            )
        for s in by_sym:
            s["percent"] = round(100 * s["samples"] / total, 1) if total else 0.0
        return {
            "samples": total,
            "symbols": by_sym[:top],
            "objects": [
                {"dso": k, "percent": round(100 * v / total, 1)} for k, v in by_dso.most_common(8)
            ],
        }
