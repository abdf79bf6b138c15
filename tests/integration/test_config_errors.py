"""Configuration errors at start: one clear line on stderr, a distinct exit code, no
traceback and never the password; a database that is down is waited for, then reported."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql
from support.net import reserved_port

from dispatcher.errors import ExitCode

PASSWORD = "hunter2-" + uuid.uuid4().hex[:8]


def env(dsn: str | None, **extra: str) -> dict[str, str]:
    values = {
        "DISPATCHER_METRICS_ADDRESS": "",
        "DISPATCHER_LOG_FORMAT": "json",
        "DISPATCHER_DATABASE_URL": dsn or "",
        "DATABASE_URL": "",
        **extra,
    }
    return values


async def _one_error_line(daemon, timeout: float) -> tuple[int, str]:
    code = await daemon.wait_exit(timeout)
    text = daemon.text()
    assert "Traceback" not in text, text
    assert PASSWORD not in text, "the password was printed"
    lines = [line for line in daemon.lines() if line.strip() and not line.startswith("{")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("dispatcher: error: "), lines[0]
    return code, lines[0]


async def test_no_database_configured(daemon_factory):
    daemon = daemon_factory(env(None))
    code, line = await _one_error_line(daemon, 20)
    assert code == ExitCode.CONFIG
    assert "set DISPATCHER_DATABASE_URL" in line


async def test_an_invalid_setting_is_named(daemon_factory, db_dsn):
    daemon = daemon_factory(env(db_dsn, DISPATCHER_CONCURRENCY="-3"))
    code, line = await _one_error_line(daemon, 20)
    assert code == ExitCode.CONFIG
    assert "invalid setting DISPATCHER_CONCURRENCY" in line


@pytest.mark.parametrize(
    "dsn",
    [f"postgresql://app:{PASSWORD}@[::1/db", f"mysql://app:{PASSWORD}@db.example/app"],
    ids=["unclosed-bracket", "not-postgresql"],
)
async def test_a_malformed_dsn_is_one_line_and_a_config_error(daemon_factory, dsn):
    daemon = daemon_factory(env(dsn))
    code, line = await _one_error_line(daemon, 20)
    assert code == ExitCode.CONFIG
    assert "DISPATCHER_DATABASE_URL" in line


async def test_an_invalid_dsn_option_is_a_config_error_at_once(daemon_factory, pg_cluster):
    dsn = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{pg_cluster.port}/postgres?sslmode=bogus"
    daemon = daemon_factory(env(dsn))
    code, line = await _one_error_line(daemon, 10)
    assert code == ExitCode.CONFIG
    assert "sslmode" in line


@pytest.mark.slow
async def test_an_unreachable_database_is_retried_then_reported(daemon_factory):
    port = reserved_port()  # nothing listens there
    # 6 s instead of the default 30: room for three warnings at the longest jittered backoff
    # (dispatcher.retrying.STARTUP: 0.5, 1, 2 s, each +-20 %: the third by 1.8 s + 2.4 s).
    settings = {"DISPATCHER_DATABASE_STARTUP_TIMEOUT": "6"}
    daemon = daemon_factory(env(f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app", **settings))
    await daemon.wait_for_log("database_unreachable", timeout=10)
    code, line = await _one_error_line(daemon, 60)
    assert code == ExitCode.DATABASE_UNAVAILABLE
    assert f"cannot connect to PostgreSQL at postgresql://app:***@127.0.0.1:{port}/app" in line
    retries = daemon.events("database_unreachable")
    assert len(retries) >= 3, "the start-up waits for the database with backoff"


async def test_a_role_without_connect_permission(daemon_factory, db_dsn, conn):
    role = f"noconn_{uuid.uuid4().hex[:8]}"
    dbname = db_dsn.rsplit("/", 1)[1]
    await conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(PASSWORD)
        )
    )
    await conn.execute(
        sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(sql.Identifier(dbname))
    )
    try:
        host = db_dsn.split("@", 1)[1]
        daemon = daemon_factory(env(f"postgresql://{role}:{PASSWORD}@{host}"))
        code, line = await _one_error_line(daemon, 20)
        assert code == ExitCode.PERMISSION
        assert f'permission denied for database "{dbname}"' in line
    finally:
        await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
