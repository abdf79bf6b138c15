"""bench/eager_write.py: bursts of 32 POSTs to a receiver, with the receiver's wake-ups and
CPU per request from /proc (Linux); optionally with aiohttp's Python-3.11 body write forced.
The receiver is this test's own process: figures are read, never compared with a time."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator

import aiohttp.client_reqrep as reqrep
import pytest

from bench.eager_write import (
    BURST,
    WARMUP_BURSTS,
    bursts,
    force_deferred_write,
    sched,
    start_receiver,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[int, list[int]]]:
    """A local aiohttp receiver: its port and the sizes of the bodies it read."""
    bodies: list[int] = []
    runner, port = await start_receiver(lambda body: bodies.append(len(body)))
    yield port, bodies
    await runner.cleanup()


async def test_a_run_sends_whole_bursts_and_reports_per_request(receiver) -> None:
    port, bodies = receiver
    sample = await bursts(port, os.getpid(), count=2, lazy=False)
    assert sample.requests == 2 * BURST
    assert bodies == [1000] * ((WARMUP_BURSTS + 2) * BURST)  # warm-up bursts, then measured
    assert sample.receiver_wakeups >= 0
    assert sample.receiver_cpu_ms >= 0
    assert sample.python == sys.version.split()[0]
    assert not sample.lazy


async def test_the_forced_deferred_write_is_aiohttps_python_3_11_path(
    receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reqrep, "sys", sys)  # put back after the test
    force_deferred_write()
    seen = vars(reqrep)["sys"].version_info  # what aiohttp's request module reads
    assert seen < (3, 12)  # aiohttp: the body written from create_task, not an eager task
    assert seen >= (3, 11)  # its other checks still see 3.11+
    port, bodies = receiver
    sample = await bursts(port, os.getpid(), count=1, lazy=True)
    assert sample.lazy
    assert len(bodies) == (WARMUP_BURSTS + 1) * BURST


def test_sched_reads_this_process_threads() -> None:
    cpu, slices = sched(os.getpid())
    assert cpu > 0
    assert slices > 0
