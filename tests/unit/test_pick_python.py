"""scripts/venv.sh's pick_python: a Python the demo and the tests can install into (3.11 or
3.12: pgserver has no 3.13 wheel), before a newer one, and a warning when only that exists.
Stand-in interpreters answer the version checks as 3.13 or 3.12 would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# `python -c 'import sys; sys.exit(<version test>)'`, answered as `version` would
FAKE = """#!/bin/sh
PATH=/usr/bin:/bin
if [ "$1" = "--version" ]; then echo "Python {version}"; exit 0; fi
test=$(printf '%s' "$2" | sed 's/^import sys; //')
exec "{real}" -c "import sys; sys.version_info = {info}; $test"
"""


def fake(bin_dir: Path, name: str, version: str) -> None:
    info = tuple(int(x) for x in version.split("."))
    path = bin_dir / name
    path.write_text(FAKE.format(version=version, real=sys.executable, info=info))
    path.chmod(0o755)


def pick(bin_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", f"source {ROOT / 'scripts/venv.sh'}; pick_python"],
        # the stand-ins only: no real python3.11 or python3.12 of the machine's in the way
        env={"PATH": str(bin_dir), "HOME": str(bin_dir)},
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_python_the_extras_install_into_comes_before_a_newer_python3(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "3.13.0")
    fake(tmp_path, "python3.12", "3.12.1")
    got = pick(tmp_path)
    assert got.returncode == 0 and got.stdout.strip() == "python3.12"
    assert got.stderr == ""


def test_only_a_newer_python_is_taken_with_a_warning(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "3.13.0")
    got = pick(tmp_path)
    assert got.returncode == 0 and got.stdout.strip() == "python3"
    assert "pgserver" in got.stderr and "python3.12" in got.stderr
