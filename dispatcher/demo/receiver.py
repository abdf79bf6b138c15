"""The demo's webhook receiver: verifies both signature schemes on every request.

It does what docs/receivers.md tells a receiver to do, written from the
schemes' descriptions rather than with dispatcher.signing: check the Standard
Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`) and
the host's `X-InTime-Signature`, reject stale timestamps, and treat a
`webhook-id` it already accepted as a duplicate. Each endpoint answers as
scripted (fail N times, or stay down until repaired) so the demo can show
retries and the dead-letter queue.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import web

TOLERANCE_SECONDS = 300  # Standard Webhooks' recommended window against replays


def verify_standard_webhooks(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str | None:
    """None when the Standard Webhooks signature is valid, else why not."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    signatures = headers.get("webhook-signature", "")
    if not (msg_id and stamp and signatures):
        return "missing webhook-id, webhook-timestamp or webhook-signature"
    if not stamp.isdigit():
        return "webhook-timestamp is not Unix seconds"
    if abs((time.time() if now is None else now) - int(stamp)) > TOLERANCE_SECONDS:
        return "webhook-timestamp is more than 5 minutes away"
    if secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_"))
        except binascii.Error:
            return "secret is not valid whsec_ base64"
    else:
        key = secret.encode()  # the host's 64-hex secrets are used as their UTF-8 bytes
    digest = hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(digest).decode()
    for entry in signatures.split():
        version, _, signature = entry.partition(",")
        if version == "v1" and hmac.compare_digest(signature, expected):
            return None
    return "no webhook-signature entry matches"


def verify_intime(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None
) -> str | None:
    """None when the host's X-InTime-Signature is valid, else why not."""
    stamp = headers.get("X-InTime-Timestamp", "")
    signature = headers.get("X-InTime-Signature", "")
    if not (stamp and signature):
        return "missing X-InTime-Timestamp or X-InTime-Signature"
    try:
        sent = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return "X-InTime-Timestamp is not ISO-8601"
    if abs((time.time() if now is None else now) - sent) > TOLERANCE_SECONDS:
        return "X-InTime-Timestamp is more than 5 minutes away"
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
    if not hmac.compare_digest(signature, "sha256=" + mac.hexdigest()):
        return "X-InTime-Signature does not match"
    return None


@dataclass
class Endpoint:
    """One scripted endpoint: fails `fail_next` times, or always while `down`."""

    name: str
    secret: str
    fail_status: int = 500
    fail_next: int = 0
    down: bool = False
    why: str = ""

    def answer(self) -> int:
        if self.down:
            return self.fail_status
        if self.fail_next > 0:
            self.fail_next -= 1
            return self.fail_status
        return 200


@dataclass(frozen=True)
class Seen:
    path: str
    event_type: str
    webhook_id: str
    status: int
    problems: tuple[str, ...]
    duplicate: bool

    @property
    def verified(self) -> bool:
        return not self.problems


@dataclass
class DemoReceiver:
    say: Callable[[str], None]
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    _accepted: set[str] = field(default_factory=set)
    _runner: web.AppRunner | None = None
    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def all_verified(self) -> bool:
        return bool(self.seen) and all(s.verified for s in self.seen)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        endpoint = self.endpoints.get(request.path)
        if endpoint is None:
            return web.Response(status=404)
        headers = request.headers
        problems = tuple(
            p
            for p in (
                verify_standard_webhooks(endpoint.secret, headers, body),
                verify_intime(endpoint.secret, headers, body),
            )
            if p
        )
        msg_id = headers.get("webhook-id", "")
        event_type = headers.get("X-InTime-Event", "?")
        duplicate = not problems and msg_id in self._accepted
        if problems:
            status, note = 401, "signatures BAD: " + "; ".join(problems) + ", answers 401"
        elif duplicate:
            status, note = 200, "signatures OK, a webhook-id already processed: ignored"
        else:
            status = endpoint.answer()
            note = f"signatures OK, answers {status}"
            if status == 200:
                self._accepted.add(msg_id)
            elif endpoint.why:
                note += f" ({endpoint.why})"
        self.seen.append(Seen(request.path, event_type, msg_id, status, problems, duplicate))
        self.say(f"   receiver   {endpoint.name:<17} {event_type:<14} {note}")
        return web.Response(status=status)
