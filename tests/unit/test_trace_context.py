"""W3C traceparent validation, the OTEL_* configuration, and the header on the request."""

from __future__ import annotations

import pytest

from dispatcher.errors import ConfigError
from dispatcher.request import build_request, read_custom_headers, signer_for
from dispatcher.tracing import from_env, valid_traceparent

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TP, TP),
        (TP.upper(), TP),
        ("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),  # unknown version
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None),
        ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", None),
        (TP + "\r\nX-Evil: 1", None),
        (TP[:-2] + "\n1", None),
        ("req-1234", None),
        (None, None),
        (42, None),
    ],
)
def test_valid_traceparent(value, expected):
    assert valid_traceparent(value) == expected


def test_tracing_is_off_unless_an_exporter_is_configured():
    assert not from_env({}).enabled
    assert not from_env({"OTEL_SERVICE_NAME": "x"}).enabled
    assert not from_env({"OTEL_TRACES_EXPORTER": "none"}).enabled
    assert not from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}).enabled


def test_tracing_from_standard_variables():
    console = from_env({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "hooks-eu"})
    assert console.enabled
    assert console.provider.resource.attributes["service.name"] == "hooks-eu"
    console.shutdown()
    otlp = from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"})
    assert otlp.enabled
    otlp.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "jaeger"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)
def test_unsupported_otel_settings_are_config_errors(env):
    with pytest.raises(ConfigError, match="OTEL_"):
        from_env(env)


def test_request_carries_the_traceparent_in_place_of_a_custom_one():
    signer = signer_for(("a" * 64,), read_custom_headers({"traceparent": "x", "X-Other": "1"}))
    built = build_request(
        delivery_id="d", event_type="job.created", body=b"{}", signer=signer, traceparent=TP
    )
    assert [k for k in built.headers if k.lower() == "traceparent"] == ["traceparent"]
    assert built.headers["traceparent"] == built.recorded_headers["traceparent"] == TP
    assert built.headers["X-Other"] == "1"
    plain = build_request(delivery_id="d", event_type="job.created", body=b"{}", signer=signer)
    assert plain.headers["traceparent"] == "x"  # no trace context: the custom header stays


def test_an_attempt_that_raises_still_ends_its_span():
    import asyncio

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import StatusCode

    from dispatcher.tracing import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    handle = tracing.start(
        delivery_id="d",
        webhook_id="w",
        event_id=None,
        event_type="job.created",
        attempt=1,
        max_attempts=4,
        url="https://user:pw@example.com:8443/hook?token=x",
        traceparent=TP,
    )
    assert handle is not None and handle.traceparent is not None
    assert handle.traceparent != TP
    assert handle.traceparent.split("-")[1] == TP.split("-")[1]  # same trace
    tracing.fail(handle, asyncio.CancelledError())
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "CancelledError"
    assert attributes["server.address"] == "example.com"
    assert "pw" not in repr(attributes) and "token" not in repr(attributes)
