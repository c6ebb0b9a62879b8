"""The one Span -> OpenTelemetry builder (``spanmux.backends.otel_spans``) that Langfuse, MLflow and an
OTLP backend share: our ids and times unchanged, status, events, attribute tables in order, and
OTLP bytes that OpenTelemetry's own protobuf reads back."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import StatusCode

from spanmux.backends.otel_spans import OtelEvent, OtelSpanBuilder, encode_otlp, error_description, json_text
from spanmux.model import ErrorInfo, Span, new_span_id, new_trace_id


def make(**fields: Any) -> Span:
    base: dict[str, Any] = {"trace_id": new_trace_id(), "span_id": new_span_id(), "parent_id": new_span_id(),
                            "name": "step", "kind": "chain", "framework": "manual", "start_ns": 1_000, "end_ns": 5_000}
    return Span(**(base | fields))


def genai(span: Span) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", "shared": "genai"}


def openinference(span: Span) -> dict[str, Any]:
    return {"openinference.span.kind": span.kind.upper(), "shared": "openinference"}


def test_ids_parent_and_times_are_ours() -> None:
    span = make()
    readable = OtelSpanBuilder().build(span)
    assert f"{readable.context.trace_id:032x}" == span.trace_id
    assert f"{readable.context.span_id:016x}" == span.span_id
    assert f"{readable.parent.span_id:016x}" == span.parent_id
    assert (readable.start_time, readable.end_time) == (1_000, 5_000)
    assert readable.status.status_code is StatusCode.UNSET and not readable.events
    assert readable.resource.attributes == {} and readable.instrumentation_scope.name == "spanmux"
    assert OtelSpanBuilder().build(make(end_ns=10)).end_time == 1_000  # never ends before it starts


def test_attribute_tables_merge_in_order_and_explicit_attributes_win() -> None:
    builder = OtelSpanBuilder(genai, openinference, resource={"service.name": "tutor"})
    readable = builder.build(make(kind="llm"), {"extra": 1})
    assert dict(readable.attributes) == {"gen_ai.operation.name": "chat", "openinference.span.kind": "LLM",
                                         "shared": "openinference", "extra": 1}
    assert builder.build(make(), {"shared": "mine"}).attributes["shared"] == "mine"
    assert readable.resource.attributes["service.name"] == "tutor"


def test_failed_span_status_and_events() -> None:
    error = ErrorInfo("TimeoutError", "upstream timed out", "Traceback ...")
    span = make(status="error", error=error)
    plain = OtelSpanBuilder().build(span)
    assert plain.status.status_code is StatusCode.ERROR
    assert plain.status.description == "TimeoutError: upstream timed out" == error_description(span)
    assert not plain.events
    score = OtelEvent("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "quality"}, 4_000)
    full = OtelSpanBuilder(ok_status=True, exception_events=True).build(span, events=[score])
    assert [(e.name, e.timestamp) for e in full.events] == [("exception", 5_000), ("gen_ai.evaluation.result", 4_000)]
    assert dict(full.events[0].attributes) == {"exception.type": "TimeoutError",
                                               "exception.message": "upstream timed out",
                                               "exception.stacktrace": "Traceback ..."}
    assert OtelSpanBuilder(ok_status=True).build(make()).status.status_code is StatusCode.OK


@pytest.mark.parametrize("fields", [{"trace_id": "0" * 32}, {"span_id": "zz"}, {"trace_id": "f" * 33},
                                    {"parent_id": "not-hex"}])
def test_invalid_ids_raise_value_error(fields: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        OtelSpanBuilder().build(make(**fields))


def test_a_zero_or_overlong_parent_makes_a_root() -> None:
    assert OtelSpanBuilder().build(make(parent_id="0" * 16)).parent is None
    assert OtelSpanBuilder().build(make(parent_id="f" * 17)).parent is None


def test_otlp_bytes_read_back_with_opentelemetry_proto() -> None:
    span = make(kind="llm")
    payload = encode_otlp([OtelSpanBuilder(openinference, resource={"service.name": "tutor"}).build(span)])
    request = ExportTraceServiceRequest.FromString(payload)
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (sent,) = scope_spans.spans
    assert sent.trace_id.hex() == span.trace_id and sent.span_id.hex() == span.span_id
    assert sent.parent_span_id.hex() == span.parent_id
    assert {a.key: a.value.string_value for a in sent.attributes}["openinference.span.kind"] == "LLM"
    assert scope_spans.scope.name == "spanmux"


def test_json_text_is_compact_and_never_fails() -> None:
    assert json_text({"a": [1, "é"]}) == '{"a":[1,"é"]}'
    assert json_text({"when": object}).startswith('{"when":"<class')
