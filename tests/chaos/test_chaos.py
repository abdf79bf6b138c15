"""The chaos suite: under a steady load of published events to four webhooks, faults are
injected again and again; after each one, the time until everything published before it is
delivered is measured; at the end, every event has reached every matching webhook, nothing
was sent twice by live replicas, and duplicates stay within the attempts in flight at kills.

Each scenario runs on its own database of a PostgreSQL cluster reserved for this suite.
The table of figures is printed at the end of the run and written to
build/chaos/reliability.json (docs/reliability.md carries a copy).
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
from support.chaos import Chaos
from support.proxy import TcpProxy

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

RATE = 25.0  # events per second, about 50 deliveries per second
BETWEEN = 40  # events published between two faults


async def _finish(harness: Chaos, report, scenario: str, faults: int, recover: list[float]):
    await harness.stop_load()
    await harness.drain(timeout=60)
    codes = await harness.stop_daemons()
    result = await harness.verify(scenario, faults, recover)
    report.append(result)
    print(result.row())
    assert result.lost == 0, result
    assert result.duplicates <= result.duplicates_allowed, result
    assert all(code == 0 for code in codes), f"graceful stop exit codes: {codes}"
    return result


async def test_kill_9_and_restart(make_chaos, report):
    harness = await make_chaos(lease=12)
    daemon = await harness.start_daemon()
    harness.start_load(RATE)
    recover = []
    for _ in range(3):
        await harness.more_published(BETWEEN)
        await harness.kill(daemon)
        at = time.monotonic()
        daemon = await harness.start_daemon()
        recover.append(await harness.recovered(at))
    await _finish(harness, report, "kill -9 the daemon, restart it", 3, recover)


async def test_restart_postgresql(make_chaos, chaos_cluster, report):
    harness = await make_chaos()
    daemon = await harness.start_daemon()
    harness.start_load(RATE)
    recover = []
    for mode in ("fast", "immediate"):
        await harness.more_published(BETWEEN)
        await asyncio.to_thread(chaos_cluster.restart, mode)
        at = time.monotonic()
        recover.append(await harness.recovered(at))
        assert daemon.is_running(), "the daemon must ride out a database restart"
    # Delivery resumed by polling; the LISTEN connection comes back too (its own backoff).
    await daemon.wait_for_log("listener_connected", count=3, timeout=30)
    result = await _finish(harness, report, "restart PostgreSQL (fast, then crash)", 2, recover)
    assert result.duplicates == 0, "no kill here: nothing may be sent twice"


async def test_terminate_listen_and_pool_backends(make_chaos, report):
    harness = await make_chaos()
    daemon = await harness.start_daemon()
    harness.start_load(RATE)
    recover = []
    async with await psycopg.AsyncConnection.connect(harness.dsn, autocommit=True) as admin:
        for _ in range(3):
            await harness.more_published(BETWEEN)
            cur = await admin.execute(
                "SELECT count(*) FILTER (WHERE query LIKE 'LISTEN%%') AS listen, "
                "count(*) FILTER (WHERE pg_terminate_backend(pid)) AS killed "
                "FROM pg_stat_activity WHERE application_name LIKE 'webhook-dispatcher/%%' "
                "AND datname = current_database()"
            )
            counts = await cur.fetchone()
            assert counts is not None
            listen, killed = counts
            assert listen == 1 and killed >= 2, (listen, killed)
            at = time.monotonic()
            recover.append(await harness.recovered(at))
    assert daemon.is_running()
    result = await _finish(
        harness, report, "pg_terminate_backend: LISTEN and pool connections", 3, recover
    )
    assert result.duplicates == 0, "no kill here: nothing may be sent twice"


async def test_network_cut_and_half_open_partition(make_chaos, chaos_cluster, report):
    harness = await make_chaos()
    async with TcpProxy("127.0.0.1", chaos_cluster.port) as proxy:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/{harness.dbname}"
        daemon = await harness.start_daemon(dsn)
        harness.start_load(RATE)
        recover = []
        for fault in ("cut", "blackhole", "cut", "blackhole"):
            await harness.more_published(BETWEEN)
            if fault == "cut":
                await proxy.cut()  # every connection reset at once
            else:
                proxy.blackhole(True)  # half-open: bytes vanish, nothing is reset
                await asyncio.sleep(3.0)  # the partition lasts 3 s
                proxy.blackhole(False)
            at = time.monotonic()
            recover.append(await harness.recovered(at))
        assert daemon.is_running()
        result = await _finish(
            harness, report, "network cut (RST) and half-open partition (3 s)", 4, recover
        )
    assert result.duplicates == 0, "no kill here: nothing may be sent twice"


async def test_three_replicas_kill_one(make_chaos, report):
    harness = await make_chaos(lease=12)
    replicas = [await harness.start_daemon(name=f"replica-{i}") for i in range(3)]
    harness.start_load(RATE)
    recover = []
    for i in range(3):
        await harness.more_published(BETWEEN)
        await harness.kill(replicas[i])
        at = time.monotonic()
        recover.append(await harness.recovered(at))  # the two others take over
        replicas[i] = await harness.start_daemon(name=f"replica-{i}b")
    worked = [len(d.events("delivery_attempt")) for d in harness.daemons[:3]]
    assert all(worked), f"each of the three first replicas took a share: {worked}"
    await _finish(harness, report, "three replicas, kill -9 one (x3)", 3, recover)


async def test_receiver_flaps_between_200_500_and_hanging(make_chaos, chaos_receiver, report):
    harness = await make_chaos()
    daemon = await harness.start_daemon()
    harness.start_load(RATE)
    recover = []
    for _ in range(3):
        await harness.more_published(BETWEEN)
        # 500s, then no answer at all (twice the 2 s timeout), then 500s again: the
        # requests hanging when it flips get a 500, never a late 2xx.
        for mode, seconds in (("error", 1.5), ("hang", 4.0), ("error", 1.0)):
            chaos_receiver.set_mode("/jobs", mode)
            await asyncio.sleep(seconds)
        chaos_receiver.set_mode("/jobs", "ok")
        at = time.monotonic()
        recover.append(await harness.recovered(at))
    hung = [r for r in chaos_receiver.receipts if r.path == "/jobs" and r.status is None]
    failed = [r for r in chaos_receiver.receipts if r.path == "/jobs" and r.status == 500]
    assert hung and failed, "premise: the endpoint did hang and fail"
    assert daemon.is_running()
    result = await _finish(harness, report, "receiver flaps 500 / hanging / 200 (x3)", 3, recover)
    assert result.duplicates == 0, "no kill here: nothing may be sent twice"
