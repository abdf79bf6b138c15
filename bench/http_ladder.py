"""The daemon's HTTP path against the durable floor's, one step at a time (issue 12; not a
scenario; docs/performance.md, "the daemon's Python per delivery in a drain (pyhot)").

One process, no database: the bench's receiver in its own process, and ``--cap`` workers
POSTing the bench's ~1 KB body, ``--requests`` per round, each step in turn, for
``--rounds`` rounds (steps alternated within each round). Process CPU (utime + stime) per
request, in microseconds, for four steps from ``bench/floor.py``'s request to the daemon's:

- ``floor``: a default aiohttp session, floor.py's five headers (one Standard Webhooks HMAC);
- ``+headers``: the same session, the daemon's request (``build_request``: both signature
  schemes, ten headers);
- ``+session``: the daemon's request on the Sender's own session (its connector and resolver,
  limits, cookie jar, request class);
- ``sender``: ``Sender.attempt`` of a ``Target`` (what ``delivery.Attempts`` calls: checks
  before sending, the bounded read, the result and the recorded headers).

Run from the root of the tree to measure (its ``dispatcher``), also an older one by path::

    .venv/bin/python -m bench.http_ladder [--requests 3000] [--rounds 5]
    cd /old/tree && /path/to/venv/bin/python /new/tree/bench/http_ladder.py

The machine's other work moves every figure: alternate trees, read the minimum and the
median of the rounds, and compare steps within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.getcwd())  # the tree under test, also when run by path from another

import aiohttp

from bench.receiver import ReceiverProcess, run_loop
from bench.workload import EVENT_TYPE, sample_body
from dispatcher.request import build_request, signer_for
from dispatcher.sender import Sender, Target
from dispatcher.settings import load_settings
from dispatcher.signing import sign_standard_with_keys, standard_webhooks_key

SECRET = "whsec_" + "A" * 43 + "="
STEPS = ("floor", "+headers", "+session", "sender")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _round(post: Callable[[], Awaitable[None]], requests: int, cap: int) -> float:
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await post()

    start = _cpu()
    await asyncio.gather(*(worker() for _ in range(cap)))
    return (_cpu() - start) / requests * 1e6


async def ladder(url: str, requests: int, rounds: int, cap: int) -> dict[str, list[float]]:
    body = sample_body()
    text = body.decode()
    keys = [standard_webhooks_key(SECRET)]
    signer = signer_for((SECRET,))
    settings = load_settings(
        database_url="postgresql://unused@127.0.0.1/none",
        allowed_target_networks="127.0.0.0/8",
    )
    sender = Sender(settings)
    await sender.start()
    daemon_session = sender._session  # the Sender's own session, options and all
    assert daemon_session is not None
    bare = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=cap), timeout=aiohttp.ClientTimeout(total=30)
    )
    org = str(uuid.uuid4())

    def floor_headers() -> dict[str, str]:
        rid = str(uuid.uuid4())
        unix = str(int(time.time()))
        return {
            "Content-Type": "application/json",
            "webhook-id": rid,
            "webhook-timestamp": unix,
            "webhook-signature": sign_standard_with_keys(rid, unix, body, keys),
            "X-InTime-Delivery": rid,
        }

    def daemon_headers() -> dict[str, str]:
        return build_request(
            delivery_id=str(uuid.uuid4()),
            event_type=EVENT_TYPE,
            body=body,
            signer=signer,
            msg_id=str(uuid.uuid4()),
        ).headers

    async def post(session: aiohttp.ClientSession, headers: dict[str, str]) -> None:
        async with session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
            (await resp.content.read(4096)).decode("utf-8", "replace")

    async def attempt() -> None:
        target = Target(
            str(uuid.uuid4()),
            EVENT_TYPE,
            url,
            text,
            (SECRET,),
            msg_id=str(uuid.uuid4()),
            org_id=org,
        )
        result = await sender.attempt(target)
        if result.response_status != 204:
            raise RuntimeError(f"unexpected answer: {result}")

    steps: dict[str, Callable[[], Awaitable[None]]] = {
        "floor": lambda: post(bare, floor_headers()),
        "+headers": lambda: post(bare, daemon_headers()),
        "+session": lambda: post(daemon_session, daemon_headers()),
        "sender": attempt,
    }
    try:
        for step in steps.values():  # warm-up: connections open, caches filled
            await _round(step, min(requests, 1000), cap)
        got: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                got[name].append(await _round(step, requests, cap))
        return got
    finally:
        await bare.close()
        await sender.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000, help="per step and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cap", type=int, default=32, help="requests in flight (the daemon's cap)")
    args = ap.parse_args(argv)
    receiver = ReceiverProcess()
    receiver.start()
    try:
        got = run_loop(ladder(receiver.url("/hook"), args.requests, args.rounds, args.cap))
    finally:
        receiver.stop()
    print(f"process CPU per request, us ({args.rounds} rounds of {args.requests}, cap {args.cap})")
    base = statistics.median(got["floor"])
    for name in STEPS:
        values = got[name]
        med = statistics.median(values)
        print(
            f"  {name:9s} min {min(values):6.1f}  median {med:6.1f}  (+{med - base:5.1f})  "
            + " ".join(f"{v:.1f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
