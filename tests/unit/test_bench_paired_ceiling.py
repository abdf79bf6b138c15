"""The short HTTP ceiling before each drain (bench/drain.py) reports its own CPU per request,
client and receiver, not only its rate: the budget a drain's ratio is measured against, taken
seconds before the drain (docs/performance.md, "drain1's bound on this machine")."""

from __future__ import annotations

from typing import Any, cast

from bench.drain import Drain
from bench.receiver import ReceiverProcess


async def test_the_paired_ceiling_reports_client_and_receiver_cpu_per_request() -> None:
    receiver = ReceiverProcess()
    receiver.start()
    try:
        # no cluster or daemon is needed for the paired ceiling alone
        drain = Drain(cast(Any, None), receiver, cast(Any, None), 60.0, paired_requests=500)
        http = await drain._paired_ceiling()
        stats = await receiver.stats()
    finally:
        await receiver.aclose()
        receiver.stop()

    assert isinstance(http, dict)
    assert http["requests_per_s"] > 0 and http["errors"] == 0
    assert stats["count"] == 500 + 100  # the requests and their warm-up reached the receiver
    assert 0 < http["client_cpu_s_per_1000"] < 10
    assert 0 < http["receiver_cpu_s_per_1000"] < 10
