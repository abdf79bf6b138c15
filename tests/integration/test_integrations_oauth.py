"""OAuth token refresh against a real local token endpoint and a real PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import hostdb
import pytest
from support.integrations import (
    KEYS_1,
    create_integration,
    create_token,
    events_of,
    health_logs,
    in_past,
    integration,
    one,
    token,
    wait_until,
)
from support.oauth_server import Answer, InvalidGrant, OAuthServer, Proceed

from dispatcher.crypto import Keyring, parse_keys

pytest_plugins = ("support.integration_fixtures",)

KEYRING = Keyring(parse_keys(KEYS_1))


async def setup_google(
    conn,
    oauth: OAuthServer,
    *,
    method="client_secret_post",
    expires_in=60.0,
    provider="google",
    extra=None,
):
    org = await hostdb.create_org(conn)
    oauth.add_client("client-a", "client-secret-a", method)
    access, refresh = oauth.issue("client-a")
    config = {
        "client_id": "client-a",
        "client_secret": "client-secret-a",
        "token_url": oauth.token_url,
        **(extra or {}),
    }
    integ = await create_integration(conn, org, provider=provider, config=config)
    tok = await create_token(
        conn, org, integ, access=access, refresh=refresh, provider=provider, expires_in=expires_in
    )
    return org, integ, tok, access, refresh


@pytest.mark.parametrize("method", ["client_secret_post", "client_secret_basic"])
async def test_refresh_before_expiry_with_each_client_auth(conn, make_worker, oauth, method):
    _org, _integ, tok, access, refresh = await setup_google(
        conn, oauth, method=method, extra={"token_auth_method": method}
    )
    worker = await make_worker()
    summary = await worker.run_once()
    assert summary.tokens == 1
    [req] = oauth.token_requests
    assert req.outcome == "ok" and req.auth_method == method
    assert req.form["grant_type"] == "refresh_token" and req.form["refresh_token"] == refresh
    if method == "client_secret_basic":
        assert "client_secret" not in req.form and req.authorization.startswith("Basic ")
    else:
        assert req.form["client_secret"] == "client-secret-a" and req.authorization is None

    row = await token(conn, tok)
    assert row["status"] == "active"
    assert row["access_token"].startswith("enc:v1:k1:")
    assert row["refresh_token"].startswith("enc:v1:k1:")
    new_access = KEYRING.decrypt(row["access_token"])
    new_refresh = KEYRING.decrypt(row["refresh_token"])
    assert new_access != access and new_access.startswith("at-")
    assert new_refresh == oauth.current_refresh(refresh) != refresh
    assert (row["expires_at"] - datetime.now(UTC)).total_seconds() > 3000
    assert row["last_refreshed_at"] is not None
    assert row["scope"] == "openid email"
    raw = row["raw_token_response"]
    assert raw["token_type"] == "Bearer" and raw["expires_in"] == 3600
    assert not {"access_token", "refresh_token", "id_token"} & set(raw)


async def test_token_not_due_is_left_alone(conn, make_worker, oauth):
    await setup_google(conn, oauth, expires_in=3600)
    worker = await make_worker(oauth_refresh_lead_seconds=300)
    assert (await worker.run_once()).tokens == 0
    assert oauth.token_requests == []


async def test_rotation_persisted_across_refreshes(conn, make_worker, oauth):
    oauth.expires_in = 1  # every refresh leaves a token that is due again at once
    _, _, tok, _, refresh = await setup_google(conn, oauth)
    worker = await make_worker()

    async def three_refreshes():
        await worker.refresh_due()
        return len(oauth.token_requests) >= 3

    await wait_until(three_refreshes, what="three refreshes of a 1-second token")
    presented = [r.form["refresh_token"] for r in oauth.token_requests]
    assert len(presented) == 3 and len(set(presented)) == 3, presented
    assert all(r.outcome == "ok" for r in oauth.token_requests)
    assert oauth.reuse_detected == 0
    row = await token(conn, tok)
    assert KEYRING.decrypt(row["refresh_token"]) == oauth.current_refresh(refresh)


async def test_refresh_without_rotation_keeps_the_refresh_token(conn, make_worker, oauth):
    oauth.rotate = False
    _, _, tok, _, refresh = await setup_google(conn, oauth)
    await (await make_worker()).run_once()
    row = await token(conn, tok)
    assert row["refresh_token"].startswith("enc:v1:k1:")  # kept, and now encrypted
    assert KEYRING.decrypt(row["refresh_token"]) == refresh
    assert oauth.token_requests[0].outcome == "ok"


async def test_invalid_grant_expires_token_errors_integration_and_publishes(
    conn, make_worker, oauth
):
    org, integ, tok, _, _ = await setup_google(conn, oauth)
    oauth.script_token(InvalidGrant("Token has been expired or revoked."))
    worker = await make_worker()
    await worker.refresh_due()
    assert (await token(conn, tok))["status"] == "expired"
    row = await integration(conn, integ)
    assert row["status"] == "error"
    assert "re-authenticate" in row["error_message"]
    assert "invalid_grant" in row["error_message"]
    [event] = await events_of(conn, integ)
    assert event["event_type"] == "integration.oauth.expired"
    assert event["org_id"] == org and event["event_category"] == "integration"
    assert event["payload"]["token_id"] == str(tok)
    assert event["payload"]["reason"] == "invalid_grant"
    # nothing more happens for an expired token; its health check agrees
    await worker.run_once()
    assert len(oauth.token_requests) == 1
    row = await integration(conn, integ)
    assert row["status"] == "error" and "re-authenticate" in row["error_message"]
    assert "expired" in row["error_message"]


@pytest.mark.parametrize(
    "failure",
    [Answer(503), Answer(429, headers={"Retry-After": "0"}), Answer(500, delay=0.1)],
    ids=["503", "429", "500"],
)
async def test_transient_failure_is_retried_not_expired(conn, make_worker, oauth, failure):
    _, integ, tok, _, _ = await setup_google(conn, oauth)
    oauth.script_token(failure, failure, Proceed())
    worker = await make_worker()
    await worker.run_once()
    assert len(oauth.token_requests) == 1
    state = await one(
        conn, "SELECT * FROM dispatcher.oauth_refresh_state WHERE token_id = %s", (tok,)
    )
    assert state["attempts"] == 1 and state["lease_until"] is None
    row = await token(conn, tok)
    assert row["status"] == "active"
    assert state["next_attempt_at"] < row["expires_at"]  # retried before it expires
    assert (await integration(conn, integ))["status"] == "active"

    async def refreshed():
        await worker.run_once()
        return (await token(conn, tok))["last_refreshed_at"]

    await wait_until(refreshed, what="refresh after transient failures")
    assert [r.outcome for r in oauth.token_requests] == [
        f"answer_{failure.status}",
        f"answer_{failure.status}",
        "ok",
    ]
    state = await one(
        conn, "SELECT * FROM dispatcher.oauth_refresh_state WHERE token_id = %s", (tok,)
    )
    assert state["attempts"] == 0 and state["last_error"] is None
    assert await events_of(conn, integ) == []


async def test_network_failure_is_transient(conn, make_worker, oauth):
    _, integ, tok, _, _ = await setup_google(conn, oauth)
    await conn.execute(
        "UPDATE integrations SET config = config || jsonb_build_object('token_url', %s::text) "
        "WHERE id = %s",
        ("http://127.0.0.1:9/token", integ),
    )
    await (await make_worker()).run_once()
    assert (await token(conn, tok))["status"] == "active"
    state = await one(
        conn, "SELECT * FROM dispatcher.oauth_refresh_state WHERE token_id = %s", (tok,)
    )
    assert state["attempts"] == 1 and "ClientConnectorError" in state["last_error"]


async def test_slow_token_endpoint_times_out_as_transient(conn, make_worker, oauth):
    _, _, tok, _, _ = await setup_google(conn, oauth)
    oauth.script_token(Proceed(delay=2.0), Proceed())
    worker = await make_worker(integrations_http_timeout=0.5)
    await worker.run_once()
    state = await one(
        conn, "SELECT * FROM dispatcher.oauth_refresh_state WHERE token_id = %s", (tok,)
    )
    assert state["attempts"] == 1 and "did not answer" in state["last_error"]
    assert (await token(conn, tok))["status"] == "active"


async def test_invalid_client_errors_integration_but_keeps_token(conn, make_worker, oauth):
    _, integ, tok, _, _ = await setup_google(conn, oauth)
    oauth.clients["client-a"].secret = "rotated-by-provider"
    worker = await make_worker()
    await worker.run_once()  # refresh, then the health check (token still valid)
    assert (await token(conn, tok))["status"] == "active"
    row = await integration(conn, integ)
    assert row["status"] == "error" and "invalid_client" in row["error_message"]
    assert "client_secret" in row["error_message"]
    [log] = await health_logs(conn, integ)
    assert log["status"] == "failure" and log["error_code"] == "refresh_failing"


async def test_expired_while_down_is_refreshed(conn, make_worker, oauth):
    _, _, tok, _, _ = await setup_google(conn, oauth, expires_in=-7200)
    await (await make_worker()).run_once()
    row = await token(conn, tok)
    assert row["status"] == "active" and row["expires_at"] > datetime.now(UTC)


async def test_expired_without_refresh_token_is_marked_expired(conn, make_worker, oauth):
    org = await hostdb.create_org(conn)
    integ = await create_integration(conn, org, config={"client_id": "x", "client_secret": "y"})
    gone = await create_token(conn, org, integ, access="at-old", refresh=None, expires_in=-5)
    integ2 = await create_integration(conn, org, config={"client_id": "x", "client_secret": "y"})
    dead = await create_token(
        conn,
        org,
        integ2,
        access="at-old2",
        refresh="rt-old2",
        expires_in=-5,
        refresh_expires_at=in_past(10),
    )
    await (await make_worker()).refresh_due()
    assert (await token(conn, gone))["status"] == "expired"
    assert (await token(conn, dead))["status"] == "expired"
    assert oauth.token_requests == []
    types = [e["event_type"] for e in await events_of(conn)]
    assert types == ["integration.oauth.expired", "integration.oauth.expired"]


async def test_deleted_and_inactive_integrations_are_not_refreshed(conn, make_worker, oauth):
    _, integ, _, _, _ = await setup_google(conn, oauth)
    _, integ2, _, _, _ = await setup_google(conn, oauth)
    await conn.execute("UPDATE integrations SET deleted_at = now() WHERE id = %s", (integ,))
    await conn.execute("UPDATE integrations SET status = 'inactive' WHERE id = %s", (integ2,))
    await (await make_worker()).run_once()
    assert oauth.token_requests == []


async def test_microsoft_sends_scope_and_missing_client_id_is_reported(conn, make_worker, oauth):
    _, _, tok, _, _ = await setup_google(conn, oauth, provider="microsoft")
    org = await hostdb.create_org(conn)
    bad = await create_integration(conn, org, config={"token_url": oauth.token_url})
    await create_token(conn, org, bad, access="at-x", refresh="rt-x", expires_in=10)
    await (await make_worker()).run_once()
    [req] = oauth.token_requests
    assert req.form["scope"] == "openid email"
    assert (await token(conn, tok))["last_refreshed_at"] is not None
    row = await integration(conn, bad)
    assert row["status"] == "error" and "client_id" in row["error_message"]
