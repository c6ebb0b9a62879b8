"""DSPy integration against real DSPy, offline: DummyLM and a DummyLM whose calls report usage.

Every test checks the whole tree that reached the backends (``spanmux.testing.capture``): kinds,
names, parents, models and token totals.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import threading
from typing import Any

import pytest

# DSPy builds its disk cache lazily under $DSPY_CACHEDIR (default ~/.dspy_cache): keep it out of
# the repository and the home folder, then switch caching off for these tests altogether.
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "spanmux-tests-dspy-cache"))
dspy = pytest.importorskip("dspy")

from conftest import REACT_ANSWERS, REACT_QUESTION, add, trace_totals, weather  # noqa: E402
from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine  # noqa: E402
from dspy.utils import DummyLM  # noqa: E402

import spanmux  # noqa: E402
from spanmux.integrations import dspy as dspy_integration  # noqa: E402
from spanmux.integrations.dspy import Callback, instrument, uninstrument  # noqa: E402
from spanmux.model import Span  # noqa: E402
from spanmux.testing import Captured, render_tree  # noqa: E402

dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


class QA(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def _number(text: str) -> int:
    found = re.search(r"\bq(\d+)\b", text)
    return int(found.group(1)) if found else 0


def expected_usage(n: int) -> tuple[int, int, int]:
    return 100 + n, 10 + n, 110 + 2 * n


def expected_cost(n: int) -> float:
    return 0.001 * (n + 1)


class UsageEngine(DummyEngine):
    """DummyLM's engine, but each call reports usage and a provider cost derived from the question
    (``q<n>``), so a test can tell exactly which call a span's numbers came from."""

    def complete_legacy(self, lm: Any, request: dict[str, Any], **context: Any) -> Any:
        result = super().complete_legacy(lm, request, **context)
        n = _number(request["messages"][-1]["content"])
        prompt, completion, total = expected_usage(n)
        result.usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}
        result.cost = expected_cost(n)
        result.response_model = "gpt-4o-mini-2024-07-18"
        return result


class UsageLM(DummyLM):
    def __init__(self, answers: Any, barrier: threading.Barrier | None = None) -> None:
        super().__init__(answers)
        self.model = "openai/gpt-4o-mini"
        self._engine_spec = UsageEngine(self)
        self._async_engine_spec = AsyncDummyEngine(self._engine_spec)
        self.barrier = barrier

    def update_history(self, entry: dict[str, Any]) -> None:
        """With a barrier, every concurrent call appends its history entry before any call returns:
        ``history[-1]`` is then the same entry for all of them, so only an exact join passes."""
        super().update_history(entry)
        if self.barrier is not None:
            self.barrier.wait(timeout=30)


def by_id(spans: list[Span]) -> dict[str, Span]:
    return {s.span_id: s for s in spans}


def children(spans: list[Span], parent: Span) -> list[Span]:
    return [s for s in spans if s.parent_id == parent.span_id]


def assert_predict_branch(spans: list[Span], predict: Span, n: int, *, usage: bool) -> None:
    """A Predict span with format, LM call and parse as children, all about question q<n>."""
    assert predict.kind == "chain" and predict.name == "Predict(QA)"
    assert predict.input == {"question": f"q{n}"}
    assert predict.output == {"answer": f"a{n}"}
    kids = children(spans, predict)
    assert [(k.kind, k.name) for k in kids] == [
        ("parser", "ChatAdapter.format"), ("llm", "openai/gpt-4o-mini" if usage else "dummy"),
        ("parser", "ChatAdapter.parse"),
    ]
    lm = kids[1]
    assert f"q{n}" in lm.input[-1]["content"]
    assert f"a{n}" in lm.output
    assert kids[2].output == {"answer": f"a{n}"}
    if usage:
        prompt, completion, total = expected_usage(n)
        assert lm.usage is not None and not lm.usage.estimated
        assert (lm.usage.input_tokens, lm.usage.output_tokens, lm.usage.total_tokens) == (prompt, completion, total)
        assert lm.cost is not None and lm.cost.source == "provider"
        assert lm.cost.total == pytest.approx(expected_cost(n))
        # both models kept; model.name is the one that answered (README, "Models")
        assert lm.model is not None and (lm.model.name, lm.model.provider) == ("gpt-4o-mini-2024-07-18", "openai")
        assert lm.attributes["gen_ai.request.model"] == "openai/gpt-4o-mini"
        assert lm.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
        assert predict.usage is None and predict.cost is None  # tokens live on the LM span only


def answers(count: int) -> dict[str, dict[str, str]]:
    return {f"q{i}": {"answer": f"a{i}"} for i in range(count)}


# -- single modules ------------------------------------------------------------------------------------


def test_predict_tree(captured: Captured) -> None:
    with dspy.context(lm=DummyLM([{"answer": "Paris"}]), callbacks=[Callback()]):
        result = dspy.Predict(QA)(question="Capital of France?")
    assert result.answer == "Paris"

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "chain: Predict(QA)",
        "  parser: ChatAdapter.format",
        "  llm: dummy",
        "  parser: ChatAdapter.parse",
    ]
    root, fmt, lm, parse = spans
    assert {s.framework for s in spans} == {"dspy"}
    assert all(s.trace_id == root.trace_id and s.status == "ok" for s in spans)
    assert root.parent_id is None and {fmt.parent_id, lm.parent_id, parse.parent_id} == {root.span_id}
    assert root.input == {"question": "Capital of France?"}
    assert root.output == {"answer": "Paris"}
    assert fmt.input["signature"] == "QA" and fmt.input["inputs"] == {"question": "Capital of France?"}
    assert [m["role"] for m in fmt.output] == ["system", "user"]
    assert lm.input == fmt.output
    assert "Paris" in lm.output
    assert parse.output == {"answer": "Paris"}
    assert lm.model is not None and lm.model.name == "dummy" and lm.model.provider is None
    assert lm.model.parameters == {"temperature": 0.0, "max_tokens": 1000}
    assert lm.attributes["gen_ai.operation.name"] == "chat"
    # DummyLM reports zero usage: the worker estimates it (flagged), counted once in the totals.
    assert lm.usage is None or lm.usage.estimated
    totals = trace_totals(spans)
    assert root.name == "Predict(QA)" and totals.llm_calls == 1
    assert totals.total_tokens == (lm.usage.total_tokens if lm.usage else 0)


def test_chain_of_thought_tree(captured: Captured) -> None:
    lm = DummyLM([{"reasoning": "It is the capital.", "answer": "Paris"}])
    with dspy.context(lm=lm, callbacks=[Callback()]):
        result = dspy.ChainOfThought(QA)(question="Capital of France?")
    assert result.answer == "Paris"

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        # ChainOfThought prepends `reasoning` into a new, unnamed signature: DSPy keeps no name
        "chain: ChainOfThought(question -> reasoning, answer)",
        "  chain: Predict(question -> reasoning, answer)",
        "    parser: ChatAdapter.format",
        "    llm: dummy",
        "    parser: ChatAdapter.parse",
    ]
    assert spans[0].output == {"reasoning": "It is the capital.", "answer": "Paris"}
    assert spans[1].parent_id == spans[0].span_id
    assert {s.parent_id for s in spans[2:]} == {spans[1].span_id}


def test_react_with_two_tools(captured: Captured) -> None:
    lm = DummyLM(REACT_ANSWERS)
    with dspy.context(lm=lm, callbacks=[Callback()]):
        result = dspy.ReAct(QA, tools=[add, weather])(question=REACT_QUESTION)
    assert result.answer == "5, sunny in Paris"

    (spans,) = captured.traces()
    step = "Predict(question, trajectory -> next_thought, next_tool_name, next_tool_args)"
    predict_children = ["    parser: ChatAdapter.format", "    llm: dummy", "    parser: ChatAdapter.parse"]
    assert render_tree(spans) == [
        "agent: ReAct(QA)",
        f"  chain: {step}", *predict_children,
        "  tool: add",
        f"  chain: {step}", *predict_children,
        "  tool: weather",
        f"  chain: {step}", *predict_children,
        "  tool: finish",
        "  chain: ChainOfThought(question, trajectory -> reasoning, answer)",
        "    chain: Predict(question, trajectory -> reasoning, answer)",
        "      parser: ChatAdapter.format", "      llm: dummy", "      parser: ChatAdapter.parse",
    ]
    root = spans[0]
    assert root.input == {"question": "What is 2+3 and the weather in Paris?"}
    assert root.output["answer"] == "5, sunny in Paris"
    tools = {s.name: s for s in spans if s.kind == "tool"}
    assert tools["add"].input == {"a": 2, "b": 3} and tools["add"].output == 5
    assert tools["weather"].input == {"city": "Paris"} and tools["weather"].output == "sunny in Paris"
    assert tools["add"].attributes["gen_ai.tool.name"] == "add"
    assert all(t.parent_id == root.span_id for t in tools.values())
    llm_spans = [s for s in spans if s.kind == "llm"]
    totals = trace_totals(spans)
    assert totals.llm_calls == 4 and root.name == "ReAct(QA)"
    assert totals.total_tokens == sum(s.usage.total_tokens for s in llm_spans if s.usage)


def test_tool_error_inside_react_is_recorded(captured: Captured) -> None:
    def broken(x: str) -> str:
        """Always fails."""
        raise RuntimeError("tool exploded")

    lm = DummyLM([
        {"next_thought": "Try it.", "next_tool_name": "broken", "next_tool_args": {"x": "1"}},
        {"next_thought": "Give up.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "Tool failed.", "answer": "unknown"},
    ])
    with dspy.context(lm=lm, callbacks=[Callback()]):
        dspy.ReAct(QA, tools=[broken])(question="q?")
    (spans,) = captured.traces()
    tool = next(s for s in spans if s.name == "broken")
    assert tool.kind == "tool" and tool.status == "error"
    assert tool.error is not None and tool.error.type == "RuntimeError" and "tool exploded" in tool.error.message
    assert spans[0].status == "ok"  # ReAct caught it and went on


# -- errors ----------------------------------------------------------------------------------------------


class Failing(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.Predict(QA)

    def forward(self, question: str) -> Any:
        self.qa(question=question)
        raise ValueError("boom after the answer")


def test_exception_inside_module(captured: Captured) -> None:
    with dspy.context(lm=DummyLM([{"answer": "a0"}]), callbacks=[Callback()]), pytest.raises(ValueError):
        Failing()(question="q0")

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "chain: Failing",
        "  chain: Predict(QA)",
        "    parser: ChatAdapter.format",
        "    llm: dummy",
        "    parser: ChatAdapter.parse",
    ]
    root = spans[0]
    assert root.status == "error" and root.output is None
    assert root.error is not None and root.error.type == "ValueError"
    assert root.error.message == "boom after the answer"
    assert root.error.traceback and "boom after the answer" in root.error.traceback
    assert all(s.status == "ok" for s in spans[1:])
    assert root.status == "error" and trace_totals(spans).errors == 1


def test_lm_failure_is_an_error_span(captured: Captured) -> None:
    class BrokenEngine(DummyEngine):
        def complete_legacy(self, lm: Any, request: dict[str, Any], **context: Any) -> Any:
            raise ConnectionError("provider unreachable")

    lm = DummyLM([{"answer": "never"}])
    lm._engine_spec = BrokenEngine(lm)
    with dspy.context(lm=lm, callbacks=[Callback()]), pytest.raises(Exception, match="provider unreachable"):
        dspy.Predict(QA)(question="q0")
    (spans,) = captured.traces()
    llm = next(s for s in spans if s.kind == "llm")
    assert llm.status == "error" and llm.error is not None and "provider unreachable" in llm.error.message
    assert llm.parent_id == spans[0].span_id
    assert spans[0].status == "error"


# -- usage, cost, model --------------------------------------------------------------------------------


class TwoQuestions(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.Predict(QA)

    def forward(self, first: str, second: str) -> Any:
        return dspy.Prediction(first=self.qa(question=first).answer, second=self.qa(question=second).answer)


def test_lm_usage_and_cost_on_the_exact_lm_span(captured: Captured) -> None:
    with dspy.context(lm=UsageLM(answers(8)), callbacks=[Callback()]):
        result = TwoQuestions()(first="q2", second="q5")
    assert (result.first, result.second) == ("a2", "a5")

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "chain: TwoQuestions",
        "  chain: Predict(QA)",
        "    parser: ChatAdapter.format", "    llm: openai/gpt-4o-mini", "    parser: ChatAdapter.parse",
        "  chain: Predict(QA)",
        "    parser: ChatAdapter.format", "    llm: openai/gpt-4o-mini", "    parser: ChatAdapter.parse",
    ]
    root = spans[0]
    assert root.input == {"first": "q2", "second": "q5"} and root.output == {"first": "a2", "second": "a5"}
    predicts = children(spans, root)
    assert_predict_branch(spans, predicts[0], 2, usage=True)
    assert_predict_branch(spans, predicts[1], 5, usage=True)

    totals = trace_totals(spans)
    assert totals.llm_calls == 2
    assert totals.input_tokens == 102 + 105 and totals.output_tokens == 12 + 15
    assert totals.total_tokens == 114 + 120
    assert totals.cost_total == pytest.approx(expected_cost(2) + expected_cost(5))
    assert totals.models == ["gpt-4o-mini-2024-07-18"]


def test_usage_found_when_lm_history_is_off(captured: Captured) -> None:
    """``max_history_size=0`` keeps no per-LM history; the process-wide history still has the entry."""
    lm = UsageLM(answers(8))
    with dspy.context(lm=lm, callbacks=[Callback()], max_history_size=0):
        dspy.Predict(QA)(question="q7")
    assert lm.history == []
    (spans,) = captured.traces()
    assert_predict_branch(spans, spans[0], 7, usage=True)


# -- threads and async -------------------------------------------------------------------------------


def test_parallel_top_level_gives_eight_exact_trees(captured: Captured) -> None:
    predict = dspy.Predict(QA)
    with dspy.context(lm=UsageLM(answers(8)), callbacks=[Callback()]):
        results = dspy.Parallel(num_threads=8, disable_progress_bar=True)(
            [(predict, {"question": f"q{i}"}) for i in range(8)]
        )
    assert [r.answer for r in results] == [f"a{i}" for i in range(8)]

    traces = captured.traces()
    assert len(traces) == 8
    seen = set()
    for spans in traces:
        assert render_tree(spans) == [
            "chain: Predict(QA)",
            "  parser: ChatAdapter.format", "  llm: openai/gpt-4o-mini", "  parser: ChatAdapter.parse",
        ]
        n = _number(spans[0].input["question"])
        seen.add(n)
        assert_predict_branch(spans, spans[0], n, usage=True)
        totals = trace_totals(spans)
        assert totals.total_tokens == expected_usage(n)[2]
        assert totals.cost_total == pytest.approx(expected_cost(n))
    assert seen == set(range(8))


class FanOut(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.Predict(QA)

    def forward(self, questions: list[str]) -> Any:
        parallel = dspy.Parallel(num_threads=8, disable_progress_bar=True)
        results = parallel([(self.qa, {"question": q}) for q in questions])
        return dspy.Prediction(answers=[r.answer for r in results])


def test_parallel_inside_module_gives_one_tree_with_eight_branches(captured: Captured) -> None:
    lm = UsageLM(answers(8), barrier=threading.Barrier(8))
    with dspy.context(lm=lm, callbacks=[Callback()]):
        result = FanOut()(questions=[f"q{i}" for i in range(8)])
    assert result.answers == [f"a{i}" for i in range(8)]

    (spans,) = captured.traces()
    root = spans[0]
    assert (root.kind, root.name, root.parent_id) == ("chain", "FanOut", None)
    predicts = children(spans, root)
    assert len(predicts) == 8 and len(spans) == 1 + 8 * 4
    assert sorted(_number(p.input["question"]) for p in predicts) == list(range(8))
    for predict in predicts:
        assert_predict_branch(spans, predict, _number(predict.input["question"]), usage=True)
    assert all(s.parent_id in by_id(spans) for s in spans[1:])

    totals = trace_totals(spans)
    assert totals.llm_calls == 8
    assert totals.total_tokens == sum(expected_usage(n)[2] for n in range(8))
    assert totals.cost_total == pytest.approx(sum(expected_cost(n) for n in range(8)))


class AsyncTwo(dspy.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qa = dspy.Predict(QA)

    async def aforward(self, first: str, second: str) -> Any:
        a, b = await asyncio.gather(self.qa.acall(question=first), self.qa.acall(question=second))
        return dspy.Prediction(first=a.answer, second=b.answer)


async def test_acall_tree_with_concurrent_children(captured: Captured) -> None:
    with dspy.context(lm=UsageLM(answers(8)), callbacks=[Callback()]):
        result = await AsyncTwo().acall(first="q3", second="q6")
    assert (result.first, result.second) == ("a3", "a6")

    (spans,) = captured.traces()
    root = spans[0]
    assert (root.kind, root.name) == ("chain", "AsyncTwo")
    predicts = children(spans, root)
    assert sorted(_number(p.input["question"]) for p in predicts) == [3, 6]
    for predict in predicts:
        assert_predict_branch(spans, predict, _number(predict.input["question"]), usage=True)
    assert trace_totals(spans).total_tokens == expected_usage(3)[2] + expected_usage(6)[2]


async def test_asyncify_nests_under_a_manual_span(captured: Captured) -> None:
    with dspy.context(lm=UsageLM(answers(8)), callbacks=[Callback()]):
        program = dspy.asyncify(dspy.Predict(QA))
        async with spanmux.span("request", kind="agent"):
            results = await asyncio.gather(program(question="q1"), program(question="q4"))
    assert [r.answer for r in results] == ["a1", "a4"]

    (spans,) = captured.traces()
    root = spans[0]
    assert (root.kind, root.name, root.framework) == ("agent", "request", "manual")
    predicts = children(spans, root)
    assert len(predicts) == 2 and len(spans) == 1 + 2 * 4
    for predict in predicts:
        assert_predict_branch(spans, predict, _number(predict.input["question"]), usage=True)


# -- mixing with manual spans ------------------------------------------------------------------------


def test_manual_spans_and_dspy_nest_both_ways(captured: Captured) -> None:
    seen_trace_ids: list[str | None] = []

    def lookup(topic: str) -> str:
        """Look a topic up."""
        seen_trace_ids.append(spanmux.current_trace_id())
        with spanmux.span("db-query", kind="retriever", input={"topic": topic}) as s:
            s.set_output(["doc-1"])
        return "doc-1"

    lm = DummyLM([
        {"next_thought": "Look it up.", "next_tool_name": "lookup", "next_tool_args": {"topic": "x"}},
        {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "Found.", "answer": "doc-1"},
    ])
    with (
        spanmux.trace_context(user_id="u1", tags=["dspy"]),
        dspy.context(lm=lm, callbacks=[Callback()]),
        spanmux.span("handle-request", kind="chain") as outer,
    ):
        dspy.ReAct(QA, tools=[lookup])(question="What is x?")
        outer_trace_id = outer.trace_id

    (spans,) = captured.traces()
    step = "Predict(question, trajectory -> next_thought, next_tool_name, next_tool_args)"
    predict_children = ["      parser: ChatAdapter.format", "      llm: dummy", "      parser: ChatAdapter.parse"]
    assert render_tree(spans) == [
        "chain: handle-request",
        "  agent: ReAct(QA)",
        f"    chain: {step}", *predict_children,
        "    tool: lookup",
        "      retriever: db-query",
        f"    chain: {step}", *predict_children,
        "    tool: finish",
        "    chain: ChainOfThought(question, trajectory -> reasoning, answer)",
        "      chain: Predict(question, trajectory -> reasoning, answer)",
        "        parser: ChatAdapter.format", "        llm: dummy", "        parser: ChatAdapter.parse",
    ]
    assert seen_trace_ids == [outer_trace_id]
    assert {s.trace_id for s in spans} == {outer_trace_id}
    assert all(s.trace is not None and s.trace.user_id == "u1" and s.trace.tags == ("dspy",) for s in spans)
    assert spans[0].name == "handle-request" and spans[0].trace is not None and spans[0].trace.user_id == "u1"


# -- attaching and detaching -------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _detach() -> Any:
    """``instrument()`` called directly is not known to ``spanmux.uninstrument()``: undo it here."""
    yield
    uninstrument()


@pytest.fixture
def dspy_global_settings() -> Any:
    yield
    dspy.configure(lm=None, callbacks=[])


def test_dspy_configure_one_liner(captured: Captured, dspy_global_settings: Any) -> None:
    dspy.configure(lm=DummyLM([{"answer": "a1"}]), callbacks=[Callback()])
    dspy.Predict(QA)(question="q1")
    (spans,) = captured.traces()
    assert [s.kind for s in spans] == ["chain", "parser", "llm", "parser"]


def test_instrument_is_idempotent_and_uninstrument_stops_tracing(captured: Captured) -> None:
    assert spanmux.instrument("dspy") == ["dspy"]
    callback = instrument()
    ours = [cb for cb in dspy.settings.callbacks if isinstance(cb, Callback)]
    assert ours == [callback]

    with dspy.context(lm=DummyLM([{"answer": "a1"}])):
        dspy.Predict(QA)(question="q1")
    assert len(captured.traces()) == 1

    spanmux.uninstrument("dspy")
    uninstrument()  # again: a no-op
    assert not [cb for cb in dspy.settings.callbacks if isinstance(cb, Callback)]
    with dspy.context(lm=DummyLM([{"answer": "a2"}])):
        dspy.Predict(QA)(question="q2")
    assert len(captured.traces()) == 1


def test_two_callbacks_record_each_call_once(captured: Captured) -> None:
    instrument()
    with dspy.context(lm=DummyLM([{"answer": "a1"}]), callbacks=[*dspy.settings.callbacks, Callback()]):
        dspy.Predict(QA)(question="q1")
    (spans,) = captured.traces()
    assert len(spans) == 4


class Hostile:
    """Raises on every attribute read and on repr: what a callback may be handed."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("no attributes here")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


def test_hooks_never_raise_and_hostile_values_still_make_spans(captured: Captured) -> None:
    cb = Callback()
    before = dspy_integration.failure_count()
    # hostile instances, missing inputs, ends without starts: nothing escapes
    cb.on_module_start("m1", Hostile(), None)  # type: ignore[arg-type]
    cb.on_module_end("m1", Hostile())
    cb.on_lm_start("l1", Hostile(), {"messages": Hostile(), "kwargs": Hostile()})
    cb.on_lm_end("l1", Hostile())
    cb.on_tool_start("t1", Hostile(), {"kwargs": Hostile()})
    cb.on_tool_end("t1", None, RuntimeError("x"))
    cb.on_adapter_parse_end("never-started", None)
    cb.on_evaluate_start("e1", Hostile(), {"devset": Hostile()})
    cb.on_evaluate_end("e1", Hostile())
    assert dspy_integration.failure_count() > before

    # a real tool handed hostile values: recorded, with a placeholder for what cannot be shown
    tool = dspy.Tool(lambda x: x, name="echo", desc="Echo.")
    cb.on_tool_start("t2", tool, {"kwargs": {"x": Hostile(), "blob": b"\x00" * 10, "big": "y" * 2_000_000}})
    cb.on_tool_end("t2", Hostile(), None)
    (spans,) = captured.traces()
    assert [(s.kind, s.name, s.status) for s in spans] == [("tool", "echo", "ok")]
    assert spans[0].truncated and spans[0].input["blob"] == "<10 bytes>"
    assert spans[0].input["x"] == "<Hostile object>"
    assert isinstance(spans[0].output, str)


def test_disabled_tracing_records_nothing_and_runs(tmp_path: Any) -> None:
    spanmux.configure({"enabled": False})
    with dspy.context(lm=DummyLM([{"answer": "a1"}]), callbacks=[Callback()]):
        assert dspy.Predict(QA)(question="q1").answer == "a1"
    assert dspy_integration._open == {}


def test_evaluate_is_an_evaluator_span(captured: Captured) -> None:
    devset = [dspy.Example(question=f"q{i}", answer=f"a{i}").with_inputs("question") for i in range(2)]

    def exact(example: Any, prediction: Any, trace: Any = None) -> bool:
        return bool(example.answer == prediction.answer)

    with dspy.context(lm=DummyLM(answers(2)), callbacks=[Callback()]):
        result = dspy.Evaluate(devset=devset, metric=exact, num_threads=1)(dspy.Predict(QA))
    assert result.score == 100.0

    # the Evaluate span, and each example's program call in a trace of its own (an experiment item,
    # tests/test_dspy_evaluate.py)
    evaluate, *examples = captured.traces()
    (root,) = evaluate
    assert (root.kind, root.name) == ("evaluator", "Evaluate")
    assert root.input == {"program": "Predict(QA)", "metric": "exact", "num_examples": 2}
    assert root.output == {"score": 100.0, "num_results": 2}
    assert [spans[0].name for spans in examples] == ["Predict(QA)", "Predict(QA)"]
    assert [len(spans) for spans in examples] == [4, 4]
