"""A local OAuth 2.0 provider for the tests: token endpoint, userinfo and health endpoints.

Real aiohttp server on 127.0.0.1 in the test's loop.

    async with OAuthServer() as server:
        server.add_client("app", "s3cret", "client_secret_basic")
        tokens = server.issue("app")            # a valid (access, refresh) pair
        server.script_token(Answer(503), Proceed())   # consumed in order, the last repeats
        server.script_health("/health/a", Answer(200, delay=0.5), Hang())

Token endpoint (POST /token): client authentication by HTTP Basic or by form fields, checked
against the method registered for the client (a mismatch is ``invalid_client``); grant_type
refresh_token; rotating refresh tokens (``rotate=True``: every refresh issues a new refresh
token and the old one becomes invalid; presenting a rotated one again counts as reuse, answers
``invalid_grant`` and revokes the token family, as Google/Microsoft-style providers do).
Steps: ``Proceed(delay)`` handle normally after a delay (slow mode), ``Answer(status, body)``
canned answer (5xx, 429...), ``InvalidGrant()``, ``Hang()``.

GET /userinfo: 200 for a current access token (Bearer), else 401. GET /health/<name>: the
scripted steps for that path (default 200).
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import web

from .net import LOOPBACK, bound_socket


@dataclass(frozen=True)
class Proceed:
    delay: float = 0.0


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class InvalidGrant:
    description: str = "Token has been expired or revoked."


@dataclass(frozen=True)
class Hang:
    pass


Step = Proceed | Answer | InvalidGrant | Hang


@dataclass
class TokenRequest:
    form: dict[str, str]
    authorization: str | None
    client_id: str | None
    auth_method: str | None
    refresh_token: str | None
    outcome: str = ""
    received_at: float = field(default_factory=time.time)


@dataclass
class Client:
    client_id: str
    secret: str
    method: str


@dataclass
class Family:
    client_id: str
    current_refresh: str
    access: set[str] = field(default_factory=set)
    revoked: bool = False


class OAuthServer:
    def __init__(self, *, rotate: bool = True, expires_in: int = 3600) -> None:
        self.rotate = rotate
        self.expires_in = expires_in
        self.clients: dict[str, Client] = {}
        self.token_requests: list[TokenRequest] = []
        self.other_requests: list[tuple[str, str | None]] = []  # (path, authorization)
        self.reuse_detected = 0
        self.issued: list[str] = []  # every token ever issued (for leak scans)
        self._families: dict[str, Family] = {}  # by any refresh token ever in the family
        self._token_steps: list[Step] = []
        self._health_steps: dict[str, list[Step]] = defaultdict(list)
        self._changed = asyncio.Condition()
        self._closing = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        sock = bound_socket()
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_post("/token", self._token)
        app.router.add_get("/userinfo", self._userinfo)
        app.router.add_get("/health/{name}", self._health)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> OAuthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def url(self, path: str) -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    @property
    def token_url(self) -> str:
        return self.url("/token")

    # -- scripting --------------------------------------------------------------------
    def add_client(self, client_id: str, secret: str, method: str = "client_secret_post") -> None:
        self.clients[client_id] = Client(client_id, secret, method)

    def issue(self, client_id: str) -> tuple[str, str]:
        """A fresh (access_token, refresh_token) pair the server will accept."""
        access, refresh = self._new("at"), self._new("rt")
        family = Family(client_id, refresh, {access})
        self._families[refresh] = family
        return access, refresh

    def revoke(self, refresh_token: str) -> None:
        self._families[refresh_token].revoked = True

    def script_token(self, *steps: Step) -> None:
        self._token_steps = list(steps)

    def script_health(self, path: str, *steps: Step) -> None:
        self._health_steps[path] = list(steps)

    def current_refresh(self, refresh_token: str) -> str:
        return self._families[refresh_token].current_refresh

    def requests_for(self, refresh_token: str) -> list[TokenRequest]:
        """Token requests that presented any refresh token of this token's family."""
        family = self._families.get(refresh_token)
        return [
            r
            for r in self.token_requests
            if r.refresh_token and self._families.get(r.refresh_token) is family
        ]

    async def wait_for_token_requests(self, count: int, timeout: float = 10.0) -> None:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(self.token_requests) >= count)
            except TimeoutError:
                raise AssertionError(
                    f"oauth server: expected {count} token requests within {timeout}s, "
                    f"got {len(self.token_requests)}"
                ) from None

    # -- handlers ---------------------------------------------------------------------
    def _new(self, kind: str) -> str:
        value = f"{kind}-{secrets.token_urlsafe(24)}"
        self.issued.append(value)
        return value

    @staticmethod
    def _next(steps: list[Step]) -> Step:
        if not steps:
            return Proceed()
        return steps.pop(0) if len(steps) > 1 else steps[0]

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        auth = request.headers.get("Authorization")
        rec = TokenRequest(form, auth, None, None, form.get("refresh_token"))
        async with self._changed:
            self.token_requests.append(rec)
            self._changed.notify_all()
        step = self._next(self._token_steps)
        if isinstance(step, Hang):
            await self._closing.wait()
            raise asyncio.CancelledError
        if isinstance(step, Answer):
            rec.outcome = f"answer_{step.status}"
            if step.delay:
                await asyncio.sleep(step.delay)
            return web.json_response(
                step.body or {"error": "server_error"}, status=step.status, headers=step.headers
            )
        if isinstance(step, Proceed) and step.delay:
            await asyncio.sleep(step.delay)
        client, error = self._authenticate(form, auth, rec)
        if error is not None:
            rec.outcome = "invalid_client"
            return _error(401, "invalid_client", error)
        if form.get("grant_type") != "refresh_token":
            rec.outcome = "unsupported_grant_type"
            return _error(400, "unsupported_grant_type", "only refresh_token is supported")
        family = self._families.get(rec.refresh_token or "")
        if isinstance(step, InvalidGrant):
            if family is not None:
                family.revoked = True
            rec.outcome = "invalid_grant"
            return _error(400, "invalid_grant", step.description)
        if family is None or family.revoked or family.client_id != client:
            rec.outcome = "invalid_grant"
            return _error(400, "invalid_grant", "unknown or revoked refresh token")
        if rec.refresh_token != family.current_refresh:
            self.reuse_detected += 1
            family.revoked = True
            rec.outcome = "reuse_detected"
            return _error(400, "invalid_grant", "refresh token reuse detected; family revoked")
        access = self._new("at")
        family.access = {access}
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "scope": form.get("scope", "openid email"),
            "id_token": self._new("idt"),
        }
        if self.rotate:
            new_refresh = self._new("rt")
            family.current_refresh = new_refresh
            self._families[new_refresh] = family
            body["refresh_token"] = new_refresh
        rec.outcome = "ok"
        return web.json_response(body, headers={"Cache-Control": "no-store"})

    def _authenticate(
        self, form: dict[str, str], auth: str | None, rec: TokenRequest
    ) -> tuple[str | None, str | None]:
        if auth and auth.startswith("Basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
            except ValueError:
                return None, "malformed Basic credentials"
            cid, _, secret = raw.partition(":")
            cid, secret = unquote_plus(cid), unquote_plus(secret)
            method = "client_secret_basic"
        else:
            cid, secret = form.get("client_id", ""), form.get("client_secret", "")
            method = "client_secret_post"
        rec.client_id, rec.auth_method = cid, method
        client = self.clients.get(cid)
        if client is None:
            return None, "unknown client"
        if client.method != method:
            return None, f"client must authenticate with {client.method}"
        if client.secret != secret:
            return None, "bad client secret"
        return cid, None

    async def _userinfo(self, request: web.Request) -> web.StreamResponse:
        auth = request.headers.get("Authorization")
        self.other_requests.append(("/userinfo", auth))
        token = auth[7:] if auth and auth.startswith("Bearer ") else ""
        for family in self._families.values():
            if not family.revoked and token in family.access:
                return web.json_response({"sub": "user-1", "email": "user@example.com"})
        return _error(401, "invalid_token", "access token is not valid")

    async def _health(self, request: web.Request) -> web.StreamResponse:
        self.other_requests.append((request.path, request.headers.get("Authorization")))
        step = self._next(self._health_steps[request.path])
        if isinstance(step, Hang):
            await self._closing.wait()
            raise asyncio.CancelledError
        if isinstance(step, Answer):
            if step.delay:
                await asyncio.sleep(step.delay)
            return web.json_response(step.body or {"ok": step.status < 400}, status=step.status)
        if isinstance(step, Proceed) and step.delay:
            await asyncio.sleep(step.delay)
        return web.json_response({"ok": True})


def _error(status: int, error: str, description: str) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)
