"""Connections: one checked pool for queries, dedicated connections for LISTEN.

Pool connections are autocommit (each dispatcher statement is its own
transaction) and carry statement and idle-in-transaction timeouts.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import structlog
from psycopg.rows import DictRow, dict_row
from psycopg_pool import AsyncConnectionPool

from dispatcher.errors import ConfigError, DatabaseUnavailable, PermissionDenied
from dispatcher.queries import query
from dispatcher.retrying import STARTUP, Backoff
from dispatcher.settings import Settings, dsn_secrets, redact_dsn

log = structlog.get_logger("dispatcher.db")

# A pool connection: rows come back as dicts (dict_row).
Conn = psycopg.AsyncConnection[DictRow]
Pool = AsyncConnectionPool[Conn]

# psycopg turns a statement's %(name)s placeholders into $n by parsing its text on every
# execute, unless the text is at most psycopg._queries.MAX_CACHED_STATEMENT_LENGTH (4 KiB)
# long: then the result is cached. Our hot statements are longer (delivery_fan_out ~16
# KB, delivery_record_outcomes ~10 KB, delivery_claim_due ~4.4 KB), so each call parsed
# them again: 15-60 us of the daemon's CPU per statement, ~5 % of it at 200 events/s
# (docs/performance.md, "pycpu"). All our statements are fixed texts from sql/*.sql, so
# caching them all is bounded (the cache keeps 128 texts).
CACHED_STATEMENT_LENGTH = 64 * 1024


def cache_long_statements() -> bool:
    """Let psycopg cache the parse of statements up to CACHED_STATEMENT_LENGTH long.
    False when this psycopg has no such limit (nothing to do, or its internals moved:
    statements then work as before, only slower)."""
    try:
        from psycopg import _queries
    except ImportError:  # pragma: no cover - psycopg internals changed
        return False
    limit = getattr(_queries, "MAX_CACHED_STATEMENT_LENGTH", None)
    if not isinstance(limit, int):  # pragma: no cover - psycopg internals changed
        return False
    if limit < CACHED_STATEMENT_LENGTH:
        _queries.MAX_CACHED_STATEMENT_LENGTH = CACHED_STATEMENT_LENGTH
    return True


cache_long_statements()


def connect_kwargs(settings: Settings, *, lz4: bool = False) -> dict[str, Any]:
    """``lz4``: the session compresses the values it writes with lz4 (the pool's
    connections, when the server supports it and DISPATCHER_TOAST_COMPRESSION allows)."""
    options = (
        f"-c statement_timeout={settings.statement_timeout_ms} "
        f"-c idle_in_transaction_session_timeout={settings.idle_in_transaction_timeout_ms}"
    )
    if lz4:
        options += " -c default_toast_compression=lz4"
    if not settings.lifecycle_events:
        # read by the lifecycle functions (0026_lifecycle_events.sql): this session's
        # changes publish no lifecycle event
        options += " -c dispatcher.lifecycle_events=off"
    return {
        "autocommit": True,
        "application_name": f"webhook-dispatcher/{settings.instance_name}"[:63],
        "options": options,
        "row_factory": dict_row,
        "connect_timeout": 10,
        # Notice a dead peer: keepalives for idle links, and unacknowledged data fails
        # the connection after 30 s instead of the kernel's ~15 minutes.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
    }


async def connect(settings: Settings) -> psycopg.AsyncConnection[DictRow]:
    """One autocommit connection outside the pool (LISTEN, migrations, CLI)."""
    try:
        return await psycopg.AsyncConnection.connect(settings.dsn(), **connect_kwargs(settings))
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(describe_connect_error(settings, exc)) from None


def describe_connect_error(settings: Settings, exc: BaseException) -> str:
    """One line, without the password, saying why the database could not be reached."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    secret = settings.database_url.get_secret_value() if settings.database_url else ""
    if secret and secret in detail:
        detail = detail.replace(secret, redact_dsn(secret))
    for value in dsn_secrets(secret):
        detail = detail.replace(value, "***")
    return f"cannot connect to PostgreSQL at {redact_dsn(settings.dsn())}: {detail}"


def make_pool(settings: Settings, *, lz4: bool = False) -> Pool:
    return AsyncConnectionPool(
        settings.dsn(),
        min_size=settings.pool_min_size,
        max_size=max(settings.pool_min_size, settings.pool_max_size),
        kwargs=connect_kwargs(settings, lz4=lz4),
        connection_class=psycopg.AsyncConnection[DictRow],
        open=False,
        # No check on every checkout (a round trip each time): a broken connection
        # fails its statement, the caller retries, and the pool replaces it.
        name="dispatcher",
        reconnect_timeout=0,  # keep trying for ever: outages are waited out
    )


async def open_pool(settings: Settings, *, startup_timeout: float | None = None) -> Pool:
    """Open the pool, waiting up to startup_timeout (default: the setting
    DISPATCHER_DATABASE_STARTUP_TIMEOUT, 30 s) for the database.

    DatabaseUnavailable (one clear line) when it never answers; PermissionDenied
    when it answers but refuses us.
    """
    if startup_timeout is None:
        startup_timeout = settings.database_startup_timeout
    deadline = asyncio.get_running_loop().time() + startup_timeout
    backoff = Backoff(STARTUP)
    while True:
        try:
            conn = await psycopg.AsyncConnection.connect(settings.dsn(), **connect_kwargs(settings))
            try:
                lz4 = settings.toast_compression == "lz4" and await _server_has_lz4(conn)
            finally:
                await conn.close()
            break
        except psycopg.ProgrammingError as exc:  # libpq could not parse the DSN
            raise ConfigError(
                "invalid setting DISPATCHER_DATABASE_URL: not a PostgreSQL connection string "
                f"({_first_line(exc)})"
            ) from None
        except psycopg.OperationalError as exc:
            text = str(exc)
            if "password authentication failed" in text or "permission denied" in text:
                raise PermissionDenied(describe_connect_error(settings, exc)) from None
            if "invalid" in text and ("value" in text or "option" in text):
                # A malformed option (sslmode=bogus, port=x): waiting will not mend it.
                raise ConfigError(
                    f"invalid setting DISPATCHER_DATABASE_URL: {_first_line(exc)}"
                ) from None
            delay = backoff.next_delay()
            if asyncio.get_running_loop().time() + delay > deadline:
                raise DatabaseUnavailable(describe_connect_error(settings, exc)) from None
            backoff.failed(
                log,
                "database_unreachable",
                delay=delay,
                error=describe_connect_error(settings, exc),
            )
            await asyncio.sleep(delay)
    pool = make_pool(settings, lz4=lz4)
    await pool.open(wait=True, timeout=startup_timeout)
    log.info("toast_compression", compression="lz4" if lz4 else "server default")
    return pool


async def _server_has_lz4(conn: psycopg.AsyncConnection[DictRow]) -> bool:
    """Whether the server was built with lz4 (PostgreSQL 14+ with --with-lz4): wide values the
    daemon writes (request bodies, payloads, headers) then compress with lz4, which costs
    less CPU than pglz. Any reader of the table decompresses either transparently."""
    cur = await conn.execute(query("db_server_has_lz4"))
    row = await cur.fetchone()
    return bool(row and row["lz4"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
