"""Fixtures for the integration tests, loaded as a plugin by the test modules that need them:

    pytest_plugins = ("support.integration_fixtures",)

``oauth`` (a started OAuthServer), ``make_worker`` (IntegrationsWorker instances, each with its
own pool, against ``db_dsn``, with the FAST test settings plus overrides), ``captured_logs``
(every structlog/stdlib log line of the test, JSON, at debug level, in a StringIO).
"""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
import structlog

from dispatcher.db import open_pool
from dispatcher.integrations.worker import IntegrationsWorker
from dispatcher.logs import configure_logging
from dispatcher.settings import load_settings

from .integrations import FAST
from .oauth_server import OAuthServer


@pytest_asyncio.fixture
async def oauth() -> AsyncIterator[OAuthServer]:
    async with OAuthServer() as server:
        yield server


MakeWorker = Callable[..., Awaitable[IntegrationsWorker]]


@pytest_asyncio.fixture
async def make_worker(db_dsn: str) -> AsyncIterator[MakeWorker]:
    made: list[tuple[IntegrationsWorker, Any]] = []

    async def make(**overrides: Any) -> IntegrationsWorker:
        settings = load_settings(database_url=db_dsn, **{**FAST, **overrides})
        pool = await open_pool(settings)
        worker = IntegrationsWorker(settings, pool)
        await worker.start()
        made.append((worker, pool))
        return worker

    yield make
    for worker, pool in made:
        await worker.close()
        await pool.close()


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of the test (debug level, JSON) in a buffer; restored afterwards."""
    buf = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("debug", "json", stream=buf)
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
