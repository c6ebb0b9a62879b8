"""The test kit ``spanmux.testing``: capture(), InMemoryBackend, render_tree, reset, and backend
objects listed in ``configure()``; last, a test written the way a user tests their own agent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import spanmux
from spanmux import runtime
from spanmux.backend import ExportError
from spanmux.model import ExperimentRun, Span
from spanmux.store import LocalStore
from spanmux.testing import InMemoryBackend, capture, render_tree, reset


def three_span_trace(name: str = "agent") -> spanmux.ManualSpan:
    with spanmux.span(name, kind="agent", input={"q": "weather?"}) as root:
        with spanmux.span("search", kind="retriever") as search:
            search.set_output(["doc"])
        with spanmux.span("answer", kind="llm", model="gpt-4o-mini") as llm:
            llm.set_usage(input_tokens=12, output_tokens=4)
            llm.set_output("sunny")
    root.score("helpful", True)
    return root


# ---------------------------------------------------------------- capture()
def test_capture_yields_the_processed_spans_and_scores() -> None:
    with capture() as captured:
        root = three_span_trace()
        (trace,) = captured.traces()  # flushed on read, inside the block
        assert render_tree(trace) == ["agent: agent", "  retriever: search", "  llm: answer"]
        assert [s.name for s in captured.spans] == ["search", "answer", "agent"]  # arrival order: children end first
        llm = trace[2]
        assert llm.usage is not None and llm.usage.total_tokens == 16
        assert llm.cost is not None and llm.cost.total > 0  # priced by the worker, like every backend sees it
        (score,) = captured.scores
        assert (score.name, score.value, score.trace_id) == ("helpful", True, root.trace_id)
        assert captured.trace(root.trace_id) == trace and captured.trace("0" * 32) == []
    assert captured.backend.closed  # the capture's pipeline is shut down at the end of the block


def test_capture_takes_the_usual_options() -> None:
    with capture(capture_content=False) as captured:
        three_span_trace()
    assert all(s.input is None and s.output is None for s in captured.spans)
    with capture(sample_rate=0.0) as sampled:
        three_span_trace()
    assert sampled.spans == [] and sampled.scores != []  # scores are not sampled
    with pytest.raises(spanmux.ConfigurationError, match="sample_rate"):
        with capture(sample_rate=2):
            pass
    with pytest.raises(TypeError, match="its own InMemoryBackend"):
        with capture(backends=["local"]):
            pass


def test_capture_flushes_at_exit_and_puts_the_previous_configuration_back(tmp_path: Path) -> None:
    spanmux.configure({"local": {"path": str(tmp_path / "store.db")}, "spool_dir": str(tmp_path / "spool")})
    before = runtime.active()
    with capture(flush_interval=60) as captured:  # no timer: only the flush at exit delivers
        with spanmux.span("inside"):
            pass
    assert [s.name for s in captured.backend.spans] == ["inside"]
    assert runtime.active() is before
    with spanmux.span("after"):
        pass
    assert spanmux.flush(10)
    with LocalStore(tmp_path / "store.db") as db:
        assert [t.name for t in db.list_traces()] == ["after"]  # the capture's span went only to memory


def test_capture_from_an_unconfigured_spanmux_leaves_it_unconfigured(tmp_path: Path) -> None:
    with capture():
        with spanmux.span("x"):
            pass
    assert runtime.settings() is None and runtime.is_enabled() and not runtime._configured
    assert not (tmp_path / ".spanmux").exists(), "capture() writes nothing in the working folder"


def test_capture_keeps_a_configuration_made_inside_the_block(tmp_path: Path) -> None:
    with capture():
        inner = spanmux.configure({"backends": ["console"], "spool_dir": str(tmp_path / "spool")})
    assert runtime.settings() is inner


def test_an_exception_in_the_block_is_not_masked_by_the_flush() -> None:
    with pytest.raises(KeyError, match="agent bug"), capture() as captured:
        captured.backend.fail()
        with spanmux.span("x"):
            pass
        raise KeyError("agent bug")


# ---------------------------------------------------------------- InMemoryBackend failing like a server
def test_a_failing_backend_spools_and_delivers_everything_once_it_recovers() -> None:
    with capture(flush_timeout=0.5) as captured:
        memory = captured.backend
        memory.fail()
        for n in range(5):
            with spanmux.span(f"job-{n}"):
                pass
        with pytest.raises(AssertionError, match="told to fail"):
            _ = captured.spans
        assert memory.spans == [] and memory.failing and memory.failed_calls >= 1
        lane = spanmux.stats()["backends"]["memory"]
        assert lane["export_errors"] >= 1 and lane["spooled_spans"] == 5 and lane["dropped_spans"] == 0
        assert "connection refused" in lane["last_error"]
        memory.recover()
        assert sorted(s.name for s in captured.spans) == [f"job-{n}" for n in range(5)]  # each exactly once


def test_fail_for_a_number_of_calls_or_every_nth_call() -> None:
    memory = InMemoryBackend()
    memory.fail(times=2)
    for _ in range(2):
        with pytest.raises(ExportError) as refused:
            memory.export([], [])
        assert refused.value.retryable
    memory.export([], [])
    assert not memory.failing and (memory.export_calls, memory.failed_calls) == (3, 2)

    memory.fail(every=3)
    outcomes = []
    for _ in range(6):
        try:
            memory.export([], [])
            outcomes.append("ok")
        except ExportError:
            outcomes.append("refused")
    assert outcomes == ["ok", "ok", "refused", "ok", "ok", "refused"] and memory.failing
    with pytest.raises(ValueError):
        memory.fail(times=0)


def test_fail_with_an_error_retrying_cannot_fix() -> None:
    with capture(flush_timeout=5) as captured:
        captured.backend.fail(error=ExportError("HTTP 401: wrong key", retryable=False))
        with spanmux.span("x"):
            pass
        started = time.monotonic()
        assert not spanmux.flush(5)  # not delivered, and the lane does not wait for a refusal
        assert time.monotonic() - started < 3
        assert spanmux.stats()["backends"]["memory"]["last_error"] == "HTTP 401: wrong key"


def test_the_backend_is_thread_safe_to_read_while_its_lane_writes() -> None:
    with capture(batch_size=10, flush_interval=0.01) as captured:
        seen = 0
        for n in range(2000):
            with spanmux.span(f"s{n}"):
                pass
            seen = max(seen, len(captured.backend.spans))  # reads race the lane's appends
        assert len(captured.spans) == 2000 >= seen


# ---------------------------------------------------------------- experiment runs
def test_capture_keeps_the_experiment_runs_after_their_items() -> None:
    with capture() as captured:
        result = spanmux.evaluate(data=["a", "b"], task=lambda input: input.upper(),
                                  scorers=[lambda output: output == "A"], name="kept")
        (run,) = captured.experiments
        assert run == result.run and [i.output for i in run.items] == ["A", "B"]
        assert {i.trace_id for i in run.items} <= {s.trace_id for s in captured.spans}  # its items arrived too
        assert [s.value for s in captured.scores] == [True, False]
    assert captured.backend.experiment_calls == 1
    captured.backend.clear()
    assert captured.backend.experiments == [] and captured.backend.spans == []


def test_a_failing_backend_refuses_experiment_runs_too() -> None:
    memory = InMemoryBackend()
    run = ExperimentRun(run_id="r1", name="direct", start_ns=1, end_ns=2)
    memory.fail(times=1)
    with pytest.raises(ExportError, match="connection refused"):
        memory.export_experiments([run], None)
    assert memory.experiments == [] and not memory.failing
    memory.export_experiments([run], {"pid": "1"})
    assert memory.experiments == [run] and (memory.experiment_calls, memory.failed_calls) == (2, 1)

    with capture(flush_timeout=0.5) as captured:
        captured.backend.fail()
        result = spanmux.evaluate(data=["a"], task=lambda input: input, name="spooled")
        with pytest.raises(AssertionError, match="told to fail"):
            _ = captured.experiments
        assert captured.backend.experiments == []
        captured.backend.recover()
        assert [r.run_id for r in captured.experiments] == [result.run_id]  # from the spool, once


# ---------------------------------------------------------------- backend objects in configure()
def test_configure_takes_backend_objects_beside_names(tmp_path: Path) -> None:
    first, second = InMemoryBackend("first"), InMemoryBackend("second")
    config: dict[str, Any] = {"observability": {
        "backends": ["local", first, second],
        "local": {"path": str(tmp_path / "store.db")},
        "spool_dir": str(tmp_path / "spool"),
    }}
    settings = spanmux.configure(config)
    assert settings.backends == ["local", "first", "second"]
    assert config["observability"]["backends"][1] is first  # the caller's dict is not changed
    root = three_span_trace()
    assert spanmux.flush(10)
    assert sorted(s.span_id for s in first.spans) == sorted(s.span_id for s in second.spans)
    with LocalStore(tmp_path / "store.db") as db:
        assert {s.span_id for s in db.get_trace(root.trace_id)} == {s.span_id for s in first.spans}
    stats = spanmux.stats()["backends"]
    assert list(stats) == ["local", "first", "second"] and stats["first"]["exported_spans"] == 3

    second.fail()  # its own lane and spool: the others never notice
    with spanmux.span("later"):
        pass
    assert not spanmux.flush(0.5)
    assert list((tmp_path / "spool" / "second").glob("*.batch")) and not (tmp_path / "spool" / "first").exists()
    assert [s.name for s in first.spans][-1] == "later"


def test_a_backend_object_alone_and_the_errors_of_a_bad_list(tmp_path: Path) -> None:
    memory = InMemoryBackend()
    spanmux.configure({"backends": memory, "spool_dir": str(tmp_path / "spool")})
    assert runtime.settings() is not None and runtime.settings().backends == ["memory"]  # type: ignore[union-attr]

    with pytest.raises(spanmux.ConfigurationError) as bad_name:
        spanmux.configure({"backends": ["lcoal", InMemoryBackend()]})
    assert "backends[0]: unknown backend 'lcoal'; did you mean 'local'?" in str(bad_name.value)
    with pytest.raises(spanmux.ConfigurationError, match=r"backends\[1\]: two backends are named 'memory'"):
        spanmux.configure({"backends": [InMemoryBackend(), InMemoryBackend()]})
    with pytest.raises(spanmux.ConfigurationError, match=r"two backends are named 'local'"):
        spanmux.configure({"backends": ["superoptix", InMemoryBackend("local")]})
    with pytest.raises(spanmux.ConfigurationError, match=r"backends\[1\]: 'object' object: neither a backend name"):
        spanmux.configure({"backends": ["local", object()]})
    assert runtime.settings().backends == ["memory"]  # type: ignore[union-attr]  # still the last good one
    assert not memory.closed


def test_an_object_with_only_the_01_protocol_is_a_backend(tmp_path: Path) -> None:
    class Minimal:
        name = "minimal"

        def __init__(self) -> None:
            self.spans: list[Span] = []

        def export(self, spans: Any, scores: Any) -> None:
            self.spans.extend(spans)

        def force_flush(self, timeout: float) -> bool:
            return True

        def shutdown(self, timeout: float) -> None:
            return None

    minimal = Minimal()
    spanmux.configure({"backends": [minimal], "spool_dir": str(tmp_path / "spool")})
    with spanmux.span("x"):
        pass
    assert spanmux.flush(10) and [s.name for s in minimal.spans] == ["x"]


# ---------------------------------------------------------------- render_tree, reset, imports
def span(name: str, span_id: str, parent: str | None = None, start: int = 0, trace: str = "a" * 32,
         kind: str = "chain") -> Span:
    return Span(trace_id=trace, span_id=span_id, parent_id=parent, name=name, kind=kind,  # type: ignore[arg-type]
                framework="manual", start_ns=start, end_ns=start + 1)


def test_render_tree_orders_parents_first_siblings_by_start_and_traces_by_start() -> None:
    spans = [
        span("late-child", "c2", "r1", start=6),
        span("grandchild", "g1", "c1", start=4),
        span("child", "c1", "r1", start=3, kind="llm"),
        span("root", "r1", start=2, kind="agent"),
        span("orphan", "o1", "gone", start=1),
        span("earlier trace", "x1", start=0, trace="b" * 32, kind="tool"),
    ]
    assert render_tree(spans) == [
        "tool: earlier trace",
        "chain: orphan",  # its parent never arrived: a tree of its own
        "agent: root",
        "  llm: child",
        "    chain: grandchild",
        "  chain: late-child",
    ]
    assert render_tree([]) == []


def test_reset_uninstruments_and_forgets_the_configuration(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    spanmux.configure({"backends": ["console"], "spool_dir": str(tmp_path / "spool")})
    spanmux.instrument("langchain")
    reset()
    assert runtime.settings() is None and not runtime._configured and runtime._instrumented == set()


def test_importing_the_kit_imports_no_test_framework_and_spanmux_not_the_kit() -> None:
    code = (
        "import sys, spanmux; assert 'spanmux.testing' not in sys.modules; "
        "import spanmux.testing; "
        "found = [m for m in sys.modules if m.split('.')[0] in ('pytest', '_pytest', 'unittest', 'hypothesis')]; "
        "assert not found, found"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ---------------------------------------------------------------- how a user tests their agent's tracing
def test_a_users_agent_with_langchains_fake_chat_model() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool

    @tool
    def lookup_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    usage = {"input_tokens": 20, "output_tokens": 6, "total_tokens": 26}
    chat = FakeMessagesListChatModel(responses=[
        AIMessage("It is sunny in Paris.", usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}),
    ])
    chain = ChatPromptTemplate.from_messages([("system", "Use the facts."), ("human", "{facts} {q}")]) | chat \
        | StrOutputParser()

    @spanmux.observe(kind="agent")
    def weather_agent(question: str) -> str:
        facts = lookup_weather.invoke({"city": "Paris"})
        return chain.invoke({"facts": facts, "q": question})

    spanmux.instrument("langchain")
    with capture(capture_content=False) as captured:
        assert weather_agent("Weather in Paris?") == "It is sunny in Paris."
        spanmux.score(None, "helpful", True)  # no trace open any more: ignored, never raises
        (trace,) = captured.traces()

    assert render_tree(trace) == [
        "agent: weather_agent",
        "  tool: lookup_weather",
        "  chain: RunnableSequence",
        "    chain: ChatPromptTemplate",
        "    llm: FakeMessagesListChatModel",
        "    parser: StrOutputParser",
    ]
    llm = next(s for s in trace if s.kind == "llm")
    assert llm.model is not None and llm.model.name == "gpt-4o-mini"
    assert llm.usage is not None and (llm.usage.input_tokens, llm.usage.output_tokens) == (20, 6)
    assert all(s.input is None and s.output is None for s in trace)  # capture_content: false held
    assert captured.scores == []


def test_reset_undoes_an_integrations_own_instrument() -> None:
    """``li.instrument()`` called directly is not tracked by ``spanmux.instrument``; reset() left its
    handlers on LlamaIndex's dispatcher, and the next test's index build became an extra trace."""
    pytest.importorskip("llama_index.core")
    import llama_index.core.instrumentation as instrumentation

    from spanmux.integrations import llamaindex as li

    dispatcher = instrumentation.get_dispatcher()
    before = len(dispatcher.span_handlers)
    li.instrument()
    assert len(dispatcher.span_handlers) == before + 1
    reset(timeout=1.0)
    assert len(dispatcher.span_handlers) == before
