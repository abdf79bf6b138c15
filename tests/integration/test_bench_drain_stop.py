"""A drain signals its daemons once they catch SIGTERM (bench/drain.py): a process that
installs its handler late still stops cleanly (exit 0), not killed by the signal (-15)."""

from __future__ import annotations

import sys
import time

import pytest
from support.daemon import DaemonProcess

from bench.drain import until_catching_sigterm

# Starts slowly (1 s, like a daemon connecting to its database), then exits 0 on SIGTERM.
LATE_HANDLER = """
import signal, sys, time
time.sleep(1.0)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("handler installed", flush=True)
time.sleep(60)
"""


@pytest.mark.timeout(30)
async def test_a_process_still_starting_is_signalled_only_once_it_catches_sigterm() -> None:
    proc = DaemonProcess(argv=[sys.executable, "-c", LATE_HANDLER])
    proc.start()
    try:
        await until_catching_sigterm([proc], time.time() + 20)
        proc.terminate()
        assert await proc.wait_exit(10) == 0, proc.tail()
        assert "handler installed" in proc.tail()
    finally:
        proc.close()
