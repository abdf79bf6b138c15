"""The benchmark's receiver stamps every request of its slow path, and the bare client's
trace joins each of its POSTs to the receiver's stamps by delivery id (bench/slow_timeline.py
`bare`: real processes on loopback). Nothing about speed is asserted."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.slow_timeline import bare, report


def test_every_bare_client_request_is_stamped_by_the_receiver_and_joined(
    tmp_path: Path,
) -> None:
    figures = asyncio.run(bare(str(tmp_path), requests=24, concurrency=4))
    assert figures["requests_per_s"] > 0
    rows = json.loads((tmp_path / "receiver.json").read_text())
    assert len(rows) == 24  # the 4 of the warm-up round left out
    for path, _port, entered, read, woke, written, _id, signed in rows:
        assert path == "/slow/bare"
        assert entered <= read <= woke <= written
        assert signed  # the bare client signs like the daemon (X-InTime-Timestamp)
    out = report(str(tmp_path), concurrency=4)
    assert out["receiver"]["requests"] == 24
    assert out["receiver"]["connections"] == 4
    (client,) = (v for k, v in out.items() if k.startswith("client-"))
    assert client["requests"] == client["joined"] == 24
