"""Run the dispatcher as a real subprocess and read its JSON log lines.

    daemon = DaemonProcess({"DISPATCHER_DATABASE_URL": db_dsn})
    daemon.start()
    await daemon.wait_for_log("dispatcher.started", timeout=10)
    daemon.terminate()
    assert await daemon.wait_exit(10) == 0

In async tests prefer ``wait_exit`` over ``wait``: a blocking wait freezes the event loop,
and with it any ``Receiver`` the daemon may still be talking to.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

POLL_INTERVAL = 0.05


def daemon_env(dsn: str | None, **extra: str) -> dict[str, str]:
    """The environment of a test daemon: JSON logs, no metrics listener, a short poll;
    ``extra`` adds or overrides settings (DISPATCHER_* names)."""
    env = {
        "DISPATCHER_METRICS_ADDRESS": "",
        "DISPATCHER_POLL_INTERVAL": "0.2",
        "DISPATCHER_LOG_FORMAT": "json",
    }
    if dsn is not None:
        env["DISPATCHER_DATABASE_URL"] = dsn
    return {**env, **extra}


class DaemonProcess:
    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = ("run",),
        *,
        argv: Sequence[str] | None = None,
        cwd: Path | None = None,
        log_dir: Path | None = None,
    ) -> None:
        self.argv = list(argv) if argv is not None else [sys.executable, "-m", "dispatcher", *args]
        self.env = {"PYTHONUNBUFFERED": "1", **(env or {})}
        self.cwd = cwd
        # the daemon's stdout and stderr go to a file in a fresh directory (under log_dir if given)
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="dispatcher-daemon-", dir=log_dir))
        self.log_path = self.tmp_dir / "daemon.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"DaemonProcess(pid={self.pid}, returncode={self.returncode}, log={self.log_path})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("daemon already started")
        self._log_file = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self.argv,
            env=os.environ | self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("daemon not started")
        return self._proc

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def terminate(self) -> None:
        """SIGTERM: ask for a graceful shutdown."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: crash without any cleanup."""
        self.send_signal(signal.SIGKILL)

    def send_signal(self, sig: int) -> None:
        if self.is_running():
            self.proc.send_signal(sig)

    def wait(self, timeout: float = 10.0) -> int:
        """Block until exit; raises subprocess.TimeoutExpired. Blocks the event loop!"""
        return self.proc.wait(timeout)

    async def wait_exit(self, timeout: float = 10.0) -> int:
        """Like ``wait`` but polls, so the test's event loop keeps running."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"daemon still running after {timeout}s\n--- log tail ---\n{self.tail()}"
                )
            await asyncio.sleep(POLL_INTERVAL)
        return code

    def close(self) -> None:
        """Kill if still running, reap, and delete the log dir."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        if self._proc is not None:
            self._proc.wait(10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ log

    def text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def lines(self) -> list[str]:
        return self.text().splitlines()

    def tail(self, count: int = 40) -> str:
        return "\n".join(self.lines()[-count:])

    def json_lines(self) -> list[dict[str, Any]]:
        """Every log line that is a JSON object; anything else is skipped."""
        records = []
        for line in self.lines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def events(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.json_lines() if r.get("event") == event]

    async def wait_for_log(
        self, event: str, timeout: float = 10.0, *, count: int = 1
    ) -> dict[str, Any]:
        """The ``count``-th JSON log line whose "event" is ``event``.

        Fails fast (AssertionError with the log tail) if the daemon exits first.
        """
        deadline = time.monotonic() + timeout
        while True:
            exited = self.returncode  # read before the log: all output is on disk once exited
            found = self.events(event)
            if len(found) >= count:
                return found[count - 1]
            if exited is not None or time.monotonic() >= deadline:
                state = f"exited with {exited}" if exited is not None else f"not within {timeout}s"
                raise AssertionError(
                    f"daemon log: {len(found)}/{count} {event!r} event(s), {state}\n"
                    f"--- log tail ---\n{self.tail()}"
                )
            await asyncio.sleep(POLL_INTERVAL)
