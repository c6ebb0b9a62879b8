"""The ``otlp`` (and ``phoenix``) backend against an in-test OTLP receiver on loopback
(tests/otlp_receiver.py): HTTP protobuf and gRPC, headers, gzip, partial success, refusals,
retries, the GenAI and OpenInference attribute tables, content capture, scores, a user's own
OpenTelemetry provider, and the OpenTelemetry environment variables."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc")
pytest.importorskip("opentelemetry.proto")

from conftest import flush, lane_stats  # tests/ is on sys.path (rootdir conftest)
from otlp_receiver import OtlpReceiver

import spanmux
from spanmux import attributes as attr
from spanmux import runtime
from spanmux.backend import ExportError
from spanmux.model import Cost, ModelInfo, Score, Span, TraceAttributes, Usage, new_span_id, new_trace_id

SECRET = "Bearer sk-very-secret-token"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as rx:
        yield rx


def configure(tmp_path: Path, backend: str = "otlp", capture_content: bool = True, **section: Any) -> None:
    spanmux.configure({
        "backends": [backend],
        backend: section,
        "capture_content": capture_content,
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    })


def agent_trace() -> tuple[str, dict[str, str]]:
    """An agent with a chain, a retriever (documents), a tool, an embedding and an llm call with
    messages, tool calls, parameters, usage and cost; session, user, tags, metadata."""
    ids: dict[str, str] = {}
    context = spanmux.trace_context(user_id="user-7", session_id="sess-3", tags=["prod"],
                                    metadata={"variant": "B"}, name="support-agent")
    with context, spanmux.span("support-agent", kind="agent", input={"question": "refund?"}) as agent:
        ids["agent"] = agent.span_id
        with spanmux.span("plan", kind="chain", input="refund?") as chain:
            ids["chain"] = chain.span_id
            with spanmux.span("embed", kind="embedding", input="refund?") as emb:
                emb.set_model("text-embedding-3-small", "openai")
                emb.set_usage(input_tokens=12, output_tokens=0)
        now = time.time_ns()
        ids["retriever"] = new_span_id()
        runtime.emit(Span(
            trace_id=agent.trace_id, span_id=ids["retriever"], parent_id=agent.span_id, name="search",
            kind="retriever", framework="manual", start_ns=now - 1000, end_ns=now, input="refund?",
            output=[{"id": "doc-1", "score": 0.8, "content": "Refunds take 5 days.", "metadata": {"src": "faq"}}],
            attributes={attr.RETRIEVAL_DOCUMENTS: [
                {"id": "doc-1", "score": 0.8, "content": "Refunds take 5 days.", "metadata": {"src": "faq"}}]},
        ))
        ids["llm"] = new_span_id()
        runtime.emit(Span(
            trace_id=agent.trace_id, span_id=ids["llm"], parent_id=agent.span_id, name="ChatOpenAI",
            kind="llm", framework="langchain", start_ns=now - 2_000_000, end_ns=now,
            input=[{"role": "system", "content": "Be brief."}, {"role": "human", "content": "refund?"}],
            output={"role": "ai", "content": "", "tool_calls": [
                {"name": "lookup_order", "args": {"order": 42}, "id": "call-1"}]},
            model=ModelInfo("gpt-4o-mini", "openai", {"temperature": 0.2, "max_tokens": 256}),
            usage=Usage(input_tokens=1000, output_tokens=300, total_tokens=1300, cache_read_tokens=400,
                        reasoning_tokens=120),
            cost=Cost(0.001, 0.002, 0.003, "provider"),
            attributes={attr.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", attr.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
                        attr.LANGGRAPH_NODE: "model"},
            trace=TraceAttributes(name="support-agent", user_id="user-7", session_id="sess-3", tags=("prod",),
                                  metadata={"variant": "B"}),
        ))
        with spanmux.span("lookup_order", kind="tool", input={"order": 42}) as tool:
            tool.set_output({"status": "shipped"})
            ids["tool"] = tool.span_id
        trace_id = agent.trace_id
    return trace_id, ids


# ------------------------------------------------------------------ HTTP protobuf

def test_agent_trace_over_http_with_both_conventions(receiver: OtlpReceiver, tmp_path: Path) -> None:
    configure(tmp_path, endpoint=receiver.http_url, headers={"authorization": SECRET},
              service_name="math-tutor", resource_attributes={"deployment.environment": "prod"})
    trace_id, ids = agent_trace()
    flush()

    spans = receiver.spans
    assert {s.trace_id for s in spans} == {trace_id}  # our ids, unchanged
    assert {s.span_id for s in spans} == set(ids.values()) | {receiver.by_name("embed").span_id}
    assert receiver.by_name("plan").parent_id == ids["agent"] and receiver.by_name("support-agent").parent_id is None
    assert receiver.requests[0]["headers"]["authorization"] == SECRET
    assert receiver.requests[0]["encoding"] == "gzip"
    root = receiver.by_name("support-agent")
    assert root.resource["service.name"] == "math-tutor" and root.resource["deployment.environment"] == "prod"
    assert root.scope == "spanmux"
    assert root.attributes["openinference.span.kind"] == "AGENT"
    assert root.attributes["gen_ai.operation.name"] == "invoke_agent"
    assert root.attributes["session.id"] == "sess-3" and root.attributes["user.id"] == "user-7"
    assert root.attributes["gen_ai.conversation.id"] == "sess-3"
    assert root.attributes["tag.tags"] == ("prod",) and json.loads(root.attributes["metadata"]) == {"variant": "B"}

    llm = receiver.by_name("ChatOpenAI").attributes
    assert llm["openinference.span.kind"] == "LLM" and llm["gen_ai.operation.name"] == "chat"
    assert llm["gen_ai.provider.name"] == "openai" and llm["llm.provider"] == "openai"
    assert llm["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm["llm.model_name"] == "gpt-4o-mini-2024-07-18"  # model.name: the response's model
    assert llm["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert llm["gen_ai.request.temperature"] == 0.2 and llm["gen_ai.request.max_tokens"] == 256
    assert json.loads(llm["llm.invocation_parameters"]) == {"temperature": 0.2, "max_tokens": 256}
    assert (llm["gen_ai.usage.input_tokens"], llm["gen_ai.usage.output_tokens"]) == (1000, 300)
    assert llm["gen_ai.usage.cache_read.input_tokens"] == 400 and llm["gen_ai.usage.reasoning.output_tokens"] == 120
    assert (llm["llm.token_count.prompt"], llm["llm.token_count.completion"], llm["llm.token_count.total"]) == (
        1000, 300, 1300)
    assert llm["llm.token_count.prompt_details.cache_read"] == 400
    assert (llm["llm.cost.prompt"], llm["llm.cost.completion"], llm["llm.cost.total"]) == (0.001, 0.002, 0.003)
    assert json.loads(llm["gen_ai.input.messages"]) == [
        {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
        {"role": "user", "parts": [{"type": "text", "content": "refund?"}]},
    ]
    assert json.loads(llm["gen_ai.output.messages"]) == [{"role": "assistant", "finish_reason": "tool_call", "parts": [
        {"type": "tool_call", "id": "call-1", "name": "lookup_order", "arguments": {"order": 42}}]}]
    assert llm["llm.input_messages.1.message.role"] == "user"
    assert llm["llm.input_messages.1.message.content"] == "refund?"
    assert llm["llm.output_messages.0.message.tool_calls.0.tool_call.function.name"] == "lookup_order"
    assert json.loads(llm["llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments"]) == {"order": 42}
    assert llm["graph.node.id"] == "model" and llm["langgraph.node"] == "model"

    retriever = receiver.by_name("search").attributes
    assert retriever["openinference.span.kind"] == "RETRIEVER" and retriever["gen_ai.operation.name"] == "retrieval"
    assert retriever["retrieval.documents.0.document.id"] == "doc-1"
    assert retriever["retrieval.documents.0.document.content"] == "Refunds take 5 days."
    assert retriever["retrieval.documents.0.document.score"] == 0.8
    assert json.loads(retriever["retrieval.documents.0.document.metadata"]) == {"src": "faq"}

    tool = receiver.by_name("lookup_order").attributes
    assert tool["openinference.span.kind"] == "TOOL" and tool["tool.name"] == "lookup_order"
    assert tool["gen_ai.tool.name"] == "lookup_order" and json.loads(tool["gen_ai.tool.call.result"]) == {
        "status": "shipped"}
    assert json.loads(tool["input.value"]) == {"order": 42} and tool["input.mime_type"] == "application/json"
    embed = receiver.by_name("embed").attributes
    assert embed["embedding.model_name"] == "text-embedding-3-small"
    assert embed["gen_ai.operation.name"] == "embeddings"
    assert lane_stats("otlp")["exported_spans"] == 6


def test_conventions_choose_the_attribute_sets(receiver: OtlpReceiver, tmp_path: Path) -> None:
    configure(tmp_path, endpoint=receiver.http_url, conventions=["genai"], compression="none")
    agent_trace()
    flush()
    llm = receiver.by_name("ChatOpenAI").attributes
    assert "gen_ai.usage.input_tokens" in llm
    assert not [k for k in llm if k.startswith(("llm.", "openinference.", "input.", "output."))]
    assert receiver.requests[0]["encoding"] is None


def test_capture_content_off_sends_no_content_attribute(receiver: OtlpReceiver, tmp_path: Path) -> None:
    configure(tmp_path, capture_content=False, endpoint=receiver.http_url)
    agent_trace()
    flush()
    content = ("input.value", "output.value", "llm.input_messages", "llm.output_messages", "gen_ai.input.messages",
               "gen_ai.output.messages", "retrieval.documents", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result")
    for span in receiver.spans:
        leaked = [k for k in span.attributes if k.startswith(content)]
        assert not leaked, (span.name, leaked)
        assert "refund" not in json.dumps(span.attributes, default=str)
    llm = receiver.by_name("ChatOpenAI").attributes
    assert llm["gen_ai.usage.input_tokens"] == 1000 and llm["gen_ai.request.model"] == "gpt-4o-mini"  # facts stay


@pytest.mark.parametrize("capture_content", [True, False])
def test_recorded_events_become_span_events(receiver: OtlpReceiver, tmp_path: Path, capture_content: bool) -> None:
    configure(tmp_path, capture_content=capture_content, endpoint=receiver.http_url)
    now = time.time_ns()
    runtime.emit(Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="agent-step",
                      kind="agent", framework="langchain", start_ns=now - 10, end_ns=now,
                      attributes={attr.FRAMEWORK_EVENT: [{"name": "agent_action", "time_ns": now - 5,
                                                          "data": {"tool": "search", "input": "refund?"}}]}))
    flush()
    (span,) = receiver.spans
    assert [name for name, _ in span.events] == ["agent_action"]
    data = span.events[0][1].get("spanmux.event.data")
    if capture_content:
        assert json.loads(data) == {"tool": "search", "input": "refund?"}
    else:
        assert data is None and "refund" not in json.dumps(span.attributes)


# ------------------------------------------------------------------ gRPC

def test_agent_trace_over_grpc_with_headers_and_gzip(receiver: OtlpReceiver, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc

    channels: list[Any] = []
    real = grpc.insecure_channel

    def recording(address: str, *args: Any, **kwargs: Any) -> Any:
        channels.append(kwargs.get("compression"))
        return real(address, *args, **kwargs)

    monkeypatch.setattr(grpc, "insecure_channel", recording)  # gRPC hides grpc-encoding from servicers
    configure(tmp_path, endpoint=receiver.grpc_url, protocol="grpc", headers={"Authorization": SECRET})
    trace_id, ids = agent_trace()
    flush()
    assert {s.trace_id for s in receiver.spans} == {trace_id}
    assert receiver.by_name("ChatOpenAI").parent_id == ids["agent"]
    assert receiver.requests[0]["transport"] == "grpc"
    assert receiver.requests[0]["headers"]["authorization"] == SECRET
    assert channels == [grpc.Compression.Gzip]
    assert receiver.by_name("ChatOpenAI").attributes["llm.token_count.total"] == 1300


def test_grpc_unavailable_is_retried_and_delivered_once(receiver: OtlpReceiver, tmp_path: Path) -> None:
    receiver.fail_next(2, code="UNAVAILABLE")
    configure(tmp_path, endpoint=receiver.grpc_url, protocol="grpc")
    agent_trace()
    flush()
    assert receiver.answers()[:2] == ["fail UNAVAILABLE", "fail UNAVAILABLE"] and receiver.answers()[-1] == "ok"
    names = [s.name for s in receiver.spans]
    assert sorted(names) == sorted(set(names)) and len(names) == 6  # every span, exactly once


def test_http_503_with_retry_after_is_retried_and_delivered_once(receiver: OtlpReceiver, tmp_path: Path) -> None:
    receiver.fail_next(1, status=503, retry_after=0)
    configure(tmp_path, endpoint=receiver.http_url)
    agent_trace()
    flush()
    assert receiver.answers()[0] == "fail 503"
    assert len(receiver.spans) == len({s.span_id for s in receiver.spans}) == 6


def test_partial_success_counts_rejected_spans(receiver: OtlpReceiver, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    receiver.partial_next(2, "two spans had bad attributes")
    configure(tmp_path, endpoint=receiver.grpc_url, protocol="grpc")
    agent_trace()
    flush()
    assert lane_stats("otlp")["rejected_spans"] == 2
    assert "two spans had bad attributes" in caplog.text
    assert len(receiver.requests) == 1  # not retried


def test_partial_success_over_http(receiver: OtlpReceiver, tmp_path: Path) -> None:
    receiver.partial_next(1)
    configure(tmp_path, endpoint=receiver.http_url)
    agent_trace()
    flush()
    assert lane_stats("otlp")["rejected_spans"] == 1


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_refused_span_is_dropped_and_counted_the_rest_delivered(
        receiver: OtlpReceiver, tmp_path: Path, protocol: str) -> None:
    receiver.refuse("lookup_order")
    url = receiver.grpc_url if protocol == "grpc" else receiver.http_url
    configure(tmp_path, endpoint=url, protocol=protocol)
    agent_trace()
    flush()
    assert sorted(s.name for s in receiver.spans) == sorted(
        ["support-agent", "plan", "embed", "search", "ChatOpenAI"])
    assert lane_stats("otlp")["rejected_spans"] == 1


def test_a_large_batch_is_split_below_the_request_limit(receiver: OtlpReceiver, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from spanmux.backends import otlp

    monkeypatch.setattr(otlp, "MAX_REQUEST_BYTES", 2_000)  # gRPC servers refuse messages over 4 MiB
    configure(tmp_path, endpoint=receiver.grpc_url, protocol="grpc")
    agent_trace()
    flush()
    assert len(receiver.requests) > 1 and all(r["answer"] == "ok" for r in receiver.requests)
    assert len(receiver.spans) == len({s.span_id for s in receiver.spans}) == 6


@pytest.mark.parametrize(("protocol", "code", "retryable"), [
    ("grpc", "UNAVAILABLE", True), ("grpc", "RESOURCE_EXHAUSTED", True), ("grpc", "DEADLINE_EXCEEDED", True),
    ("grpc", "UNAUTHENTICATED", False), ("grpc", "PERMISSION_DENIED", False), ("grpc", "UNIMPLEMENTED", False),
    ("http/protobuf", "429", True), ("http/protobuf", "502", True), ("http/protobuf", "503", True),
    ("http/protobuf", "401", False), ("http/protobuf", "404", False),
])
def test_answers_are_classified_for_the_lane(receiver: OtlpReceiver, protocol: str, code: str,
                                             retryable: bool) -> None:
    from spanmux.backends.otlp import OtlpBackend, OtlpConfig

    if protocol == "grpc":
        receiver.fail_next(1, code=code)
        url = receiver.grpc_url
    else:
        receiver.fail_next(1, status=int(code), retry_after=3 if code == "429" else None)
        url = receiver.http_url
    backend = OtlpBackend(OtlpConfig(endpoint=url, protocol=protocol, headers={"authorization": SECRET}))
    span = Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="x", kind="span",
                framework="manual", start_ns=1, end_ns=2)
    with pytest.raises(ExportError) as info:
        backend.export([span], [])
    assert info.value.retryable is retryable
    assert SECRET not in str(info.value) and "sk-very" not in repr(backend)
    if code == "429":
        assert info.value.retry_after == 3
    backend.shutdown(1)


def test_unreachable_receiver_is_retryable_and_keeps_records(tmp_path: Path) -> None:
    from servers import free_port

    configure(tmp_path, endpoint=f"http://127.0.0.1:{free_port()}/v1/traces")
    agent_trace()
    assert not spanmux.flush(timeout=1)
    stats = lane_stats("otlp")
    assert stats["spooled_spans"] >= 6 and stats["exported_spans"] == 0


# ------------------------------------------------------------------ scores

def test_scores_become_evaluation_events_or_their_own_record(receiver: OtlpReceiver, tmp_path: Path) -> None:
    configure(tmp_path, endpoint=receiver.http_url)
    trace_id, ids = agent_trace()
    spanmux.score(trace_id, "helpfulness", 0.75, comment="mostly right")
    spanmux.score(trace_id, "resolved", True, span_id=ids["tool"])
    flush()
    # a score arriving after its trace was exported: its own small evaluator record
    spanmux.score(trace_id, "tone", "friendly", span_id=ids["llm"], source="llm_judge")
    flush()

    events = {name: a for s in receiver.spans for name, a in s.events}
    assert set(events) <= {"gen_ai.evaluation.result"}
    evaluations = [(s.name, a) for s in receiver.spans for name, a in s.events if name == "gen_ai.evaluation.result"]
    by_name = {a["gen_ai.evaluation.name"]: (span, a) for span, a in evaluations}
    assert set(by_name) == {"helpfulness", "resolved", "tone"}
    span, helpful = by_name["helpfulness"]
    assert span in ("support-agent", "evaluation helpfulness")  # the root when in the same batch
    assert helpful["gen_ai.evaluation.score.value"] == 0.75
    assert helpful["gen_ai.evaluation.explanation"] == "mostly right"
    assert by_name["resolved"][1]["gen_ai.evaluation.score.label"] == "true"
    late = receiver.by_name("evaluation tone")
    assert late.parent_id == ids["llm"] and late.trace_id == trace_id
    assert late.attributes["openinference.span.kind"] == "EVALUATOR"
    assert late.attributes["gen_ai.evaluation.score.label"] == "friendly"


def test_a_late_score_record_is_the_same_record_when_sent_again() -> None:
    from spanmux.backends.otlp import score_record

    score = Score(id="ab" * 16, trace_id=new_trace_id(), name="x", value=1.0, data_type="numeric",
                  span_id=new_span_id(), timestamp_ns=5)
    assert score_record(score) == score_record(score) and score_record(score).span_id == "ab" * 8



def test_a_late_score_with_a_non_hex_id_is_the_same_record_in_another_process() -> None:
    """A score replayed from the spool by another process keeps its record id (``hash()`` of a
    str is salted per process: it made a second record)."""
    import subprocess
    import sys

    code = ("from spanmux.backends.otlp import score_record; from spanmux.model import Score; "
            "print(score_record(Score(id='my-score', trace_id='a' * 32, name='x', value=1.0, "
            "data_type='numeric', timestamp_ns=5)).span_id)")
    ids = {subprocess.run([sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, check=True,
                          capture_output=True, text=True).stdout.strip() for seed in ("1", "2", "3")}
    assert len(ids) == 1 and len(ids.pop()) == 16

# ------------------------------------------------------------------ no global OpenTelemetry state

def test_never_installs_a_tracer_provider_nor_touches_user_otel_spans(receiver: OtlpReceiver,
                                                                       tmp_path: Path) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    global_before = trace.get_tracer_provider()
    user_exporter = InMemorySpanExporter()
    user_provider = TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
    user_tracer = user_provider.get_tracer("user-app")

    configure(tmp_path, endpoint=receiver.http_url)
    with user_tracer.start_as_current_span("user-request") as user_span:
        with spanmux.span("spanmux-agent", kind="agent"), user_tracer.start_as_current_span("user-inner"):
            pass
        assert trace.get_current_span() is user_span
    flush()
    user_provider.shutdown()

    assert trace.get_tracer_provider() is global_before
    assert sorted(s.name for s in user_exporter.get_finished_spans()) == ["user-inner", "user-request"]
    assert [s.name for s in receiver.spans] == ["spanmux-agent"]
    assert receiver.spans[0].trace_id != format(user_span.get_span_context().trace_id, "032x")


GLOBAL_PROVIDER_PROGRAM = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import spanmux

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)  # the program's own, process-wide OpenTelemetry setup
tracer = trace.get_tracer("user-app")
spanmux.configure({"backends": ["otlp"], "otlp": {"endpoint": sys.argv[1]}, "spool_dir": sys.argv[2]})
with tracer.start_as_current_span("user-request") as user_span:
    with spanmux.span("spanmux-agent", kind="agent"):
        with tracer.start_as_current_span("user-inner"):
            pass
    same = trace.get_current_span() is user_span
flushed = spanmux.flush(30)
print(json.dumps({"flushed": flushed, "same": same, "provider": trace.get_tracer_provider() is provider,
                  "user": sorted(s.name for s in exporter.get_finished_spans())}))
"""


def test_a_global_tracer_provider_of_the_program_is_left_alone(receiver: OtlpReceiver, tmp_path: Path) -> None:
    """In its own process, because OpenTelemetry lets a process set its global provider only once."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", GLOBAL_PROVIDER_PROGRAM, receiver.http_url, str(tmp_path / "sp")],
                            capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found == {"flushed": True, "same": True, "provider": True, "user": ["user-inner", "user-request"]}
    assert [s.name for s in receiver.spans] == ["spanmux-agent"]  # the user's spans never reach spanmux's receiver


# ------------------------------------------------------------------ configuration and environment

def _resolve(env: dict[str, str], **section: Any) -> Any:
    from spanmux.backends.otlp import OtlpConfig, resolve

    return resolve(OtlpConfig(**section), env)


def test_endpoint_rules_of_the_specification() -> None:
    assert _resolve({}).endpoint == "http://localhost:4318/v1/traces"
    assert _resolve({}, protocol="grpc").endpoint == "http://localhost:4317"
    generic = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    assert _resolve(generic).endpoint == "http://collector:4318/v1/traces"  # suffix on the generic one
    assert _resolve({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"}).endpoint == "http://c:4318/base/v1/traces"
    assert _resolve({**generic, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}).endpoint == "http://collector:4318"
    signal = {**generic, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://other:9999/custom"}
    assert _resolve(signal).endpoint == "http://other:9999/custom"  # used as is
    assert _resolve(signal, endpoint="http://mine:1/v1/traces").endpoint == "http://mine:1/v1/traces"
    protocol = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}
    assert _resolve(protocol).protocol == "grpc"


def test_headers_compression_timeout_service_and_resource_from_environment() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=generic,x-team=a%20b",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "api-key=traces",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
        "OTEL_SERVICE_NAME": "from-env",
        "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-resource,deployment.environment=staging,team=x%2Cy",
    }
    target = _resolve(env)
    assert target.headers == {"api-key": "traces"}  # the signal's variable replaces the generic one
    assert target.compression == "none" and target.timeout == 2.5
    assert target.resource["service.name"] == "from-env"
    assert target.resource["deployment.environment"] == "staging" and target.resource["team"] == "x,y"
    assert _resolve({"OTEL_EXPORTER_OTLP_HEADERS": "x-team=a%20b"}).headers == {"x-team": "a b"}
    mine = _resolve(env, headers={"api-key": "mine"}, service_name="mine", resource_attributes={"team": "z"})
    assert mine.headers["api-key"] == "mine" and mine.resource["service.name"] == "mine"
    assert mine.resource["team"] == "z"
    assert _resolve({"OTEL_RESOURCE_ATTRIBUTES": "service.name=svc"}).resource["service.name"] == "svc"
    assert _resolve({}).resource["service.name"] == "spanmux" and _resolve({}).compression == "gzip"


def test_environment_defaults_reach_a_configured_backend(receiver: OtlpReceiver, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_url.removesuffix("/v1/traces"))
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20env-token")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "env-service")
    configure(tmp_path)
    with spanmux.span("from-env", kind="chain"):
        pass
    flush()
    assert receiver.by_name("from-env").resource["service.name"] == "env-service"
    assert receiver.requests[0]["headers"]["authorization"] == "Bearer env-token"


def test_bad_settings_are_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(spanmux.ConfigurationError, match="endpoint"):
        configure(tmp_path, endpoint="collector:4318")
    with pytest.raises(spanmux.ConfigurationError, match="protocol"):
        configure(tmp_path, protocol="http/json")


def test_secret_headers_never_in_repr_logs_or_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from servers import free_port

    from spanmux.backends.otlp import OtlpBackend, OtlpConfig

    caplog.set_level(logging.DEBUG)
    url = f"http://user:pw-secret@127.0.0.1:{free_port()}/v1/traces?token=q-secret"
    backend = OtlpBackend(OtlpConfig(endpoint=url, headers={"authorization": SECRET}))
    assert "sk-very" not in repr(backend) and "pw-secret" not in repr(backend)
    assert "sk-very" not in repr(backend.config)
    with pytest.raises(ExportError) as info:
        backend.check_connection(1)
    assert info.value.retryable and "secret" not in str(info.value)
    configure(tmp_path, endpoint=url, headers={"authorization": SECRET})
    with spanmux.span("x"):
        pass
    spanmux.flush(timeout=1)
    assert "sk-very" not in caplog.text and "pw-secret" not in caplog.text and "q-secret" not in caplog.text
    assert "sk-very" not in json.dumps(spanmux.stats(), default=str)


def test_check_connection_names_the_receiver(receiver: OtlpReceiver) -> None:
    from spanmux.backends.otlp import OtlpBackend, OtlpConfig

    for url, protocol in ((receiver.http_url, "http/protobuf"), (receiver.grpc_url, "grpc")):
        backend = OtlpBackend(OtlpConfig(endpoint=url, protocol=protocol))
        assert protocol in backend.check_connection(2) and backend.has_connection_check
        backend.shutdown(1)
    assert receiver.spans == []  # an empty export


# ------------------------------------------------------------------ phoenix: defaults and annotations

def test_phoenix_defaults_and_project(monkeypatch: pytest.MonkeyPatch) -> None:
    from spanmux.backends.phoenix import PhoenixBackend, PhoenixConfig

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://not-phoenix:4318")
    backend = PhoenixBackend(PhoenixConfig(project="math-tutor"))
    assert backend.target.endpoint == "http://127.0.0.1:6006/v1/traces"
    assert backend.target.resource["openinference.project.name"] == "math-tutor"
    assert backend.base_url == "http://127.0.0.1:6006"
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", "http://phoenix.internal:6006")
    monkeypatch.setenv("PHOENIX_API_KEY", "px-secret")
    other = PhoenixBackend(PhoenixConfig())
    assert other.target.endpoint == "http://phoenix.internal:6006/v1/traces"
    assert other.base_url == "http://phoenix.internal:6006" and other.project == "default"
    assert other.target.headers["authorization"] == "Bearer px-secret" and "px-secret" not in repr(other)


def test_phoenix_annotation_bodies() -> None:
    from spanmux.backends.phoenix import annotation

    trace_id, span_id = new_trace_id(), new_span_id()
    numeric = annotation(Score(id="s1", trace_id=trace_id, name="q", value=0.5, data_type="numeric",
                               comment="ok", source="human"))
    assert numeric == {"name": "q", "annotator_kind": "HUMAN", "result": {"score": 0.5, "explanation": "ok"},
                       "metadata": {"source": "human"}, "identifier": "s1", "trace_id": trace_id}
    boolean = annotation(Score(id="s2", trace_id=trace_id, span_id=span_id, name="ok", value=True,
                               data_type="boolean", source="llm_judge"))
    assert boolean["span_id"] == span_id and boolean["annotator_kind"] == "LLM"
    assert boolean["result"] == {"score": 1.0, "label": "true"}
    label = annotation(Score(id="s3", trace_id=trace_id, name="tone", value="warm", data_type="categorical"))
    assert label["result"] == {"label": "warm"} and label["annotator_kind"] == "CODE"


# ------------------------------------------------------------------ a second real receiver: MLflow 3's OTLP ingestion

@pytest.mark.slow
def test_mlflow_server_ingests_otlp_with_span_types_usage_and_model(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.create_experiment(f"otlp-ingest-{new_span_id()}")
    configure(tmp_path, endpoint=mlflow_server + "/v1/traces", headers={"x-mlflow-experiment-id": experiment})
    trace_id, ids = agent_trace()
    flush()

    trace = client.get_trace(f"tr-{trace_id}")
    assert trace.info.experiment_id == experiment
    spans = {s.name: s for s in trace.data.spans}
    assert {s.span_id for s in trace.data.spans} >= set(ids.values()) and len(spans) == 6
    assert spans["support-agent"].parent_id is None and spans["plan"].parent_id == ids["agent"]
    types = {name: s.span_type for name, s in spans.items()}
    assert types == {"support-agent": "AGENT", "plan": "CHAIN", "embed": "EMBEDDING", "search": "RETRIEVER",
                     "ChatOpenAI": "LLM", "lookup_order": "TOOL"}
    llm = spans["ChatOpenAI"].attributes
    assert llm["mlflow.chat.tokenUsage"]["input_tokens"] == 1000 and llm["mlflow.llm.model"] == "gpt-4o-mini-2024-07-18"
    assert trace.info.token_usage["output_tokens"] == 300

    from spanmux.backends.otlp import OtlpBackend, OtlpConfig

    doctor = OtlpBackend(OtlpConfig(endpoint=mlflow_server + "/v1/traces"))
    assert "answered" in doctor.check_connection(5)  # MLflow refuses an export without spans: it answered
    doctor.shutdown(1)
