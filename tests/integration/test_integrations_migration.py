"""0004_integrations: the standalone tables follow docs/host-contract.md, and a host database that
already has the integration tables (the host's real ones, from host_schema.sql) is left exactly
as it was and works."""

from __future__ import annotations

from typing import Any

import hostdb
import psycopg
from support.integrations import (
    KEYS_1,
    create_integration,
    create_token,
    health_logs,
    token,
)
from test_migrations import CATALOG

from dispatcher.migrations import apply_migrations

pytest_plugins = ("support.integration_fixtures",)


def catalog(dsn: str) -> set[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return {tuple(r) for r in conn.execute(CATALOG).fetchall()}


async def test_host_integration_tables_are_left_alone_and_work(empty_db_dsn, oauth, make_worker):
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute(hostdb.host_schema_sql(c))  # the host's real integration tables included
    before = catalog(empty_db_dsn)
    await apply_migrations(empty_db_dsn)
    after = catalog(empty_db_dsn)
    assert before - after == set(), "a host object was changed or dropped"
    assert after - before == set(), f"something was added to the host's tables: {after - before}"

    # and the worker runs on them
    async with await hostdb.connect(empty_db_dsn) as conn:
        org = await hostdb.create_org(conn)
        oauth.add_client("c", "client-secret-c")
        access, refresh = oauth.issue("c")
        integ = await create_integration(
            conn,
            org,
            config={
                "client_id": "c",
                "client_secret": "client-secret-c",
                "token_url": oauth.token_url,
                "health_check_url": oauth.url("/health/h"),
            },
        )
        tok = await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=5)
        from dispatcher.db import open_pool
        from dispatcher.integrations.worker import IntegrationsWorker
        from dispatcher.settings import load_settings

        settings = load_settings(
            database_url=empty_db_dsn,
            encryption_keys=KEYS_1,
            pool_min_size=1,
            metrics_address="",
            health_check_jitter=0,
        )
        pool = await open_pool(settings)
        try:
            async with IntegrationsWorker(settings, pool) as worker:
                summary = await worker.run_once()
        finally:
            await pool.close()
        assert summary.tokens == 1 and summary.checks == 1
        assert (await token(conn, tok))["access_token"].startswith("enc:v1:k1:")
        [log] = await health_logs(conn, integ)
        assert log["status"] == "success"


async def test_standalone_tables_follow_the_host_schema(conn) -> None:
    cur = await conn.execute(
        "SELECT table_name, column_name, data_type, character_maximum_length AS len, "
        "column_default AS dflt, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public' AND table_name LIKE 'integration%%' "
        "AND table_name <> 'integration_retry_config'"
    )
    cols = {(r["table_name"], r["column_name"]): r for r in await cur.fetchall()}

    def col(table: str, name: str) -> dict[str, Any]:
        return cols[(table, name)]

    assert col("integrations", "type")["len"] == 50
    assert col("integrations", "provider")["len"] == 50
    assert col("integrations", "config")["data_type"] == "jsonb"
    assert col("integrations", "config")["is_nullable"] == "NO"
    assert "'inactive'" in col("integrations", "status")["dflt"]
    assert "'unknown'" in col("integrations", "health_status")["dflt"]
    assert col("integrations", "error_count")["data_type"] == "integer"
    for name in ("is_primary", "last_health_check", "error_message", "metadata", "deleted_at"):
        assert ("integrations", name) in cols
    for name in (
        "check_type",
        "status",
        "response_time_ms",
        "error_message",
        "error_code",
        "details",
        "checked_by",
        "created_at",
    ):
        assert ("integration_health_logs", name) in cols
    assert col("integration_oauth_tokens", "access_token")["is_nullable"] == "NO"
    assert col("integration_oauth_tokens", "access_token")["data_type"] == "text"
    assert col("integration_oauth_tokens", "refresh_token")["data_type"] == "text"
    assert "'Bearer'" in col("integration_oauth_tokens", "token_type")["dflt"]
    assert "'active'" in col("integration_oauth_tokens", "status")["dflt"]
    for name in (
        "user_id",
        "scope",
        "expires_at",
        "refresh_expires_at",
        "account_id",
        "account_email",
        "raw_token_response",
        "last_refreshed_at",
        "last_used_at",
    ):
        assert ("integration_oauth_tokens", name) in cols
    fo = "integration_failover_config"
    assert col(fo, "failover_threshold")["dflt"] == "3"
    assert col(fo, "auto_failover")["dflt"] == "true"
    assert col(fo, "auto_recovery")["dflt"] == "false"
    assert col(fo, "recovery_check_interval_minutes")["dflt"] == "30"
    assert "'primary'" in col(fo, "current_active")["dflt"]
    assert col(fo, "failover_count")["dflt"] == "0"
    # one active token per integration
    org = await hostdb.create_org(conn)
    integ = await create_integration(conn, org)
    await create_token(conn, org, integ, access="a", refresh=None)
    try:
        await create_token(conn, org, integ, access="b", refresh=None)
    except psycopg.errors.UniqueViolation:
        pass
    else:
        raise AssertionError("two active tokens for one integration were accepted")
