"""No secret leaks: a full scenario (deliveries, retries, DLQ, 410, secret rotation, custom
auth headers, OAuth refresh), run by the daemon as a subprocess under a least-privilege role
with a password in its DSN; then every log line and every text/json column of every table is
scanned for every secret, token, key and the password. Zero hits.

The columns where a secret lives by design are left out of the scan: webhooks.secret and
webhooks.headers (the host's configuration), dispatcher.webhook_secrets.previous_secret,
integrations.config and the token columns of integration_oauth_tokens (encrypted by the
dispatcher: the tokens it writes must not appear there in clear either).
"""

from __future__ import annotations

import secrets
import signal
import uuid
from importlib import resources

import hostdb
import psycopg
from psycopg import sql
from support.daemon import daemon_env
from support.integrations import KEYS_1, create_integration, create_token, wait_until
from support.oauth_server import OAuthServer
from support.receiver import Reply

SCRIPT = resources.files("dispatcher").joinpath("sql/least_privilege.sql").read_text("utf-8")

HOME_COLUMNS = {
    ("public", "webhooks", "secret"),
    ("public", "webhooks", "headers"),
    ("dispatcher", "webhook_secrets", "previous_secret"),
    ("public", "integrations", "config"),
    ("public", "integration_oauth_tokens", "access_token"),
    ("public", "integration_oauth_tokens", "refresh_token"),
}


async def _text_columns(conn) -> list[tuple[str, str, str]]:
    cur = await conn.execute(
        "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema IN ('public', 'dispatcher') AND t.table_type = 'BASE TABLE' "
        # a partition's rows are scanned through its parent (dispatcher.attempts is by day)
        "AND NOT (SELECT k.relispartition FROM pg_class k "
        "         WHERE k.oid = format('%I.%I', c.table_schema, c.table_name)::regclass) "
        "AND c.data_type IN ('text', 'character varying', 'character', 'json', 'jsonb', "
        "'ARRAY', 'USER-DEFINED') ORDER BY 1, 2, 3"
    )
    return [(r["table_schema"], r["table_name"], r["column_name"]) for r in await cur.fetchall()]


async def _scan_tables(conn, needles: dict[str, str]) -> list[str]:
    hits = []
    columns = await _text_columns(conn)
    assert ("public", "webhook_deliveries", "request_headers") in columns
    assert len(columns) > 40, "premise: the scan sees the whole schema"
    for schema, table, column in columns:
        if (schema, table, column) in HOME_COLUMNS:
            continue
        query = sql.SQL(
            "SELECT n.label, count(*) AS n FROM {}.{} t, "
            "unnest(%s::text[], %s::text[]) AS n(label, needle) "
            "WHERE strpos(t.{}::text, n.needle) > 0 GROUP BY n.label"
        ).format(sql.Identifier(schema), sql.Identifier(table), sql.Identifier(column))
        cur = await conn.execute(query, (list(needles), list(needles.values())))
        for row in await cur.fetchall():
            hits.append(f"{schema}.{table}.{column}: {row['label']} x{row['n']}")
    return hits


async def test_no_secret_in_any_log_line_or_column(
    db_dsn, conn, receiver, daemon_factory, pg_cluster
):
    password = "pw-" + secrets.token_urlsafe(18)
    role = f"scan_{uuid.uuid4().hex[:10]}"
    await conn.execute(SCRIPT)
    await conn.execute(
        sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE dispatcher").format(
            sql.Identifier(role), sql.Literal(password)
        )
    )
    dbname = db_dsn.rsplit("/", 1)[1]
    dsn = f"postgresql://{role}:{password}@127.0.0.1:{pg_cluster.port}/{dbname}"

    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn,
        org,
        max_retries=1,
        retry_strategy="fixed",
        base_delay_seconds=1,
        max_delay_seconds=1,
        enable_jitter=False,
    )
    bearer, api_key, cookie = (secrets.token_urlsafe(24) for _ in range(3))
    auth = {"Authorization": f"Bearer {bearer}", "X-Api-Key": api_key, "Cookie": f"s={cookie}"}
    hooks = {
        path: await hostdb.create_webhook(conn, org, receiver.url(path), ["*"], headers=auth)
        for path in ("/ok", "/flaky", "/dead", "/gone")
    }
    previous = secrets.token_hex(32)
    await conn.execute(
        "INSERT INTO dispatcher.webhook_secrets (webhook_id, previous_secret, "
        "previous_expires_at) VALUES (%s, %s, now() + interval '1 hour')",
        (hooks["/ok"]["id"], previous),
    )
    receiver.respond("/flaky", Reply(500, b"try later"), Reply(200))
    receiver.respond("/dead", Reply(503))
    receiver.respond("/gone", Reply(410))

    async with OAuthServer() as oauth:
        client_secret = "cs-" + secrets.token_urlsafe(18)
        oauth.add_client("scan-client", client_secret)
        access, refresh = oauth.issue("scan-client")
        integ = await create_integration(
            conn,
            org,
            config={
                "client_id": "scan-client",
                "client_secret": client_secret,
                "token_url": oauth.token_url,
            },
        )
        tok = await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=30)

        daemon = daemon_factory(
            daemon_env(
                dsn,
                DISPATCHER_LOG_LEVEL="debug",
                DISPATCHER_HTTP_TIMEOUT="2",
                DISPATCHER_ENCRYPTION_KEYS=KEYS_1,
                DISPATCHER_INTEGRATIONS_POLL_SECONDS="0.2",
            )
        )
        await daemon.wait_for_log("ready", timeout=20)
        for i in range(3):
            await hostdb.publish(conn, "job.created", {"n": i}, org)
        for path, status in (
            ("/ok", "success"),
            ("/flaky", "success"),
            ("/dead", "dlq"),
            ("/gone", "failed"),
        ):
            await hostdb.wait_deliveries(
                conn,
                "webhook_id = %s AND status = %s",
                3,
                (hooks[path]["id"], status),
                timeout=30,
            )

        async def refreshed():
            cur = await conn.execute(
                "SELECT last_refreshed_at FROM integration_oauth_tokens WHERE id = %s", (tok,)
            )
            return (await cur.fetchone())["last_refreshed_at"]

        await wait_until(refreshed, timeout=20, what="the OAuth token refreshed")
        daemon.send_signal(signal.SIGTERM)
        assert await daemon.wait_exit(30) == 0
        issued = list(oauth.issued)

    assert receiver.requests_for("/ok")[0].headers["Authorization"] == f"Bearer {bearer}"
    needles = {
        "DSN password": password,
        "bearer token": bearer,
        "API key": api_key,
        "cookie": cookie,
        "previous webhook secret": previous,
        "OAuth client secret": client_secret,
        "encryption key": KEYS_1.split(":", 1)[1],
        **{f"webhook secret {path}": hook["secret"] for path, hook in hooks.items()},
        **{f"OAuth token {value[:3]}#{i}": value for i, value in enumerate(issued)},
    }
    assert len(issued) >= 4, "premise: the refresh issued a new access and refresh token"

    log = daemon.text()
    assert log.count('"event":"delivery_attempt"') >= 12, "premise: the log saw the scenario"
    leaked = [label for label, value in needles.items() if value in log]
    assert leaked == [], f"in the daemon's log: {leaked}"

    async with await psycopg.AsyncConnection.connect(
        db_dsn, autocommit=True, row_factory=psycopg.rows.dict_row
    ) as owner:
        # Premise: the scan finds a secret where it should not be.
        canary = "canary-" + secrets.token_hex(8)
        await owner.execute(
            "UPDATE dispatcher.attempts SET error_message = %s "
            "WHERE id = (SELECT min(id) FROM dispatcher.attempts)",
            (canary,),
        )
        assert await _scan_tables(owner, {"canary": canary}) == [
            "dispatcher.attempts.error_message: canary x1"
        ]
        hits = await _scan_tables(owner, needles)
        assert hits == [], hits
        # The refreshed tokens are stored encrypted: not in clear, even in their own columns.
        cur = await owner.execute(
            "SELECT access_token, refresh_token FROM integration_oauth_tokens WHERE id = %s",
            (tok,),
        )
        row = await cur.fetchone()
        assert row is not None
        for value in issued[2:]:
            assert value not in (row["access_token"] or "")
            assert value not in (row["refresh_token"] or "")
        await owner.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,)
        )
        await owner.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        await owner.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
