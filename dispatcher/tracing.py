"""W3C trace context for attempts, and an OpenTelemetry span per attempt (optional).

The publisher's `traceparent` (the event's ``metadata.traceparent``, else its
``correlation_id`` when that is one) is copied by the delivery_fan_out statement into the
delivery's ``request_headers`` and comes back with every claim: no join with
``events`` per attempt. Without OpenTelemetry it is sent to the receiver as is.

With the ``otel`` extra installed and an exporter configured by the standard
``OTEL_*`` variables (``OTEL_TRACES_EXPORTER`` or ``OTEL_EXPORTER_OTLP_*ENDPOINT``),
each HTTP attempt is a CLIENT span, a child of the publisher's span when there is
one, and the receiver gets the span's own traceparent. A span names the webhook,
delivery, event type, attempt number, outcome, response status and duration: never
the URL's path or query, a header, a secret or a body.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from dispatcher import __version__
from dispatcher.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

log = structlog.get_logger("dispatcher.tracing")

# W3C Trace Context level 1, version 00: the only version whose whole format is known.
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


def valid_traceparent(value: Any) -> str | None:
    """The traceparent if ``value`` is a valid W3C version-00 one (case-folded), else None."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    text: str = value.lower()
    m = _TRACEPARENT.match(text)
    if m is None or m.group(1) == _ZERO_TRACE or m.group(2) == _ZERO_SPAN:
        return None
    return text


@dataclass(slots=True)
class AttemptSpan:
    """One attempt's span and the traceparent to send with it."""

    span: Span
    traceparent: str | None


class Tracing:
    """Starts and ends attempt spans; a no-op when ``provider`` is None."""

    def __init__(self, provider: Any = None) -> None:
        self.provider = provider
        self._tracer: Tracer | None = None
        if provider is not None:
            self._tracer = provider.get_tracer("webhook-dispatcher", __version__)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def start(
        self,
        *,
        delivery_id: str,
        webhook_id: str,
        event_id: str | None,
        event_type: str,
        attempt: int,
        max_attempts: int,
        url: str,
        traceparent: str | None,
    ) -> AttemptSpan | None:
        if self._tracer is None:
            return None
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        parent = propagator.extract({"traceparent": traceparent}) if traceparent else None
        attributes: dict[str, str | int] = {
            "webhook.id": webhook_id,
            "webhook.delivery.id": delivery_id,
            "webhook.event.type": event_type,
            "webhook.attempt": attempt,
            "webhook.max_attempts": max_attempts,
            "http.request.method": "POST",
        }
        if event_id:
            attributes["webhook.event.id"] = event_id
        host = _host(url)
        if host:
            attributes["server.address"] = host
        span = self._tracer.start_span(
            "webhook.deliver", context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=trace.set_span_in_context(span))
        return AttemptSpan(span, valid_traceparent(carrier.get("traceparent")) or traceparent)

    def end(
        self,
        handle: AttemptSpan | None,
        *,
        outcome: str,
        status: str,
        response_status: int,
        duration_ms: int,
        error_code: str | None,
    ) -> None:
        if handle is None:
            return
        from opentelemetry.trace import StatusCode

        span = handle.span
        span.set_attribute("webhook.outcome", outcome)
        span.set_attribute("webhook.delivery.status", status)
        span.set_attribute("webhook.duration_ms", duration_ms)
        if response_status:
            span.set_attribute("http.response.status_code", response_status)
        if outcome == "delivered":
            span.set_status(StatusCode.OK)
        else:
            span.set_attribute("error.type", error_code or outcome)
            span.set_status(StatusCode.ERROR, error_code or outcome)
        span.end()

    def fail(self, handle: AttemptSpan | None, exc: BaseException) -> None:
        """End a span whose attempt raised instead of returning a result."""
        if handle is None:
            return
        from opentelemetry.trace import StatusCode

        handle.span.set_attribute("error.type", type(exc).__name__)
        handle.span.set_status(StatusCode.ERROR, type(exc).__name__)
        handle.span.end()

    def shutdown(self) -> None:
        if self.provider is not None and hasattr(self.provider, "shutdown"):
            try:
                self.provider.shutdown()
            except Exception as exc:  # an exporter that cannot flush must not fail the exit
                log.warning("tracing_shutdown_failed", error=type(exc).__name__)


def _host(url: str) -> str | None:
    try:
        return urlsplit(url).hostname
    except ValueError:
        return None


_SET = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def from_env(env: Mapping[str, str] | None = None) -> Tracing:
    """Tracing configured by the standard OTEL_* variables, or a no-op one.

    On when an exporter is named (``OTEL_TRACES_EXPORTER``: otlp, console; ``none``
    turns it off) or an OTLP endpoint is set, unless ``OTEL_SDK_DISABLED=true``. The
    SDK itself reads the rest: OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER(_ARG), OTEL_EXPORTER_OTLP_HEADERS / _TIMEOUT / _PROTOCOL...
    """
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return Tracing()
    if not any(env.get(k, "").strip() for k in _SET):
        return Tracing()
    names = [
        n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",") if n.strip()
    ]
    if not names or names == ["none"]:
        return Tracing()
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SpanExporter,
        )
    except ImportError:
        log.warning(
            "tracing_unavailable",
            note="OTEL_* is set but the otel extra is not installed: "
            "pip install 'webhook-dispatcher[otel]'; the traceparent is still forwarded",
        )
        return Tracing()
    service = env.get("OTEL_SERVICE_NAME") or "webhook-dispatcher"
    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.version": __version__})
    )
    for name in names:
        exporter: SpanExporter
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            )
            if protocol != "http/protobuf":
                raise TracingConfigError(
                    f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: "
                    "the otel extra ships the http/protobuf exporter"
                )
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        elif name == "none":
            continue
        else:
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER={name!r} is not supported (otlp, console or none)"
            )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing_enabled", exporters=names, service_name=service)
    return Tracing(provider)


class TracingConfigError(ConfigError):
    """The OTEL_* variables name something the dispatcher cannot set up."""
