"""Chaos suite fixtures: its own PostgreSQL cluster (restarted by the scenarios, so the
session's cluster is never touched), a fresh database per scenario, a switchable receiver,
and the report: the table is printed at the end of the run and written to
build/chaos/reliability.json (git-ignored) for docs/reliability.md."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import pytest_asyncio
from support.chaos import Chaos, ChaosReceiver, Result, table, write_report
from support.pg import PgCluster

TEMPLATE = "chaos_template"
RESULTS: list[Result] = []


@pytest.fixture(scope="session")
def chaos_cluster() -> Iterator[PgCluster]:
    from dispatcher.migrations import apply_migrations

    cluster = PgCluster()
    try:
        cluster.start()
        cluster.create_database(TEMPLATE)
        dsn = cluster.dsn(TEMPLATE)
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(lambda: asyncio.run(apply_migrations(dsn))).result()
        with cluster.connect() as conn:
            conn.execute(f"ALTER DATABASE {TEMPLATE} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true")
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def chaos_db(chaos_cluster: PgCluster) -> Iterator[str]:
    if not chaos_cluster.is_running():
        chaos_cluster.start()
    name = f"c_{uuid.uuid4().hex}"
    chaos_cluster.create_database(name, template=TEMPLATE)
    try:
        yield name
    finally:
        if not chaos_cluster.is_running():
            chaos_cluster.start()
        chaos_cluster.drop_database(name)


@pytest_asyncio.fixture
async def chaos_receiver() -> AsyncIterator[ChaosReceiver]:
    receiver = ChaosReceiver(delay=0.2)  # a typical endpoint: attempts are in flight at kills
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.close()


@pytest_asyncio.fixture
async def make_chaos(
    chaos_cluster, chaos_db, chaos_receiver
) -> AsyncIterator[Callable[..., Awaitable[Chaos]]]:
    made: list[Chaos] = []

    async def make(**kwargs) -> Chaos:
        harness = Chaos(chaos_cluster, chaos_db, chaos_receiver, **kwargs)
        await harness.setup()
        made.append(harness)
        return harness

    yield make
    for harness in made:
        await harness.stop_load()
        for daemon in harness.daemons:
            if daemon.is_running():
                daemon.kill()
        harness.close()


@pytest.fixture
def report() -> Iterator[list[Result]]:
    yield RESULTS


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not RESULTS:
        return
    path = write_report(RESULTS)
    terminalreporter.write_sep("=", "chaos suite: reliability")
    terminalreporter.write_line(table(RESULTS))
    terminalreporter.write_line(f"(written to {path}; copy into docs/reliability.md)")
