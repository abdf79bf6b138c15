"""structlog set up once: JSON lines when not on a TTY, readable when it is.

The standard library's loggers (psycopg, aiohttp, asyncio) are routed through
the same renderer. Event names are stable snake_case; never log a secret, a
signature, a token or a body.
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO
from uuid import UUID

import orjson
import structlog
from structlog._config import BoundLoggerLazyProxy as _LazyProxy  # what get_logger() returns

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


class _JsonLines:
    """An info line rendered as the JSON chain below renders it, without structlog's per-call
    machinery (the lazy proxy's bind, the filtering wrapper, the processor loop, print's lock):
    the keyword fields in call order, then `event`, the bound context variables (as
    `merge_contextvars` adds them), `level`, `timestamp` (`TimeStamper(fmt="iso", utc=True)`'s
    text), serialized by the same `_dumps`, written in one call and flushed, as `PrintLogger`.
    """

    def __init__(self, stream: TextIO, config: dict[str, Any]) -> None:
        # the structlog configuration this renders for, a copy (see `in_force`)
        self._config = {**config, "processors": list(config["processors"])}
        self._write = stream.write
        self._flush = stream.flush
        self._second = -1
        self._prefix = ""

    def _stamp(self, micros: int) -> str:
        """`datetime.isoformat()` of UTC `micros` since the epoch, "+00:00" as "Z"; the date
        and time of day formatted once a second."""
        second, fraction = divmod(micros, 1_000_000)
        if second != self._second:
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        # isoformat leaves the fraction out when it is zero
        return f"{self._prefix}.{fraction:06d}Z" if fraction else f"{self._prefix}Z"

    def in_force(self) -> bool:
        """Whether structlog still has the configuration this was made for (`capture_logs`,
        for one, changes the processor list in place)."""
        now = structlog.get_config()
        mine = self._config
        return (
            now["processors"] == mine["processors"]
            and now["wrapper_class"] is mine["wrapper_class"]
            and now["logger_factory"] is mine["logger_factory"]
        )

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        fields["event"] = event
        line = structlog.contextvars.merge_contextvars(None, "info", fields)
        line["level"] = "info"
        line["timestamp"] = self._stamp(time.time_ns() // 1000)
        self._write(_dumps(line) + "\n")
        self._flush()


_json_lines: _JsonLines | None = None


def hot_info(log: Any, event: str, /, **fields: Any) -> None:
    """`log.info(event, **fields)` for a line written per delivery attempt: the same line,
    cheaper, when `configure_logging` set JSON at info or debug and nothing reconfigured
    structlog since (a test's `capture_logs`, say); through `log` otherwise. Nothing is
    redacted by the chain, so the same fields and values are all that matters: never pass a
    secret, a signature, a token or a body (the module's rule)."""
    lines = _json_lines
    if lines is not None and _plain(log, fields) and lines.in_force():
        lines(event, fields)
    else:
        log.info(event, **fields)


# fields the chain treats otherwise (a traceback rendered, a clash with the event's name)
_SPECIAL = frozenset({"event", "exc_info", "stack_info"})


def _plain(log: Any, fields: dict[str, Any]) -> bool:
    """`log` is a module's `structlog.get_logger()` with nothing bound (a bound logger's
    context would be part of the chain's line) and no field needs the chain."""
    return type(log) is _LazyProxy and not log._initial_values and _SPECIAL.isdisjoint(fields)


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
    global _json_lines
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    fast = as_json and _LEVELS[level] <= logging.INFO
    _json_lines = _JsonLines(stream, structlog.get_config()) if fast else None
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
