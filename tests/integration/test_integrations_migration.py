"""0004_integrations: the standalone tables follow HOST-SCHEMA.md, and a host database that already
has the integration tables (extra columns, constraints, RLS) is left exactly as it was and works."""

from __future__ import annotations

from pathlib import Path

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

HOST_SCHEMA = (Path(__file__).parent / "host_schema.sql").read_text()

# The integration tables as the host's migrations create them: more columns, its own names for
# constraints and indexes, RLS with policies, user_profiles references.
HOST_INTEGRATIONS = """
CREATE TABLE integrations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    type varchar(50) NOT NULL CHECK (type IN ('email', 'sms', 'calendar', 'video', 'storage',
        'hris', 'payroll', 'background_check', 'job_board', 'crm')),
    provider varchar(50) NOT NULL,
    name varchar(255) NOT NULL,
    description text,
    config jsonb NOT NULL DEFAULT '{}'::jsonb,
    status varchar(20) DEFAULT 'inactive' CHECK (status IN ('active', 'inactive', 'error')),
    is_primary boolean DEFAULT false,
    last_health_check timestamptz,
    health_status varchar(20) DEFAULT 'unknown'
        CHECK (health_status IN ('healthy', 'degraded', 'unhealthy', 'unknown')),
    error_message text,
    error_count integer DEFAULT 0,
    metadata jsonb DEFAULT '{}'::jsonb,
    created_by uuid REFERENCES user_profiles(id),
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    deleted_at timestamptz,
    CONSTRAINT integrations_org_type_provider UNIQUE (org_id, type, provider, name)
);
CREATE TABLE integration_health_logs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    integration_id uuid NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    check_type varchar(20) NOT NULL CHECK (check_type IN ('manual', 'scheduled', 'auto')),
    status varchar(20) NOT NULL CHECK (status IN ('success', 'failure', 'timeout')),
    response_time_ms integer,
    error_message text,
    error_code varchar(50),
    details jsonb DEFAULT '{}'::jsonb,
    checked_by uuid REFERENCES user_profiles(id),
    created_at timestamptz DEFAULT now()
);
CREATE TABLE integration_oauth_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    integration_id uuid NOT NULL REFERENCES integrations(id) ON DELETE CASCADE,
    user_id uuid REFERENCES user_profiles(id),
    provider varchar(50) NOT NULL,
    access_token text NOT NULL,
    refresh_token text,
    token_type varchar(50) DEFAULT 'Bearer',
    scope text,
    expires_at timestamptz,
    refresh_expires_at timestamptz,
    account_id varchar(255),
    account_email varchar(255),
    raw_token_response jsonb,
    last_refreshed_at timestamptz,
    last_used_at timestamptz,
    status varchar(20) DEFAULT 'active' CHECK (status IN ('active', 'expired', 'revoked')),
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now()
);
CREATE UNIQUE INDEX idx_oauth_tokens_one_active ON integration_oauth_tokens (integration_id)
    WHERE status = 'active';
CREATE TABLE integration_failover_config (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    org_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    integration_type varchar(50) NOT NULL,
    primary_integration_id uuid REFERENCES integrations(id),
    backup_integration_id uuid REFERENCES integrations(id),
    failover_threshold integer DEFAULT 3,
    auto_failover boolean DEFAULT true,
    auto_recovery boolean DEFAULT false,
    recovery_check_interval_minutes integer DEFAULT 30,
    current_active varchar(20) DEFAULT 'primary',
    last_failover_at timestamptz,
    last_recovery_at timestamptz,
    failover_count integer DEFAULT 0,
    notify_on_failover boolean DEFAULT true,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    UNIQUE (org_id, integration_type)
);
ALTER TABLE integrations ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_health_logs ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_oauth_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE integration_failover_config ENABLE ROW LEVEL SECURITY;
CREATE POLICY integrations_org ON integrations USING (
    org_id IN (SELECT org_id FROM user_profiles
               WHERE auth_id = current_setting('app.uid', true)::uuid));
CREATE POLICY tokens_org ON integration_oauth_tokens USING (
    org_id IN (SELECT org_id FROM user_profiles
               WHERE auth_id = current_setting('app.uid', true)::uuid));
"""


def catalog(dsn: str) -> set[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return {tuple(r) for r in conn.execute(CATALOG).fetchall()}


async def test_host_integration_tables_are_left_alone_and_work(empty_db_dsn, oauth, make_worker):
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute(HOST_SCHEMA)
        c.execute(HOST_INTEGRATIONS)
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
        from dispatcher.integrations import IntegrationsWorker
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

    def col(table: str, name: str) -> dict:
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
