"""The MLflow backend against a real ``mlflow server`` (started once per session) and a sqlite
store, read back through MLflow's own clients."""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

import spanmux
from spanmux.backend import ExportError
from spanmux.model import Cost, ErrorInfo, ModelInfo, Span, Usage, make_score, new_span_id, new_trace_id

pytest.importorskip("mlflow")

from mlflow.tracing.client import TracingClient
from mlflow.tracking import MlflowClient

from spanmux.backends.mlflow import MlflowBackend, span_type_of
from spanmux.config_schemas.observability import MlflowConfig

PRICING = {"fake-chat": {"input": 1.0, "output": 2.0}}  # USD per 1M tokens


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _tree(trace: Any) -> list[tuple[int, str, str]]:
    """(depth, span_type, name) in start order, parents before children."""
    spans = sorted(trace.data.spans, key=lambda s: (s.start_time_ns, s.name))
    by_id = {s.span_id: s for s in spans}

    def depth(span: Any) -> int:
        return 0 if span.parent_id is None else 1 + depth(by_id[span.parent_id])

    return [(depth(s), s.span_type, s.name) for s in spans]


def _run_agent(question: str = "What is 2+2?") -> str:
    """A small agent with manual spans and a fake chat model: agent > (retriever, llm, tool, llm)."""
    attributes = spanmux.trace_context(user_id="u-1", session_id="sess-1", tags=["prod"], metadata={"variant": "B"})
    with attributes, spanmux.span("math-agent", kind="agent", input={"question": question}) as agent:
        with spanmux.span("search-notes", kind="retriever", input={"query": question}) as r:
            r.set_output([{"id": "d1", "content": "2+2=4"}])
        with spanmux.span("fake-chat", kind="llm", input=[{"role": "user", "content": question}]) as llm:
            llm.set_model("fake-chat", "fakeprovider", temperature=0.3, max_tokens=64)
            llm.set_usage(input_tokens=120, output_tokens=30)
            llm.set_output({"role": "assistant", "content": "call calculator"})
        with spanmux.span("calculator", kind="tool", input={"expr": "2+2"}) as tool:
            tool.set_output(4)
        with spanmux.span("fake-chat", kind="llm", input=[{"role": "user", "content": "4?"}]) as llm2:
            llm2.set_model("fake-chat", "fakeprovider", temperature=0.3, max_tokens=64)
            llm2.set_usage(input_tokens=80, output_tokens=20)
            llm2.set_output({"role": "assistant", "content": "4"})
        agent.set_output("4")
        trace_id = agent.trace_id
        tool_span = tool.span_id
    spanmux.score(trace_id, "correctness", 0.9, comment="matches the reference", source="llm_judge")
    spanmux.score(trace_id, "helpful", True, source="human", span_id=tool_span)
    spanmux.score(trace_id, "tone", "neutral", comment="plain", source="code")
    return trace_id


def test_span_types_are_mapped() -> None:
    def make(kind: str, input: Any = None) -> Span:
        return Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="x", kind=kind,
                    framework="manual", start_ns=1, end_ns=2, input=input)

    expected = {"agent": "AGENT", "chain": "CHAIN", "tool": "TOOL", "retriever": "RETRIEVER",
                "embedding": "EMBEDDING", "reranker": "RERANKER", "parser": "PARSER", "evaluator": "EVALUATOR",
                "guardrail": "GUARDRAIL", "span": "UNKNOWN", "llm": "LLM"}
    assert {kind: span_type_of(make(kind)) for kind in expected} == expected
    assert span_type_of(make("llm", [{"role": "user", "content": "hi"}])) == "CHAT_MODEL"
    assert span_type_of(make("llm", "a plain prompt")) == "LLM"


def test_traces_runs_and_feedback_on_a_tracking_server(mlflow_server: str, tmp_path: Path) -> None:
    experiment = _unique("agent")
    spanmux.configure({
        "backends": ["mlflow"],
        "flush_interval": 0.05,
        "spool_dir": str(tmp_path / "spool"),
        "pricing": PRICING,
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment, "run_name": "session-1",
                   "params": {"agent": {"name": "math", "max_steps": 5}}, "tags": {"team": "qa"}},
    })
    trace_id = _run_agent()
    assert spanmux.flush(timeout=60)
    assert spanmux.stats()["backends"]["mlflow"]["export_errors"] == 0
    spanmux.shutdown()

    tracing, client = TracingClient(mlflow_server), MlflowClient(mlflow_server)
    trace = tracing.get_trace(f"tr-{trace_id}")
    assert _tree(trace) == [
        (0, "AGENT", "math-agent"),
        (1, "RETRIEVER", "search-notes"),
        (1, "CHAT_MODEL", "fake-chat"),
        (1, "TOOL", "calculator"),
        (1, "CHAT_MODEL", "fake-chat"),
    ]
    info = trace.info
    assert info.state.value == "OK"
    assert info.tags["mlflow.traceName"] == "math-agent"
    assert info.tags["variant"] == "B" and info.tags["prod"] == "true" and info.tags["team"] == "qa"
    assert info.trace_metadata["mlflow.trace.user"] == "u-1"
    assert info.trace_metadata["mlflow.trace.session"] == "sess-1"
    assert info.token_usage == {"input_tokens": 200, "output_tokens": 50, "total_tokens": 250}
    assert json.loads(info.trace_metadata["mlflow.trace.cost"])["total_cost"] == pytest.approx(300e-6)

    llm = [s for s in trace.data.spans if s.span_type == "CHAT_MODEL"][0]
    assert llm.attributes["mlflow.chat.tokenUsage"] == {"input_tokens": 120, "output_tokens": 30,
                                                        "total_tokens": 150}
    assert llm.attributes["mlflow.llm.model"] == "fake-chat"
    assert llm.attributes["mlflow.llm.provider"] == "fakeprovider"
    assert llm.attributes["mlflow.llm.cost"]["total_cost"] == pytest.approx(180e-6)
    assert llm.inputs == [{"role": "user", "content": "What is 2+2?"}]
    root = [s for s in trace.data.spans if s.parent_id is None][0]
    assert root.inputs == {"question": "What is 2+2?"} and root.outputs == "4"
    assert root.span_id == trace.data.spans[0].span_id and len(root.span_id) == 16

    feedback = {a.name: a for a in info.assessments}
    assert feedback["correctness"].value == 0.9
    assert feedback["correctness"].rationale == "matches the reference"
    assert feedback["correctness"].source.source_type == "LLM_JUDGE"
    assert feedback["helpful"].value is True and feedback["helpful"].source.source_type == "HUMAN"
    tool = [s for s in trace.data.spans if s.name == "calculator"][0]
    assert feedback["helpful"].span_id == tool.span_id
    assert feedback["tone"].value == "neutral" and feedback["tone"].source.source_type == "CODE"

    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == "session-1" and run.info.status == "FINISHED"
    assert run.data.params["agent.name"] == "math" and run.data.params["agent.max_steps"] == "5"
    assert run.data.params["model.fake-chat.temperature"] == "0.3"
    assert run.data.params["model.fake-chat.provider"] == "fakeprovider"
    assert run.data.tags["team"] == "qa" and run.data.tags["spanmux.models"] == "fake-chat"
    assert run.data.metrics["trace.total_tokens"] == 250
    assert run.data.metrics["trace.cost_usd"] == pytest.approx(300e-6)
    assert run.data.metrics["score.correctness"] == 0.9 and run.data.metrics["score.helpful"] == 1.0
    assert run.data.metrics["session.traces"] == 1
    latency = client.get_metric_history(run.info.run_id, "trace.latency_ms")
    assert [m.step for m in latency] == [1]
    assert latency[0].value == pytest.approx(root.end_time_ns / 1e6 - root.start_time_ns / 1e6, abs=0.01)

    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "spanmux/traces.json", "type": "table"}]
    local = client.download_artifacts(run.info.run_id, "spanmux/traces.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["trace_id"], r["total_tokens"], r["variant"], r["user_id"]) for r in rows] == [
        (f"tr-{trace_id}", 250, "B", "u-1")
    ]

    linked = tracing.search_traces(locations=[exp.experiment_id], run_id=run.info.run_id)
    assert [t.info.trace_id for t in linked] == [f"tr-{trace_id}"]


def _span(trace_id: str, span_id: str, parent: str | None, name: str, kind: str, start: int, end: int,
          **extra: Any) -> Span:
    return Span(trace_id=trace_id, span_id=span_id, parent_id=parent, name=name, kind=kind, framework="manual",
                start_ns=start, end_ns=end, **extra)


def test_child_first_interleaved_batches_and_re_export(mlflow_server: str) -> None:
    backend = MlflowBackend(MlflowConfig(tracking_uri=mlflow_server, experiment_name=_unique("order")), None)
    base = time.time_ns()
    traces = []
    for n in range(3):
        t, root, chain, llm = new_trace_id(), new_span_id(), new_span_id(), new_span_id()
        t0 = base + n * 10_000_000
        error = ErrorInfo("ValueError", f"bad {n}", "Traceback ...") if n == 2 else None
        traces.append((t, [
            _span(t, llm, chain, "model", "llm", t0 + 2_000, t0 + 3_000_000,
                  model=ModelInfo("fake-chat", "fakeprovider"), usage=Usage(10, 5, 15),
                  cost=Cost(0.00001, 0.00001, 0.00002)),
            _span(t, chain, root, "chain", "chain", t0 + 1_000, t0 + 4_000_000),
            _span(t, root, None, f"root-{n}", "agent", t0, t0 + 5_000_123, status="error" if error else "ok",
                  error=error),
        ]))
    # batch 1: the llm spans of all traces; batch 2: chains + root of trace 0; batch 3: the other roots
    batches = [
        [spans[0] for _, spans in traces],
        [traces[0][1][1], traces[1][1][1], traces[0][1][2], traces[2][1][1]],
        [traces[2][1][2], traces[1][1][2]],
    ]
    scores = [make_score(traces[1][0], "quality", 0.5)]
    for index, batch in enumerate(batches):
        backend.export(batch, scores if index == 0 else [])  # score arrives before its trace's root
    backend.export(batches[1], scores)  # a re-sent batch and score change nothing
    backend.force_flush(5)
    backend.shutdown(5)

    tracing, client = TracingClient(mlflow_server), MlflowClient(mlflow_server)
    for n, (trace_id, spans) in enumerate(traces):
        trace = tracing.get_trace(f"tr-{trace_id}")
        assert _tree(trace) == [(0, "AGENT", f"root-{n}"), (1, "CHAIN", "chain"), (2, "LLM", "model")]
        assert trace.info.token_usage["total_tokens"] == 15
        got = {s.span_id: (s.start_time_ns, s.end_time_ns) for s in trace.data.spans}
        assert got == {s.span_id: (s.start_ns, s.end_ns) for s in spans}
        assert trace.info.tags["mlflow.traceName"] == f"root-{n}"
    failed = tracing.get_trace(f"tr-{traces[2][0]}")
    assert failed.info.state.value == "ERROR"
    root = [s for s in failed.data.spans if s.parent_id is None][0]
    assert root.status.status_code.value == "ERROR" and "bad 2" in root.status.description
    assert root.events[0].name == "exception" and root.events[0].attributes["exception.type"] == "ValueError"
    assessments = tracing.get_trace(f"tr-{traces[1][0]}").info.assessments
    assert [(a.name, a.value) for a in assessments] == [("quality", 0.5)]
    history = client.get_metric_history(backend.run_id, "trace.total_tokens")
    assert sorted(m.step for m in history) == [1, 2, 3] and {m.value for m in history} == {15}
    assert [m.value for m in client.get_metric_history(backend.run_id, "trace.error")] == [0.0, 0.0, 1.0]


def test_sqlite_store_leaves_the_users_mlflow_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow
    import mlflow.tracking.fluent

    # the user's global MLflow state set below is undone after the test
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    user_uri = f"sqlite:///{tmp_path / 'user' / 'user.db'}"
    (tmp_path / "user").mkdir()
    ours = tmp_path / "ours" / "mlflow.db"
    # no mlflow section: defaults apply, the URI comes from $MLFLOW_TRACKING_URI at configure time
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{ours}")
    spanmux.configure({"backends": ["local", "mlflow"], "pricing": PRICING, "flush_interval": 0.05,
                       "local": {"path": str(tmp_path / "local.db")}, "spool_dir": str(tmp_path / "spool")})
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(user_uri)  # also rewrites $MLFLOW_TRACKING_URI
    try:
        user_experiment = mlflow.set_experiment("user-experiment")
        with mlflow.start_run(run_name="user-run") as user_run:
            with mlflow.start_span("user-span") as user_span:  # the user's own MLflow tracing
                user_span.set_inputs({"x": 1})
                trace_id = _run_agent()
            assert spanmux.flush(timeout=60)
            assert mlflow.get_tracking_uri() == user_uri
            assert mlflow.active_run().info.run_id == user_run.info.run_id
            assert mlflow.get_experiment_by_name("user-experiment").experiment_id == user_experiment.experiment_id
            spanmux.shutdown()
        mlflow.flush_trace_async_logging()
        assert mlflow.get_tracking_uri() == user_uri
        user_traces = TracingClient(user_uri).search_traces(locations=[user_experiment.experiment_id])
        assert [t.info.tags["mlflow.traceName"] for t in user_traces] == ["user-span"]
        assert MlflowClient(user_uri).get_experiment_by_name("spanmux") is None
    finally:
        mlflow.set_tracking_uri(previous_uri)

    tracing, client = TracingClient(f"sqlite:///{ours}"), MlflowClient(f"sqlite:///{ours}")
    trace = tracing.get_trace(f"tr-{trace_id}")
    assert [row[2] for row in _tree(trace)] == ["math-agent", "search-notes", "fake-chat", "calculator", "fake-chat"]
    assert trace.info.token_usage["total_tokens"] == 250
    assert {a.name for a in trace.info.assessments} == {"correctness", "helpful", "tone"}
    experiment = client.get_experiment_by_name("spanmux")
    assert experiment.artifact_location == (ours.parent / "mlartifacts").as_uri()
    run = client.search_runs([experiment.experiment_id])[0]
    assert run.data.metrics["trace.total_tokens"] == 250 and run.info.status == "FINISHED"
    assert [f.path for f in client.list_artifacts(run.info.run_id, "spanmux")] == ["spanmux/traces.json"]
    linked = tracing.search_traces(locations=[experiment.experiment_id], run_id=run.info.run_id)
    assert [t.info.trace_id for t in linked] == [f"tr-{trace_id}"]
    # nothing of ours outside its folder (the user's own experiment keeps MLflow's ./mlruns default)
    assert not list(tmp_path.glob(f"mlruns/**/tr-{trace_id}")) and not (tmp_path / "mlflow.db").exists()


def _dead_url() -> str:
    from servers import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_unreachable_server_fails_fast_and_retryable() -> None:
    backend = MlflowBackend(MlflowConfig(tracking_uri=_dead_url(), timeout=1.0), None)
    t = new_trace_id()
    started = time.monotonic()
    with pytest.raises(ExportError) as raised:
        backend.export([_span(t, new_span_id(), None, "root", "agent", 1, 2)], [])
    assert time.monotonic() - started < 3.0
    assert raised.value.retryable and "unreachable" in str(raised.value)
    backend.shutdown(1)


def test_check_connection_for_doctor(mlflow_server: str, tmp_path: Path) -> None:
    assert "is up" in MlflowBackend(MlflowConfig(tracking_uri=mlflow_server), None).check_connection(5)
    sqlite = MlflowBackend(MlflowConfig(tracking_uri=f"sqlite:///{tmp_path / 'new' / 'm.db'}"), None)
    assert "is ready" in sqlite.check_connection(5) and (tmp_path / "new" / "m.db").exists()
    with pytest.raises(ExportError, match="unreachable"):
        MlflowBackend(MlflowConfig(tracking_uri=_dead_url()), None).check_connection(1)


def test_unreachable_server_does_not_disturb_the_program(tmp_path: Path) -> None:
    spanmux.configure({
        "backends": ["local", "mlflow"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
        "local": {"path": str(tmp_path / "local.db")},
        "mlflow": {"tracking_uri": _dead_url(), "timeout": 1.0},
    })
    started = time.monotonic()
    trace_id = _run_agent()
    assert time.monotonic() - started < 0.5  # emitting never waits for MLflow
    assert not spanmux.flush(timeout=1)  # False: MLflow did not take it, it waits in the spool
    lane = spanmux.stats()["backends"]["mlflow"]
    assert lane["export_errors"] >= 1 and lane["spooled_spans"] == 5 and lane["spooled_scores"] == 3
    assert "unreachable" in lane["last_error"]
    assert spanmux.stats()["backends"]["local"]["exported_spans"] == 5
    from spanmux.backends.local import LocalStore

    with LocalStore(tmp_path / "local.db") as store:
        assert len(store.get_trace(trace_id)) == 5


def test_missing_mlflow_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import spanmux.registry

    real = importlib.util.find_spec
    monkeypatch.setattr(spanmux.registry.importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(spanmux.ConfigurationError) as raised:
        spanmux.configure({"backends": ["mlflow"]})
    assert 'pip install "spanmux[mlflow]"' in str(raised.value)


def test_file_store_uri_is_rejected_at_configure_time() -> None:
    with pytest.raises(spanmux.ConfigurationError) as raised:
        spanmux.configure({"backends": ["mlflow"], "mlflow": {"tracking_uri": "file:///tmp/mlruns"}})
    assert "tracking_uri" in str(raised.value) and "sqlite" in str(raised.value)


def test_records_wait_in_the_spool_until_the_server_comes_back(tmp_path: Path) -> None:
    from mlflow_server import MlflowServer
    from servers import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    spanmux.configure({
        "backends": ["mlflow"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
        "mlflow": {"tracking_uri": url, "timeout": 1.0, "experiment_name": "late"},
    })
    trace_id = _run_agent()
    assert not spanmux.flush(timeout=1)  # MLflow is down: the records wait in the spool
    assert spanmux.stats()["backends"]["mlflow"]["spool_pending_batches"] >= 1
    with MlflowServer(tmp_path / "late-server", port=port):
        assert spanmux.flush(timeout=60)  # a flush replays the spool first
        lane = spanmux.stats()["backends"]["mlflow"]
        assert lane["spool_pending_batches"] == 0 and lane["replayed_batches"] >= 1
        trace = TracingClient(url).get_trace(f"tr-{trace_id}")
        assert len(trace.data.spans) == 5 and trace.info.token_usage["total_tokens"] == 250
        assert {a.name for a in trace.info.assessments} == {"correctness", "helpful", "tone"}
        spanmux.shutdown()


def test_feedback_copies_written_by_spanmux_0_1_are_deleted_when_the_score_is_delivered_again(
    mlflow_server: str, tmp_path: Path
) -> None:
    """spanmux 0.1 logged a new assessment (MLflow's random id) at each delivery of a score: a trace
    could show one score three times. Delivering it now keeps one and deletes the copies."""
    from mlflow.entities import AssessmentSource, Feedback

    from spanmux.backends.mlflow import K

    experiment = _unique("copies")
    spanmux.configure({"backends": ["mlflow"], "spool_dir": str(tmp_path / "spool"),
                       "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment}})
    with spanmux.span("answer") as root:
        trace_id = root.trace_id
    assert spanmux.flush(60)
    score = make_score(trace_id, "helpful", 1.0, comment="good")
    tracing = TracingClient(mlflow_server)
    for _ in range(2):  # what 0.1 left behind: copies under random ids, the score id in metadata
        tracing.log_assessment(f"tr-{trace_id}", Feedback(
            name="helpful", value=1.0, rationale="good", source=AssessmentSource(source_type="CODE"),
            metadata={K.SCORE_ID: score.id, K.SCORE_DATA_TYPE: "numeric"}))
    assert len(tracing.get_trace_info(f"tr-{trace_id}").assessments) == 2

    backend = MlflowBackend(MlflowConfig(tracking_uri=mlflow_server, experiment_name=experiment), None)
    backend.export([], [score])
    backend.shutdown(5)
    spanmux.shutdown()

    kept = [a for a in tracing.get_trace_info(f"tr-{trace_id}").assessments if a.valid is not False]
    assert [(a.name, a.value, a.rationale) for a in kept] == [("helpful", 1.0, "good")]
