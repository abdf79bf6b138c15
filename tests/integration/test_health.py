"""/healthz, /readyz and /metrics of a running daemon, over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import hostdb
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families
from support.net import reserved_port
from support.pg import PgCluster

from dispatcher.migrations import apply_migrations


async def get(port: int, path: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(f"http://127.0.0.1:{port}{path}") as resp,
    ):
        return resp.status, await resp.text()


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await probe():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)


def sample(metrics_text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def test_healthz_readyz_and_metrics_count_deliveries(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url("/hook"), ["order.*"])
    port = reserved_port()
    await start_daemon(metrics_address=f"127.0.0.1:{port}")

    assert await get(port, "/healthz") == (200, "alive\n")
    assert await get(port, "/readyz") == (200, "ready\n")
    status, text = await get(port, "/metrics")
    assert status == 200
    assert sample(text, "dispatcher_attempts_total", outcome="delivered") in (None, 0.0)

    for n in range(3):
        await hostdb.publish(conn, "order.created", {"n": n}, org)
    await hostdb.publish(conn, "customer.created", {}, org)  # matches nothing
    await receiver.wait_for(3)
    await hostdb.wait_deliveries(conn, "status = 'success'", 3)

    async def three_delivered() -> bool:
        _, text = await get(port, "/metrics")
        return sample(text, "dispatcher_attempts_total", outcome="delivered") == 3.0

    await eventually(three_delivered, "dispatcher_attempts_total{outcome=delivered} == 3", 10)
    _, text = await get(port, "/metrics")
    assert sample(text, "dispatcher_events_fanned_out_total") == 4.0
    assert sample(text, "dispatcher_attempt_duration_seconds_count") == 3.0
    assert sample(text, "dispatcher_listener_connected") == 1.0
    assert sample(text, "dispatcher_ready") == 1.0
    assert sample(text, "dispatcher_attempts_total", outcome="retryable") in (None, 0.0)


@pytest_asyncio.fixture
async def own_cluster() -> AsyncIterator[PgCluster]:
    """A cluster of this test's own: it is stopped and started, the session's never is."""
    cluster = PgCluster()
    try:
        await asyncio.to_thread(cluster.start)
        yield cluster
    finally:
        await asyncio.to_thread(cluster.cleanup)


@pytest.mark.chaos
async def test_readyz_is_503_while_postgres_is_down_and_200_when_back(own_cluster, start_daemon):
    await asyncio.to_thread(own_cluster.create_database, "app")
    dsn = own_cluster.dsn("app")
    await apply_migrations(dsn)
    port = reserved_port()
    await start_daemon(database_url=dsn, metrics_address=f"127.0.0.1:{port}")
    assert await get(port, "/readyz") == (200, "ready\n")

    await asyncio.to_thread(own_cluster.stop, "fast")

    async def readyz_is(code: int) -> bool:
        return (await get(port, "/readyz"))[0] == code

    await eventually(lambda: readyz_is(503), "/readyz answers 503 with PostgreSQL down", 30)
    status, _ = await get(port, "/healthz")
    assert status == 200, "the process is alive even though its database is not"
    _, reason = await get(port, "/readyz")
    assert "not ready" in reason

    await asyncio.to_thread(own_cluster.start)
    await eventually(lambda: readyz_is(200), "/readyz answers 200 once PostgreSQL is back", 60)
