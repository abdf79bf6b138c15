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


def pick(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", f"source {ROOT / 'scripts/venv.sh'}; pick_python"],
        # the stand-ins only: no real python3.11 or python3.12 of the machine's in the way
        env={"PATH": str(bin_dir), "HOME": str(bin_dir), **env},
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


def test_any_version_from_3_13_on_waits_behind_3_11(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "3.14.0")
    fake(tmp_path, "python3.11", "3.11.7")
    got = pick(tmp_path)
    assert got.returncode == 0 and got.stdout.strip() == "python3.11"


def test_a_plain_python3_of_3_11_is_taken_at_once(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "3.11.7")
    fake(tmp_path, "python3.12", "3.12.1")
    got = pick(tmp_path)
    assert got.stdout.strip() == "python3" and got.stderr == ""


def test_python_env_is_checked(tmp_path: Path) -> None:
    fake(tmp_path, "python3", "3.12.1")
    fake(tmp_path, "old", "3.10.4")
    missing = pick(tmp_path, PYTHON=str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "not found" in missing.stderr
    too_old = pick(tmp_path, PYTHON="old")
    assert too_old.returncode == 1 and "not Python 3.11 or newer" in too_old.stderr
    chosen = pick(tmp_path, PYTHON="python3")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "python3"
