"""The daemon's own Sender, started for loopback targets, for tests that drive attempts
without a database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dispatcher.sender import Sender
from dispatcher.settings import load_settings


@asynccontextmanager
async def loopback_sender(http_timeout: float = 5.0) -> AsyncIterator[Sender]:
    """A started Sender allowed to reach 127.0.0.1 (the SSRF guard's only exception),
    closed on the way out."""
    settings = load_settings(
        database_url="postgresql://unused@127.0.0.1/none",
        allowed_target_networks="127.0.0.1/32",
        http_timeout=http_timeout,
    )
    sender = Sender(settings)
    await sender.start()
    try:
        yield sender
    finally:
        await sender.close()
