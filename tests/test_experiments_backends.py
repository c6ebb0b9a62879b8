"""Experiment runs in each backend: the built-in store, a real ``mlflow server`` and the Langfuse
contract server; a rerun is a new run without duplicate dataset items; replaying the store sends
experiments again without duplicating anything."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

import spanmux
from spanmux.experiments import scorer
from spanmux.store import LocalStore

DATA = [{"input": {"question": "2+3?"}, "expected": "5", "id": "q1", "metadata": {"level": "easy"}},
        {"input": {"question": "4+4?"}, "expected": "8", "id": "q2"},
        {"input": {"question": "9*9?"}, "expected": "81", "id": "q3"}]
ANSWERS = {"2+3?": "5", "4+4?": "8", "9*9?": "80"}


def task(item: dict[str, Any]) -> str:
    with spanmux.span("model", kind="llm") as call:
        call.set_model("gpt-4o-mini")
        call.set_usage(20, 2)
    return ANSWERS[item["input"]["question"]]


def exact_match(output: str, expected: str) -> bool:
    return output == expected


@scorer("judge", judge=True)
def judge(output: str, expected: str) -> float:
    with spanmux.span("judge-model", kind="llm") as call:
        call.set_model("gpt-4o-mini")
        call.set_usage(50, 1)
    return 1.0 if output == expected else 0.25


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- built-in store + replay

def test_store_keeps_runs_and_replay_sends_them_once(tmp_path: Path) -> None:
    from spanmux.replay import ReplayResult, copy_store
    from spanmux.testing import InMemoryBackend

    store = tmp_path / "store.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(store)}, "spool_dir": str(tmp_path / "spool"),
                       "flush_interval": 0.05})
    first = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match, judge], name="math", dataset="math-v1")
    second = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match, judge], name="math", dataset="math-v1")
    assert spanmux.flush(timeout=30)
    spanmux.shutdown()

    with LocalStore(store) as db:
        runs = db.list_experiments()
        assert [r.run_id for r in runs] == [second.run_id, first.run_id]
        stored = db.get_experiment(first.run_id)
        assert stored is not None and stored.items == first.items
        assert stored.items[0].metadata == {"level": "easy"}
        assert stored.items[0].evaluator_tokens == 51 and stored.items[0].total_tokens == 22

    class Keeping(InMemoryBackend):
        def __init__(self) -> None:
            super().__init__(name="keeping")
            self.runs: dict[str, Any] = {}
            self.deliveries = 0

        def export_experiments(self, runs: Any, origin: Any) -> None:
            self.deliveries += len(runs)
            for run in runs:
                self.runs[run.run_id] = run  # an upsert, as every real backend does

    target = Keeping()
    for _ in range(2):  # a second replay changes nothing
        result = ReplayResult(source=str(store), to="keeping")
        with LocalStore(store) as db:
            copy_store(target, db, result)
        assert result.experiments == 2
    assert set(target.runs) == {first.run_id, second.run_id}
    assert target.runs[first.run_id].items == first.items


def test_replay_to_a_second_store_is_idempotent(tmp_path: Path) -> None:
    from spanmux.backends.local import LocalBackend
    from spanmux.replay import ReplayResult, copy_store

    source = tmp_path / "a.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(source)}, "spool_dir": str(tmp_path / "spool")})
    result = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match], name="copy")
    spanmux.shutdown()
    target = LocalBackend(type("Section", (), {"path": str(tmp_path / "b.db")})())
    for _ in range(2):
        with LocalStore(source) as db:
            copy_store(target, db, ReplayResult(source=str(source), to="local"))
    target.shutdown(1)
    with LocalStore(tmp_path / "b.db") as db:
        assert [r.run_id for r in db.list_experiments()] == [result.run_id]
        copied = db.get_experiment(result.run_id)
        assert copied is not None and copied.items == result.items
        assert len(db.get_scores()) == 3


# ---------------------------------------------------------------- MLflow

@pytest.mark.slow
def test_mlflow_server_gets_an_evaluation_run(mlflow_server: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.tracing.client import TracingClient

    experiment = _unique("eval")
    spanmux.configure({"backends": ["mlflow"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
                       "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment}})
    result = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match, judge], name="math-tutor",
                              dataset="math-v1", metadata={"variant": "B", "prompt": {"version": 3}})
    assert spanmux.flush(timeout=60)
    assert spanmux.stats()["backends"]["mlflow"]["export_errors"] == 0
    from spanmux import runtime

    pipeline = runtime.active()
    assert pipeline is not None
    mlflow_backend = pipeline.lanes[0].contract
    mlflow_backend.export_experiments([result.run], {"replay": "x"})  # the same record again: nothing new
    spanmux.shutdown()

    client, tracing = MlflowClient(mlflow_server), TracingClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`mlflow.runType` = 'genai_evaluate'")
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["spanmux.experiment_run"] == result.run_id
    assert run.data.params["variant"] == "B" and run.data.params["prompt.version"] == "3"
    assert run.data.params["spanmux.dataset"] == "math-v1"
    metrics = run.data.metrics
    assert metrics["exact_match/mean"] == pytest.approx(2 / 3)
    assert metrics["judge/mean"] == pytest.approx((1 + 1 + 0.25) / 3)
    assert metrics["total_tokens"] == 66 and metrics["evaluator_tokens"] == 153 and metrics["items"] == 3
    assert "latency_p50_ms" in metrics and metrics["cost_usd"] > 0
    assert [m.value for m in client.get_metric_history(run.info.run_id, "exact_match/mean")] == [
        pytest.approx(2 / 3)]  # delivered twice, one point

    assert json.loads(run.data.tags["mlflow.loggedArtifacts"]) == [{"path": "eval_results_table.json",
                                                                   "type": "table"}]
    local = client.download_artifacts(run.info.run_id, "eval_results_table.json", str(tmp_path))
    table = json.loads(Path(local).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    assert [(r["item_id"], r["exact_match/value"], r["judge/value"]) for r in rows] == [
        ("q1", True, 1.0), ("q2", True, 1.0), ("q3", False, 0.25)]
    assert [r["trace_id"] for r in rows] == [f"tr-{i.trace_id}" for i in result.items]

    linked = tracing.search_traces(locations=[exp.experiment_id], run_id=run.info.run_id, max_results=50)
    assert {t.info.trace_id for t in linked} == {f"tr-{i.trace_id}" for i in result.items}
    trace = tracing.get_trace(f"tr-{result.items[2].trace_id}")
    feedback = {a.name: a for a in trace.info.assessments}
    assert feedback["exact_match"].value is False and feedback["exact_match"].source.source_type == "CODE"
    assert feedback["judge"].value == 0.25 and feedback["judge"].source.source_type == "LLM_JUDGE"
    assert [s.span_type for s in trace.data.spans if s.name == "judge"] == ["EVALUATOR"]
