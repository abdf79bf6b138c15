"""The randomized fault test (issue 10, "make the suite find the next one").

Several daemons, a publisher (publish_event and direct inserts, committed and rolled back),
receivers that flap, and a schedule of faults drawn from a seed: SIGKILL and SIGTERM of
daemons (restarted after), PostgreSQL restarts, backend kills, host transactions holding
webhook and delivery rows, processes with a tiny statement_timeout, and DNS that hangs when
the build has a resolver setting. The oracle is in tests/support/faultfuzz.py and
docs/reliability.md.

- CI (default): the fixed seeds of CI_SEEDS, CI_SECONDS of faults each.
- Reproduce one run: DISPATCHER_FUZZ_SEED=<seed> [DISPATCHER_FUZZ_RUN_SECONDS=<s>]
  .venv/bin/pytest tests/chaos/test_fault_fuzz.py -k seed -s
- Long run: DISPATCHER_FUZZ_SECONDS=<total> [DISPATCHER_FUZZ_RUN_SECONDS=<s per run>]
  .venv/bin/pytest tests/chaos/test_fault_fuzz.py -k long -s  (fresh random seeds until the
  total is spent; every seed is printed; the failures are listed at the end)
"""

from __future__ import annotations

import os
import random
import time
import uuid

import pytest
from support.faultfuzz import FuzzRun
from support.pg import PgCluster

pytestmark = pytest.mark.chaos

CI_SEEDS = [20261130, 7]
CI_SECONDS = 25.0
SEED = os.environ.get("DISPATCHER_FUZZ_SEED")
LONG = float(os.environ.get("DISPATCHER_FUZZ_SECONDS", "0") or 0)
RUN_SECONDS = float(os.environ.get("DISPATCHER_FUZZ_RUN_SECONDS", "0") or 0)
TEMPLATE = "chaos_template"  # tests/chaos/conftest.py


async def _one(cluster: PgCluster, seed: int, seconds: float) -> str | None:
    """One run on a fresh database; the report's text if an invariant broke."""
    if not cluster.is_running():
        cluster.start()
    name = f"f_{uuid.uuid4().hex}"
    cluster.create_database(name, template=TEMPLATE)
    run = FuzzRun(cluster, name, seed=seed, seconds=seconds)
    try:
        report = await run.execute()
        text = report.text()
        print(text, flush=True)
        return None if report.ok else text + "\n" + run.logs()
    finally:
        run.close()
        if not cluster.is_running():
            cluster.start()
        cluster.drop_database(name)


@pytest.mark.skipif(bool(SEED or LONG), reason="a seed or a long run was asked for")
@pytest.mark.timeout(CI_SECONDS + 150)
@pytest.mark.parametrize("seed", CI_SEEDS)
async def test_fault_fuzz_ci(chaos_cluster: PgCluster, seed: int) -> None:
    failure = await _one(chaos_cluster, seed, CI_SECONDS)
    assert failure is None, failure


@pytest.mark.skipif(not SEED, reason="set DISPATCHER_FUZZ_SEED to replay one seed")
@pytest.mark.timeout((RUN_SECONDS or CI_SECONDS) + 150)
async def test_fault_fuzz_seed(chaos_cluster: PgCluster) -> None:
    failure = await _one(chaos_cluster, int(SEED or 0), RUN_SECONDS or CI_SECONDS)
    assert failure is None, failure


@pytest.mark.skipif(not LONG, reason="set DISPATCHER_FUZZ_SECONDS for the long run")
@pytest.mark.timeout(LONG + (RUN_SECONDS or 60) + 200)
async def test_fault_fuzz_long(chaos_cluster: PgCluster) -> None:
    per_run = RUN_SECONDS or 60.0
    deadline = time.monotonic() + LONG
    failures: dict[int, str] = {}
    runs = 0
    while time.monotonic() + per_run < deadline or runs == 0:
        seed = random.SystemRandom().randrange(1, 2**31)
        print(f"=== fault fuzz run {runs + 1}: seed {seed}", flush=True)
        failure = await _one(chaos_cluster, seed, per_run)
        if failure is not None:
            failures[seed] = failure
        runs += 1
    assert not failures, (
        f"{len(failures)}/{runs} runs broke an invariant; seeds "
        + ", ".join(map(str, failures))
        + "\n\n"
        + "\n\n".join(failures.values())
    )
