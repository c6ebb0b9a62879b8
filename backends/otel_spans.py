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
        trace_id, span_id, parent_id = otel_ids(span)
        context = self._context(trace_id, span_id, is_remote=False, trace_flags=self._sampled)
        parent = None
        if parent_id is not None:
            parent = self._context(trace_id, parent_id, is_remote=False, trace_flags=self._sampled)
        merged = self.attributes(span) if self.tables else {}
        if attributes:
            merged.update(attributes)
        otel_events = [self._event(e.name, e.attributes, timestamp=e.time_ns)
                       for e in span_events(span, events, self._exception_events)]
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


def otel_ids(span: Span) -> tuple[int, int, int | None]:
    """(trace id, span id, parent id or None) as OpenTelemetry's integers. Raises ``ValueError`` for
    an id that is no valid OTel id; a parent id that is zero or too long is dropped (a root)."""
    trace_id = int(span.trace_id, 16)
    span_id = int(span.span_id, 16)
    if not trace_id or not span_id or trace_id >> 128 or span_id >> 64:
        raise ValueError("trace id must be 32 hex digits and span id 16, not zero")
    if span.parent_id:
        parent_id = int(span.parent_id, 16)
        if parent_id and not parent_id >> 64:
            return trace_id, span_id, parent_id
    return trace_id, span_id, None


def span_events(span: Span, events: Sequence[OtelEvent], exception_event: bool) -> list[OtelEvent]:
    """OTel's exception event first (when asked and the span failed), then ``events``."""
    if not exception_event or span.error is None:
        return list(events)
    error = span.error
    return [OtelEvent(EXCEPTION_EVENT, {EXCEPTION_TYPE: error.type, EXCEPTION_MESSAGE: error.message,
                                        EXCEPTION_STACKTRACE: error.traceback or ""}, span.end_ns),
            *events]


class OtlpEncoder:
    """Our spans straight into OpenTelemetry's generated OTLP messages (``opentelemetry-proto``), for
    the backends that send OTLP (Langfuse, ``otlp``, ``phoenix``).

    Why not ``ReadableSpan`` + the exporter's ``encode_spans``: that path builds an SDK span per span
    and then one protobuf message per attribute through generic keyword constructors, ~125 us per
    LangChain span on this machine, most of an OTLP lane's cost. Filling the same messages field by
    field is ~5x cheaper. The messages are OpenTelemetry's own (no hand-written protobuf) and
    ``tests/test_otel_spans.py`` checks that, span for span, they equal what ``encode_spans`` makes
    of ``OtelSpanBuilder``'s ``ReadableSpan`` (same ids, parent, flags, times, status, events,
    attributes, resource and scope). MLflow keeps ``OtelSpanBuilder``: its ``Span`` wraps a
    ``ReadableSpan``."""

    def __init__(self, resource: Mapping[str, Any] | None = None, *, exception_events: bool = False) -> None:
        """``resource`` None is the empty resource; ``exception_events`` adds OTel's exception event
        to a span that carries an error. Imports the generated messages (on a delivery thread)."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
        from opentelemetry.proto.trace.v1.trace_pb2 import SpanFlags, Status
        from opentelemetry.sdk.resources import Resource

        import spanmux

        self._request = ExportTraceServiceRequest
        self._span = ProtoSpan
        self._internal = ProtoSpan.SpanKind.SPAN_KIND_INTERNAL
        self._flags = SpanFlags.SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE_MASK  # our parents are never remote
        self._error = Status.StatusCode.STATUS_CODE_ERROR
        self._exception_events = exception_events
        # The SDK's Resource applies OpenTelemetry's attribute rules to the resource (once).
        resource_attributes = {} if resource is None else Resource(dict(resource)).attributes
        self._resource = list(resource_attributes.items())
        self._scope = ("spanmux", spanmux.__version__)

    def span(self, span: Span, attributes: Mapping[str, Any], events: Sequence[OtelEvent] = (),
             into: Any = None) -> Any:
        """One OTLP ``Span`` message, appended to ``into`` (a request's ``spans`` from ``spans_of``)
        when given, which saves copying it into a request later. Raises ``ValueError`` for an id that
        is no valid OTel id or a negative time; ``into`` is then unchanged."""
        trace_id, span_id, parent_id = otel_ids(span)
        all_events = span_events(span, events, self._exception_events)
        if span.start_ns < 0 or any(e.time_ns < 0 for e in all_events):
            raise ValueError("times must not be negative")
        message = (self._span if into is None else into.add)(
            trace_id=trace_id.to_bytes(16, "big"),
            span_id=span_id.to_bytes(8, "big"),
            parent_span_id=parent_id.to_bytes(8, "big") if parent_id is not None else b"",
            name=span.name,
            kind=self._internal,
            start_time_unix_nano=span.start_ns,
            end_time_unix_nano=max(span.end_ns, span.start_ns),
            flags=self._flags,
        )
        try:
            set_attributes(message.attributes, attributes)
            for event in all_events:
                added = message.events.add(name=event.name, time_unix_nano=event.time_ns)
                set_attributes(added.attributes, event.attributes)
            status = message.status
            status.SetInParent()  # OTel's encoder always sends a status, UNSET included
            if span.status == "error":
                status.code = self._error
                status.message = error_description(span)
        except BaseException:
            if into is not None:
                del into[-1]  # never a half-filled span in the request
            raise
        return message

    def request(self, spans: Sequence[Any] = ()) -> Any:
        """One ``ExportTraceServiceRequest``: our resource, the ``spanmux`` scope, ``spans`` (copied)."""
        request = self._request()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.SetInParent()
        set_attributes(resource_spans.resource.attributes, self._resource)
        scope_spans = resource_spans.scope_spans.add()
        scope_spans.scope.name, scope_spans.scope.version = self._scope
        if spans:
            scope_spans.spans.extend(spans)
        return request

    @staticmethod
    def spans_of(request: Any) -> Any:
        """The repeated ``spans`` field of a request made by ``request``."""
        return request.resource_spans[0].scope_spans[0].spans


_INT64 = (-(1 << 63), 1 << 63)


def set_attributes(target: Any, attributes: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> None:
    """Append ``attributes`` to a repeated ``KeyValue`` field, typed as OpenTelemetry's encoder types
    them (bool before int; a sequence as an array; a mapping as a key-value list; None as an empty
    value); anything else, and an int beyond 64 bits, as text. Text first: most values are."""
    add = target.add
    for key, value in attributes.items() if isinstance(attributes, Mapping) else attributes:
        item = add()
        item.key = key
        if type(value) is str:
            item.value.string_value = value
        else:
            set_value(item.value, value)


def set_value(target: Any, value: Any) -> None:
    """Fill one ``AnyValue`` (see ``set_attributes``)."""
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64[0] <= value < _INT64[1]:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif value is None:
        target.SetInParent()
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, Mapping):
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        values = kvlist.values
        for key, item in value.items():
            entry = values.add()
            entry.key = str(key)
            set_value(entry.value, item)
    elif isinstance(value, Sequence):
        array = target.array_value
        array.SetInParent()
        add = array.values.add
        for item in value:
            set_value(add(), item)
    else:
        target.string_value = json_text(value)
