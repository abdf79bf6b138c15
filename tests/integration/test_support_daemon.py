"""Self-tests for DaemonProcess (tests/support/daemon.py), using a stand-in script."""

from __future__ import annotations

import signal
import sys

import pytest
from support.daemon import DaemonProcess

FAKE_DAEMON = r"""
import json, os, signal, sys, time
def on_term(signum, frame):
    print(json.dumps({"event": "stopping", "signal": signum}))
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
print("plain text banner")
print(json.dumps({"event": "ready", "flavour": os.environ["FLAVOUR"]}))
print(json.dumps(["not", "an", "object"]))
print("to stderr", file=sys.stderr)
while True:
    time.sleep(0.05)
"""


def _fake(**env: str) -> DaemonProcess:
    return DaemonProcess({"FLAVOUR": "lemon", **env}, argv=[sys.executable, "-c", FAKE_DAEMON])


async def test_logs_env_and_graceful_terminate() -> None:
    with _fake() as daemon:
        ready = await daemon.wait_for_log("ready", timeout=10)
        assert ready == {"event": "ready", "flavour": "lemon"}
        assert "plain text banner" in daemon.lines()
        assert [r["event"] for r in daemon.json_lines()] == ["ready"]

        daemon.terminate()
        assert await daemon.wait_exit(10) == 3
        assert daemon.events("stopping") == [{"event": "stopping", "signal": signal.SIGTERM}]
        assert "to stderr" in daemon.lines()


async def test_kill_and_blocking_wait() -> None:
    with _fake() as daemon:
        await daemon.wait_for_log("ready")
        daemon.kill()
        assert daemon.wait(10) == -signal.SIGKILL
        assert not daemon.is_running()


async def test_wait_for_log_fails_fast_when_the_process_exits() -> None:
    with _fake(FLAVOUR="") as daemon:
        daemon.terminate()
        with pytest.raises(AssertionError, match=r"'never' event\(s\), exited with"):
            await daemon.wait_for_log("never", timeout=30)


async def test_wait_for_log_times_out_with_log_tail() -> None:
    with _fake() as daemon:
        with pytest.raises(AssertionError, match=r"(?s)not within 0.3s.*plain text banner"):
            await daemon.wait_for_log("never", timeout=0.3)


async def test_daemon_factory_fixture(daemon_factory) -> None:
    daemon = daemon_factory({"FLAVOUR": "x"})
    assert daemon.argv[1:] == ["-m", "dispatcher", "run"]
    daemon.kill()
