"""Regression tests for issue 10 items 8-14 (the edges): malformed host names, unexpected
exceptions in an attempt, DNS that never answers, failures that are not the endpoint's,
`migrate` behind a host lock, OAuth bodies in several TCP segments, the full event type in
X-InTime-Event. Real PostgreSQL, real HTTP and DNS sockets on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import hostdb
import orjson
import psycopg
import pytest
import structlog
from aiohttp.abc import AbstractResolver
from support.receiver import Reply

from dispatcher.errors import MigrationBlocked
from dispatcher.integrations.oauth import Grant, OAuthClient, RefreshRequest, Transient
from dispatcher.migrations import apply_migrations
from dispatcher.outcomes import Outcome
from dispatcher.sender import Sender, Target
from dispatcher.settings import Settings
from dispatcher.ssrf import TargetRefused, parse_networks, validate_url

LOOPBACK_NETS = parse_networks("127.0.0.0/8")


# --- item 12: the OAuth token response is read whole --------------------------------------------


@contextlib.asynccontextmanager
async def chunked_token_server(body: bytes, pause: float) -> AsyncIterator[str]:
    """A token endpoint that sends its headers and the first half of the JSON, pauses, then
    sends the rest (two TCP segments; Content-Length covers the whole body)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            head = (
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            half = len(body) // 2
            writer.write(head + body[:half])
            await writer.drain()
            await asyncio.sleep(pause)
            writer.write(body[half:])
            await writer.drain()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/token"
    finally:
        server.close()
        await server.wait_closed()


async def test_oauth_token_body_in_two_tcp_chunks_is_read_whole() -> None:
    answer = {
        "access_token": "at-" + "a" * 200,
        "refresh_token": "rotated-refresh-token",
        "expires_in": 3600,
        "token_type": "Bearer",
    }
    body = orjson.dumps(answer)
    async with (
        chunked_token_server(body, pause=0.3) as url,
        aiohttp.ClientSession() as session,
    ):
        client = OAuthClient(session, LOOPBACK_NETS, timeout=10)
        req = RefreshRequest(url, {"grant_type": "refresh_token"}, {}, ("old-refresh",))
        outcome = await client.refresh(req)
    assert isinstance(outcome, Grant), outcome
    assert outcome.access_token == answer["access_token"]
    assert outcome.refresh_token == "rotated-refresh-token"


async def test_oauth_token_body_over_the_cap_is_a_clear_transient_failure() -> None:
    body = orjson.dumps({"access_token": "x", "padding": "p" * (70 * 1024)})
    async with (
        chunked_token_server(body, pause=0.05) as url,
        aiohttp.ClientSession() as session,
    ):
        client = OAuthClient(session, LOOPBACK_NETS, timeout=10)
        req = RefreshRequest(url, {"grant_type": "refresh_token"}, {}, ("old-refresh",))
        outcome = await client.refresh(req)
    assert isinstance(outcome, Transient)
    assert outcome.error == "invalid_response"
    assert "over 65536 bytes" in outcome.message


# --- item 14: X-InTime-Event carries the whole event type ---------------------------------------


async def test_event_header_carries_the_whole_type_beyond_the_columns_100_chars(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    # First attempt fails: the retry goes through claim_due, the first through fan_out.
    receiver.respond("/hook", Reply(500), Reply(204))
    await hostdb.set_retry_config(
        conn, org, base_delay_seconds=1, max_delay_seconds=1, enable_jitter=False
    )
    long_type = "system." + ".".join(["segment" + "x" * 40] * 3)  # 7 + 3*47 + 2 = 150
    assert len(long_type) > 100
    await start_daemon()
    await hostdb.publish(conn, long_type, {"n": 1}, org)
    [row] = await hostdb.wait_deliveries(conn, "status = 'success'", 1, timeout=30)
    assert row["event_type"] == long_type[:100]  # the host's varchar(100) column
    received = receiver.requests_for("/hook")
    assert len(received) == 2
    for request in received:
        assert request.headers["X-InTime-Event"] == long_type
        assert orjson.loads(request.body)["type"] == long_type


# --- item 10: failures that are ours or the event's are not the endpoint's -----------------------


async def test_ten_oversized_events_do_not_disable_a_healthy_webhook(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    hook = await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    for i in range(10):  # before the start: one fan-out, all ten attempted at once
        await hostdb.publish(conn, "job.huge", {"i": i, "blob": "x" * 4096}, org)
    await start_daemon(max_body_bytes=2048)
    rows = await hostdb.wait_deliveries(conn, "status = 'failed'", 10, timeout=30)
    assert {r["error_code"] for r in rows} == {"body_too_large"}
    await hostdb.publish(conn, "job.small", {"n": 1}, org)
    await hostdb.wait_deliveries(conn, "status = 'success'", 1, timeout=30)
    state = await hostdb.webhook(conn, hook["id"])
    assert state["status"] == "active"
    assert state["consecutive_failures"] == 0
    assert len(receiver.requests_for("/hook")) == 1


# --- item 8: malformed host names, and any exception in an attempt, end as recorded failures ----

MALFORMED_URLS = [
    "https://api..example.com/hook",
    "https://" + "a" * 64 + ".example.com/hook",
    "https://.example.com/hook",
    "https://xn--a.example/hook",
]


async def test_malformed_host_names_fail_clearly_and_are_not_charged(conn, receiver, start_daemon):
    org = await hostdb.create_org(conn)
    bad = [await hostdb.create_webhook(conn, org, url, ["*"]) for url in MALFORMED_URLS]
    good = await hostdb.create_webhook(conn, org, receiver.url(), ["*"])
    await start_daemon()
    for i in range(3):
        await hostdb.publish(conn, "job.created", {"i": i}, org)
    await hostdb.wait_deliveries(conn, "status = 'success'", 3, timeout=30)
    rows = await hostdb.wait_deliveries(
        conn, "status = 'failed'", 3 * len(MALFORMED_URLS), timeout=30
    )
    assert {r["error_code"] for r in rows} == {"invalid_url"}
    assert all("invalid webhook URL: host" in r["error_message"] for r in rows)
    for hook in [*bad, good]:
        state = await hostdb.webhook(conn, hook["id"])
        assert state["status"] == "active" and state["consecutive_failures"] == 0
    left = await hostdb.deliveries(conn, "status IN ('pending', 'retrying')")
    assert left == []


class _BrokenResolver(AbstractResolver):
    """A resolver with a bug: raises something no caller expects."""

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> Any:
        raise RuntimeError("resolver bug")

    async def close(self) -> None:
        return None


async def test_an_unexpected_exception_in_an_attempt_is_a_recorded_failure() -> None:
    sender = Sender(Settings(), resolver=_BrokenResolver())
    await sender.start()
    try:
        target = Target("d-123", "job.created", "https://hook.example.com/x", "{}", ("s",))
        with structlog.testing.capture_logs() as logs:
            result = await sender.attempt(target)
    finally:
        await sender.close()
    assert result.outcome is Outcome.RETRYABLE
    assert result.error_code == "internal_error" and not result.charged
    assert "RuntimeError at " in (result.error_message or "")
    assert "resolver bug" not in (result.error_message or "")  # text may hold secrets
    [line] = [x for x in logs if x["event"] == "attempt_crashed"]
    assert line["delivery_id"] == "d-123"


# --- item 11: `migrate` never queues the host's publishers behind it ----------------------------


async def test_migrate_behind_an_open_host_transaction_fails_clearly_and_never_blocks_publishers(
    empty_db_dsn,
):
    with psycopg.connect(empty_db_dsn, autocommit=True) as c:
        c.execute(hostdb.host_schema_sql(c))
    holder = await psycopg.AsyncConnection.connect(empty_db_dsn)  # a transaction left open
    publisher = await psycopg.AsyncConnection.connect(empty_db_dsn, autocommit=True)
    try:
        await holder.execute(
            "INSERT INTO events (event_type, event_category, payload, org_id) "
            "VALUES ('job.held', 'job', '{}', %s)",
            (hostdb.DEFAULT_ORG,),
        )
        await publisher.execute("SET statement_timeout = '10s'")
        migrate = asyncio.create_task(
            apply_migrations(empty_db_dsn, lock_timeout_ms=300, attempts=3, retry_pause=0.2)
        )
        published = 0
        async with asyncio.timeout(60):
            while not migrate.done():
                # Queued behind a waiting ALTER/CREATE TRIGGER, this would hit the
                # statement timeout; with lock_timeout it waits at most one short try.
                await publisher.execute(
                    "SELECT publish_event('job.created', NULL, '{}'::jsonb, NULL, '{}'::jsonb, %s)",
                    (hostdb.DEFAULT_ORG,),
                )
                published += 1
                await asyncio.sleep(0.05)
        with pytest.raises(MigrationBlocked) as blocked:
            await migrate
        message = str(blocked.value)
        assert "lock_timeout (300 ms)" in message and "3 tries" in message
        assert "dispatcher migrate" in message
        assert published > 0
        await holder.commit()
        assert await apply_migrations(empty_db_dsn, lock_timeout_ms=300) != []
        assert await apply_migrations(empty_db_dsn) == []
    finally:
        await holder.close()
        await publisher.close()


# --- item 9: one tenant's DNS never starves another ---------------------------------------------


class BlackHoleDns:
    """A DNS server on loopback (UDP) that reads every query and never answers."""

    def __init__(self) -> None:
        self.queries = 0
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def __aenter__(self) -> BlackHoleDns:
        outer = self

        class Swallow(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                outer.queries += 1

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(Swallow, local_addr=("127.0.0.1", 0))
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._transport is not None:
            self._transport.close()


async def test_a_tenant_whose_dns_never_answers_does_not_starve_another(
    conn, receiver, start_daemon
):
    hung_org = await hostdb.create_org(conn, "Hung DNS")
    healthy_org = await hostdb.create_org(conn, "Healthy")
    hung = [
        await hostdb.create_webhook(conn, hung_org, f"http://hook-{i}.hung.test/h", ["*"])
        for i in range(6)
    ]
    # "localhost" is answered from the hosts file, never by the (silent) DNS server.
    await hostdb.create_webhook(conn, healthy_org, f"http://localhost:{receiver.port}/hook", ["*"])
    async with BlackHoleDns() as dns:
        running = await start_daemon(
            dns_servers=f"127.0.0.1:{dns.port}",
            dns_timeout=1.0,
            dns_max_per_org=2,
            concurrency=8,
            allowed_target_networks="127.0.0.0/8,::1/128",
        )
        for i in range(5):
            await hostdb.publish(conn, "job.created", {"i": i}, hung_org)
        for i in range(20):
            await hostdb.publish(conn, "job.created", {"i": i}, healthy_org)
        # The healthy org's 20 events arrive while the other org's lookups hang.
        await receiver.wait_for(20, "/hook", timeout=60)
        hung_ids = [h["id"] for h in hung]
        rows = await hostdb.wait_deliveries(
            conn,
            "webhook_id = ANY(%s) AND error_code IS NOT NULL",
            6,
            params=(hung_ids,),
            timeout=60,
        )
        codes = {r["error_code"] for r in rows}
        assert codes <= {"dns_error", "dns_busy"}, codes
        assert dns.queries > 0, "the resolver was not pointed at the configured server"
        timed_out = [r for r in rows if r["error_code"] == "dns_error"]
        assert timed_out and all(
            "timed out after 1 s (DISPATCHER_DNS_TIMEOUT)" in r["error_message"] for r in timed_out
        )
        # The org cap turned the lookups above 2 into immediate, uncharged retries.
        await hostdb.wait_deliveries(
            conn,
            "webhook_id = ANY(%s) AND error_code = 'dns_busy'",
            1,
            params=(hung_ids,),
            timeout=60,
        )
        # A graceful stop does not hang on lookups that never end.
        await asyncio.wait_for(running.stop(), 30)


URL_CASES = [
    # (url, usable for both the SQL API and the daemon's guard)
    ("https://api.example.com/hook", True),
    ("https://api.example.com./hook", True),
    ("http://a_b.example.com:8080/x?y=1", True),
    ("https://xn--bcher-kva.example/x", True),
    ("https://93.184.216.34/hook", True),
    ("https://[2606:4700::1111]:8443/hook", True),
    ("https://api..example.com/hook", False),
    ("https://.example.com/hook", False),
    ("https://" + "a" * 64 + ".example.com/", False),
    ("https://" + ("a" * 60 + ".") * 5 + "com/", False),
    ("https://-bad.example.com/", False),
    ("https://bad-.example.com/", False),
    ("https://exa mple.com/", False),
    ("ftp://example.com/", False),
    ("https://user:pw@example.com/", False),
    ("https://example.com:0/", False),
    ("https:///nohost", False),
    ("", False),
]


@pytest.mark.parametrize(("url", "usable"), URL_CASES, ids=[u[:40] for u, _ in URL_CASES])
async def test_sql_api_checks_webhook_urls_like_the_daemon(conn, url, usable):
    cur = await conn.execute("SELECT dispatcher.webhook_url_problem(%s) AS problem", (url,))
    problem = (await cur.fetchone())["problem"]
    assert (problem is None) is usable, problem
    if problem is not None:
        assert problem.startswith("invalid webhook URL")
    try:
        validate_url(url, parse_networks("0.0.0.0/0,::/0"))
        daemon_accepts = True
    except TargetRefused:
        daemon_accepts = False
    assert daemon_accepts is usable


async def test_a_graceful_stop_does_not_wait_for_a_lookup_that_never_ends(
    conn, receiver, start_daemon
):
    org = await hostdb.create_org(conn)
    await hostdb.create_webhook(conn, org, "http://stuck.hung.test/h", ["*"])
    async with BlackHoleDns() as dns:
        running = await start_daemon(
            dns_servers=f"127.0.0.1:{dns.port}",
            dns_timeout=100.0,  # the lookup outlives the grace: the stop must cut it
            http_timeout=110.0,
            lease_seconds=130.0,
            shutdown_grace=1.0,
        )
        await hostdb.publish(conn, "job.created", {"n": 1}, org)
        async with asyncio.timeout(30):
            while dns.queries == 0:
                await asyncio.sleep(0.05)
        await asyncio.wait_for(running.stop(), 30)
    # Released, not left leased for the rest of its lease: due again at once.
    [row] = await hostdb.deliveries(conn)
    assert row["status"] == "pending"
    assert row["next_retry_at"] is None
