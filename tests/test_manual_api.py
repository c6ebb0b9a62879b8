"""Manual spans for code outside a framework: span, observe, trace_context, current ids, scores,
checked on what reached the backends (``spanmux.testing.capture``)."""

from __future__ import annotations

import asyncio
import threading

import pytest

import spanmux
from spanmux.testing import Captured, render_tree


def test_nested_spans_form_a_tree(captured: Captured) -> None:
    with spanmux.span("agent", kind="agent", input={"q": "weather?"}) as root:
        with spanmux.span("search", kind="retriever") as s:
            s.set_output(["doc1", "doc2"])
        with spanmux.span("answer", kind="llm", model="gpt-4o-mini") as llm:
            llm.set_usage(input_tokens=12, output_tokens=4)
            llm.set_output("sunny")
        root.set_output("sunny")
    (spans,) = captured.traces()
    assert render_tree(spans) == ["agent: agent", "  retriever: search", "  llm: answer"]
    assert spans[0].input == {"q": "weather?"} and spans[0].output == "sunny"
    assert spans[2].usage is not None and spans[2].usage.total_tokens == 16
    assert spans[2].model is not None and spans[2].model.name == "gpt-4o-mini"
    assert spans[2].cost is not None and spans[2].cost.total > 0  # priced from the table on the worker


def test_observe_sync_async_and_generators(captured: Captured) -> None:
    @spanmux.observe(kind="tool")
    def add(a: int, b: int = 2) -> int:
        return a + b

    @spanmux.observe
    async def twice(x: int) -> int:
        return add(x) * 2

    @spanmux.observe(name="count", kind="chain")
    def count(n: int):  # type: ignore[no-untyped-def]
        yield from range(n)

    with spanmux.span("root"):
        assert asyncio.run(twice(1)) == 6
        assert list(count(3)) == [0, 1, 2]
    (spans,) = captured.traces()
    assert render_tree(spans) == ["span: root", "  span: twice", "    tool: add", "  chain: count"]
    assert spans[2].input == {"a": 1} and spans[2].output == 3
    assert spans[3].output == [0, 1, 2]


def test_exceptions_pass_through_and_are_recorded(captured: Captured) -> None:
    @spanmux.observe(kind="tool")
    def broken() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError):
        broken()
    (span,) = captured.spans
    assert span.status == "error" and span.error is not None and span.error.type == "KeyError"


def test_async_context_manager_and_concurrent_tasks(captured: Captured) -> None:
    async def job(i: int) -> None:
        async with spanmux.span(f"job{i}") as s, spanmux.span(f"step{i}"):
            await asyncio.sleep(0)
            s.set_attribute("i", i)

    async def main() -> None:
        await asyncio.gather(*(job(i) for i in range(20)))

    asyncio.run(main())
    traces = captured.traces()
    assert len(traces) == 20
    for spans in traces:
        i = spans[0].attributes["i"]  # type: ignore[index]
        assert render_tree(spans) == [f"span: job{i}", f"  span: step{i}"]


def test_threads_get_separate_traces(captured: Captured) -> None:
    def work(i: int) -> None:
        with spanmux.span(f"t{i}"), spanmux.span("inner"):
            pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    traces = captured.traces()
    assert len(traces) == 8 and all(len(t) == 2 for t in traces)


def test_trace_context_sets_trace_fields_and_nests(captured: Captured) -> None:
    with spanmux.trace_context(user_id="u1", session_id="s1", tags=["prod"], metadata={"variant": "B"}):
        with spanmux.trace_context(tags=["beta"], metadata={"prompt.version": "3"}), spanmux.span("run"):
            trace_id = spanmux.current_trace_id()
            span_id = spanmux.current_span_id()
    assert spanmux.current_trace_id() is None
    ((root,),) = captured.traces()
    assert root.trace_id == trace_id and root.span_id == span_id and root.parent_id is None
    assert root.trace is not None and root.trace.user_id == "u1" and root.trace.session_id == "s1"
    assert list(root.trace.tags) == ["prod", "beta"]
    assert root.trace.metadata == {"variant": "B", "prompt.version": "3"}


def test_score_inside_a_trace_and_bad_scores_never_raise(captured: Captured) -> None:
    with spanmux.span("answer") as s:
        spanmux.score(None, "helpful", 1)  # None: the current trace
        s.score("grounded", False)
    assert spanmux.score(None, "orphan", 1.0) is None  # no trace: ignored, logged
    assert spanmux.score("abc", "bad", object()) is None  # type: ignore[arg-type]
    assert sorted(sc.name for sc in captured.scores if sc.trace_id == s.trace_id) == ["grounded", "helpful"]
    assert len(captured.scores) == 2


def test_ids_are_opentelemetry_compatible(captured: Captured) -> None:
    with spanmux.span("x") as s:
        pass
    assert len(s.trace_id) == 32 and int(s.trace_id, 16) > 0
    assert len(s.span_id) == 16 and int(s.span_id, 16) > 0


def test_credentials_in_model_parameters_never_reach_a_store(captured: Captured) -> None:
    with spanmux.span("call", kind="llm") as s:
        s.set_model("gpt-4o-mini", "openai", temperature=0.2, api_key="sk-LEAK", openai_api_key="sk-LEAK",
                    default_headers={"Authorization": "Bearer sk-LEAK"}, extra={"client_secret": "sk-LEAK"})
    (span,) = captured.spans
    assert span.model is not None and span.model.parameters == {"temperature": 0.2, "extra": {}}
    assert "sk-LEAK" not in str(captured.spans)  # what every backend receives


def test_observe_async_generator_spans_the_iteration_and_records_what_it_yielded(captured: Captured) -> None:
    @spanmux.observe(kind="chain")
    async def tokens(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0.01)
            with spanmux.span(f"step-{i}"):  # work inside the generator nests under its span
                pass
            yield f"t{i}"

    @spanmux.observe
    async def many():  # type: ignore[no-untyped-def]
        for i in range(spanmux.tracer.MAX_YIELDED_ITEMS + 5):
            yield i

    async def main() -> tuple[list[str], int, list[str]]:
        with spanmux.span("root"):
            got = [t async for t in tokens(3)]
            count = len([i async for i in many()])
            early = []
            async for t in tokens(5):
                early.append(t)
                if len(early) == 2:
                    break  # the consumer stops: the span ends, without an error
        return got, count, early

    got, count, early = asyncio.run(main())
    assert got == ["t0", "t1", "t2"] and count == spanmux.tracer.MAX_YIELDED_ITEMS + 5 and early == ["t0", "t1"]
    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "span: root",
        "  chain: tokens", "    span: step-0", "    span: step-1", "    span: step-2",
        "  span: many",
        "  chain: tokens", "    span: step-0", "    span: step-1",
    ]
    full, bounded, closed = (s for s in spans if s.name in ("tokens", "many"))
    assert full.input == {"n": 3} and full.output == ["t0", "t1", "t2"] and full.status == "ok"
    assert full.duration_ms >= 25, "the span covers the iteration, not the call that built the generator"
    assert bounded.output == list(range(spanmux.tracer.MAX_YIELDED_ITEMS))
    assert closed.output == ["t0", "t1"] and closed.status == "ok"


def test_observe_async_generator_error_is_recorded(captured: Captured) -> None:
    @spanmux.observe
    async def failing():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("stream broke")

    async def main() -> list[int]:
        out = []
        with pytest.raises(ValueError, match="stream broke"):
            async for item in failing():
                out.append(item)
        return out

    assert asyncio.run(main()) == [1]
    (span,) = captured.spans
    assert span.status == "error" and span.error is not None and span.error.type == "ValueError"
    assert span.output == [1]


def test_sync_generator_closed_early_is_not_an_error(captured: Captured) -> None:
    @spanmux.observe
    def numbers():  # type: ignore[no-untyped-def]
        yield from range(10)

    for i in numbers():
        if i == 2:
            break
    (span,) = captured.spans
    assert span.status == "ok" and span.output == [0, 1, 2]
