"""The one Span -> OpenTelemetry builder (``spanmux.backends.otel_spans``) that Langfuse, MLflow and an
OTLP backend share: our ids and times unchanged, status, events, attribute tables in order, and
OTLP bytes that OpenTelemetry's own protobuf reads back."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import StatusCode

from spanmux.backends.otel_spans import OtelEvent, OtelSpanBuilder, error_description, json_text
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
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    readable = OtelSpanBuilder(openinference, resource={"service.name": "tutor"}).build(span)
    payload = encode_spans([readable]).SerializeToString()
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


# ------------------------------------------------------------------ OtlpEncoder == OpenTelemetry's encoder

def _every_value_type(span: Span) -> dict[str, Any]:
    return {"text": "é ok", "flag": True, "off": False, "count": 3, "zero": 0, "ratio": 0.25, "big": 2**62,
            "none": None, "raw": b"\x00\x01", "tags": ("a", "b"), "mixed": [1, "x", 2.5, [True]], "empty": (),
            "nested": {"k": "v", "n": {"deep": 1}}, "no_keys": {}}


@pytest.mark.parametrize("resource", [None, {"service.name": "tutor", "deployment.environment": "prod"}])
def test_otlp_encoder_equals_opentelemetrys_own_encoder(resource: dict[str, Any] | None) -> None:
    """The direct encoder fills the very messages ``encode_spans`` fills from ``ReadableSpan``: a root,
    a child, a failed span with its exception event, a span with events, a zero parent (a root) and a
    span that ends before it starts give equal requests."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from spanmux.backends.otel_spans import OtlpEncoder

    trace_id = new_trace_id()
    root = make(trace_id=trace_id, parent_id=None, name="root")
    spans = [
        root,
        make(trace_id=trace_id, parent_id=root.span_id, kind="llm", name="chat"),
        make(trace_id=trace_id, status="error", error=ErrorInfo("ValueError", "bad", "Traceback ...")),
        make(trace_id=trace_id, status="error", error=ErrorInfo("KeyError", "", None)),
        make(parent_id="0" * 16),
        make(end_ns=10),
    ]
    events = [OtelEvent("gen_ai.evaluation.result", {"gen_ai.evaluation.name": "helpful", "score": 0.5}, 7),
              OtelEvent("no attributes", {}, 8)]
    for exception_events in (False, True):
        builder = OtelSpanBuilder(_every_value_type, genai, resource=resource, exception_events=exception_events)
        encoder = OtlpEncoder(resource, exception_events=exception_events)
        theirs = encode_spans([builder.build(span, {"extra": 1}, events[: i % 3]) for i, span in enumerate(spans)])
        ours = encoder.request([encoder.span(span, builder.attributes(span) | {"extra": 1}, events[: i % 3])
                                for i, span in enumerate(spans)])
        assert ours == theirs
        assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)
        built_in_place = encoder.request()
        for i, span in enumerate(spans):
            encoder.span(span, builder.attributes(span) | {"extra": 1}, events[: i % 3],
                         into=encoder.spans_of(built_in_place))
        assert built_in_place == theirs


def test_otlp_encoder_refuses_ids_as_the_builder_does() -> None:
    from spanmux.backends.otel_spans import OtlpEncoder

    with pytest.raises(ValueError, match="32 hex"):
        OtlpEncoder().span(make(span_id="0" * 16), {})
    assert not OtlpEncoder().span(make(parent_id="f" * 17), {}).parent_span_id


def test_otlp_encoder_sends_what_protobuf_cannot_carry_as_text() -> None:
    """An unknown object as JSON text, an int beyond 64 bits as its digits (OpenTelemetry's encoder
    drops the attribute with an error log)."""
    from spanmux.backends.otel_spans import OtlpEncoder

    sent = OtlpEncoder().span(make(), {"when": object(), "huge": 2**70, "low": -(2**63)})
    values = {a.key: a.value for a in sent.attributes}
    assert values["when"].string_value.startswith('"<object')
    assert values["huge"].string_value == str(2**70) and values["low"].int_value == -(2**63)


def test_a_span_that_cannot_be_encoded_leaves_the_request_unchanged() -> None:
    from spanmux.backends.otel_spans import OtlpEncoder

    encoder = OtlpEncoder()
    request = encoder.request()
    spans = encoder.spans_of(request)
    encoder.span(make(), {"ok": 1}, into=spans)
    with pytest.raises(ValueError, match="negative"):
        encoder.span(make(), {}, [OtelEvent("late", {}, -1)], into=spans)
    with pytest.raises(ValueError, match="32 hex"):
        encoder.span(make(trace_id="0" * 32), {}, into=spans)
    assert len(spans) == 1
