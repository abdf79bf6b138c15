"""Fixtures that run the dispatcher in-process against the per-test database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import hostdb
import pytest_asyncio

from dispatcher.app import App
from dispatcher.settings import load_settings


@dataclass
class Running:
    app: App
    task: asyncio.Task[Any]

    async def stop(self) -> Any:
        self.app.request_stop()
        return await asyncio.wait_for(self.task, 30)


StartDaemon = Callable[..., Awaitable[Running]]


@pytest_asyncio.fixture
async def start_daemon(db_dsn: str) -> AsyncIterator[StartDaemon]:
    running: list[Running] = []

    async def start(**overrides: Any) -> Running:
        values: dict[str, Any] = {
            "database_url": db_dsn,
            "metrics_address": "",
            "poll_interval": 0.2,
            "shutdown_grace": 5.0,
            "log_format": "json",
        }
        values.update(overrides)
        app = App(load_settings(**values), install_signals=False)
        task = asyncio.create_task(app.run())
        ready = asyncio.ensure_future(app.ready.wait())
        await asyncio.wait([task, ready], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        assert app.ready.is_set(), "daemon did not become ready within 20 s"
        r = Running(app, task)
        running.append(r)
        return r

    yield start
    for r in running:
        if not r.task.done():
            with contextlib.suppress(Exception):
                await r.stop()


@pytest_asyncio.fixture
async def conn(db_dsn: str) -> AsyncIterator[hostdb.Conn]:
    c = await hostdb.connect(db_dsn)
    try:
        yield c
    finally:
        await c.close()
