"""Which MLflow run a trace lands in, whenever and by whichever process it is delivered, and
deliveries repeated without changing anything: through a real ``mlflow server``, read back with
MLflow's own clients."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import spanmux
from spanmux.model import Cost, ModelInfo, Span, Usage, make_score, new_span_id, new_trace_id
from spanmux.spool import Spool

pytest.importorskip("mlflow")

from mlflow.tracing.client import TracingClient
from mlflow.tracking import MlflowClient

from spanmux.backends.local import LocalBackend, LocalStore
from spanmux.backends.mlflow import MlflowBackend
from spanmux.cli import app
from spanmux.config_schemas.observability import MlflowConfig

PRICING = {"fake-chat": {"input": 1.0, "output": 2.0}}  # USD per 1M tokens


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _dead_url() -> str:
    from servers import free_port

    return f"http://127.0.0.1:{free_port()}"


def _settings(spool: Path, url: str, experiment: str, run_name: str, agent: str) -> dict[str, Any]:
    return {
        "backends": ["mlflow"], "flush_interval": 0.05, "spool_dir": str(spool), "pricing": PRICING,
        "mlflow": {"tracking_uri": url, "experiment_name": experiment, "run_name": run_name, "timeout": 1.0,
                   "params": {"agent": {"name": agent}}},
    }


def work(count: int, quality: float) -> list[str]:
    """The agent both programs run: ``count`` traces of one priced model call and one score each."""
    ids = []
    for n in range(count):
        with spanmux.span(f"agent-{n}", kind="agent") as root:
            with spanmux.span("fake-chat", kind="llm", input=[{"role": "user", "content": "hi"}]) as llm:
                llm.set_model("fake-chat", "fakeprovider", temperature=0.1)
                llm.set_usage(input_tokens=100 + n, output_tokens=10)
        root.score("quality", quality)
        ids.append(root.trace_id)
    return ids


PROGRAM_A = """
import json, sys
import spanmux

{work}
spanmux.configure(json.loads(sys.argv[1]))
ids = work(2, 0.25)
spanmux.shutdown(timeout=2)
print(json.dumps(ids))
"""


def _program_a(settings: dict[str, Any]) -> list[str]:
    """Program A, in its own process, while MLflow is down: everything goes to its spool."""
    script = PROGRAM_A.format(work=inspect.getsource(work))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(settings)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _linked(tracing: TracingClient, experiment_id: str, run_id: str) -> set[str]:
    found = tracing.search_traces(locations=[experiment_id], run_id=run_id, include_spans=False, max_results=500)
    return {t.info.trace_id for t in found}


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_spooled_traces_land_in_the_run_of_the_program_that_made_them(mlflow_server: str, tmp_path: Path) -> None:
    experiment = _unique("two-programs")
    spool = tmp_path / "spool"
    a_ids = _program_a(_settings(spool, _dead_url(), experiment, "first-program", agent="a"))
    assert Spool(spool / "mlflow", 1 << 30).describe()["spans"] == 4

    # program B, later, with MLflow up and the same spool: it delivers A's batches, then its own
    spanmux.configure(_settings(spool, mlflow_server, experiment, "second-program", agent="b"))
    b_ids = work(1, 0.75)
    assert spanmux.flush(timeout=60)
    spanmux.shutdown()
    assert Spool(spool / "mlflow", 1 << 30).describe()["batches"] == 0

    tracing, client = TracingClient(mlflow_server), MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert sorted(runs) == ["first-program", "second-program"]
    a, b = runs["first-program"], runs["second-program"]
    assert _linked(tracing, exp.experiment_id, a.info.run_id) == {f"tr-{t}" for t in a_ids}
    assert _linked(tracing, exp.experiment_id, b.info.run_id) == {f"tr-{t}" for t in b_ids}
    # score metrics and per-trace metrics follow their traces, stepped per run
    assert _history(client, a.info.run_id, "score.quality") == [(1, 0.25), (2, 0.25)]
    assert _history(client, b.info.run_id, "score.quality") == [(1, 0.75)]
    assert _history(client, a.info.run_id, "trace.total_tokens") == [(1, 110.0), (2, 111.0)]
    assert _history(client, b.info.run_id, "trace.total_tokens") == [(1, 110.0)]
    assert a.data.metrics["session.traces"] == 2 and b.data.metrics["session.traces"] == 1
    # each run describes its own program
    assert a.data.params["agent.name"] == "a" and b.data.params["agent.name"] == "b"
    assert a.data.params["model.fake-chat.temperature"] == "0.1"
    assert a.info.status == "FINISHED" and b.info.status == "FINISHED"
    assert a.info.start_time < b.info.start_time  # A's run starts when A did, not when B delivered
    for trace_id in a_ids + b_ids:
        assert len(tracing.get_trace_info(f"tr-{trace_id}").assessments) == 1


def test_a_spooled_batch_delivered_twice_changes_nothing(mlflow_server: str) -> None:
    """A process killed after delivering a batch but before deleting its spool file: the next
    process delivers it again, with the origin it was spooled with."""
    experiment = _unique("again")
    producer = MlflowBackend(MlflowConfig(tracking_uri=_dead_url(), experiment_name=experiment,
                                          run_name="producer"), None)
    origin = producer.origin()
    assert origin is not None
    t, root, llm = new_trace_id(), new_span_id(), new_span_id()
    spans = [
        Span(trace_id=t, span_id=llm, parent_id=root, name="fake-chat", kind="llm", framework="manual",
             start_ns=2_000, end_ns=3_000_000, model=ModelInfo("fake-chat"), usage=Usage(10, 5, 15),
             cost=Cost(1e-5, 1e-5, 2e-5)),
        Span(trace_id=t, span_id=root, parent_id=None, name="root", kind="agent", framework="manual",
             start_ns=1_000, end_ns=4_000_000),
    ]
    scores = [make_score(t, "quality", 0.5), make_score(t, "verdict", "ok", comment="fine")]

    def snapshot() -> tuple[Any, ...]:
        tracing, client = TracingClient(mlflow_server), MlflowClient(mlflow_server)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id])
        info = tracing.get_trace_info(f"tr-{t}")
        return (
            [(r.info.run_name, sorted(r.data.params.items())) for r in runs],
            sorted((a.name, a.assessment_id) for a in info.assessments),
            [(key, _history(client, r.info.run_id, key)) for r in runs for key in sorted(r.data.metrics)],
        )

    for _ in range(2):
        consumer = MlflowBackend(MlflowConfig(tracking_uri=mlflow_server, experiment_name=experiment), None)
        consumer.export_spooled(spans, scores, origin)
        consumer.force_flush(5)
        consumer.shutdown(5)
        if _ == 0:
            first = snapshot()
    assert first == snapshot()
    runs, assessments, metrics = first
    assert [name for name, _ in runs] == ["producer"]
    assert [name for name, _ in assessments] == ["quality", "verdict"]
    assert ("score.quality", [(1, 0.5)]) in metrics


def _seed(traced: Any, count: int) -> list[str]:
    ids = []
    for n in range(count):
        with spanmux.span(f"agent-{n}", kind="agent") as root:
            with spanmux.span("plan", kind="chain"), spanmux.span("fake-chat", kind="llm", model="fake-chat") as llm:
                llm.set_usage(input_tokens=10 + n, output_tokens=5)
        root.score("quality", n / 10)
        if n % 3 == 0:
            spanmux.score(root.trace_id, "verdict", "good", comment="spot check", source="human")
        ids.append(root.trace_id)
    traced.flush()
    return ids


def test_replay_to_mlflow_twice_changes_nothing(traced: Any, mlflow_server: str, tmp_path: Path) -> None:
    trace_ids = _seed(traced, 9)
    experiment = _unique("replay")
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"observability": {
        "backends": ["local"], "spool_dir": str(tmp_path / "sp"), "pricing": PRICING,
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment},
    }}))
    tracing, client = TracingClient(mlflow_server), MlflowClient(mlflow_server)

    def replay() -> None:
        result = CliRunner().invoke(app, ["replay", "--to", "mlflow", "--config", str(config), "--store",
                                          str(traced.path), "--batch-size", "7"])
        assert result.exit_code == 0, result.output

    def snapshot() -> dict[str, Any]:
        exp = client.get_experiment_by_name(experiment)
        traces = tracing.search_traces(locations=[exp.experiment_id], include_spans=False, max_results=500)
        runs = client.search_runs([exp.experiment_id])
        assessments = sorted((t.info.trace_id, a.name, a.assessment_id, json.dumps(a.value))
                             for t in traces for a in tracing.get_trace_info(t.info.trace_id).assessments)
        return {
            "traces": sorted(t.info.trace_id for t in traces),
            "assessments": assessments,
            "runs": [(r.info.run_id, r.info.run_name) for r in runs],
            "linked": {r.info.run_id: sorted(_linked(tracing, exp.experiment_id, r.info.run_id)) for r in runs},
            "metrics": {(r.info.run_id, key): _history(client, r.info.run_id, key)
                        for r in runs for key in r.data.metrics},
            "params": {r.info.run_id: r.data.params for r in runs},
        }

    replay()
    first = snapshot()
    assert first["traces"] == sorted(f"tr-{t}" for t in trace_ids)
    assert len(first["assessments"]) == 9 + 3
    assert len(first["runs"]) == 1
    (run_id, _), = first["runs"]
    assert first["linked"][run_id] == first["traces"]
    assert [step for step, _ in first["metrics"][(run_id, "trace.total_tokens")]] == list(range(1, 10))
    assert first["metrics"][(run_id, "score.quality")] == [(n + 1, n / 10) for n in range(9)]

    replay()
    assert snapshot() == first


def test_mlflow_trace_totals_equal_the_local_stores(mlflow_server: str, tmp_path: Path) -> None:
    """Spans that carry no usage or a zero cost around the model call that cost something: MLflow
    sums usage and cost over its span tree, and must reach the store's totals."""
    t = new_trace_id()
    root, wrapper, call, chain, call2, free = (new_span_id() for _ in range(6))
    model = ModelInfo("fake-chat", "fakeprovider")

    def span(span_id: str, parent: str | None, name: str, kind: str, **extra: Any) -> Span:
        return Span(trace_id=t, span_id=span_id, parent_id=parent, name=name, kind=kind, framework="manual",
                    start_ns=1_000, end_ns=5_000_000, **extra)

    spans = [
        # a delegating wrapper: a model, no usage, no cost, around the call that ran
        span(call, wrapper, "complete", "llm", model=model, usage=Usage(100, 20, 120), cost=Cost(1e-4, 4e-5, 1.4e-4)),
        span(wrapper, root, "predict", "llm", model=model, attributes={"spanmux.delegates": True}),
        # a step whose figures are all zero, around another priced call
        span(call2, chain, "chat", "llm", model=model, usage=Usage(30, 6, 36), cost=Cost(3e-5, 1.2e-5, 4.2e-5)),
        span(chain, root, "step", "chain", usage=Usage(0, 0, 0), cost=Cost(0.0, 0.0, 0.0)),
        # a model call nobody could price
        span(free, root, "local-model", "llm", model=ModelInfo("my-local-model"), usage=Usage(7, 3, 10)),
        span(root, None, "agent", "agent"),
    ]
    local = LocalBackend(type("Section", (), {"path": str(tmp_path / "store.db")})())
    local.export(spans, [])
    local.shutdown(1)
    backend = MlflowBackend(MlflowConfig(tracking_uri=mlflow_server, experiment_name=_unique("totals")), None)
    backend.export(spans, [])
    backend.force_flush(5)
    backend.shutdown(5)

    with LocalStore(tmp_path / "store.db") as store:
        summary = store.get_trace_summary(t)
    assert summary is not None and summary.cost_total == pytest.approx(1.82e-4)
    info = TracingClient(mlflow_server).get_trace_info(f"tr-{t}")
    assert info.token_usage == {"input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens,
                                "total_tokens": summary.total_tokens}
    assert json.loads(info.trace_metadata["mlflow.trace.cost"])["total_cost"] == pytest.approx(summary.cost_total)
    run = MlflowClient(mlflow_server).get_run(backend.run_id)
    assert run.data.metrics["trace.cost_usd"] == pytest.approx(summary.cost_total)
    assert run.data.metrics["trace.total_tokens"] == summary.total_tokens


def test_llamaindex_trace_totals_in_mlflow_equal_the_local_stores(mlflow_server: str, named_mock_llm: Any,
                                                                  tmp_path: Path) -> None:
    """The issue's case: LlamaIndex ``predict`` wrapping ``complete``, one priced model call."""
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    from spanmux.integrations import llamaindex

    index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.")],
                                            embed_model=MockEmbedding(embed_dim=8))
    experiment = _unique("llamaindex")
    spanmux.configure({
        "backends": ["local", "mlflow"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
        "local": {"path": str(tmp_path / "store.db")},
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment},
    })
    llamaindex.instrument()
    try:
        index.as_query_engine(llm=named_mock_llm(max_tokens=6)).query("What is the capital of France?")
    finally:
        llamaindex.uninstrument()
    assert spanmux.flush(timeout=60)
    spanmux.shutdown()

    with LocalStore(tmp_path / "store.db") as store:
        (summary,) = store.list_traces()
    assert summary.llm_calls == 1 and summary.cost_total is not None and summary.cost_total > 0
    info = TracingClient(mlflow_server).get_trace_info(f"tr-{summary.trace_id}")
    assert info.token_usage["total_tokens"] == summary.total_tokens
    assert json.loads(info.trace_metadata["mlflow.trace.cost"])["total_cost"] == pytest.approx(summary.cost_total)
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]
    assert run.data.metrics["trace.cost_usd"] == pytest.approx(summary.cost_total)
    local_table = client.download_artifacts(run.info.run_id, "spanmux/traces.json", str(tmp_path))
    table = json.loads(Path(local_table).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["llm_calls"], r["total_tokens"]) for r in rows] == [(1, summary.total_tokens)]


def test_two_replays_creating_one_origins_run_at_once_end_in_one_run(mlflow_server: str) -> None:
    """Two processes delivering batches of one origin at the same instant (two replays of one store):
    both look, both find no run, both create one. Each then keeps the earliest created and the loser
    deletes its own: one active run holds both traces' metrics."""
    import threading

    experiment = _unique("race")
    origin = {"replay": "/tmp/one-store.db"}
    backends = [MlflowBackend(MlflowConfig(tracking_uri=mlflow_server, experiment_name=experiment), None)
                for _ in range(2)]
    both_looked = threading.Barrier(2, timeout=30)
    original = MlflowClient.create_run

    def create_after_both_looked(self: MlflowClient, *args: Any, **kwargs: Any) -> Any:
        both_looked.wait()  # neither has created yet: the race, every time
        return original(self, *args, **kwargs)

    def deliver(backend: MlflowBackend, trace_id: str) -> None:
        root = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=None, name="root", kind="agent",
                    framework="manual", start_ns=1_000, end_ns=4_000_000, usage=Usage(10, 5, 15))
        backend.export_spooled([root], [], origin)
        backend.force_flush(10)

    traces = [new_trace_id(), new_trace_id()]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MlflowClient, "create_run", create_after_both_looked)
        threads = [threading.Thread(target=deliver, args=pair) for pair in zip(backends, traces, strict=True)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    for backend in backends:
        backend.shutdown(5)

    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    active = client.search_runs([exp.experiment_id])
    everything = client.search_runs([exp.experiment_id], run_view_type=3)  # ViewType.ALL
    assert len(active) == 1 and len(everything) == 2
    (run,) = active
    assert {b.runs.run_for(b.runs.spec_of(origin)).run_id for b in backends} == {run.info.run_id}
    assert _linked(TracingClient(mlflow_server), exp.experiment_id, run.info.run_id) == {f"tr-{t}" for t in traces}
