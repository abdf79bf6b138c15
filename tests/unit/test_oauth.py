"""OAuth refresh request building and response classification (no I/O)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from dispatcher.integrations.oauth import (
    ConfigProblem,
    Grant,
    Refusal,
    Rejected,
    Transient,
    auth_method,
    classify_response,
    refresh_request,
    scrub,
    token_endpoint,
    userinfo_endpoint,
)

NOW = datetime(2025, 12, 5, 14, 0, tzinfo=UTC)
CONFIG = {"client_id": "id 1", "client_secret": "s3cret:+&"}


def test_well_known_endpoints_and_override() -> None:
    assert token_endpoint("google", {}) == "https://oauth2.googleapis.com/token"
    assert token_endpoint("Zoom", {}) == "https://zoom.us/oauth/token"
    assert token_endpoint("microsoft", {}) == (
        "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    )
    assert token_endpoint("microsoft", {"tenant_id": "contoso.onmicrosoft.com"}) == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )
    assert token_endpoint("google", {"token_url": " https://x.test/t "}) == "https://x.test/t"
    assert token_endpoint("hubspot", {"token_url": "https://api.hubapi.com/oauth/v1/token"})
    with pytest.raises(ConfigProblem, match="set token_url"):
        token_endpoint("hubspot", {})


def test_userinfo_only_when_configured() -> None:
    assert userinfo_endpoint("google", {}) is None
    assert userinfo_endpoint("google", {"check_userinfo": True}) == (
        "https://openidconnect.googleapis.com/v1/userinfo"
    )
    assert userinfo_endpoint("x", {"userinfo_url": "https://x.test/me"}) == "https://x.test/me"


def test_auth_method_defaults_and_config() -> None:
    assert auth_method("google", {}) == "client_secret_post"
    assert auth_method("microsoft", {}) == "client_secret_post"
    assert auth_method("zoom", {}) == "client_secret_basic"
    assert auth_method("other", {}) == "client_secret_basic"  # RFC 6749 2.3.1: MUST support
    assert auth_method("google", {"token_auth_method": "basic"}) == "client_secret_basic"
    assert auth_method("zoom", {"token_auth_method": "client_secret_post"}) == "client_secret_post"
    with pytest.raises(ConfigProblem, match="private_key_jwt"):
        auth_method("google", {"token_auth_method": "private_key_jwt"})


def test_post_request() -> None:
    req = refresh_request("google", CONFIG, "rt-1", "openid email")
    assert req.form == {
        "grant_type": "refresh_token",
        "refresh_token": "rt-1",
        "client_id": "id 1",
        "client_secret": "s3cret:+&",
    }
    assert "Authorization" not in req.headers
    assert set(req.secrets) == {"rt-1", "s3cret:+&"}


def test_basic_request_form_encodes_credentials() -> None:
    req = refresh_request("zoom", CONFIG, "rt-1", None)
    assert req.form == {"grant_type": "refresh_token", "refresh_token": "rt-1"}
    raw = base64.b64decode(req.headers["Authorization"].removeprefix("Basic ")).decode()
    assert raw == "id+1:s3cret%3A%2B%26"  # RFC 6749 2.3.1


def test_microsoft_sends_scope() -> None:
    assert refresh_request("microsoft", CONFIG, "rt", "a b").form["scope"] == "a b"
    assert "scope" not in refresh_request("google", CONFIG, "rt", "a b").form
    assert (
        refresh_request("google", {**CONFIG, "refresh_send_scope": True}, "rt", "a").form["scope"]
        == "a"
    )


def test_missing_client_id() -> None:
    with pytest.raises(ConfigProblem, match="client_id"):
        refresh_request("google", {"client_secret": "x"}, "rt", None)


def answer(status: int, body: object, retry_after: float | None = None):
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return classify_response(status, raw, NOW, ("rt-secret", "client-secret"), retry_after)


def test_grant_with_rotation_and_no_credentials_in_raw() -> None:
    got = answer(
        200,
        {
            "access_token": "at",
            "refresh_token": "rt2",
            "id_token": "idt",
            "expires_in": 1800,
            "scope": "a b",
            "token_type": "bearer",
            "refresh_token_expires_in": 86400,
        },
    )
    assert isinstance(got, Grant)
    assert got.access_token == "at" and got.refresh_token == "rt2"
    assert got.expires_at == NOW + timedelta(seconds=1800)
    assert got.refresh_expires_at == NOW + timedelta(days=1)
    assert got.scope == "a b" and got.token_type == "bearer"
    assert got.raw == {
        "expires_in": 1800,
        "scope": "a b",
        "token_type": "bearer",
        "refresh_token_expires_in": 86400,
    }


def test_grant_defaults() -> None:
    got = answer(200, {"access_token": "at"})
    assert isinstance(got, Grant)
    assert got.refresh_token is None and got.scope is None and got.token_type == "Bearer"
    assert got.expires_at == NOW + timedelta(seconds=3600)  # RFC default the host documents
    got = answer(200, {"access_token": "at", "expires_in": "bogus", "scope": ["a", "b"]})
    assert isinstance(got, Grant) and got.scope == "a b"
    assert got.expires_at == NOW + timedelta(seconds=3600)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_transient_statuses(status: int) -> None:
    got = answer(status, {"error": "temporarily_unavailable"}, retry_after=7)
    assert isinstance(got, Transient) and got.status == status and got.retry_after == 7


def test_success_without_token_is_transient() -> None:
    assert isinstance(answer(200, b"<html>maintenance</html>"), Transient)
    assert isinstance(answer(200, {"token_type": "Bearer"}), Transient)


def test_invalid_grant_is_a_refusal() -> None:
    got = answer(400, {"error": "invalid_grant", "error_description": "Token has been revoked."})
    assert isinstance(got, Refusal)
    assert got.error == "invalid_grant" and "revoked" in got.message


@pytest.mark.parametrize("error", ["invalid_client", "unauthorized_client", "invalid_scope"])
def test_other_errors_are_rejections(error: str) -> None:
    got = answer(401 if error == "invalid_client" else 400, {"error": error})
    assert isinstance(got, Rejected) and got.error == error


def test_messages_are_scrubbed() -> None:
    got = answer(
        400,
        {
            "error": "invalid_request",
            "error_description": "bad refresh_token rt-secret for client-secret",
        },
    )
    assert isinstance(got, Rejected)
    assert "rt-secret" not in got.message and "client-secret" not in got.message
    assert scrub("a rt-secret b", ["rt-secret", ""]) == "a [redacted] b"
    assert isinstance(answer(403, b"nope"), Rejected)
