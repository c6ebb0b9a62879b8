"""``dspy.Evaluate`` with spanmux's callback becomes an experiment run: each example's program call
in a trace of its own, the metric's value as its item score, the run in the store and compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

dspy = pytest.importorskip("dspy")

from dspy.utils import DummyLM  # noqa: E402

import spanmux  # noqa: E402
from spanmux import attributes as attr  # noqa: E402
from spanmux.integrations.dspy import Callback  # noqa: E402
from spanmux.store import LocalStore  # noqa: E402
from spanmux.testing import render_tree  # noqa: E402

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
    return bool(example.answer == prediction.answer)


DEVSET = [dspy.Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(4)]


def evaluate(answers: list[str], store: Path, threads: int = 1) -> Any:
    lm = DummyLM({f"q{i}": {"answer": a} for i, a in enumerate(answers)})
    with dspy.context(lm=lm, callbacks=[Callback()]):
        result = dspy.Evaluate(devset=DEVSET, metric=exact, num_threads=threads)(dspy.Predict(QA))
    assert spanmux.flush(timeout=30)
    return result


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "store.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(path)}, "spool_dir": str(tmp_path / "spool"),
                       "flush_interval": 0.05})
    return path


@pytest.mark.parametrize("threads", [1, 4])
def test_evaluate_becomes_an_experiment_run(store: Path, threads: int) -> None:
    result = evaluate(["a0", "a1", "wrong", "a3"], store, threads)
    assert result.score == 75.0
    with LocalStore(store) as db:
        (run,) = db.list_experiments()
        stored = db.get_experiment(run.run_id)
        assert stored is not None and stored.source == "dspy" and stored.name == "Predict(QA)"
        assert stored.scorers == ["exact"]
        assert [i.input for i in stored.items] == [{"question": f"q{i}"} for i in range(4)]
        assert [i.scores for i in stored.items] == [{"exact": True}, {"exact": True}, {"exact": False},
                                                    {"exact": True}]
        assert [i.output for i in stored.items][2] == {"answer": "wrong"}
        assert [i.expected for i in stored.items][0] == {"answer": "a0"}
        assert len({i.trace_id for i in stored.items}) == 4  # a trace per example
        for n, item in enumerate(stored.items):
            spans = db.get_trace(item.trace_id)
            assert render_tree(spans)[0] == "chain: Predict(QA)"
            assert spans[0].span_id == item.span_id and spans[0].input == {"question": f"q{n}"}
            assert all(s.input is None or "q" not in str(s.input) or f"q{n}" in str(s.input) for s in spans)
            (score,) = db.get_scores(item.trace_id)
            assert (score.name, score.value, score.span_id) == ("exact", item.scores["exact"], item.span_id)
            trace = db.get_trace_summary(item.trace_id)
            assert trace is not None and trace.metadata[attr.EXPERIMENT_RUN_ID] == run.run_id
            assert item.total_tokens > 0  # DummyLM reports none: the worker's estimate, counted the same way


def test_two_evaluations_compare_on_the_examples(store: Path) -> None:
    evaluate(["a0", "a1", "wrong", "a3"], store)
    evaluate(["a0", "wrong", "a2", "a3"], store)
    with LocalStore(store) as db:
        newer, older = db.list_experiments()
        comparison = db.compare_experiments(older.run_id, newer.run_id)
    changed = {c.item_id: c.verdict for c in comparison.items if c.verdict != "same"}
    by_input = {c.item_id: c for c in comparison.items}
    assert sorted(changed.values()) == ["better", "worse"]
    assert len(by_input) == 4 and comparison.counts()["same"] == 2
