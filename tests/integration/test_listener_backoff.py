"""The LISTEN connection's reconnect loop on real sockets: a database that stays away is
logged at warning, then at error; the reconnect logs one recovery line and rings the bell."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

from structlog.testing import capture_logs
from support.net import reserved_port
from support.pg import PgCluster
from support.proxy import TcpProxy

from dispatcher.listener import Listener
from dispatcher.metrics import Metrics
from dispatcher.retrying import Policy
from dispatcher.settings import Settings

QUICK = Policy(initial=0.01, cap=0.05, escalate_failures=3, escalate_seconds=60)


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


async def test_a_database_that_stays_away_escalates_then_recovers_once(
    pg_cluster: PgCluster,
) -> None:
    async with TcpProxy("127.0.0.1", reserved_port()) as proxy:  # nothing listens behind it
        settings = Settings(database_url=f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres")
        wakes: list[None] = []
        listener = Listener(settings, lambda: wakes.append(None), Metrics(), backoff=QUICK)
        with capture_logs() as logs:
            task = asyncio.create_task(listener.run())
            try:

                def failed() -> list[MutableMapping[str, Any]]:
                    return [x for x in logs if x["event"] == "listener_connect_failed"]

                await until(lambda: len(failed()) >= 4)
                assert not listener.connected.is_set()
                proxy.target_port = pg_cluster.port  # the database is back
                await asyncio.wait_for(listener.connected.wait(), 10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    streak = failed()
    assert [x["log_level"] for x in streak[:4]] == ["warning", "warning", "error", "error"]
    assert all(x["failures"] == n for n, x in enumerate(streak, 1))
    recovered = [x for x in logs if x["event"] == "listener_recovered"]
    assert len(recovered) == 1
    assert recovered[0]["failures"] == len(streak)
    assert recovered[0]["log_level"] == "info"
    events = [x["event"] for x in logs]
    assert events.index("listener_recovered") < events.index("listener_connected")
    assert wakes, "a (re)connect rings the doorbell"
