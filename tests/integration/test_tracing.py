"""W3C trace context from the publisher to the receiver, and a span per attempt (issue 14.1).

A real receiver reads the `traceparent` header; spans go to the OpenTelemetry SDK's
in-memory exporter of a TracerProvider handed to the in-process daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import hostdb
import pytest
import pytest_asyncio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from psycopg.types.json import Jsonb
from support.receiver import Reply

from dispatcher.app import App
from dispatcher.settings import load_settings
from dispatcher.tracing import Tracing

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TP = f"00-{TRACE}-{PARENT}-01"


async def publish_with(
    conn: hostdb.Conn,
    org: uuid.UUID,
    event_type: str,
    metadata: Any = None,
    correlation_id: str | None = None,
) -> uuid.UUID:
    """An event with the given metadata / correlation_id, inserted as the host's code does."""
    cur = await conn.execute(
        "INSERT INTO events (event_type, event_category, payload, metadata, org_id, "
        "correlation_id) VALUES (%s, split_part(%s, '.', 1), '{}', %s, %s, %s) RETURNING id",
        (event_type, event_type, Jsonb(metadata or {}), org, correlation_id),
    )
    row = await cur.fetchone()
    assert row is not None
    await conn.execute("SELECT pg_notify('events', '{}')")
    return uuid.UUID(str(row["id"]))


StartWith = Callable[[Tracing | None], Awaitable[App]]


@pytest_asyncio.fixture
async def start_with(db_dsn: str) -> AsyncIterator[StartWith]:
    """Start the in-process daemon with a given Tracing (None: from the environment)."""
    started: list[tuple[App, asyncio.Task[Any]]] = []

    async def start(tracing: Tracing | None) -> App:
        settings = load_settings(
            database_url=db_dsn, metrics_address="", poll_interval=0.2, log_format="json"
        )
        app = App(settings, install_signals=False, tracing=tracing)
        task = asyncio.create_task(app.run())
        started.append((app, task))
        ready = asyncio.ensure_future(app.ready.wait())
        await asyncio.wait([task, ready], timeout=20, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        assert app.ready.is_set(), "daemon did not become ready within 20 s"
        return app

    yield start
    for app, task in started:
        app.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


@pytest.fixture
def spans() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


async def wait_spans(exporter: InMemorySpanExporter, n: int, timeout: float = 15.0) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        got = list(exporter.get_finished_spans())
        if len(got) >= n:
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"waited {timeout}s for {n} spans, got {len(got)}")


async def test_publisher_traceparent_reaches_the_receiver_without_otel(conn, receiver, start_with):
    org = await hostdb.create_org(conn)
    for path in ("meta", "corr", "bad", "none", "both"):
        await hostdb.create_webhook(conn, org, receiver.url(f"/{path}"), [f"{path}.happened"])
    other = f"00-{'a' * 32}-{'b' * 16}-00"
    await start_with(Tracing())  # tracing off, whatever the environment says

    await publish_with(conn, org, "meta.happened", {"traceparent": TP.upper()})
    await publish_with(conn, org, "corr.happened", {"source": "ui"}, correlation_id=other)
    await publish_with(
        conn, org, "bad.happened", {"traceparent": f"00-{'0' * 32}-{PARENT}-01"}, "req-1234"
    )
    await publish_with(conn, org, "none.happened", ["not", "an", "object"])
    await publish_with(conn, org, "both.happened", {"traceparent": TP}, correlation_id=other)

    await receiver.wait_for(5)
    got = {r.path: r.headers.get("traceparent") for r in receiver.requests}
    assert got == {"/meta": TP, "/corr": other, "/bad": None, "/none": None, "/both": TP}
    rows = await hostdb.wait_deliveries(conn, "status = 'success'", 5)
    recorded = {r["request_url"].rsplit("/", 1)[1]: r["request_headers"] for r in rows}
    assert recorded["meta"]["traceparent"] == TP
    assert "traceparent" not in recorded["bad"]


async def test_retries_carry_the_traceparent_and_it_beats_a_custom_header(
    conn, receiver, start_with
):
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    await hostdb.create_webhook(
        conn, org, receiver.url(), ["*"], headers={"TraceParent": "00-custom", "X-A": "b"}
    )
    receiver.respond("/hook", Reply(500), Reply(200))
    await start_with(Tracing())

    await publish_with(conn, org, "job.created", {"traceparent": TP})
    first, second = await receiver.wait_for(2)
    for req in (first, second):
        assert req.headers.getall("traceparent") == [TP]
        assert req.headers["X-A"] == "b"


async def test_a_span_per_attempt_child_of_the_publisher_and_sent_to_the_receiver(
    conn, receiver, start_with, spans
):
    tracing, exporter = spans
    org = await hostdb.create_org(conn)
    await hostdb.set_retry_config(
        conn, org, retry_strategy="fixed", base_delay_seconds=1, enable_jitter=False
    )
    hook = await hostdb.create_webhook(conn, org, receiver.url("/t"), ["job.*"])
    plain = await hostdb.create_webhook(conn, org, receiver.url("/p?token=s3cr3t"), ["user.*"])
    receiver.respond("/t", Reply(503), Reply(200))
    await start_with(tracing)

    event = await publish_with(conn, org, "job.created", {"traceparent": TP, "k": "payload-x"})
    await hostdb.publish(conn, "user.created", {"k": "payload-y"}, org)

    finished = await wait_spans(exporter, 3)
    reqs = await receiver.wait_for(3)
    traced = sorted(
        (s for s in finished if s.attributes["webhook.id"] == str(hook["id"])),
        key=lambda s: s.attributes["webhook.attempt"],
    )
    assert [s.attributes["webhook.attempt"] for s in traced] == [1, 2]
    assert [s.attributes["http.response.status_code"] for s in traced] == [503, 200]
    assert [s.attributes["webhook.outcome"] for s in traced] == ["retryable", "delivered"]
    assert [s.attributes["webhook.delivery.status"] for s in traced] == ["retrying", "success"]
    assert [s.status.status_code for s in traced] == [StatusCode.ERROR, StatusCode.OK]
    for s, req in zip(traced, receiver.requests_for("/t"), strict=True):
        assert s.kind is SpanKind.CLIENT
        assert s.name == "webhook.deliver"
        assert format(s.context.trace_id, "032x") == TRACE  # the publisher's trace
        assert s.parent is not None and s.parent.is_remote
        assert s.attributes["webhook.event.type"] == "job.created"
        assert s.attributes["webhook.event.id"] == str(event)
        assert s.attributes["webhook.max_attempts"] == 4
        assert s.attributes["webhook.duration_ms"] >= 0
        # The receiver gets this attempt's span as its parent.
        assert req.headers["traceparent"] == (
            f"00-{TRACE}-{format(s.context.span_id, '016x')}-{s.context.trace_flags:02x}"
        )
    assert format(traced[0].parent.span_id, "016x") == PARENT

    [root] = [s for s in finished if s.attributes["webhook.id"] == str(plain["id"])]
    assert root.parent is None  # no publisher trace: a new one, still sent
    [preq] = [r for r in reqs if r.path == "/p"]
    ctx = root.context
    assert preq.headers["traceparent"] == (
        f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"
    )
    assert root.attributes["server.address"] == "127.0.0.1"
    # Never a secret, a URL path or query, or a body.
    text = repr([dict(s.attributes) for s in finished])
    for secret in (hook["secret"], plain["secret"], "s3cr3t", "payload-x", "payload-y", "/p"):
        assert secret not in text
