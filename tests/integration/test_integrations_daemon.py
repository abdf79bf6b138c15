"""The integrations worker inside the real daemon (App), and single flight across replicas."""

from __future__ import annotations

import asyncio
import json
from uuid import UUID

import hostdb
from support.integrations import (
    FAST,
    create_integration,
    create_token,
    events_of,
    health_logs,
    one,
    token,
    wait_until,
)
from support.oauth_server import OAuthServer, Proceed

pytest_plugins = ("support.integration_fixtures",)

DAEMON = {k: v for k, v in FAST.items() if k not in ("pool_min_size", "pool_max_size")}


async def due_tokens(conn, oauth: OAuthServer, n: int) -> list[tuple[UUID, UUID, str]]:
    """n integrations with a token expiring within the lead time, created in one transaction."""
    org = await hostdb.create_org(conn)
    oauth.add_client("shared", "shared-client-secret")
    made = []
    async with conn.transaction():
        for i in range(n):
            access, refresh = oauth.issue("shared")
            integ = await create_integration(
                conn,
                org,
                name=f"Cal {i}",
                config={
                    "client_id": "shared",
                    "client_secret": "shared-client-secret",
                    "token_url": oauth.token_url,
                },
            )
            tok = await create_token(
                conn, org, integ, access=access, refresh=refresh, expires_in=30
            )
            made.append((integ, tok, refresh))
    return made


def assert_one_request_per_token(oauth: OAuthServer, made: list[tuple[UUID, UUID, str]]) -> None:
    per_token = {refresh: len(oauth.requests_for(refresh)) for _, _, refresh in made}
    assert sorted(set(per_token.values())) == [1], per_token
    assert oauth.reuse_detected == 0
    assert len(oauth.token_requests) == len(made)
    assert all(r.outcome == "ok" for r in oauth.token_requests)


async def test_two_workers_refresh_each_token_exactly_once(conn, make_worker, oauth):
    made = await due_tokens(conn, oauth, 24)
    oauth.script_token(Proceed(delay=0.05))
    a = await make_worker(integrations_concurrency=2)
    b = await make_worker(integrations_concurrency=2)
    assert a.owner != b.owner
    counts = await asyncio.gather(
        a.refresh_due(), b.refresh_due(), a.refresh_due(), b.refresh_due()
    )
    assert sum(counts) >= 24
    assert_one_request_per_token(oauth, made)
    for _, tok, _ in made:
        assert (await token(conn, tok))["last_refreshed_at"] is not None


async def test_two_daemons_refresh_each_token_exactly_once(conn, start_daemon, oauth):
    oauth.script_token(Proceed(delay=0.05))
    settings = {**DAEMON, "integrations_poll_seconds": 0.05, "integrations_concurrency": 2}
    first = await start_daemon(**settings, instance_name="replica-a")
    second = await start_daemon(**settings, instance_name="replica-b")
    made = await due_tokens(conn, oauth, 30)  # both are polling when these become due

    async def all_refreshed():
        cur = await conn.execute(
            "SELECT count(*) AS n FROM integration_oauth_tokens WHERE last_refreshed_at IS NULL"
        )
        row = await cur.fetchone()
        return row["n"] == 0

    await wait_until(all_refreshed, timeout=30, what="every token refreshed")
    await first.stop()
    await second.stop()
    assert_one_request_per_token(oauth, made)
    owners = await conn.execute(
        "SELECT count(*) AS n FROM dispatcher.oauth_refresh_state WHERE refreshed_count = 1"
    )
    assert (await owners.fetchone())["n"] == 30


async def test_daemon_refreshes_checks_and_delivers_integration_events(
    conn, start_daemon, oauth, receiver
):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url("/alerts"), ["integration.*"])
    oauth.add_client("c", "client-secret-c", "client_secret_basic")
    access, refresh = oauth.issue("c")
    config = {
        "client_id": "c",
        "client_secret": "client-secret-c",
        "token_url": oauth.token_url,
        "token_auth_method": "client_secret_basic",
        "health_check_url": oauth.url("/health/cal"),
    }
    integ = await create_integration(conn, org, config=config)
    # expired while the daemon was down
    tok = await create_token(conn, org, integ, access=access, refresh=refresh, expires_in=-3600)
    _, revoked_refresh = oauth.issue("c")
    oauth.revoke(revoked_refresh)
    integ2 = await create_integration(conn, org, name="Revoked", config=config)
    await create_token(conn, org, integ2, access="at-gone", refresh=revoked_refresh, expires_in=-60)

    await start_daemon(**DAEMON)

    async def refreshed():
        return (await token(conn, tok))["last_refreshed_at"]

    await wait_until(refreshed, what="the daemon refreshing the expired token")
    row = await token(conn, tok)
    assert row["status"] == "active" and row["access_token"].startswith("enc:v1:k1:")

    async def checked():
        return await health_logs(conn, integ)

    [log, *_] = await wait_until(checked, what="the daemon's scheduled health check")
    assert log["check_type"] == "scheduled" and log["status"] == "success"

    async def expired_alert():
        await receiver.wait_for(1, path="/alerts", timeout=15)
        bodies = [json.loads(r.body) for r in receiver.requests_for("/alerts")]
        return [b for b in bodies if b["type"] == "integration.oauth.expired"]

    [body] = await wait_until(expired_alert, what="integration.oauth.expired delivered")
    assert body["data"]["integration_id"] == str(integ2)
    assert body["data"]["reason"] == "invalid_grant"
    assert next(e["event_type"] for e in await events_of(conn, integ2)) == (
        "integration.oauth.expired"
    )

    async def delivered():
        row = await one(
            conn,
            "SELECT * FROM webhook_deliveries WHERE webhook_id = %s AND event_type = %s",
            (hook["id"], "integration.oauth.expired"),
        )
        return row["status"] == "success"

    await wait_until(delivered, what="the delivery recorded as success")


async def test_daemon_runs_without_integrations_worker_when_disabled(conn, start_daemon, oauth):
    made = await due_tokens(conn, oauth, 1)
    running = await start_daemon(**DAEMON, integrations_enabled=False)
    await running.stop()
    assert oauth.token_requests == []
    assert (await token(conn, made[0][1]))["last_refreshed_at"] is None
