"""The Langfuse backend against the contract server (tests/langfuse_server.py) on loopback.

Spans and scores go through the whole pipeline (configure -> emit -> worker -> Lane -> HTTP) and
the assertions read what the server decoded: observation types, parents, models, usage buckets,
costs, trace-level fields on every observation, scores.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import flush, lane_stats  # tests/ is on sys.path (rootdir conftest)
from hypothesis import given, settings
from hypothesis import strategies as st

import spanmux
from spanmux import runtime
from spanmux.backends.local import LocalStore
from spanmux.model import Cost, ModelInfo, Span, TraceAttributes, Usage, new_span_id, new_trace_id

pytest.importorskip("opentelemetry.exporter.otlp.proto.common")

TRACES = "/api/public/otel/v1/traces"
SCORES = "/api/public/scores"


def configure(server: Any, tmp_path: Path, backends: tuple[str, ...] = ("langfuse",), **langfuse: Any) -> None:
    section = {"public_key": server.public_key, "secret_key": server.secret_key, "host": server.url}
    section.update(langfuse)
    spanmux.configure({
        "backends": list(backends),
        "langfuse": section,
        "local": {"path": str(tmp_path / "store.db")},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    })


def agent_trace() -> tuple[str, dict[str, str]]:
    """An agent with a chain, a retriever, a tool, an embedding, a reranker and two generations
    (one emitted as a raw Span with every generation field). Returns (trace id, span ids)."""
    ids: dict[str, str] = {}
    context = spanmux.trace_context(user_id="user-7", session_id="sess-3", tags=["prod", "ab"],
                                    metadata={"variant": "B", "team": "search"}, name="support-agent")
    with context, spanmux.span("agent", kind="agent", input={"question": "refund?"}) as agent:
        ids["agent"] = agent.span_id
        with spanmux.span("plan", kind="chain", input="refund?") as chain:
            ids["chain"] = chain.span_id
            with spanmux.span("embed-query", kind="embedding", input="refund?") as emb:
                emb.set_model("text-embedding-3-small", "openai")
                emb.set_usage(input_tokens=12, output_tokens=0)
                ids["embedding"] = emb.span_id
            with spanmux.span("vector-search", kind="retriever", input={"q": "refund?"}) as ret:
                ret.set_output([{"id": "doc-1", "score": 0.8}])
                ids["retriever"] = ret.span_id
            with spanmux.span("rerank", kind="reranker") as rr:
                ids["reranker"] = rr.span_id
            with spanmux.span("ChatOpenAI", kind="llm", input=[{"role": "user", "content": "refund?"}]) as llm:
                llm.set_model("gpt-4o-mini", "openai", temperature=0.2, max_tokens=256)
                llm.set_usage(input_tokens=1000, output_tokens=300, cache_read_tokens=400,
                              cache_write_tokens=100, reasoning_tokens=120)
                llm.set_output({"role": "assistant", "content": "call the tool"})
                ids["llm"] = llm.span_id
        with spanmux.span("lookup_order", kind="tool", input={"order": 42}) as tool:
            tool.set_output({"status": "shipped"})
            ids["tool"] = tool.span_id
        # a generation with every field, as an integration would emit it
        now = time.time_ns()
        ids["final"] = new_span_id()
        runtime.emit(Span(
            trace_id=agent.trace_id, span_id=ids["final"], parent_id=agent.span_id, name="final-answer",
            kind="llm", framework="langchain", start_ns=now - 2_000_000, end_ns=now,
            completion_start_ns=now - 1_500_000, input="summarize", output="Your order shipped.",
            model=ModelInfo("claude-x", "anthropic", {"temperature": 0}),
            usage=Usage(input_tokens=50, output_tokens=10, total_tokens=60),
            cost=Cost(0.001, 0.002, 0.003, "provider"),
            attributes={"prompt.name": "final-answer", "prompt.version": 3, "langgraph.node": "agent"},
            trace=TraceAttributes(name="support-agent", user_id="user-7", session_id="sess-3",
                                  tags=("prod", "ab"), metadata={"variant": "B", "team": "search"}),
        ))
        trace_id = agent.trace_id
    spanmux.score(trace_id, "helpfulness", 0.75, comment="mostly right")
    spanmux.score(trace_id, "resolved", True, span_id=ids["tool"], comment="tool answered")
    spanmux.score(trace_id, "tone", "friendly", span_id=ids["llm"], source="llm_judge")
    return trace_id, ids


def test_agent_trace_arrives_as_langfuse_observations(langfuse_server: Any, tmp_path: Path) -> None:
    configure(langfuse_server, tmp_path, backends=("local", "langfuse"), environment="staging", release="1.2.3")
    trace_id, ids = agent_trace()
    flush()

    observations = {o.name: o for o in langfuse_server.trace(trace_id)}
    assert len(observations) == 8
    types = {name: o.type for name, o in observations.items()}
    assert types == {
        "agent": "agent", "plan": "chain", "embed-query": "embedding", "vector-search": "retriever",
        "rerank": "span", "ChatOpenAI": "generation", "lookup_order": "tool", "final-answer": "generation",
    }
    assert observations["rerank"].metadata()["kind"] == "reranker"

    # parents are spanmux's own ids; the root has none
    parent = {name: o.parent_id for name, o in observations.items()}
    assert parent["agent"] is None
    assert parent["plan"] == parent["lookup_order"] == parent["final-answer"] == ids["agent"]
    assert parent["ChatOpenAI"] == parent["vector-search"] == parent["embed-query"] == ids["chain"]

    # same ids and nanosecond timestamps as the built-in store
    with LocalStore(tmp_path / "store.db") as store:
        local = {s.span_id: s for s in store.get_trace(trace_id)}
    assert set(local) == {o.span_id for o in observations.values()}
    for o in observations.values():
        assert (o.start_ns, o.end_ns) == (local[o.span_id].start_ns, local[o.span_id].end_ns)

    llm = observations["ChatOpenAI"]
    assert llm.model == "gpt-4o-mini"
    assert json.loads(llm.attributes["langfuse.observation.model.parameters"]) == {
        "temperature": 0.2, "max_tokens": 256}
    # exclusive buckets: 1000 input = 500 plain + 400 cache read + 100 cache write; 300 output = 180 + 120
    assert llm.usage == {"input": 500, "input_cache_read": 400, "input_cache_creation": 100,
                         "output": 180, "output_reasoning": 120, "total": 1300}
    cost = llm.cost
    assert cost is not None and cost["total"] == pytest.approx(local[ids["llm"]].cost.total)  # type: ignore[union-attr]
    assert cost["total"] > 0 and llm.metadata()["cost.source"] == "price-table"
    assert json.loads(llm.attributes["langfuse.observation.input"]) == [{"role": "user", "content": "refund?"}]
    assert json.loads(llm.attributes["langfuse.observation.output"])["content"] == "call the tool"

    final = observations["final-answer"]
    assert final.model == "claude-x" and final.usage == {"input": 50, "output": 10, "total": 60}
    assert final.cost == {"input": 0.001, "output": 0.002, "total": 0.003}
    assert final.attributes["langfuse.observation.completion_start_time"].endswith("Z")
    assert final.attributes["langfuse.observation.prompt.name"] == "final-answer"
    assert final.attributes["langfuse.observation.prompt.version"] == 3
    assert final.attributes["langfuse.observation.output"] == "Your order shipped."
    assert final.metadata()["langgraph.node"] == "agent"

    emb = observations["embed-query"]
    assert emb.model == "text-embedding-3-small" and emb.usage == {"input": 12, "output": 0, "total": 12}
    # model/usage/cost only on generation-like observations
    for name in ("agent", "plan", "vector-search", "lookup_order", "rerank"):
        assert "langfuse.observation.usage_details" not in observations[name].attributes
    assert json.loads(observations["lookup_order"].attributes["langfuse.observation.output"]) == {"status": "shipped"}

    # trace-level fields on every observation (Langfuse aggregates per observation)
    for o in observations.values():
        a = o.attributes
        assert a["langfuse.trace.name"] == "support-agent", o.name
        assert a["user.id"] == "user-7" and a["session.id"] == "sess-3"
        assert a["langfuse.trace.tags"] == ("prod", "ab")
        assert a["langfuse.trace.metadata.variant"] == "B" and a["langfuse.trace.metadata.team"] == "search"
        assert a["langfuse.environment"] == "staging" and a["langfuse.release"] == "1.2.3"
        assert o.scope == "spanmux" and "langfuse.observation.level" not in a

    scores = {s["name"]: s for s in langfuse_server.all_scores()}
    assert scores["helpfulness"]["dataType"] == "NUMERIC" and scores["helpfulness"]["value"] == 0.75
    assert scores["helpfulness"]["comment"] == "mostly right" and "observationId" not in scores["helpfulness"]
    assert scores["resolved"] == scores["resolved"] | {"dataType": "BOOLEAN", "value": 1.0,
                                                     "observationId": ids["tool"], "comment": "tool answered"}
    assert scores["tone"]["dataType"] == "CATEGORICAL" and scores["tone"]["value"] == "friendly"
    assert scores["tone"]["observationId"] == ids["llm"] and scores["tone"]["metadata"] == {"source": "llm_judge"}
    assert {s["traceId"] for s in scores.values()} == {trace_id}
    assert {s["environment"] for s in scores.values()} == {"staging"}

    # the wire format Langfuse expects
    trace_headers = [h for h in langfuse_server.headers if h.get("content-type") == "application/x-protobuf"]
    assert trace_headers and all(h["x-langfuse-ingestion-version"] == "4" for h in trace_headers)
    assert all(h["content-encoding"] == "gzip" for h in trace_headers)
    assert set(langfuse_server.statuses(TRACES)) == {200} and set(langfuse_server.statuses(SCORES)) == {202}


def test_failing_tool_is_an_error_observation(langfuse_server: Any, tmp_path: Path) -> None:
    configure(langfuse_server, tmp_path)

    @spanmux.observe(kind="tool", name="flaky_tool")
    def flaky_tool(x: int) -> int:
        raise TimeoutError(f"upstream timed out after {x}s")

    with spanmux.span("agent", kind="agent") as agent, pytest.raises(TimeoutError):
        flaky_tool(3)
    flush()

    tool = langfuse_server.by_name("flaky_tool")
    assert tool.type == "tool" and tool.parent_id == agent.span_id
    assert tool.attributes["langfuse.observation.level"] == "ERROR"
    assert tool.attributes["langfuse.observation.status_message"] == "TimeoutError: upstream timed out after 3s"
    assert "Traceback" in tool.metadata()["error.traceback"]
    assert tool.status_code == 2  # OTel STATUS_CODE_ERROR
    root = langfuse_server.by_name("agent")
    assert root.attributes["langfuse.trace.name"] == "agent"
    assert "langfuse.observation.level" not in root.attributes


def test_concurrent_traces_from_threads(langfuse_server: Any, tmp_path: Path) -> None:
    configure(langfuse_server, tmp_path)
    trace_ids: dict[int, str] = {}
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        context = spanmux.trace_context(user_id=f"user-{n}", name=f"trace-{n}")
        with context, spanmux.span(f"agent-{n}", kind="agent") as root:
            for step in range(3):
                with spanmux.span(f"step-{n}-{step}", kind="chain"), spanmux.span(f"llm-{n}-{step}", kind="llm") as s:
                    s.set_model("gpt-4o-mini")
                    s.set_usage(input_tokens=10 * (n + 1), output_tokens=step + 1)
            trace_ids[n] = root.trace_id
        spanmux.score(root.trace_id, "quality", float(n))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flush()

    assert len(set(trace_ids.values())) == 8
    for n, trace_id in trace_ids.items():
        observations = {o.name: o for o in langfuse_server.trace(trace_id)}
        assert len(observations) == 7, n
        root = observations[f"agent-{n}"]
        assert root.parent_id is None
        for step in range(3):
            chain, llm = observations[f"step-{n}-{step}"], observations[f"llm-{n}-{step}"]
            assert chain.parent_id == root.span_id and llm.parent_id == chain.span_id
            assert llm.usage == {"input": 10 * (n + 1), "output": step + 1, "total": 10 * (n + 1) + step + 1}
        assert {o.attributes["user.id"] for o in observations.values()} == {f"user-{n}"}
        assert {o.attributes["langfuse.trace.name"] for o in observations.values()} == {f"trace-{n}"}
    assert sorted(s["value"] for s in langfuse_server.all_scores()) == [float(n) for n in range(8)]


@pytest.mark.parametrize(("status", "retry_after"), [(503, None), (429, 0.01)])
def test_server_failing_first_requests_delivers_everything_once(
    langfuse_server: Any, tmp_path: Path, status: int, retry_after: float | None
) -> None:
    configure(langfuse_server, tmp_path)
    langfuse_server.fail_next(3, status=status, retry_after=retry_after)
    trace_id, ids = agent_trace()
    for _ in range(20):  # each flush forces one replay attempt of the spool
        flush()
        if lane_stats("langfuse")["spool_pending_batches"] == 0 and lane_stats("langfuse")["exported_spans"]:
            break
    stats = lane_stats("langfuse")
    assert stats["spool_pending_batches"] == 0
    assert stats["export_errors"] >= 2 and stats["replayed_batches"] >= 1
    observations = langfuse_server.trace(trace_id)
    assert sorted(o.span_id for o in observations) == sorted(ids.values())
    assert langfuse_server.spans_received >= len(observations) == 8
    assert len(langfuse_server.all_scores()) == 3
    assert langfuse_server.statuses(TRACES).count(status) + langfuse_server.statuses(SCORES).count(status) == 3


def test_wrong_key_is_reported_once_and_records_stay_in_the_spool(
    langfuse_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    configure(langfuse_server, tmp_path, secret_key="sk-lf-WRONG-SECRET")
    for n in range(3):
        with spanmux.span(f"job-{n}", kind="chain") as s:
            pass
        spanmux.score(s.trace_id, "ok", True)
        assert not spanmux.flush(timeout=30)  # refused for good until the key is fixed: not delivered

    assert langfuse_server.auth_failures >= 3 and not langfuse_server.all_observations()
    reports = [r.getMessage() for r in caplog.records if "401" in r.getMessage()]
    assert len(reports) == 1, reports
    assert langfuse_server.url in reports[0] and langfuse_server.public_key in reports[0]
    assert "not retryable" in reports[0]
    assert all("WRONG-SECRET" not in r.getMessage() for r in caplog.records)
    stats = lane_stats("langfuse")
    assert stats["exported_spans"] == 0 and stats["spool_pending_batches"] >= 1
    assert stats["spooled_spans"] == 3 and stats["spooled_scores"] == 3
    assert "WRONG-SECRET" not in json.dumps(spanmux.stats(), default=str)


def test_unreachable_host_is_retryable_and_keeps_records(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spanmux.configure({
        "backends": ["langfuse"],
        "langfuse": {"public_key": "pk-lf-x", "secret_key": "sk-lf-x", "host": f"http://127.0.0.1:{port}",
                     "timeout": 2},
        "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05,
    })
    with spanmux.span("offline", kind="chain"):
        pass
    assert not spanmux.flush(timeout=1)  # retried until the deadline, then reported as not delivered
    stats = lane_stats("langfuse")
    assert stats["export_errors"] >= 1 and stats["spooled_spans"] == 1
    assert "unreachable" in (stats["last_error"] or "")


def test_a_span_the_server_refuses_is_dropped_without_blocking_the_rest(
    langfuse_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from spanmux.backends import langfuse as backend_module

    real = backend_module.observation_type
    monkeypatch.setattr(backend_module, "observation_type",
                        lambda kind: "reranker" if kind == "reranker" else real(kind))
    caplog.set_level(logging.WARNING)
    configure(langfuse_server, tmp_path)
    trace_id, _ = agent_trace()
    flush()
    names = {o.name for o in langfuse_server.trace(trace_id)}
    assert "rerank" not in names and len(names) == 7
    assert lane_stats("langfuse")["spool_pending_batches"] == 0
    assert lane_stats("langfuse")["rejected_spans"] == 1  # the one refused span is counted, never silent
    assert any("unknown observation type 'reranker'" in r.getMessage() for r in caplog.records)
    assert 400 in langfuse_server.statuses(TRACES)


def test_keys_default_from_langfuse_environment_variables(
    langfuse_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", langfuse_server.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", langfuse_server.secret_key)
    monkeypatch.delenv("LANGFUSE_HOST", raising=False)
    monkeypatch.setenv("LANGFUSE_BASE_URL", langfuse_server.url)
    monkeypatch.setenv("LANGFUSE_TRACING_ENVIRONMENT", "dev")
    spanmux.configure({"backends": ["langfuse"], "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    with spanmux.span("from-env", kind="agent"):
        pass
    flush()
    assert langfuse_server.by_name("from-env").attributes["langfuse.environment"] == "dev"


@pytest.mark.parametrize(
    ("section", "key", "hint"),
    [
        ("    host: http://127.0.0.1:9\n    project: agents\n", "public_key", "LANGFUSE_PUBLIC_KEY"),
        ("    public_key: pk-lf-1\n    host: http://127.0.0.1:9\n", "secret_key", "LANGFUSE_SECRET_KEY"),
        ("    public_key: pk-lf-1\n    secret_key: sk-lf-2\n    host: localhost:3000\n", "host", "http"),
        ("    public_key: pk-lf-1\n    secret_key: sk-lf-2\n    environment: Prod!\n", "environment", "lowercase"),
    ],
)
def test_configuration_errors_name_file_key_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, key: str, hint: str
) -> None:
    for var in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "LANGFUSE_BASE_URL",
                "LANGFUSE_TRACING_ENVIRONMENT"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "agent.yaml"
    path.write_text("spec:\n  observability:\n    backends: [langfuse]\n    langfuse:\n"
                    + "\n".join("  " + line for line in section.splitlines()) + "\n")
    with pytest.raises(spanmux.ConfigurationError) as caught:
        spanmux.configure(path)
    message = str(caught.value)
    assert "agent.yaml" in message and f"langfuse.{key}" in message and hint in message
    assert "sk-lf-2" not in message
    lines = path.read_text().splitlines()
    expected_line = next((i + 1 for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")),
                         next(i + 1 for i, line in enumerate(lines) if line.strip() == "langfuse:"))
    assert f"line {expected_line}" in message
    assert not runtime.stats()["enabled"]  # nothing started half-configured


def test_missing_keys_without_a_section_point_at_the_backend_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LANGFUSE_PUBLIC_KEY", raising=False)
    path = tmp_path / "agent.yaml"
    path.write_text("observability:\n  backends:\n    - local\n    - langfuse\n")
    with pytest.raises(spanmux.ConfigurationError) as caught:
        spanmux.configure(path)
    message = str(caught.value)
    assert "line 4" in message and "LANGFUSE_PUBLIC_KEY" in message


def test_secret_never_in_repr_or_errors(langfuse_server: Any) -> None:
    from spanmux.backends.langfuse import LangfuseBackend
    from spanmux.config_schemas import LangfuseConfig

    backend = LangfuseBackend(LangfuseConfig(public_key="pk-lf-1", secret_key="sk-lf-TOPSECRET",
                                             host=langfuse_server.url))
    assert "TOPSECRET" not in repr(backend) and "TOPSECRET" not in str(vars(backend).get("public_key"))
    with pytest.raises(spanmux.backend.ExportError) as caught:
        backend.check_connection()
    assert caught.value.retryable is False and "TOPSECRET" not in str(caught.value)
    assert "pk-lf-1" in str(caught.value) and langfuse_server.url in str(caught.value)
    good = LangfuseBackend(LangfuseConfig(public_key=langfuse_server.public_key,
                                          secret_key=langfuse_server.secret_key, host=langfuse_server.url))
    assert "spanmux-contract" in good.check_connection()
    good.shutdown(1.0)
    backend.shutdown(1.0)


def test_never_installs_a_tracer_provider_nor_touches_user_otel_spans(
    langfuse_server: Any, tmp_path: Path
) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    global_before = trace.get_tracer_provider()
    user_exporter = InMemorySpanExporter()
    user_provider = TracerProvider()
    user_provider.add_span_processor(SimpleSpanProcessor(user_exporter))
    user_tracer = user_provider.get_tracer("user-app")

    configure(langfuse_server, tmp_path)
    with user_tracer.start_as_current_span("user-request") as user_span:
        with (spanmux.span("spanmux-agent", kind="agent"), spanmux.span("spanmux-llm", kind="llm"),
              user_tracer.start_as_current_span("user-inner")):
            pass
        current = trace.get_current_span()
        assert current is user_span  # spanmux never changed the OTel context
    flush()
    user_provider.shutdown()

    assert trace.get_tracer_provider() is global_before
    user_names = sorted(s.name for s in user_exporter.get_finished_spans())
    assert user_names == ["user-inner", "user-request"]
    inner = next(s for s in user_exporter.get_finished_spans() if s.name == "user-inner")
    assert inner.parent is not None and inner.parent.span_id == user_span.get_span_context().span_id
    sent = sorted(o.name for o in langfuse_server.all_observations())
    assert sent == ["spanmux-agent", "spanmux-llm"]
    spanmux_trace = langfuse_server.by_name("spanmux-agent").trace_id
    assert spanmux_trace != format(user_span.get_span_context().trace_id, "032x")


def test_works_beside_the_langfuse_sdk_in_the_same_process(langfuse_server: Any, tmp_path: Path) -> None:
    langfuse = pytest.importorskip("langfuse")
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    global_before = trace.get_tracer_provider()
    client = langfuse.Langfuse(public_key=langfuse_server.public_key, secret_key=langfuse_server.secret_key,
                               base_url=langfuse_server.url, tracer_provider=TracerProvider())
    configure(langfuse_server, tmp_path)
    with client.start_as_current_observation(name="sdk-made", as_type="span") as observation:
        with spanmux.span("spanmux-made", kind="agent") as mine:
            pass
        observation.update(output="done")
    client.create_score(name="sdk-score", value=1.0, trace_id=mine.trace_id)
    client.flush()
    flush()
    client.shutdown()

    sdk_obs = langfuse_server.by_name("sdk-made")
    ours = langfuse_server.by_name("spanmux-made")
    assert sdk_obs.scope == "langfuse-sdk" and ours.scope == "spanmux"
    assert ours.trace_id == mine.trace_id and ours.trace_id != sdk_obs.trace_id
    assert {s["name"] for s in langfuse_server.all_scores()} == {"sdk-score"}
    assert trace.get_tracer_provider() is global_before


@pytest.mark.parametrize("example", ["langfuse_agent.yaml", "local_and_langfuse.yaml"])
def test_example_yaml_files_send_to_langfuse(
    langfuse_server: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, example: str
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", langfuse_server.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", langfuse_server.secret_key)
    monkeypatch.setenv("LANGFUSE_HOST", langfuse_server.url)
    monkeypatch.delenv("LANGFUSE_TRACING_ENVIRONMENT", raising=False)
    loaded = spanmux.configure(Path(__file__).parent.parent / "examples" / example)
    with spanmux.span("weather-agent", kind="agent") as root:
        pass
    flush()
    assert langfuse_server.by_name("weather-agent").trace_id == root.trace_id
    if "local" in loaded.backends:  # the fan-out example also fills the built-in store (cwd is tmp_path)
        with LocalStore(tmp_path / ".spanmux" / "spanmux.db") as store:
            assert [s.name for s in store.get_trace(root.trace_id)] == ["weather-agent"]


@pytest.mark.parametrize(("status", "retry_after", "retryable"),
                         [(503, None, True), (429, 7.0, True), (500, 2.0, True), (404, None, False)])
def test_http_answers_are_classified_for_the_lane(
    langfuse_server: Any, status: int, retry_after: float | None, retryable: bool
) -> None:
    from spanmux.backend import ExportError
    from spanmux.backends.langfuse import LangfuseBackend
    from spanmux.config_schemas import LangfuseConfig

    backend = LangfuseBackend(LangfuseConfig(public_key=langfuse_server.public_key,
                                             secret_key=langfuse_server.secret_key, host=langfuse_server.url))
    span = Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="x", kind="chain",
                framework="manual", start_ns=1, end_ns=2)
    langfuse_server.fail_next(1, status=status, retry_after=retry_after)
    with pytest.raises(ExportError) as caught:
        backend.export([span], [])
    assert caught.value.retryable is retryable and caught.value.retry_after == retry_after
    assert f"HTTP {status}" in str(caught.value) and langfuse_server.url in str(caught.value)
    backend.export([span], [])  # the next attempt goes through
    assert [o.name for o in langfuse_server.all_observations()] == ["x"]
    backend.shutdown(1.0)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7), st.integers(0, 10**7),
       st.integers(0, 10**7), st.integers(0, 10**7))
def test_usage_buckets_never_overlap(inp: int, out: int, total: int, cache_read: int, cache_write: int,
                                     reasoning: int) -> None:
    from spanmux.backends.langfuse import usage_details

    details = usage_details(Usage(inp, out, total, cache_read, cache_write, reasoning))
    if details is None:
        assert inp == out == total == 0 or (inp <= cache_read + cache_write and out <= reasoning and total == 0)
        return
    buckets = {k: v for k, v in details.items() if k != "total"}
    assert all(v >= 0 for v in details.values())
    assert sum(buckets.values()) <= details["total"]
    if inp >= cache_read + cache_write and out >= reasoning:  # consistent provider numbers: nothing lost
        assert details["input"] + details.get("input_cache_read", 0) + details.get("input_cache_creation", 0) == inp
        assert details["output"] + details.get("output_reasoning", 0) == out


# ------------------------------------------------------------------ the contract server itself

def _otlp(**overrides: Any) -> bytes:
    """An OTLP body built with OpenTelemetry's own encoder (no hand-written protobuf)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from spanmux.backends.langfuse import observation_attributes
    from spanmux.backends.otel_spans import OtelSpanBuilder

    fields: dict[str, Any] = {"trace_id": new_trace_id(), "span_id": new_span_id(), "parent_id": None,
                              "name": "probe", "kind": "llm", "framework": "manual", "start_ns": 1, "end_ns": 2,
                              "usage": Usage(10, 5, 15)}
    attributes_patch = overrides.pop("attributes_patch", {})
    fields.update(overrides)
    span = Span(**fields)
    attributes = observation_attributes(span) | attributes_patch
    return bytes(encode_spans([OtelSpanBuilder(resource={}).build(span, attributes)]).SerializeToString())


def _otlp_without_ids() -> bytes:
    """A span whose context has all-zero ids, as a broken exporter would send."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext

    readable = ReadableSpan(name="no-ids", context=SpanContext(0, 0, is_remote=False), start_time=1, end_time=2)
    return bytes(encode_spans([readable]).SerializeToString())


@pytest.mark.parametrize(
    ("patch", "reason"),
    [
        ({"langfuse.observation.type": "reranker"}, "unknown observation type"),
        ({"langfuse.observation.usage_details": "{not json"}, "not valid JSON"),
        ({"langfuse.observation.cost_details": "[1, 2]"}, "JSON object"),
        ({"langfuse.observation.usage_details": '{"input": 10, "input_cache_read": 4, "output": 5, "total": 15}'},
         "overlap"),
        ({"langfuse.observation.level": "FATAL"}, "unknown level"),
        ({"langfuse.observation.completion_start_time": "yesterday"}, "ISO 8601"),
    ],
)
def test_contract_server_rejects_what_langfuse_rejects(
    langfuse_server: Any, patch: dict[str, str], reason: str
) -> None:
    auth = (langfuse_server.public_key, langfuse_server.secret_key)
    response = requests.post(langfuse_server.url + TRACES, data=_otlp(attributes_patch=patch), auth=auth,
                             headers={"Content-Type": "application/x-protobuf"}, timeout=5)
    assert response.status_code == 400 and reason in response.json()["message"]
    assert not langfuse_server.all_observations()


def test_contract_server_ids_auth_encodings_and_scores(langfuse_server: Any) -> None:
    auth = (langfuse_server.public_key, langfuse_server.secret_key)
    url = langfuse_server.url
    plain = _otlp(name="plain")
    assert requests.post(url + TRACES, data=plain, auth=auth, timeout=5).status_code == 200
    zipped = requests.post(url + TRACES, data=gzip.compress(_otlp(name="zipped")), auth=auth,
                           headers={"Content-Encoding": "gzip"}, timeout=5)
    assert zipped.status_code == 200
    assert {o.name for o in langfuse_server.all_observations()} == {"plain", "zipped"}
    assert requests.post(url + TRACES, data=plain, auth=("pk", "bad"), timeout=5).status_code == 401
    assert requests.post(url + TRACES, data=b"\x01garbage", auth=auth, timeout=5).status_code == 400
    no_ids = requests.post(url + TRACES, data=_otlp_without_ids(), auth=auth, timeout=5)
    assert no_ids.status_code == 400 and "traceId missing" in no_ids.json()["message"]
    assert requests.get(url + "/api/public/health", timeout=5).json()["status"] == "OK"
    assert requests.get(url + "/api/public/projects", timeout=5).status_code == 401
    assert requests.get(url + "/api/public/projects", auth=auth, timeout=5).json()["data"][0]["id"]

    score = {"id": "s1", "traceId": "a" * 32, "name": "n", "value": 1, "dataType": "BOOLEAN"}
    assert requests.post(url + SCORES, json=score, auth=auth, timeout=5).status_code == 200
    bad = dict(score, id="s2", value="yes")
    both = requests.post(url + SCORES, json=[dict(score, id="s3"), bad], auth=auth, timeout=5)
    assert both.status_code == 207 and both.json()["rejected"] == 1
    assert requests.post(url + SCORES, json=[bad], auth=auth, timeout=5).status_code == 400
    assert requests.post(url + SCORES, json=[{"traceId": "t", "value": 1}], auth=auth, timeout=5).status_code == 400
    assert sorted(s["id"] for s in langfuse_server.all_scores()) == ["s1", "s3"]


# ------------------------------------------------------------------ LangChain, when its integration exists

def test_langchain_agent_to_langfuse(langfuse_server: Any, weather_agent: Any, tmp_path: Path) -> None:
    integration = pytest.importorskip("spanmux.integrations.langchain")
    configure(langfuse_server, tmp_path)
    with spanmux.trace_context(user_id="lc-user", metadata={"variant": "A"}):
        weather_agent.invoke({"messages": [("user", "weather in Paris?")]},
                             config={"callbacks": [integration.CallbackHandler()]})
    flush()

    observations = langfuse_server.all_observations()
    assert len({o.trace_id for o in observations}) == 1
    generations = [o for o in observations if o.type == "generation"]
    tools = [o for o in observations if o.type == "tool"]
    assert len(generations) == 2 and {g.model for g in generations} == {"gpt-4o-mini"}
    assert all(g.usage == {"input": 40, "output": 8, "total": 48} for g in generations)
    assert [t.name for t in tools] == ["get_weather"]
    roots = [o for o in observations if o.parent_id is None]
    assert len(roots) == 1
    ids = {o.span_id for o in observations}
    assert all(o.parent_id in ids for o in observations if o.parent_id)
    for o in observations:
        assert o.attributes["user.id"] == "lc-user" and o.attributes["langfuse.trace.metadata.variant"] == "A"
    # the root names the trace; children exported in an earlier batch than their root cannot know
    # that name (the Langfuse SDK does not propagate it either unless told), the others carry it
    assert roots[0].attributes["langfuse.trace.name"] == roots[0].name
    assert {o.attributes.get("langfuse.trace.name", roots[0].name) for o in observations} == {roots[0].name}


# ------------------------------------------------------------------ a real Langfuse, when configured

@pytest.mark.live
def test_live_langfuse_receives_a_trace_and_a_score(tmp_path: Path) -> None:
    host = os.environ.get("LANGFUSE_HOST") or os.environ.get("LANGFUSE_BASE_URL")
    public_key, secret_key = os.environ.get("LANGFUSE_PUBLIC_KEY"), os.environ.get("LANGFUSE_SECRET_KEY")
    if not (host and public_key and secret_key):
        pytest.skip("set LANGFUSE_HOST, LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY to run against a real Langfuse")
    spanmux.configure({"backends": ["langfuse"], "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    with (spanmux.trace_context(user_id="spanmux-live", tags=["spanmux-live-test"]),
          spanmux.span("spanmux-live-agent", kind="agent", input="ping") as root,
          spanmux.span("spanmux-live-llm", kind="llm", input="ping") as llm):
        llm.set_model("gpt-4o-mini")
        llm.set_usage(input_tokens=5, output_tokens=2)
        llm.set_output("pong")
    score_id = spanmux.score(root.trace_id, "spanmux-live-score", 1.0, comment="live test")
    flush()
    assert lane_stats("langfuse")["spool_pending_batches"] == 0, lane_stats("langfuse")["last_error"]

    auth = (public_key, secret_key)
    base = host.rstrip("/")
    deadline = time.monotonic() + 120
    observations: dict[str, Any] = {}
    scores: list[dict[str, Any]] = []
    while time.monotonic() < deadline:  # Langfuse ingests asynchronously: poll its public API
        found = requests.get(f"{base}/api/public/v2/observations", auth=auth, timeout=10,
                             params={"traceId": root.trace_id, "fields": "core,basic,model,usage"})
        if found.status_code == 200:
            observations = {o["id"]: o for o in found.json().get("data", [])}
        got = requests.get(f"{base}/api/public/v3/scores", auth=auth, timeout=10, params={"traceId": root.trace_id})
        if got.status_code == 200:
            scores = got.json().get("data", [])
        if len(observations) >= 2 and scores:
            break
        time.sleep(2)
    assert observations[llm.span_id]["type"] == "GENERATION"
    assert observations[llm.span_id]["parentObservationId"] == root.span_id
    assert observations[llm.span_id]["userId"] == "spanmux-live"
    assert any(s["id"] == score_id and s["name"] == "spanmux-live-score" for s in scores)
