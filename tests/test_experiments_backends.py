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

    target = InMemoryBackend("keeping")
    for _ in range(2):  # a second replay changes nothing
        result = ReplayResult(source=str(store), to="keeping")
        with LocalStore(store) as db:
            copy_store(target, db, result)
        assert result.experiments == 2
    runs = {run.run_id: run for run in target.experiments}  # an upsert, as every real backend does
    assert set(runs) == {first.run_id, second.run_id}
    assert runs[first.run_id].items == first.items


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
    # tied to the evaluation run as genai.evaluate ties its own (value and rationale untouched)
    assert {a.metadata["mlflow.assessment.sourceRunId"] for a in trace.info.assessments} == {run.info.run_id}
    assert [s.span_type for s in trace.data.spans if s.name == "judge"] == ["EVALUATOR"]


# ---------------------------------------------------------------- Langfuse (contract server)

def _configure_langfuse(server: Any, tmp_path: Path, backends: tuple[str, ...] = ("langfuse",)) -> None:
    spanmux.configure({
        "backends": list(backends), "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
        "local": {"path": str(tmp_path / "store.db")},
        "langfuse": {"public_key": server.public_key, "secret_key": server.secret_key, "host": server.url},
    })


def test_langfuse_dataset_items_dataset_run_and_scores(langfuse_server: Any, tmp_path: Path) -> None:
    from spanmux.backends.langfuse import dataset_item_id, experiment_id_of, experiment_run_name

    _configure_langfuse(langfuse_server, tmp_path)
    first = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match, judge], name="math-tutor",
                             dataset="math-v1", metadata={"variant": "A"})
    second = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match, judge], name="math-tutor",
                              dataset="math-v1", metadata={"variant": "B"})
    assert spanmux.flush(timeout=30)
    stats = spanmux.stats()["backends"]["langfuse"]
    assert stats["export_errors"] == 0 and stats["rejected_spans"] == 0

    # one dataset, three items, upserted twice: no duplicates, the ids derived from dataset and item id
    assert list(langfuse_server.datasets) == ["math-v1"]
    dataset_id = langfuse_server.datasets["math-v1"]["id"]
    expected_ids = {dataset_item_id("math-v1", i) for i in ("q1", "q2", "q3")}
    assert set(langfuse_server.dataset_items) == expected_ids
    posted = [body for path, body in langfuse_server.dataset_posts if path == "/api/public/dataset-items"]
    assert len(posted) == 6 and {b["id"] for b in posted} == expected_ids
    q1 = langfuse_server.dataset_items[dataset_item_id("math-v1", "q1")]
    assert (q1["input"], q1["expectedOutput"], q1["metadata"]["level"]) == ({"question": "2+3?"}, "5", "easy")

    # two dataset runs (a rerun is a new run), one run item per trace, linked to the item's root
    runs = langfuse_server.dataset_runs()
    assert set(runs) == {experiment_id_of("contract-project", dataset_id, experiment_run_name(r.run))
                         for r in (first, second)}
    for result, variant in ((first, "A"), (second, "B")):
        run = runs[experiment_id_of("contract-project", dataset_id, experiment_run_name(result.run))]
        assert run["dataset_id"] == dataset_id and run["metadata"] == {"variant": variant}
        assert run["items"] == [{"dataset_item_id": dataset_item_id("math-v1", i.item_id), "trace_id": i.trace_id,
                                 "observation_id": i.span_id} for i in result.items]
        root = next(o for o in langfuse_server.trace(result.items[0].trace_id) if o.parent_id is None)
        assert root.name == "math-tutor" and root.span_id == result.items[0].span_id
        assert root.attributes["langfuse.observation.output"] == "5"
        evaluator = next(o for o in langfuse_server.trace(result.items[0].trace_id) if o.name == "judge")
        assert evaluator.type == "evaluator" and evaluator.parent_id == root.span_id

    # scores on the traces, on the item's root observation
    scores = [s for s in langfuse_server.all_scores() if s["traceId"] == first.items[2].trace_id]
    by_name = {s["name"]: s for s in scores}
    assert by_name["exact_match"]["value"] == 0 and by_name["exact_match"]["dataType"] == "BOOLEAN"
    assert by_name["judge"]["value"] == 0.25 and by_name["judge"]["observationId"] == first.items[2].span_id


def test_langfuse_gets_experiments_from_a_store_replay_once(langfuse_server: Any, tmp_path: Path) -> None:
    from spanmux.config import load_config
    from spanmux.replay import replay_store

    store = tmp_path / "store.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(store)}, "spool_dir": str(tmp_path / "spool")})
    result = spanmux.evaluate(data=DATA, task=task, scorers=[exact_match], name="offline", dataset="math-v1")
    spanmux.shutdown()
    loaded = load_config({"backends": ["langfuse"], "langfuse": {
        "public_key": langfuse_server.public_key, "secret_key": langfuse_server.secret_key,
        "host": langfuse_server.url}})
    for _ in range(2):
        sent = replay_store(loaded, "langfuse", str(store))
        assert sent.experiments == 1
    assert len(langfuse_server.dataset_items) == 3
    (run,) = langfuse_server.dataset_runs().values()
    assert [i["trace_id"] for i in run["items"]] == [i.trace_id for i in result.items]
    assert len([s for s in langfuse_server.all_scores()]) == 3


def test_langfuse_down_keeps_the_run_spooled_until_it_answers(langfuse_server: Any, tmp_path: Path) -> None:
    _configure_langfuse(langfuse_server, tmp_path)
    langfuse_server.fail_for(600)  # an outage
    result = spanmux.evaluate(data=DATA[:2], task=task, scorers=[exact_match], name="later", dataset="later-v1")
    assert not spanmux.flush(timeout=0.5)
    assert langfuse_server.dataset_runs() == {} and langfuse_server.dataset_items == {}
    langfuse_server.fail_for(0)  # back
    assert spanmux.flush(timeout=30)
    (run,) = langfuse_server.dataset_runs().values()
    assert [i["trace_id"] for i in run["items"]] == [i.trace_id for i in result.items]
    assert len(langfuse_server.dataset_items) == 2
