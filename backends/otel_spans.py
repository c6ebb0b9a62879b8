"""Our ``Span`` records as finished OpenTelemetry SDK spans, for every backend that speaks OpenTelemetry.

Langfuse (OTLP/HTTP), MLflow (its ``Span`` entity wraps an OTel ``ReadableSpan``) and an OTLP
backend send the same facts: our trace and span ids, parent, nanosecond times, status and the
exception event. ``OtelSpanBuilder`` writes those once; what differs per destination is the
attributes, given as *attribute tables*: functions from a span to the attributes of one
convention (Langfuse's ``langfuse.*``, MLflow's ``mlflow.*``, OpenTelemetry GenAI ``gen_ai.*``,
OpenInference), merged in order.

OpenTelemetry is used as a library only: spans are built without a tracer, so no tracer provider
is created or installed and a user's own OpenTelemetry setup is neither captured nor disturbed.
The SDK is imported when the first builder is made (on a delivery thread), never at
``import spanmux``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import msgspec

from spanmux.model import Span

EXCEPTION_EVENT = "exception"
EXCEPTION_TYPE = "exception.type"
EXCEPTION_MESSAGE = "exception.message"
EXCEPTION_STACKTRACE = "exception.stacktrace"
"""OpenTelemetry's exception event and its attributes (semantic conventions, stable)."""
SERVICE_NAME = "service.name"
TELEMETRY_SDK_NAME = "telemetry.sdk.name"
"""Resource attributes (semantic conventions, stable)."""

_ENCODER = msgspec.json.Encoder()


class AttributeTable(Protocol):
    """One convention's attributes of a span, values already OTel-typed (str, bool, int, float
    or a sequence of one of them; ``json_text`` for anything else)."""

    def __call__(self, span: Span, /) -> Mapping[str, Any]: ...


class OtelEvent(NamedTuple):
    """A span event besides the exception one (an OTLP backend's ``gen_ai.evaluation.result``)."""

    name: str
    attributes: Mapping[str, Any]
    time_ns: int


def json_text(value: Any) -> str:
    """Compact JSON, for attribute values OpenTelemetry cannot carry as they are. msgspec is
    several times faster than ``json`` on the delivery thread; ``json`` with ``str`` catches the rest."""
    try:
        return _ENCODER.encode(value).decode()
    except (TypeError, ValueError, OverflowError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def error_description(span: Span) -> str:
    """The status description of a failed span, as the OTel SDK writes it for an exception."""
    error = span.error
    if error is None:
        return "error"
    return f"{error.type}: {error.message}" if error.message else error.type


class OtelSpanBuilder:
    """Builds ``ReadableSpan`` records from our spans. One builder per backend, made on the
    delivery thread; it holds the resource, the scope and the SDK classes it needs."""

    def __init__(
        self,
        *tables: AttributeTable,
        resource: Mapping[str, Any] | None = None,
        ok_status: bool = False,
        exception_events: bool = False,
    ) -> None:
        """``tables`` give every span's attributes (a later table wins on a shared key);
        ``resource`` None is the empty resource (MLflow copies resource attributes into trace
        tags); ``ok_status`` marks successful spans OK instead of UNSET; ``exception_events``
        adds OTel's exception event to a span that carries an error."""
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import Event, ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        import spanmux

        self.tables = tables
        self.resource = Resource.get_empty() if resource is None else Resource(dict(resource))
        self._scope = InstrumentationScope("spanmux", spanmux.__version__)
        self._readable = ReadableSpan
        self._event = Event
        self._context = SpanContext
        self._kind = SpanKind.INTERNAL
        self._sampled = TraceFlags(TraceFlags.SAMPLED)
        self._status = Status
        self._error = StatusCode.ERROR
        self._success = Status(StatusCode.OK if ok_status else StatusCode.UNSET)
        self._exception_events = exception_events

    def attributes(self, span: Span) -> dict[str, Any]:
        """Every table's attributes of ``span``, merged in order."""
        out: dict[str, Any] = {}
        for table in self.tables:
            out.update(table(span))
        return out

    def build(
        self, span: Span, attributes: Mapping[str, Any] | None = None, events: Sequence[OtelEvent] = ()
    ) -> Any:
        """A finished ``ReadableSpan`` with our ids, parent and times: the tables' attributes,
        then ``attributes`` over them. Raises ``ValueError`` for an id that is no valid OTel id
        (a parent id that is zero or too long is dropped: the span becomes a root)."""
        trace_id = int(span.trace_id, 16)
        span_id = int(span.span_id, 16)
        if not trace_id or not span_id or trace_id >> 128 or span_id >> 64:
            raise ValueError("trace id must be 32 hex digits and span id 16, not zero")
        context = self._context(trace_id, span_id, is_remote=False, trace_flags=self._sampled)
        parent = None
        if span.parent_id:
            parent_id = int(span.parent_id, 16)
            if parent_id and not parent_id >> 64:
                parent = self._context(trace_id, parent_id, is_remote=False, trace_flags=self._sampled)
        merged = self.attributes(span) if self.tables else {}
        if attributes:
            merged.update(attributes)
        otel_events = []
        if self._exception_events and span.error is not None:
            otel_events.append(self._event(EXCEPTION_EVENT, {
                EXCEPTION_TYPE: span.error.type,
                EXCEPTION_MESSAGE: span.error.message,
                EXCEPTION_STACKTRACE: span.error.traceback or "",
            }, timestamp=span.end_ns))
        otel_events.extend(self._event(e.name, e.attributes, timestamp=e.time_ns) for e in events)
        status = self._status(self._error, error_description(span)) if span.status == "error" else self._success
        return self._readable(
            name=span.name,
            context=context,
            parent=parent,
            resource=self.resource,
            attributes=merged,
            events=otel_events,
            kind=self._kind,
            status=status,
            start_time=span.start_ns,
            end_time=max(span.end_ns, span.start_ns),
            instrumentation_scope=self._scope,
        )


def encode_otlp(readable: Sequence[Any]) -> bytes:
    """OTLP protobuf of finished spans, with OpenTelemetry's own encoder (never a hand-written one)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return bytes(encode_spans(readable).SerializeToString())
