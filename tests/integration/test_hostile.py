"""Hostile and broken receivers, each on a real loopback server, through the daemon.

Every attempt ends within its timeout (DISPATCHER_HTTP_TIMEOUT = 2 s here), keeps at most
10,000 characters of the answer, and records a clear error; a healthy webhook beside the
hostile one is served all along, and the daemon keeps running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import hostdb
import pytest
from support import hostile
from support.daemon import daemon_env
from support.hostile import RawServer
from support.receiver import Reply

HTTP_TIMEOUT = 2.0
# An attempt's recorded duration may exceed the timeout by scheduling noise only.
DEADLINE_MS = (HTTP_TIMEOUT + 1.5) * 1000
KEPT_CHARS = 10_000


@dataclass(frozen=True)
class Case:
    behaviour: Callable[[], hostile.Behaviour]
    status: str  # delivery status after the first attempt
    http: int  # recorded response_status
    code: str | None  # recorded error_code
    text: str | None  # in error_message
    body: tuple[int, int] = (0, KEPT_CHARS)  # inclusive range of len(response_body)
    scheme: str = "http"
    at_once: bool = False


CASES = {
    "endless chunked body, 200": Case(
        hostile.endless_body, "success", 200, None, None, (KEPT_CHARS, KEPT_CHARS)
    ),
    "endless 10 GB body, 500": Case(
        lambda: hostile.endless_body(500, chunked=False),
        "retrying",
        500,
        "http_500",
        "HTTP 500",
        (KEPT_CHARS, KEPT_CHARS),
    ),
    "gzip bomb (1 GiB inflated)": Case(
        hostile.gzip_bomb, "success", 200, None, None, (KEPT_CHARS, KEPT_CHARS)
    ),
    "body trickled 1 byte/s, 200": Case(hostile.trickle_body, "success", 200, None, None, (1, 5)),
    "body trickled 1 byte/s, 503": Case(
        lambda: hostile.trickle_body(503),
        "retrying",
        503,
        "http_503",
        "response body incomplete: not finished within 2 s",
        (1, 5),
    ),
    "headers that never end, fast": Case(
        hostile.endless_headers,
        "retrying",
        0,
        "invalid_response",
        "invalid HTTP response: Too many headers",
    ),
    "headers that never end, slow": Case(
        lambda: hostile.endless_headers(0.05), "retrying", 0, "timeout", "no response within 2 s"
    ),
    "a header line that never ends": Case(
        hostile.endless_header_line,
        "retrying",
        0,
        "invalid_response",
        "invalid HTTP response: Got more than 8190 bytes",
    ),
    "connection reset mid-request": Case(
        hostile.reset_mid_request,
        "retrying",
        0,
        "connection_reset",
        "the receiver reset the connection",
    ),
    "accepted, never answered": Case(
        hostile.never_answer, "retrying", 0, "timeout", "no response within 2 s"
    ),
    "invalid HTTP": Case(
        lambda: hostile.reply_raw(b"NOT HTTP AT ALL\r\n\r\n"),
        "retrying",
        0,
        "invalid_response",
        "invalid HTTP response: Bad status line",
    ),
    "binary garbage": Case(
        lambda: hostile.reply_raw(b"\x00\x01\x02\xff garbage"),
        "retrying",
        0,
        "invalid_response",
        "invalid HTTP response",
    ),
    "closed without answering": Case(
        lambda: hostile.reply_raw(b""),
        "retrying",
        0,
        "disconnected",
        "closed the connection before a complete response",
    ),
    "undecodable bytes in reason, headers, body": Case(
        lambda: hostile.reply_raw(
            b"HTTP/1.1 500 \xff\xfe oops\r\nX-Bad: \xff\xfe\r\n"
            b"Content-Length: 3\r\n\r\n\xff\x00\xfe"
        ),
        "retrying",
        500,
        "http_500",
        "HTTP 500",
        (3, 3),
    ),
    "status outside 100-599": Case(
        lambda: hostile.reply_raw(b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n"),
        "failed",
        999,
        "http_999",
        "HTTP 999",
    ),
    "https URL, plain TCP server": Case(
        lambda: hostile.reply_raw(b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n", at_once=True),
        "retrying",
        0,
        "tls_error",
        "serving plain HTTP on an https URL",
        scheme="https",
    ),
    "https URL, TLS server that never finishes the handshake": Case(
        hostile.record_only, "retrying", 0, "timeout", "no response within 2 s", scheme="https"
    ),
}


async def _setup(conn, receiver, url: str) -> tuple[UUID, dict[str, Any], dict[str, Any]]:
    org = await hostdb.create_org(conn)
    # Retries far away: the first attempt's row is what is checked.
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=60, enable_jitter=False
    )
    bad = await hostdb.create_webhook(conn, org, url, ["*"], name="hostile")
    good = await hostdb.create_webhook(conn, org, receiver.url("/healthy"), ["*"], name="ok")
    return org, bad, good


async def _check_attempt(conn, receiver, hook: dict[str, Any], case: Case) -> dict[str, Any]:
    [row] = await hostdb.wait_deliveries(
        conn, "webhook_id = %s AND status <> 'pending'", 1, (hook["id"],), timeout=20
    )
    assert row["status"] == case.status, row
    assert row["response_status"] == case.http, row
    assert row["error_code"] == case.code, row
    if case.text is None:
        assert row["error_message"] is None
    else:
        assert case.text in row["error_message"], row["error_message"]
        assert "\n" not in row["error_message"]
    assert row["duration_ms"] is not None and row["duration_ms"] <= DEADLINE_MS, row
    low, high = case.body
    body = row["response_body"] or ""
    assert low <= len(body) <= high, (len(body), case.body)
    return row


@pytest.mark.parametrize("name", list(CASES))
async def test_hostile_receiver(name, conn, receiver, start_daemon):
    case = CASES[name]
    behaviour = case.behaviour()
    async with RawServer(behaviour) as server:
        org, bad, good = await _setup(conn, receiver, server.url(scheme=case.scheme))
        running = await start_daemon(http_timeout=HTTP_TIMEOUT)
        await hostdb.publish(conn, "job.created", {"n": 1}, org)
        row = await _check_attempt(conn, receiver, bad, case)
        # The healthy webhook got its delivery; the daemon is still running.
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 1, (good["id"],)
        )
        assert not running.task.done()
        if name.startswith("undecodable"):
            assert row["error_message"] == "HTTP 500 \ufffd\ufffd oops"
            assert row["response_headers"]["X-Bad"] == "\ufffd\ufffd"
            assert row["response_body"] == "\ufffd\ufffd\ufffd"


async def test_tls_self_signed_certificate_is_a_retryable_failure(
    conn, receiver, start_daemon, tmp_path: Path
):
    context = hostile.self_signed_context(tmp_path)
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    async with RawServer(hostile.reply_raw(ok), ssl_context=context) as server:
        org, bad, good = await _setup(conn, receiver, server.url())
        await start_daemon(http_timeout=HTTP_TIMEOUT)
        await hostdb.publish(conn, "job.created", {}, org)
        case = Case(
            hostile.never_answer,
            "retrying",
            0,
            "tls_error",
            f"the certificate of 127.0.0.1:{server.port} was not accepted: self-signed certificate",
        )
        await _check_attempt(conn, receiver, bad, case)
        assert server.requests == 0, "nothing may be sent over an unverified TLS connection"
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 1, (good["id"],)
        )


async def test_accept_that_never_comes_times_out(conn, receiver, start_daemon):
    with hostile.UnacceptingListener() as listener:
        assert listener.connect_hangs(), "premise: the listener's accept queue is full"
        org, bad, good = await _setup(conn, receiver, listener.url())
        await start_daemon(http_timeout=HTTP_TIMEOUT)
        await hostdb.publish(conn, "job.created", {}, org)
        case = Case(hostile.never_answer, "retrying", 0, "timeout", "no response within 2 s")
        await _check_attempt(conn, receiver, bad, case)
        await hostdb.wait_deliveries(
            conn, "webhook_id = %s AND status = 'success'", 1, (good["id"],)
        )


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("http://93.184.216.34/hook", "http://93.184.216.34/..."),
        ("http://127.0.0.1:{port}/private", "http://127.0.0.1:{port}/..."),
        ("http://169.254.169.254/", "http://169.254.169.254/"),
    ],
)
async def test_redirect_is_a_failure_and_never_followed(
    conn, receiver, start_daemon, location, shown
):
    """The error names where it pointed without its path or query (they may echo the
    webhook URL's own token: test_url_token_in_logs.py)."""
    location = location.format(port=receiver.port)
    shown = shown.format(port=receiver.port)
    org, bad, good = await _setup(conn, receiver, receiver.url("/redirect"))
    receiver.respond("/redirect", Reply(302, headers={"Location": location}))
    await start_daemon(http_timeout=HTTP_TIMEOUT)
    await hostdb.publish(conn, "job.created", {}, org)
    case = Case(
        hostile.never_answer,
        "failed",
        302,
        "redirect",
        f"HTTP 302: redirect to '{shown}' not followed",
    )
    await _check_attempt(conn, receiver, bad, case)
    await hostdb.wait_deliveries(conn, "webhook_id = %s AND status = 'success'", 1, (good["id"],))
    assert {r.path for r in receiver.requests} == {"/redirect", "/healthy"}
    assert len(receiver.requests_for("/redirect")) == 1


async def test_endless_bodies_do_not_grow_the_daemons_memory(
    conn, receiver, db_dsn, daemon_factory
):
    """Hundreds of megabytes offered per attempt; the daemon reads ~40 KB of each."""
    org = await hostdb.create_org(conn)
    servers = [
        RawServer(hostile.endless_body()),
        RawServer(hostile.endless_body(chunked=False)),
        RawServer(hostile.gzip_bomb()),
    ]
    for server in servers:
        await server.start()
    try:
        for server in servers:
            await hostdb.create_webhook(conn, org, server.url(), ["*"])
        daemon = daemon_factory(
            daemon_env(
                db_dsn,
                DISPATCHER_HTTP_TIMEOUT=str(HTTP_TIMEOUT),
                # At most 48 attempts at once (3 endpoints x 16): the bound below is per
                # attempt in flight, so it is set here rather than taken from the default.
                DISPATCHER_PER_WEBHOOK_CONCURRENCY="16",
            )
        )
        await daemon.wait_for_log("ready", timeout=20)
        # Warm up: every code path (and its buffers) used once.
        for i in range(3):
            await hostdb.publish(conn, "job.created", {"warm": i}, org)
        await hostdb.wait_deliveries(conn, "status = 'success'", 9, timeout=30)
        await asyncio.sleep(0.5)  # let the last connections close before measuring
        assert daemon.pid is not None
        before = hostile.rss_bytes(daemon.pid)
        offered_before = sum(s.bytes_sent for s in servers)

        await hostdb.insert_events_directly(conn, org, "job.created", 40)
        rows = await hostdb.wait_deliveries(conn, "status = 'success'", 129, timeout=60)
        after = hostile.rss_bytes(daemon.pid)
        offered = sum(s.bytes_sent for s in servers) - offered_before

        assert all(len(r["response_body"]) == KEPT_CHARS for r in rows)
        assert offered > 100 * 2**20, f"premise: the receivers pushed {offered} bytes"
        growth = after - before
        mib = 2**20
        print(f"RSS {before / mib:.1f} -> {after / mib:.1f} MiB; offered {offered / mib:.0f} MiB")
        assert growth < 8 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 120 attempts"
        assert daemon.is_running()
    finally:
        for server in servers:
            await server.close()
