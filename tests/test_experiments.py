"""spanmux.evaluate: items in traces of their own, scores, evaluator spans with their own tokens,
errors that do not stop the run, concurrency without leaking context, Ctrl-C, comparison and the CLI.
Real frameworks (a LangGraph agent, a LlamaIndex query engine) with fake models."""

from __future__ import annotations

import _thread
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import store_without_experiment_tables  # tests/ is on sys.path (rootdir conftest)
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from typer.testing import CliRunner

import spanmux
from spanmux import attributes as attr
from spanmux.cli import app
from spanmux.experiments import compare_runs, load_data, scorer
from spanmux.model import Score
from spanmux.store import LocalStore
from spanmux.testing import InMemoryBackend, render_tree

USAGE = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
JUDGE_USAGE = {"input_tokens": 100, "output_tokens": 1, "total_tokens": 101}


class FakeChat(FakeMessagesListChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:  # type: ignore[override]
        return self


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[InMemoryBackend, Path]:
    recorder = InMemoryBackend("recorder")
    store = tmp_path / "store.db"
    spanmux.configure({"backends": ["local", recorder], "local": {"path": str(store)},
                       "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    return recorder, store


def read(store: Path) -> LocalStore:
    assert spanmux.flush(timeout=30)
    return LocalStore(store)


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def agent_for(question: str) -> Any:
    """A LangGraph agent that calls ``add`` once, then answers with the sum."""
    a, b = (int(x) for x in question.rstrip("?").split("+"))
    model = FakeChat(responses=[
        AIMessage("", tool_calls=[{"name": "add", "args": {"a": a, "b": b}, "id": "call_1", "type": "tool_call"}],
                  usage_metadata=dict(USAGE), response_metadata={"model_name": "gpt-4o-mini"}),
        AIMessage(str(a + b), usage_metadata=dict(USAGE), response_metadata={"model_name": "gpt-4o-mini"}),
    ])
    return create_agent(model, tools=[add])


MATH = [{"input": {"question": "2+3?"}, "expected": "5", "id": "q1"},
        {"input": {"question": "4+4?"}, "expected": "8", "id": "q2"},
        {"input": {"question": "1+1?"}, "expected": "3", "id": "q3"}]


def run_agent(item: dict[str, Any]) -> str:
    from spanmux.integrations.langchain import CallbackHandler

    question = item["input"]["question"]
    result = agent_for(question).invoke({"messages": [("user", question)]}, config={"callbacks": [CallbackHandler()]})
    return str(result["messages"][-1].content)


def exact_match(output: str, expected: str) -> bool:
    return output.strip() == expected


@scorer("judge", judge=True)
def judge(output: str, expected: str) -> float:
    """An LLM judge: a fake model call of its own, traced under the evaluator span."""
    from spanmux.integrations.langchain import CallbackHandler

    model = FakeChat(responses=[AIMessage("1", usage_metadata=dict(JUDGE_USAGE),
                                          response_metadata={"model_name": "gpt-4o-mini"})])
    model.invoke(f"is {output} right for {expected}?", config={"callbacks": [CallbackHandler()]})
    return 1.0 if output == expected else 0.0


def test_langgraph_agent_items_traces_scores_and_judge_tokens(recorded: tuple[InMemoryBackend, Path]) -> None:
    recorder, store = recorded
    result = spanmux.evaluate(data=MATH, task=run_agent, scorers=[exact_match, judge], name="math-tutor",
                              dataset="math-v1", metadata={"variant": "B", "prompt.version": 3})
    assert [i.item_id for i in result.items] == ["q1", "q2", "q3"]
    assert [i.scores for i in result.items] == [
        {"exact_match": True, "judge": 1.0}, {"exact_match": True, "judge": 1.0},
        {"exact_match": False, "judge": 0.0}]
    first = result.items[0]
    # two agent model calls are the task's; the judge's call is counted apart
    assert (first.input_tokens, first.output_tokens, first.total_tokens) == (24, 10, 34)
    assert first.evaluator_tokens == 101
    assert first.cost is not None and first.evaluator_cost is not None and first.evaluator_cost > first.cost
    summary = result.summary()
    assert summary.scorers["exact_match"].mean == pytest.approx(2 / 3)
    assert summary.scorers["exact_match"].kind == "boolean"
    assert (summary.items, summary.errors, summary.total_tokens, summary.evaluator_tokens) == (3, 0, 102, 303)
    assert summary.latency_p50_ms is not None and summary.latency_p95_ms is not None

    with read(store) as db:
        traces = {t.trace_id: t for t in db.list_traces()}
        assert set(traces) == {i.trace_id for i in result.items}  # one trace per item
        trace = traces[first.trace_id]
        assert trace.name == "math-tutor"
        assert {"experiment:math-tutor", "dataset:math-v1"} <= set(trace.tags)
        assert trace.metadata[attr.EXPERIMENT_RUN_ID] == result.run_id
        assert trace.metadata[attr.EXPERIMENT_ITEM_ID] == "q1"
        assert trace.metadata["variant"] == "B"
        tree = render_tree(db.get_trace(first.trace_id))
        assert tree[0] == "chain: math-tutor"
        assert "  evaluator: judge" in tree and "  evaluator: exact_match" in tree
        judge_at = tree.index("  evaluator: judge")
        assert tree[judge_at + 1] == "    llm: FakeChat"  # the judge's model call, inside its evaluator span
        scores = {s.name: s for s in db.get_scores(first.trace_id)}
        assert scores["judge"].source == "llm_judge" and scores["exact_match"].source == "code"
        assert scores["exact_match"].value is True
        stored = db.get_experiment(result.run_id)
        assert stored is not None and stored.items == result.items
        assert stored.metadata == {"variant": "B", "prompt.version": 3} and stored.dataset == "math-v1"
    assert [r.run_id for r in recorder.experiments] == [result.run_id]  # through the pipeline to every backend


def test_llamaindex_query_engine_task(recorded: tuple[InMemoryBackend, Path]) -> None:
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import MockLLM

    from spanmux.integrations import llamaindex as li

    index = VectorStoreIndex.from_documents([Document(text="Paris is the capital of France.", id_="d1")],
                                            embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=1)
    li.instrument()
    try:
        result = spanmux.evaluate(data=[{"input": "capital of France?", "id": "a"}, {"input": "and Spain?", "id": "b"}],
                                  task=lambda input: str(engine.query(input)),
                                  scorers=[lambda output: len(output) > 0], name="rag")
    finally:
        li.uninstrument()
    assert [i.error for i in result.items] == [None, None]
    assert all(i.scores == {"<lambda>": True} for i in result.items)
    _, store = recorded
    with read(store) as db:
        for item in result.items:
            tree = render_tree(db.get_trace(item.trace_id))
            assert tree[0] == "chain: rag"
            assert any("query" in line.lower() for line in tree[1:])
            assert any(line.strip().startswith("retriever:") for line in tree)


def test_raising_task_and_raising_scorer_are_item_errors(recorded: tuple[InMemoryBackend, Path]) -> None:
    def task(input: str) -> str:
        if input == "boom":
            raise ValueError("the task broke")
        return input

    def fragile(output: str) -> float:
        if output == "b":
            raise RuntimeError("the scorer broke")
        return 1.0

    result = spanmux.evaluate(data=["a", "boom", "b", "c"], task=task, scorers=[fragile], name="errors")
    by_input = {i.input: i for i in result.items}
    assert by_input["boom"].error == "ValueError: the task broke" and by_input["boom"].scores == {}
    assert by_input["b"].error is None and by_input["b"].scorer_errors == {"fragile": "RuntimeError: the scorer broke"}
    assert by_input["a"].scores == by_input["c"].scores == {"fragile": 1.0}
    summary = result.summary()
    assert (summary.errors, summary.scorers["fragile"].errors, summary.scorers["fragile"].count) == (1, 1, 2)
    _, store = recorded
    with read(store) as db:
        failed = db.get_trace_summary(by_input["boom"].trace_id)
        assert failed is not None and failed.status == "error"
        spans = db.get_trace(by_input["b"].trace_id)
        evaluator = next(s for s in spans if s.kind == "evaluator")
        assert evaluator.status == "error" and evaluator.error is not None
        assert db.get_scores(by_input["b"].trace_id) == []


def test_concurrency_8_keeps_each_item_in_its_own_trace(recorded: tuple[InMemoryBackend, Path]) -> None:
    inside = threading.Barrier(8, timeout=10)

    def task(input: dict[str, Any]) -> str:
        key = input["key"]
        with spanmux.trace_context(metadata={"seen": key}), spanmux.span(f"step-{key}", input=key) as outer:
            if key < 8:
                inside.wait()  # eight items really run at the same time
            with spanmux.span(f"inner-{key}", input=key):
                time.sleep(0.001)
            outer.set_output(key)
        return f"done-{key}"

    data = [{"input": {"key": k}, "id": f"k{k}"} for k in range(24)]
    result = spanmux.evaluate(data=data, task=task, scorers=[lambda output, input: output == f"done-{input['key']}"],
                              name="parallel", concurrency=8)
    assert len(result.items) == 24 and all(i.error is None for i in result.items)
    assert len({i.trace_id for i in result.items}) == 24
    _, store = recorded
    with read(store) as db:
        for item in result.items:
            key = item.input["key"]
            spans = db.get_trace(item.trace_id)
            names = sorted(s.name for s in spans)
            assert names == sorted(["parallel", f"step-{key}", f"inner-{key}", "<lambda>"])
            trace = db.get_trace_summary(item.trace_id)
            assert trace is not None and trace.metadata[attr.EXPERIMENT_ITEM_ID] == f"k{key}"
            assert all(s.trace is None or (s.trace.metadata or {}).get("seen") in (None, key) for s in spans)
            assert [s.value for s in db.get_scores(item.trace_id)] == [True]
    assert spanmux.current_trace_id() is None  # nothing leaked into the caller's context


def test_evaluate_inside_an_open_span_still_starts_a_trace_per_item(recorded: tuple[InMemoryBackend, Path]) -> None:
    with spanmux.span("outer") as outer:
        result = spanmux.evaluate(data=["x"], task=lambda input: input, name="nested")
    assert result.items[0].trace_id != outer.trace_id


def test_ctrl_c_stops_and_keeps_what_finished(recorded: tuple[InMemoryBackend, Path]) -> None:
    def task(input: int) -> int:
        if input == 3:
            _thread.interrupt_main()  # what Ctrl-C does: KeyboardInterrupt in the main thread
            time.sleep(0.5)
        return input

    result = spanmux.evaluate(data=list(range(10)), task=task, scorers=[lambda output: output >= 0], name="stopped")
    assert result.interrupted
    assert [i.input for i in result.items] == [0, 1, 2]
    _, store = recorded
    with read(store) as db:
        stored = db.get_experiment(result.run_id)
        assert stored is not None and stored.status == "interrupted" and len(stored.items) == 3


def math_task(wrong: set[str]) -> Any:
    def task(item: dict[str, Any]) -> str:
        return "nope" if item["id"] in wrong else item["expected"]

    return task


def test_compare_two_runs_finds_exactly_the_changed_items(recorded: tuple[InMemoryBackend, Path],
                                                          tmp_path: Path) -> None:
    data = [{"input": f"q{n}", "expected": str(n), "id": f"q{n}"} for n in range(6)]
    a = spanmux.evaluate(data=data, task=math_task({"q3", "q4"}), scorers=[exact_match], name="tutor",
                         metadata={"variant": "A"})
    b = spanmux.evaluate(data=data, task=math_task({"q1", "q4"}), scorers=[exact_match], name="tutor",
                         metadata={"variant": "B"})
    assert a.run_id != b.run_id  # the same name again is a new run
    _, store = recorded
    with read(store) as db:
        comparison = db.compare_experiments(a.run_id, b.run_id)
        assert [r.run_id for r in db.list_experiments()] == [b.run_id, a.run_id]
    verdicts = {c.item_id: c.verdict for c in comparison.items}
    assert verdicts == {"q0": "same", "q1": "worse", "q2": "same", "q3": "better", "q4": "same", "q5": "same"}
    assert comparison.counts() == {"better": 1, "worse": 1, "same": 4, "mixed": 0}
    (delta,) = comparison.scorers
    assert (delta.name, delta.mean_a, delta.mean_b, delta.delta) == ("exact_match", 4 / 6, 4 / 6, 0.0)
    assert comparison == compare_runs(a.run, b.run)

    runner = CliRunner()
    out = runner.invoke(app, ["experiments", "compare", a.run_id[:8], b.run_id, "--store", str(store), "--json"])
    assert out.exit_code == 0, out.output
    found = json.loads(out.stdout)
    assert found["counts"] == {"better": 1, "worse": 1, "same": 4, "mixed": 0}
    assert {c["item_id"]: c["verdict"] for c in found["items"] if c["verdict"] != "same"} == {
        "q1": "worse", "q3": "better"}
    text = runner.invoke(app, ["experiments", "compare", a.run_id, b.run_id, "--store", str(store)])
    assert text.exit_code == 0 and "1 better" in text.stdout and "1 worse" in text.stdout and "q3" in text.stdout


def test_cli_lists_and_shows_runs(recorded: tuple[InMemoryBackend, Path]) -> None:
    result = spanmux.evaluate(data=MATH, task=math_task({"q2"}), scorers=[exact_match], name="cli-run",
                              dataset="math-v1")
    _, store = recorded
    assert spanmux.flush(timeout=30)
    runner = CliRunner()
    listed = runner.invoke(app, ["experiments", "--store", str(store), "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["run_id"], row["items"], row["scorers"]["exact_match"]["mean"]) == (result.run_id, 3, 2 / 3)
    table = runner.invoke(app, ["experiments", "--store", str(store)])
    assert "cli-run" in table.stdout and "exact_match=0.667" in table.stdout
    shown = runner.invoke(app, ["experiments", "show", "cli-run", "--store", str(store)])
    assert shown.exit_code == 0 and "q2" in shown.stdout and "exact_match=false" in shown.stdout
    as_json = json.loads(runner.invoke(app, ["experiments", "show", result.run_id[:10], "--store", str(store),
                                             "--json"]).stdout)
    assert [i["item_id"] for i in as_json["items"]] == ["q1", "q2", "q3"]
    missing = runner.invoke(app, ["experiments", "show", "nothing", "--store", str(store)])
    assert missing.exit_code == 1 and "no experiment run" in missing.stderr


def test_data_from_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text('{"input": {"q": "2+3"}, "expected": "5", "id": "a"}\n\n{"input": "no id"}\n', encoding="utf-8")
    items = load_data(jsonl)
    assert [(i.id, i.input, i.expected) for i in items][0] == ("a", {"q": "2+3"}, "5")
    assert len(items[1].id) == 16 and load_data(jsonl)[1].id == items[1].id  # stable id from the input
    table = tmp_path / "items.csv"
    table.write_text("id,question,expected\nx,2+3,5\ny,1+1,2\n", encoding="utf-8")
    rows = load_data(table)
    assert [(r.id, r.input, r.expected) for r in rows] == [
        ("x", {"question": "2+3"}, "5"), ("y", {"question": "1+1"}, "2")]
    assert [i.id for i in load_data(["same", "same"])][1].endswith("-2")  # ids stay unique
    with pytest.raises(ValueError, match="jsonl"):
        load_data(tmp_path / "items.txt")


def test_async_task_and_score_objects(recorded: tuple[InMemoryBackend, Path]) -> None:
    async def task(input: str) -> str:
        with spanmux.span("async-step"):
            return input * 2

    async def labeller(output: str) -> Score:
        return Score(id="", trace_id="", name="size", value="long" if len(output) > 2 else "short",
                     data_type="categorical", comment="by length")

    result = spanmux.evaluate(data=["a", "bb"], task=task, scorers=[labeller], name="async", concurrency=2)
    assert [i.output for i in result.items] == ["aa", "bbbb"]
    assert [i.scores for i in result.items] == [{"size": "short"}, {"size": "long"}]
    assert result.summary().scorers["size"].labels == {"short": 1, "long": 1}
    _, store = recorded
    with read(store) as db:
        (stored,) = db.get_scores(result.items[1].trace_id)
        assert (stored.value, stored.comment, stored.data_type) == ("long", "by length", "categorical")


def test_a_backend_without_experiments_keeps_working(tmp_path: Path) -> None:
    class OldPlugin:  # the 0.1 protocol: export, force_flush, shutdown
        name = "old"

        def __init__(self) -> None:
            self.spans = 0

        def export(self, spans: Any, scores: Any) -> None:
            self.spans += len(spans)

        def force_flush(self, timeout: float) -> bool:
            return True

        def shutdown(self, timeout: float) -> None:
            return None

    plugin = OldPlugin()
    spanmux.configure({"backends": [plugin], "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    result = spanmux.evaluate(data=["a"], task=lambda input: input, name="plain")
    assert spanmux.flush(timeout=10)
    assert plugin.spans == 1 and result.items[0].output == "a"
    assert spanmux.stats()["backends"]["old"]["export_errors"] == 0


def test_failing_backend_gets_the_run_from_its_spool(tmp_path: Path) -> None:
    recorder = InMemoryBackend("recorder")
    spanmux.configure({"backends": [recorder], "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    recorder.fail()
    result = spanmux.evaluate(data=["a", "b"], task=lambda input: input, scorers=[lambda output: 1.0], name="spooled")
    assert not spanmux.flush(timeout=0.5)
    assert recorder.experiments == []
    recorder.recover()
    assert spanmux.flush(timeout=10)
    assert [r.run_id for r in recorder.experiments] == [result.run_id]
    assert [i.scores for i in recorder.experiments[0].items] == [{"<lambda>": 1.0}, {"<lambda>": 1.0}]


def test_store_without_experiment_tables_reads_as_none(tmp_path: Path) -> None:
    path = store_without_experiment_tables(tmp_path / "old.db")
    with LocalStore(path) as db:
        assert db.list_experiments() == [] and db.get_experiment("x") is None
        assert list(db.iter_experiments()) == []
    out = CliRunner().invoke(app, ["experiments", "--store", str(path)])
    assert out.exit_code == 0 and "no experiment runs" in out.stdout


def test_import_spanmux_does_not_load_experiments() -> None:
    import subprocess
    import sys

    code = "import sys, spanmux; print('spanmux.experiments' in sys.modules, 'rich' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_capture_content_false_keeps_no_content_in_the_run(tmp_path: Path) -> None:
    recorder = InMemoryBackend("recorder")
    spanmux.configure({"backends": [recorder], "capture_content": False, "spool_dir": str(tmp_path / "spool"),
                       "flush_interval": 0.05})

    def task(input: str) -> str:
        if input == "secret-2":
            raise ValueError(f"cannot handle {input}")
        return input.upper()

    result = spanmux.evaluate(data=[{"input": "secret-1", "expected": "SECRET-1", "id": "a"},
                                    {"input": "secret-2", "id": "b"}],
                              task=task, scorers=[exact_match], name="private")
    assert spanmux.flush(timeout=10)
    (run,) = recorder.experiments
    assert [(i.input, i.expected, i.output) for i in run.items] == [(None, None, None)] * 2
    assert run.items[1].error == "ValueError"  # the message quoted the input
    assert run.items[0].scores == {"exact_match": True}  # scores are no content
    assert "secret" not in json.dumps([i.error for i in result.items])


def test_progress_bar_on_request(recorded: tuple[InMemoryBackend, Path], capsys: pytest.CaptureFixture[str]) -> None:
    spanmux.evaluate(data=["a", "b", "c"], task=lambda input: input, name="shown", progress=True)
    err = capsys.readouterr().err
    assert "shown" in err and "3/3" in err
    spanmux.evaluate(data=["a"], task=lambda input: input, name="hidden")  # not a terminal: no bar
    assert "hidden" not in capsys.readouterr().err


def test_langgraph_agents_at_concurrency_8_keep_their_own_traces(recorded: tuple[InMemoryBackend, Path]) -> None:
    data = [{"input": {"question": f"{n}+{n}?"}, "expected": str(2 * n), "id": f"n{n}"} for n in range(16)]
    result = spanmux.evaluate(data=data, task=run_agent, scorers=[exact_match], name="agents", concurrency=8)
    assert [i.scores for i in result.items] == [{"exact_match": True}] * 16
    assert all(i.total_tokens == 34 for i in result.items)  # each item's two model calls, no one else's
    _, store = recorded
    with read(store) as db:
        for n, item in enumerate(result.items):
            spans = db.get_trace(item.trace_id)
            tools = [s for s in spans if s.kind == "tool"]
            assert len(tools) == 1 and tools[0].input in ({"a": n, "b": n}, str({"a": n, "b": n}))
            assert sum(1 for s in spans if s.kind == "llm") == 2
            assert all(s.trace_id == item.trace_id for s in spans)


def test_scorer_values_numbers_of_any_kind_and_bad_ones(recorded: tuple[InMemoryBackend, Path]) -> None:
    from fractions import Fraction

    result = spanmux.evaluate(data=["a"], task=lambda input: input, name="values", scorers=[
        scorer("fraction")(lambda output: Fraction(1, 4)),
        scorer("nothing")(lambda output: None),
        scorer("nan")(lambda output: float("nan")),
    ])
    (item,) = result.items
    assert item.scores == {"fraction": 0.25}
    assert set(item.scorer_errors) == {"nothing", "nan"} and "NoneType" in item.scorer_errors["nothing"]


def test_tracing_disabled_still_runs_the_experiment() -> None:
    spanmux.configure({"enabled": False})
    result = spanmux.evaluate(data=["a", "bb"], task=lambda input: input * 2, scorers=[lambda output: len(output)],
                              name="off")
    assert [i.output for i in result.items] == ["aa", "bbbb"]
    assert result.summary().scorers["<lambda>"].mean == 3.0
