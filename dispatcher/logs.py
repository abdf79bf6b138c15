"""structlog set up once: JSON lines when not on a TTY, readable when it is.

The standard library's loggers (psycopg, aiohttp, asyncio) are routed through
the same renderer. Event names are stable snake_case; never log a secret, a
signature, a token or a body.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO
from uuid import UUID

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def _readable_ids(_: Any, __: str, event: structlog.typing.EventDict) -> structlog.typing.EventDict:
    """UUIDs as plain text on a console (orjson writes them natively in JSON)."""
    for key, value in event.items():
        if isinstance(value, UUID):
            event[key] = str(value)
    return event


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    stream = stream or sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.typing.Processor
    if as_json:
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        shared.append(structlog.processors.dict_tracebacks)
    else:
        shared.append(_readable_ids)
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(_LEVELS[level], logging.INFO) if level != "debug" else logging.DEBUG)
    # psycopg_pool logs every failed reconnect at WARNING; keep them, but not aiohttp access logs.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
