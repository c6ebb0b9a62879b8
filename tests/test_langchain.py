"""LangChain and LangGraph runs, offline with LangChain's fake chat models, checked on what reached
the backends (``spanmux.testing.capture``): the whole tree (kinds, names, parents), models, tokens
and costs."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("langgraph")

from conftest import trace_totals
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.callbacks.manager import dispatch_custom_event
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import (
    FakeMessagesListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.output_parsers import StrOutputParser
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_core.tools import tool

import spanmux
from spanmux.integrations import langchain as lc
from spanmux.integrations.langchain import CallbackHandler
from spanmux.model import Span
from spanmux.testing import Captured, render_tree

USAGE = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
MODEL = "gpt-4o-mini"


def answer(text: str = "Paris", **extra: Any) -> AIMessage:
    return AIMessage(text, usage_metadata=dict(USAGE), response_metadata={"model_name": MODEL}, **extra)


class FakeChat(FakeMessagesListChatModel):
    """Returns its scripted messages in turn; ignores tool binding like a real model would not."""

    temperature: float = 0.2

    def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:  # type: ignore[override]
        return self


class StreamingChat(GenericFakeChatModel):
    """Streams word by word, then a last chunk carrying usage and the model name."""

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        yield from super()._stream(*args, **kwargs)
        yield ChatGenerationChunk(message=AIMessageChunk(
            content="", usage_metadata=dict(USAGE), response_metadata={"model_name": MODEL}))


def make_chain(responses: int = 1) -> Any:
    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{q}")])
    return prompt | FakeChat(responses=[answer() for _ in range(responses)]) | StrOutputParser()


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def multiply(a: int, b: int) -> int:
    """Multiply two integers."""
    return a * b


@tool
def explode(reason: str) -> str:
    """A tool that always fails."""
    raise ValueError(f"boom: {reason}")


def tool_call(name: str, call_id: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": call_id, "type": "tool_call"}


def two_tool_agent() -> Any:
    model = FakeChat(responses=[
        answer("", tool_calls=[tool_call("add", "call_1", a=2, b=3), tool_call("multiply", "call_2", a=4, b=5)]),
        answer("2+3=5 and 4*5=20"),
    ])
    return create_agent(model, tools=[add, multiply])


def by_name(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def assert_chain_trace(spans: list[Span]) -> None:
    assert render_tree(spans) == [
        "chain: RunnableSequence",
        "  chain: ChatPromptTemplate",
        "  llm: FakeChat",
        "  parser: StrOutputParser",
    ]
    root = spans[0]
    assert root.parent_id is None
    assert all(s.parent_id == root.span_id for s in spans[1:])
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert all(s.framework == "langchain" and s.status == "ok" for s in spans)


# ---- a prompt | chat model | parser chain ----------------------------------------------------------

def test_chain_tree_model_tokens_and_cost(captured: Captured) -> None:
    chain = make_chain()
    assert chain.invoke({"q": "Capital of France?"}, config={"callbacks": [CallbackHandler()]}) == "Paris"

    (spans,) = captured.traces()
    assert_chain_trace(spans)
    root, llm = spans[0], by_name(spans)["FakeChat"]
    assert len(root.trace_id) == 32 and len(root.span_id) == 16
    int(root.trace_id, 16), int(root.span_id, 16)
    assert root.input == {"q": "Capital of France?"} and root.output == "Paris"
    assert root.attributes is not None and uuid.UUID(root.attributes["langchain.run_id"])

    assert llm.model is not None
    assert (llm.model.name, llm.model.provider) == (MODEL, "fake")
    assert llm.model.parameters is not None and llm.model.parameters["temperature"] == 0.2
    assert llm.usage is not None
    assert (llm.usage.input_tokens, llm.usage.output_tokens, llm.usage.total_tokens) == (12, 5, 17)
    assert llm.cost is not None and llm.cost.total > 0 and llm.cost.source == "price-table"
    assert "Capital of France?" in json.dumps(llm.input)
    assert by_name(spans)["ChatPromptTemplate"].output == [
        {"role": "system", "content": "Answer briefly."}, {"role": "human", "content": "Capital of France?"}]
    assert llm.output["content"] == "Paris"

    totals = trace_totals(spans)
    assert root.name == "RunnableSequence" and root.status == "ok"
    assert (totals.spans, totals.llm_calls, totals.total_tokens) == (4, 1, 17)
    assert totals.models == [MODEL]
    assert totals.cost_total == pytest.approx(llm.cost.total)


def test_model_parameters_in_one_order_whatever_the_order_given(captured: Captured) -> None:
    # the handler reads only the keys the call gives; the span lists them in _PARAMETER_KEYS order,
    # without None values or anything else (credentials stay out)
    class Tuned(FakeChat):
        @property
        def _identifying_params(self) -> dict[str, Any]:
            return {"seed": 7, "api_key": "sk-x", "top_p": 0.9, "max_tokens": None, "temperature": 0.5,
                    "presence_penalty": 0.1}

    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | Tuned(responses=[answer()])
    chain.invoke({"q": "hi"}, config={"callbacks": [CallbackHandler()]})
    (spans,) = captured.traces()
    llm = by_name(spans)["Tuned"]
    assert llm.model is not None and llm.model.parameters is not None
    assert list(llm.model.parameters.items()) == [("temperature", 0.5), ("top_p", 0.9), ("presence_penalty", 0.1),
                                                  ("seed", 7)]


def test_provider_reported_cost_wins(captured: Captured) -> None:
    message = AIMessage("ok", usage_metadata=dict(USAGE),
                        response_metadata={"model_name": MODEL, "token_usage": {"cost": 0.0125}})
    FakeChat(responses=[message]).invoke("hi", config={"callbacks": [CallbackHandler()]})
    (llm,) = captured.spans
    assert llm.kind == "llm" and llm.cost is not None
    assert (llm.cost.total, llm.cost.source) == (0.0125, "provider")


# ---- LangGraph: a tool-calling agent -----------------------------------------------------------

def test_langgraph_agent_with_two_tools(captured: Captured) -> None:
    result = two_tool_agent().invoke({"messages": [("user", "2+3 and 4*5?")]},
                                     config={"callbacks": [CallbackHandler()]})
    assert result["messages"][-1].content == "2+3=5 and 4*5=20"

    (spans,) = captured.traces()
    shape = render_tree(spans)
    assert shape[0] == "agent: LangGraph"
    assert sorted(shape[1:]) == sorted([
        "  chain: model", "    llm: FakeChat",
        "  chain: tools", "    tool: add",
        "  chain: tools", "    tool: multiply",
        "  chain: model", "    llm: FakeChat",
    ])
    ids = {s.span_id: s for s in spans}
    root = spans[0]
    for s in spans[1:]:
        parent = ids[s.parent_id]  # type: ignore[index]
        if s.kind == "chain":
            assert parent is root
            assert s.attributes is not None and s.attributes["langgraph.node"] == s.name
        elif s.kind == "tool":
            assert parent.name == "tools"
        else:
            assert parent.name == "model" and s.model is not None and s.model.name == MODEL
    tools = {s.name: s for s in spans if s.kind == "tool"}
    assert tools["add"].input == {"a": 2, "b": 3}
    assert tools["add"].output["content"] == "5"
    assert tools["multiply"].attributes is not None
    assert tools["multiply"].attributes["gen_ai.tool.call.id"] == "call_2"

    totals = trace_totals(spans)
    assert (root.name, root.status, totals.spans) == ("LangGraph", "ok", 9)
    assert (totals.llm_calls, totals.input_tokens, totals.output_tokens, totals.total_tokens) == (2, 24, 10, 34)
    assert totals.cost_total is not None and totals.cost_total > 0


def test_failing_tool_marks_tool_and_trace_as_errors(captured: Captured) -> None:
    agent = create_agent(FakeChat(responses=[answer("", tool_calls=[tool_call("explode", "call_9", reason="x")])]),
                         tools=[explode])
    with pytest.raises(ValueError, match="boom: x"):
        agent.invoke({"messages": [("user", "go")]}, config={"callbacks": [CallbackHandler()]})

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "agent: LangGraph", "  chain: model", "    llm: FakeChat",
        "  chain: tools", "    tool: explode",
    ]
    failed = by_name(spans)["explode"]
    assert failed.status == "error" and failed.error is not None
    assert (failed.error.type, failed.error.message) == ("ValueError", "boom: x")
    assert failed.error.traceback and "boom" in failed.error.traceback
    assert by_name(spans)["LangGraph"].status == "error"
    assert by_name(spans)["FakeChat"].status == "ok"
    assert (spans[0].status, trace_totals(spans).errors) == ("error", 3)


# ---- streaming ------------------------------------------------------------------------------------

def test_streaming_records_time_to_first_token(captured: Captured) -> None:
    model = StreamingChat(messages=iter([AIMessage("The answer is Paris")]))
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | model | StrOutputParser()
    pieces = list(chain.stream({"q": "Capital?"}, config={"callbacks": [CallbackHandler()]}))
    assert "".join(pieces) == "The answer is Paris" and len(pieces) > 3

    (spans,) = captured.traces()
    assert render_tree(spans) == ["chain: RunnableSequence", "  chain: ChatPromptTemplate",
                                  "  llm: StreamingChat", "  parser: StrOutputParser"]
    llm = by_name(spans)["StreamingChat"]
    assert llm.completion_start_ns is not None and llm.start_ns <= llm.completion_start_ns <= llm.end_ns
    assert llm.attributes is not None and llm.attributes["llm.streaming"] is True
    assert llm.attributes["llm.time_to_first_token_ms"] == pytest.approx(
        (llm.completion_start_ns - llm.start_ns) / 1e6)
    assert llm.usage is not None and llm.usage.total_tokens == 17
    assert llm.model is not None and llm.model.name == MODEL
    assert llm.output["content"] == "The answer is Paris"


# ---- concurrency: batch, asyncio, threads ------------------------------------------------------------

def assert_separate_chain_traces(captured: Captured, questions: list[str]) -> None:
    traces = captured.traces()
    assert len(traces) == len(questions)
    seen = []
    for spans in traces:
        assert_chain_trace(spans)
        assert trace_totals(spans).total_tokens == 17
        question = spans[0].input["q"]
        assert question in json.dumps(by_name(spans)["FakeChat"].input)  # no cross-talk between calls
        seen.append(question)
    assert sorted(seen) == sorted(questions)


def test_batch_of_20_gives_20_trees(captured: Captured) -> None:
    questions = [f"question {i}" for i in range(20)]
    outputs = make_chain(20).batch([{"q": q} for q in questions], config={"callbacks": [CallbackHandler()]})
    assert outputs == ["Paris"] * 20
    assert_separate_chain_traces(captured, questions)


async def test_ainvoke_20_concurrent_calls(captured: Captured) -> None:
    chain, handler = make_chain(20), CallbackHandler()
    questions = [f"async question {i}" for i in range(20)]
    outputs = await asyncio.gather(*(chain.ainvoke({"q": q}, config={"callbacks": [handler]}) for q in questions))
    assert outputs == ["Paris"] * 20
    assert_separate_chain_traces(captured, questions)
    assert handler._runs == {}


def test_chain_from_8_threads_at_once(captured: Captured) -> None:
    chain, handler = make_chain(40), CallbackHandler()
    start = threading.Barrier(8)

    def worker(index: int) -> list[str]:
        start.wait()
        return [chain.invoke({"q": f"thread {index} call {n}"}, config={"callbacks": [handler]}) for n in range(5)]

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [["Paris"] * 5] * 8
    assert_separate_chain_traces(captured, [f"thread {i} call {n}" for i in range(8) for n in range(5)])


# ---- nesting with manual spans ----------------------------------------------------------------------

def test_chain_inside_manual_span_nests(captured: Captured) -> None:
    with spanmux.trace_context(user_id="u1", session_id="s1"), spanmux.span("request", kind="agent") as outer:
        make_chain().invoke({"q": "hi"}, config={"callbacks": [CallbackHandler()]})
    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "agent: request", "  chain: RunnableSequence", "    chain: ChatPromptTemplate",
        "    llm: FakeChat", "    parser: StrOutputParser",
    ]
    assert {s.trace_id for s in spans} == {outer.trace_id}
    assert spans[1].parent_id == outer.span_id
    assert all(s.trace is not None and s.trace.user_id == "u1" for s in spans)
    trace = spans[0].trace
    assert trace is not None and (trace.user_id, trace.session_id, trace_totals(spans).total_tokens) == ("u1", "s1", 17)


def test_observed_function_inside_tool_nests_under_tool(captured: Captured) -> None:
    seen: dict[str, Any] = {}

    @spanmux.observe(name="lookup", kind="retriever")
    def lookup(city: str) -> str:
        return f"{city} is sunny"

    @tool
    def weather(city: str) -> str:
        """Weather of a city."""
        seen["trace_id"] = spanmux.current_trace_id()
        with spanmux.span("format") as s:
            s.set_output("done")
        return lookup(city)

    agent = create_agent(FakeChat(responses=[answer("", tool_calls=[tool_call("weather", "c1", city="Oslo")]),
                                             answer("Sunny.")]), tools=[weather])
    with spanmux.trace_context(tags=["prod"]):
        agent.invoke({"messages": [("user", "weather in Oslo?")]}, config={"callbacks": [CallbackHandler()]})

    (spans,) = captured.traces()
    assert seen["trace_id"] == spans[0].trace_id
    shape = render_tree(spans)
    index = shape.index("    tool: weather")
    assert shape[index + 1:index + 3] == ["      span: format", "      retriever: lookup"]
    tool_span, lookup_span = by_name(spans)["weather"], by_name(spans)["lookup"]
    assert lookup_span.parent_id == tool_span.span_id and lookup_span.framework == "manual"
    assert lookup_span.output == "Oslo is sunny"
    assert all(s.trace is not None and s.trace.tags == ("prod",) for s in spans)


# ---- retrievers and custom events -----------------------------------------------------------------

class CityRetriever(BaseRetriever):
    def _get_relevant_documents(self, query: str, *, run_manager: Any) -> list[Document]:
        return [Document(page_content=f"{query} fact {i}", metadata={"rank": i}, id=f"doc-{i}") for i in range(2)]


def test_retriever_documents_and_custom_events(captured: Captured) -> None:
    def note(docs: list[Document]) -> int:
        dispatch_custom_event("docs_seen", {"count": len(docs)})
        return len(docs)

    chain = CityRetriever() | RunnableLambda(note)
    assert chain.invoke("Oslo", config={"callbacks": [CallbackHandler()]}) == 2
    (spans,) = captured.traces()
    assert render_tree(spans) == ["chain: RunnableSequence", "  retriever: CityRetriever", "  chain: note"]
    retriever, lambda_span = by_name(spans)["CityRetriever"], by_name(spans)["note"]
    assert retriever.input == "Oslo"
    assert retriever.attributes is not None and retriever.attributes["retrieval.documents"] == [
        {"id": "doc-0", "content": "Oslo fact 0", "metadata": {"rank": 0}},
        {"id": "doc-1", "content": "Oslo fact 1", "metadata": {"rank": 1}},
    ]
    assert lambda_span.attributes is not None
    (event,) = lambda_span.attributes["event"]
    assert event["name"] == "docs_seen" and event["data"] == {"count": 2} and event["time_ns"] > 0


# ---- process-wide instrumentation ---------------------------------------------------------------------

def test_instrument_is_idempotent_and_undone(captured: Captured) -> None:
    from langchain_core.tracers.context import _configure_hooks

    chain = make_chain(3)
    assert spanmux.instrument("langchain") == ["langchain"]
    spanmux.instrument("langchain")
    assert sum(1 for hook in _configure_hooks if hook[0] is lc._switch) == 1
    chain.invoke({"q": "no callbacks passed"})
    chain.invoke({"q": "explicit handler too"}, config={"callbacks": [CallbackHandler()]})  # not traced twice
    spanmux.uninstrument()
    chain.invoke({"q": "after uninstrument"})

    traces = captured.traces()
    assert len(traces) == 2
    for spans in traces:
        assert_chain_trace(spans)
    spanmux.instrument("langchain")
    assert sum(1 for hook in _configure_hooks if hook[0] is lc._switch) == 1


async def test_instrumented_agent_via_ainvoke(captured: Captured) -> None:
    import copy

    spanmux.instrument("langchain")
    agent = two_tool_agent()
    copy.deepcopy(agent)  # a copied runnable config keeps the same handler
    await agent.ainvoke({"messages": [("user", "2+3 and 4*5?")]})
    (spans,) = captured.traces()
    assert render_tree(spans)[0] == "agent: LangGraph" and len(spans) == 9
    assert sorted(s.name for s in spans if s.kind == "tool") == ["add", "multiply"]
    assert trace_totals(spans).total_tokens == 34


def test_disabled_config_records_nothing(tmp_path: Path) -> None:
    store = tmp_path / "off" / "spanmux.db"
    spanmux.configure({"enabled": False, "local": {"path": str(store)}})
    handler = CallbackHandler()
    assert make_chain().invoke({"q": "hi"}, config={"callbacks": [handler]}) == "Paris"
    spanmux.instrument("langchain")
    make_chain().invoke({"q": "hi"})
    assert handler._runs == {} and lc._switch.handler is not None and lc._switch.handler._runs == {}
    assert spanmux.flush() and not store.exists()
    assert spanmux.stats()["enabled"] is False


# ---- hostile input and orphans ---------------------------------------------------------------------------

class NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")

    __str__ = __repr__


def test_hostile_values_never_raise_and_are_recorded(captured: Captured) -> None:
    cyclic: dict[str, Any] = {"name": "loop"}
    cyclic["self"] = cyclic
    big = "x" * (10 * 1024 * 1024)
    values = {"none": None, "cyclic": cyclic, "bytes": b"\x00\xff" * 10, "big": big, "norepr": NoRepr()}
    handler = CallbackHandler()
    for label, value in values.items():
        step = RunnableLambda(lambda _x, v=value: v).with_config(run_name=label)
        assert step.invoke(value, config={"callbacks": [handler]}) is value

    spans = {s.name: s for s in captured.spans}
    assert set(spans) == set(values)
    assert spans["none"].input is None and spans["none"].status == "ok"
    assert spans["cyclic"].input["self"] == "<cycle>"
    assert spans["bytes"].output == "<20 bytes>"
    assert spans["big"].truncated and len(json.dumps(spans["big"].input)) < 200_000
    assert isinstance(spans["norepr"].input, str)
    assert handler._runs == {}


def test_hooks_survive_garbage_handed_directly() -> None:
    handler, run_id = CallbackHandler(), uuid.uuid4()
    garbage: list[Any] = [None, NoRepr(), b"\xff", {"a": NoRepr()}, [[]], object(), "x" * 1_000_000]
    for junk in garbage:
        handler.on_chain_start(junk, junk, run_id=run_id, parent_run_id=junk, tags=junk, metadata=junk, name=junk)
        handler.on_chat_model_start(junk, junk, run_id=uuid.uuid4(), tags=junk, metadata=junk, invocation_params=junk)
        handler.on_llm_start(junk, junk, run_id=uuid.uuid4(), metadata=junk)
        handler.on_llm_new_token(junk, run_id=junk)
        handler.on_stream_event(junk, run_id=junk)
        handler.on_llm_end(junk, run_id=junk)
        handler.on_llm_error(junk, run_id=junk)  # type: ignore[arg-type]
        handler.on_tool_start(junk, junk, run_id=uuid.uuid4(), inputs=junk, tool_call_id=junk)
        handler.on_tool_end(junk, run_id=junk)
        handler.on_tool_error(NoRepr(), run_id=junk)  # type: ignore[arg-type]
        handler.on_retriever_start(junk, junk, run_id=uuid.uuid4())
        handler.on_retriever_end(junk, run_id=junk)
        handler.on_retriever_error(junk, run_id=junk)  # type: ignore[arg-type]
        handler.on_agent_action(junk, run_id=run_id)
        handler.on_agent_finish(junk, run_id=run_id)
        handler.on_custom_event(junk, junk, run_id=run_id)
        handler.on_retry(junk, run_id=run_id)
        handler.on_text(junk, run_id=run_id)
        handler.on_chain_error(NoRepr(), run_id=run_id)  # type: ignore[arg-type]
        handler.on_chain_end(junk, run_id=run_id)
    for run in list(handler._runs):  # the LLM runs started with garbage still end cleanly
        handler.on_llm_end(NoRepr(), run_id=run)
        handler.on_tool_end(NoRepr(), run_id=run)
        handler.on_retriever_end([NoRepr()], run_id=run)
    assert handler._runs == {}


def test_orphaned_runs_are_bounded(captured: Captured, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lc, "MAX_OPEN_RUNS", 10)
    handler = CallbackHandler()
    first = [uuid.uuid4() for _ in range(15)]
    for run_id in first:
        handler.on_chain_start(None, {}, run_id=run_id, name="never ends")
    assert len(handler._runs) == 10 and handler.evicted_runs == 5
    assert set(handler._runs) == set(first[5:])


def test_do_nothing_handler_still_works_beside_ours(captured: Captured) -> None:
    """Other handlers on the same run see every event; ours does not swallow or reorder them."""
    events: list[str] = []

    class Recorder(BaseCallbackHandler):
        def on_chain_start(self, *args: Any, **kwargs: Any) -> None:
            events.append("start")

        def on_chain_end(self, *args: Any, **kwargs: Any) -> None:
            events.append("end")

    make_chain().invoke({"q": "hi"}, config={"callbacks": [Recorder(), CallbackHandler()]})
    assert events.count("start") == 3 and events.count("end") == 3
    (spans,) = captured.traces()
    assert_chain_trace(spans)


def test_legacy_text_llm_and_graph_interrupt(captured: Captured) -> None:
    """A completion-style LLM goes through on_llm_start; a LangGraph interrupt is not a failure."""
    from typing import TypedDict

    from langchain_core.language_models.fake import FakeListLLM
    from langgraph.checkpoint.memory import InMemorySaver
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, interrupt

    llm = FakeListLLM(responses=["forty-two"])

    class State(TypedDict):
        answer: str

    def ask_human(state: State) -> dict[str, str]:
        return {"answer": llm.invoke(str(interrupt("what should I ask?")))}

    graph = StateGraph(State)
    graph.add_node("ask_human", ask_human)
    graph.add_edge(START, "ask_human")
    graph.add_edge("ask_human", END)
    app = graph.compile(checkpointer=InMemorySaver())
    config: Any = {"callbacks": [CallbackHandler()], "configurable": {"thread_id": "t1"}}
    assert "__interrupt__" in app.invoke({"answer": ""}, config=config)
    assert app.invoke(Command(resume="the meaning of life"), config=config) == {"answer": "forty-two"}

    paused, resumed = captured.traces()  # earliest first
    assert render_tree(paused) == ["agent: LangGraph", "  chain: ask_human"]
    assert paused[0].status == "ok" and all(s.status == "ok" for s in paused)
    assert paused[1].attributes is not None and paused[1].attributes["langgraph.interrupt"] == "GraphInterrupt"
    assert render_tree(resumed) == ["agent: LangGraph", "  chain: ask_human", "    llm: FakeListLLM"]
    assert resumed[2].input == "the meaning of life" and resumed[2].output == "forty-two"


# ---- requested vs response model ------------------------------------------------------------------

class ConfiguredChat(FakeChat):
    """Configured as ``gpt-4o-mini`` (LangChain reports it as ``ls_model_name``), answers as the
    dated snapshot, like OpenAI does."""

    model: str = "gpt-4o-mini"


def test_requested_and_response_model_reach_store_langfuse_and_mlflow(
        tmp_path: Path, langfuse_server: Any, mlflow_server: str) -> None:
    from mlflow.tracing.client import TracingClient

    from spanmux.backends.local import LocalStore

    experiment = f"models-{uuid.uuid4().hex[:8]}"
    spanmux.configure({
        "backends": ["local", "langfuse", "mlflow"],
        "local": {"path": str(tmp_path / "store.db")},
        "langfuse": {"public_key": langfuse_server.public_key, "secret_key": langfuse_server.secret_key,
                     "host": langfuse_server.url},
        "mlflow": {"tracking_uri": mlflow_server, "experiment_name": experiment},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    })
    reply = AIMessage("Paris", usage_metadata=dict(USAGE), response_metadata={"model_name": "gpt-4o-mini-2024-07-18"})
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | ConfiguredChat(responses=[reply])
    chain.invoke({"q": "Capital of France?"}, config={"callbacks": [CallbackHandler()]})
    assert spanmux.flush(timeout=60)

    with LocalStore(tmp_path / "store.db") as db:
        (summary,) = db.list_traces()
        llm = next(s for s in db.get_trace(summary.trace_id) if s.kind == "llm")
    assert llm.attributes is not None
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert llm.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert llm.model is not None and llm.model.name == "gpt-4o-mini-2024-07-18"  # the model that answered
    assert llm.cost is not None and llm.cost.total > 0
    assert summary.models == ["gpt-4o-mini-2024-07-18"]

    generation = langfuse_server.by_name("ConfiguredChat")
    assert generation.model == "gpt-4o-mini-2024-07-18"
    assert generation.metadata()["gen_ai.request.model"] == "gpt-4o-mini"

    spanmux.shutdown()
    trace = TracingClient(mlflow_server).get_trace(f"tr-{summary.trace_id}")
    (chat,) = [s for s in trace.data.spans if s.name == "ConfiguredChat"]
    assert chat.attributes["gen_ai.request.model"] == "gpt-4o-mini"
    assert chat.attributes["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert chat.attributes["mlflow.llm.model"] == "gpt-4o-mini-2024-07-18"


def test_start_attributes_drop_langchains_keys_and_keep_the_users_in_order() -> None:
    from spanmux import attributes as attr

    # a LangGraph node's metadata is all LangGraph's and LangChain's own: only the node stays
    graph_only = {"ls_integration": "langchain_create_agent", "langgraph_step": 1, "langgraph_node": "model",
                  "langgraph_path": ("__pregel_pull", "model"), "checkpoint_ns": "model:1", "lc_versions": {}}
    assert lc._start_attributes(["graph:step:1"], graph_only) == {attr.LANGGRAPH_NODE: "model"}
    mixed = {"z": 1, "ls_provider": "fake", None: 3, "langgraph_step": 2, "a": 4}
    out = lc._start_attributes(["mine", "seq:step:2"], mixed)
    assert out is not None and out[attr.TAGS] == ["mine"]
    assert list(out[attr.METADATA].items()) == [("z", 1), (None, 3), ("a", 4)]
