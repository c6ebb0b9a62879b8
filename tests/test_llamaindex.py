"""LlamaIndex programs, offline with LlamaIndex's own mock models, traced through the root
instrumentation dispatcher and checked on what reached the backends (``spanmux.testing.capture``;
the tests that cross-check the store, Langfuse and MLflow read those): the whole tree (kinds,
names, parents), models, token totals, streaming timing, errors and nesting with manual spans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from conftest import TracedStore, trace_totals
from langfuse_server import LangfuseContractServer
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.agent.workflow import FunctionAgent
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
)
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.llms import CustomLLM, MockFunctionCallingLLM, MockLLM
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.prompts import PromptTemplate
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.core.tools import FunctionTool
from llama_index.core.workflow import StartEvent, StopEvent, Workflow, step

import spanmux
from spanmux import attributes as attr
from spanmux.integrations import llamaindex as li
from spanmux.model import Span, new_span_id
from spanmux.testing import Captured, render_tree

MODEL = "gpt-4o-mini"
rerank_dispatcher = get_dispatcher(__name__)
TEXTS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Cats sleep for most of the day.",
]

QUERY_TREE = [
    "chain: RetrieverQueryEngine.query",
    "  chain: RetrieverQueryEngine._query",
    "    retriever: VectorIndexRetriever.retrieve",
    "      retriever: VectorIndexRetriever._retrieve",
    "        embedding: MockEmbedding.get_query_embedding",
    "          embedding: MockEmbedding._get_query_embedding",
    "    chain: CompactAndRefine.synthesize",
    "      chain: CompactAndRefine.get_response",
    "        chain: TokenTextSplitter.split_text",
    "        chain: CompactAndRefine.get_response",
    "          chain: TokenTextSplitter.split_text",
]


class NamedMockLLM(MockLLM):
    """MockLLM reporting a real model name, so spans carry a model and the price table applies."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(num_output=self.max_tokens or -1, model_name=MODEL)


class UsageLLM(CustomLLM):
    """A provider-like LLM whose responses carry usage in a chosen provider's shape.

    ``chat`` and ``complete`` are its real calls; ``achat``/``acomplete`` are CustomLLM's default
    wrappers that delegate to them (nested LLM spans whose usage must be counted once)."""

    usage_shape: str = "anthropic"
    model: str = "claude-3-5-haiku-latest"
    response_model: str | None = None  # what the provider says answered (raw["model"])
    fail: bool = False

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, num_output=64, is_chat_model=True)

    def _usage(self) -> tuple[Any, dict[str, Any]]:
        if self.usage_shape == "anthropic":
            raw: dict[str, Any] = {"id": "msg_1", "usage": {"input_tokens": 11, "output_tokens": 7}}
            if self.response_model:
                raw["model"] = self.response_model
            return raw, {}
        if self.usage_shape == "gemini":
            return {"usage_metadata": {"prompt_token_count": 11, "candidates_token_count": 7,
                                       "total_token_count": 18}}, {}
        return None, {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        if self.fail:
            raise RuntimeError("provider unavailable")
        raw, extra = self._usage()
        return ChatResponse(message=ChatMessage(role="assistant", content="Paris."), raw=raw,
                            additional_kwargs=extra)

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        if self.fail:
            raise RuntimeError("provider unavailable")
        raw, extra = self._usage()
        return CompletionResponse(text="Paris.", raw=raw, additional_kwargs=extra)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        def tokens() -> CompletionResponseGen:
            yield CompletionResponse(text="Par", delta="Par")
            raw, extra = self._usage()
            yield CompletionResponse(text="Paris.", delta="is.", raw=raw, additional_kwargs=extra)

        return tokens()


@pytest.fixture
def instrumented() -> Iterator[li.LlamaIndexTracer]:
    tracer = li.instrument()
    yield tracer
    li.uninstrument()


@pytest.fixture
def index() -> VectorStoreIndex:
    """Built before instrumenting, so each test captures only the traces it makes."""
    docs = [Document(text=text, id_=f"doc-{i}") for i, text in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))


def by_name(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def one(spans: list[Span], name: str) -> Span:
    found = by_name(spans, name)
    assert len(found) == 1, f"{name}: {len(found)} spans"
    return found[0]


def trace_tokens(spans: list[Span]) -> int:
    return sum(s.usage.total_tokens for s in spans if s.usage is not None)


def at_depth(shape: list[str], depth: int) -> list[str]:
    """The ``render_tree`` lines of one depth, without their indent."""
    indent = "  " * depth
    return [line[len(indent):] for line in shape if line.startswith(indent) and line[len(indent)] != " "]


def assert_well_formed(spans: list[Span]) -> None:
    ids = {s.span_id for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert len(roots) == 1, [s.name for s in roots]
    assert all(s.parent_id in ids for s in spans if s.parent_id), "a parent is missing from the trace"
    assert len({s.trace_id for s in spans}) == 1
    assert all(s.framework in ("llamaindex", "manual") for s in spans)
    assert all(s.end_ns >= s.start_ns for s in spans)


def assert_usage_once(spans: list[Span]) -> None:
    """Only LLM spans without an LLM child carry usage: wrappers (predict, achat) carry none."""
    llm_parents = {s.parent_id for s in spans if s.kind == "llm"}
    for s in spans:
        if s.kind == "llm" and s.span_id in llm_parents:
            assert s.usage is None, f"wrapper {s.name} counts usage"


def test_sync_query_tree(captured: Captured, index: VectorStoreIndex, instrumented: Any) -> None:
    engine = index.as_query_engine(llm=NamedMockLLM(max_tokens=6), similarity_top_k=2)
    response = engine.query("What is the capital of France?")
    assert str(response) == "text text text text text text"

    (spans,) = captured.traces()
    assert render_tree(spans) == QUERY_TREE + [
        "          chain: DefaultRefineProgram.__call__",
        "            llm: NamedMockLLM.predict",
        "              llm: NamedMockLLM.complete",
    ]
    assert_well_formed(spans)
    root = spans[0]
    assert root.input == {"str_or_query_bundle": "What is the capital of France?"}
    assert root.output == "text text text text text text"

    retrieve = one(spans, "VectorIndexRetriever.retrieve")
    docs = retrieve.attributes[attr.RETRIEVAL_DOCUMENTS]
    assert len(docs) == 2
    assert {"id", "score", "content", "metadata"} <= set(docs[0])
    assert all(d["content"] in TEXTS and isinstance(d["score"], float) for d in docs)

    embedding = one(spans, "MockEmbedding.get_query_embedding")
    assert embedding.output == {"embedding_dimensions": 8}

    complete = one(spans, "NamedMockLLM.complete")
    predict = one(spans, "NamedMockLLM.predict")
    assert complete.model.name == MODEL and predict.model.name == MODEL
    assert complete.model.parameters == {"num_output": 6}
    assert complete.output == "text text text text text text"
    assert complete.attributes[attr.GEN_AI_OPERATION_NAME] == "text_completion"
    # MockLLM reports no usage: the worker estimates it, on the call that ran, priced as gpt-4o-mini.
    assert complete.usage is not None and complete.usage.estimated and complete.usage.output_tokens > 0
    assert complete.cost is not None and complete.cost.total > 0
    assert predict.usage is None
    assert_usage_once(spans)
    totals = trace_totals(spans)
    assert totals.total_tokens == complete.usage.total_tokens == trace_tokens(spans)
    assert totals.models == [MODEL]


async def test_async_query_counts_delegating_wrappers_once(captured: Captured, index: VectorStoreIndex,
                                                          instrumented: Any) -> None:
    engine = index.as_query_engine(llm=UsageLLM(usage_shape="anthropic"), similarity_top_k=2)
    response = await engine.aquery("What is the capital of France?")
    assert str(response) == "Paris."

    (spans,) = captured.traces()
    assert render_tree(spans) == [
        "chain: RetrieverQueryEngine.aquery",
        "  chain: RetrieverQueryEngine._aquery",
        "    retriever: VectorIndexRetriever.aretrieve",
        "      retriever: VectorIndexRetriever._aretrieve",
        "        embedding: MockEmbedding.aget_query_embedding",
        "          embedding: MockEmbedding._aget_query_embedding",
        "    chain: CompactAndRefine.asynthesize",
        "      chain: CompactAndRefine.aget_response",
        "        chain: TokenTextSplitter.split_text",
        "        chain: CompactAndRefine.aget_response",
        "          chain: TokenTextSplitter.split_text",
        "          llm: UsageLLM.apredict",
        "            llm: UsageLLM.achat",
        "              llm: UsageLLM.chat",
    ]
    assert_well_formed(spans)
    complete = one(spans, "UsageLLM.chat")
    assert (complete.usage.input_tokens, complete.usage.output_tokens, complete.usage.total_tokens) == (11, 7, 18)
    assert not complete.usage.estimated
    assert complete.model.name == "claude-3-5-haiku-latest"
    assert complete.model.provider is None
    for wrapper in ("UsageLLM.apredict", "UsageLLM.achat"):
        assert one(spans, wrapper).usage is None
        assert one(spans, wrapper).model.name == "claude-3-5-haiku-latest"
    totals = trace_totals(spans)
    assert totals.total_tokens == 18, "achat over chat doubled the tokens"
    assert complete.cost is not None and totals.cost_total == pytest.approx(complete.cost.total)


@pytest.mark.parametrize("shape", ["anthropic", "gemini", "additional_kwargs"])
async def test_usage_under_provider_key_names(captured: Captured, instrumented: Any, shape: str) -> None:
    llm = UsageLLM(usage_shape=shape)
    response = await llm.achat([ChatMessage(role="user", content="Capital of France?")])
    assert response.message.content == "Paris."

    (spans,) = captured.traces()
    assert render_tree(spans) == ["llm: UsageLLM.achat", "  llm: UsageLLM.chat"]
    achat, chat = spans
    assert chat.usage is not None
    assert (chat.usage.input_tokens, chat.usage.output_tokens, chat.usage.total_tokens) == (11, 7, 18)
    assert achat.usage is None
    assert chat.input["messages"] == [{"role": "user", "content": "Capital of France?"}]
    assert chat.output["content"] == "Paris."
    assert chat.attributes[attr.GEN_AI_OPERATION_NAME] == "chat"
    assert trace_totals(spans).total_tokens == 18


def test_streaming_query_stays_open_until_the_stream_ends(captured: Captured, index: VectorStoreIndex,
                                                          instrumented: Any) -> None:
    engine = index.as_query_engine(llm=UsageLLM(), similarity_top_k=2, streaming=True)
    response = engine.query("What is the capital of France?")
    chunks = []
    for token in response.response_gen:
        chunks.append(token)
    assert "".join(chunks) == "Paris."

    (spans,) = captured.traces()  # the LLM call starts lazily, yet lands in the query's trace
    assert render_tree(spans) == QUERY_TREE + [
        "          llm: UsageLLM.stream",
        "            llm: UsageLLM.stream_chat",
        "              llm: UsageLLM.stream_complete",
    ]
    assert_well_formed(spans)
    stream, chat = one(spans, "UsageLLM.stream"), one(spans, "UsageLLM.stream_chat")
    inner = one(spans, "UsageLLM.stream_complete")
    for s in (stream, chat, inner):
        assert s.completion_start_ns is not None and s.start_ns <= s.completion_start_ns <= s.end_ns
        assert s.attributes[attr.STREAMING] is True
        assert s.attributes[attr.TIME_TO_FIRST_TOKEN_MS] >= 0
    # LlamaIndex exits the span when the generator is returned; we close it at the end event.
    assert inner.end_ns >= inner.completion_start_ns
    assert inner.output == "Paris."
    assert inner.usage.total_tokens == 18 and stream.usage is None and chat.usage is None
    assert stream.end_ns >= chat.end_ns >= inner.end_ns
    assert trace_totals(spans).total_tokens == 18


async def test_async_streaming_chat(captured: Captured, instrumented: Any) -> None:
    llm = UsageLLM()
    with spanmux.span("stream-session"):
        stream = await llm.astream_chat([ChatMessage(role="user", content="Capital?")])
        text = ""
        async for chunk in stream:
            text = chunk.message.content
    assert text == "Paris."

    (spans,) = captured.traces()
    # astream_chat over stream_chat over stream_complete: the inner calls start lazily, inside the
    # generator astream_chat returned, and nest under it.
    assert render_tree(spans) == [
        "span: stream-session",
        "  llm: UsageLLM.astream_chat",
        "    llm: UsageLLM.stream_chat",
        "      llm: UsageLLM.stream_complete",
    ]
    assert_well_formed(spans)
    assert_usage_once(spans)
    assert trace_totals(spans).total_tokens == 18
    assert all(s.completion_start_ns is not None for s in spans if s.kind == "llm")


def get_weather(city: str = "Paris") -> str:
    """Current weather for a city."""
    with spanmux.span("weather-api", kind="tool", input={"city": city}) as inner:
        inner.set_output("sunny")
        assert spanmux.current_trace_id() == inner.trace_id
        NamedMockLLM(max_tokens=1).complete(f"Summarize the weather in {city}")  # nests under weather-api
    return f"sunny in {city}"


class NamedFunctionCallingLLM(MockFunctionCallingLLM):
    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(is_function_calling_model=True, model_name=MODEL)


async def test_function_agent_with_tool(captured: Captured, instrumented: Any) -> None:
    agent = FunctionAgent(tools=[FunctionTool.from_defaults(get_weather)], llm=NamedFunctionCallingLLM(),
                          system_prompt="You answer weather questions.")
    with spanmux.trace_context(user_id="u1", session_id="s1"):
        result = await agent.run("What is the weather in Paris?")
    assert str(result) == "Tool calls complete."

    (spans,) = captured.traces()
    assert_well_formed(spans)
    shape = render_tree(spans)
    assert shape[0] == "agent: FunctionAgent.run"
    steps = [line.split(": ", 1)[1] for line in at_depth(shape, 1)]
    assert steps[:3] == ["BaseWorkflowAgent.init_run", "BaseWorkflowAgent.setup_agent",
                         "BaseWorkflowAgent.run_agent_step"]
    assert steps.count("BaseWorkflowAgent.run_agent_step") == 2
    assert "BaseWorkflowAgent.call_tool" in steps
    assert all(line.startswith("chain: ") for line in at_depth(shape, 1))

    ids = {s.span_id: s for s in spans}
    llm_calls = by_name(spans, "NamedFunctionCallingLLM.astream_chat")
    assert len(llm_calls) == 2
    for call in llm_calls:
        assert call.kind == "llm" and ids[call.parent_id].name == "BaseWorkflowAgent.run_agent_step"
        assert call.model.name == MODEL and call.completion_start_ns is not None
        assert call.usage is not None and call.usage.total_tokens > 0
    tool = one(spans, "get_weather")
    assert tool.kind == "tool" and ids[tool.parent_id].name == "BaseWorkflowAgent.call_tool"
    assert tool.attributes[attr.GEN_AI_TOOL_NAME] == "get_weather"
    assert "sunny in Paris" in str(tool.output)
    manual = one(spans, "weather-api")  # a manual span inside a LlamaIndex tool nests under it
    assert manual.parent_id == tool.span_id and manual.framework == "manual"
    summary_call = one(spans, "NamedMockLLM.complete")  # and LlamaIndex calls inside it nest under it
    assert summary_call.parent_id == manual.span_id and summary_call.kind == "llm"
    assert all(s.trace is not None and s.trace.user_id == "u1" and s.trace.session_id == "s1" for s in spans)
    assert spans[0].trace is not None and spans[0].trace.user_id == "u1"
    assert trace_totals(spans).total_tokens == trace_tokens(spans) == sum(
        c.usage.total_tokens for c in [*llm_calls, summary_call])


def test_manual_span_around_indexing_and_query(captured: Captured, instrumented: Any) -> None:
    docs = [Document(text=text, id_=f"doc-{i}") for i, text in enumerate(TEXTS)]
    with spanmux.span("rag-pipeline", kind="chain") as outer:
        with spanmux.span("build-index"):
            index = VectorStoreIndex.from_documents(docs, embed_model=MockEmbedding(embed_dim=8))
        answer = index.as_query_engine(llm=NamedMockLLM(max_tokens=3)).query("Capital of Germany?")
        outer.set_output(str(answer))

    (spans,) = captured.traces()
    assert_well_formed(spans)
    shape = render_tree(spans)
    assert shape[0] == "chain: rag-pipeline"
    assert at_depth(shape, 1) == ["span: build-index", "chain: RetrieverQueryEngine.query"]
    under_build = [line for line in at_depth(shape, 2)
                   if line.split(": ", 1)[1].startswith(("SentenceSplitter", "MockEmbedding"))]
    assert under_build == ["chain: SentenceSplitter.__call__", "embedding: MockEmbedding.get_text_embedding_batch"]
    batch = one(spans, "MockEmbedding.get_text_embedding_batch")
    assert batch.output == {"embeddings": 3, "embedding_dimensions": 8}
    assert len(by_name(spans, "MockEmbedding._get_text_embedding")) == 3


def test_exception_inside_a_query_is_recorded(captured: Captured, index: VectorStoreIndex,
                                              instrumented: Any) -> None:
    engine = index.as_query_engine(llm=UsageLLM(fail=True))
    with pytest.raises(RuntimeError, match="provider unavailable"):
        engine.query("What is the capital of France?")

    (spans,) = captured.traces()
    assert_well_formed(spans)
    failed = [s for s in spans if s.status == "error"]
    assert [s.name for s in failed] == [
        "RetrieverQueryEngine.query", "RetrieverQueryEngine._query", "CompactAndRefine.synthesize",
        "CompactAndRefine.get_response", "CompactAndRefine.get_response", "DefaultRefineProgram.__call__",
        "UsageLLM.predict", "UsageLLM.chat",
    ]
    for s in failed:
        assert s.error.type == "RuntimeError" and s.error.message == "provider unavailable"
        assert "Traceback" in (s.error.traceback or "")
    assert one(spans, "VectorIndexRetriever.retrieve").status == "ok"
    assert spans[0].status == "error"


def test_uninstrument_stops_tracing_and_instrument_is_idempotent(captured: Captured,
                                                                 index: VectorStoreIndex) -> None:
    dispatcher = get_dispatcher()
    handlers_before = (len(dispatcher.span_handlers), len(dispatcher.event_handlers))
    assert spanmux.instrument("llamaindex") == ["llamaindex"]
    li.instrument()
    assert li.is_instrumented()
    assert (len(dispatcher.span_handlers), len(dispatcher.event_handlers)) == (
        handlers_before[0] + 1, handlers_before[1] + 1)

    engine = index.as_query_engine(llm=NamedMockLLM(max_tokens=2))
    engine.query("first")
    (first,) = captured.traces()
    assert len(first) == len(QUERY_TREE) + 3, "a second instrument() must not duplicate spans"

    spanmux.uninstrument("llamaindex")
    assert not li.is_instrumented()
    assert (len(dispatcher.span_handlers), len(dispatcher.event_handlers)) == handlers_before
    engine.query("second")
    assert len(captured.traces()) == 1
    with spanmux.span("manual-only"):
        assert spanmux.current_trace_id() is not None
    assert sorted(t[0].name for t in captured.traces()) == ["RetrieverQueryEngine.query", "manual-only"]


def test_handler_never_raises_into_llamaindex(captured: Captured, instrumented: li.LlamaIndexTracer) -> None:
    tracer = instrumented
    # Hooks handed garbage or unknown ids log and carry on.
    tracer.enter("x", None, object(), "missing-parent", None)
    tracer.exit("unknown", object())
    tracer.drop("unknown", ValueError("boom"))
    tracer.handle(object())
    tracer.exit("x", None)
    (spans,) = captured.traces()
    assert render_tree(spans) == ["chain: x"]


def test_concurrent_queries_in_threads_keep_their_trees(captured: Captured, index: VectorStoreIndex,
                                                        instrumented: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    engine = index.as_query_engine(llm=NamedMockLLM(max_tokens=2))

    def ask(i: int) -> str:
        with spanmux.span(f"request-{i}"):
            return str(engine.query(f"question {i}"))

    with ThreadPoolExecutor(4) as pool:
        assert len(list(pool.map(ask, range(8)))) == 8
    found = captured.traces()
    assert sorted(t[0].name for t in found) == sorted(f"request-{i}" for i in range(8))
    for spans in found:
        assert_well_formed(spans)
        assert render_tree(spans)[:2] == [f"span: {spans[0].name}", "  chain: RetrieverQueryEngine.query"]
        assert len(spans) == len(QUERY_TREE) + 4


def test_async_gather_of_queries(captured: Captured, index: VectorStoreIndex, instrumented: Any) -> None:
    engine = index.as_query_engine(llm=UsageLLM())

    async def main() -> list[Any]:
        return await asyncio.gather(*(engine.aquery(f"question {i}") for i in range(4)))

    assert len(asyncio.run(main())) == 4
    found = captured.traces()
    assert len(found) == 4
    for spans in found:
        assert_well_formed(spans)
        assert trace_totals(spans).total_tokens == 18


class KeywordRerank(BaseNodePostprocessor):
    """A local reranker (no model download): reports itself with LlamaIndex's rerank events."""

    keyword: str = "France"

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None,
                           ) -> list[NodeWithScore]:
        rerank_dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=1, model_name="keyword-v1"))
        ranked = sorted(nodes, key=lambda n: self.keyword in n.node.get_content(), reverse=True)[:1]
        rerank_dispatcher.event(ReRankEndEvent(nodes=ranked))
        return ranked


def test_reranker_span_records_model_and_documents(captured: Captured, index: VectorStoreIndex,
                                                   instrumented: Any) -> None:
    engine = index.as_query_engine(llm=NamedMockLLM(max_tokens=2), similarity_top_k=3,
                                   node_postprocessors=[KeywordRerank()])
    engine.query("Capital of France?")

    (spans,) = captured.traces()
    assert_well_formed(spans)
    ids = {s.span_id: s for s in spans}
    rerank = one(spans, "KeywordRerank._postprocess_nodes")
    assert rerank.kind == "reranker"
    assert ids[rerank.parent_id].name == "RetrieverQueryEngine._query"
    assert rerank.model.name == "keyword-v1" and rerank.model.parameters == {"top_n": 1}
    docs = rerank.attributes[attr.RETRIEVAL_DOCUMENTS]
    assert len(docs) == 1 and docs[0]["content"] == TEXTS[0] and docs[0]["id"]
    assert len(one(spans, "VectorIndexRetriever.retrieve").attributes[attr.RETRIEVAL_DOCUMENTS]) == 3


class Greeter(Workflow):
    @step
    async def greet(self, ev: StartEvent) -> StopEvent:
        return StopEvent(result=f"hello {ev.get('name')}")


async def test_workflow_is_a_chain_with_its_steps(captured: Captured, instrumented: Any) -> None:
    assert await Greeter().run(name="Ada") == "hello Ada"

    (spans,) = captured.traces()
    assert render_tree(spans) == ["chain: Greeter.run", "  chain: Greeter.greet"]
    assert_well_formed(spans)
    assert spans[1].output is not None


def test_streams_closed_early_or_dropped_still_end_their_spans(captured: Captured, instrumented: Any) -> None:
    import gc

    llm = UsageLLM()
    with spanmux.span("early-break"):
        for _chunk in llm.stream_complete("Capital?"):
            break  # the consumer stops after the first token: the generator is closed
    with spanmux.span("never-consumed"):
        stream = llm.stream_complete("Capital?")
    del stream
    gc.collect()

    found = {t[0].name: t for t in captured.traces()}
    assert set(found) == {"early-break", "never-consumed"}
    early = found["early-break"]
    assert render_tree(early) == ["span: early-break", "  llm: UsageLLM.stream_complete"]
    assert early[1].status == "ok" and early[1].completion_start_ns is not None
    dropped = found["never-consumed"]
    assert render_tree(dropped) == ["span: never-consumed", "  llm: UsageLLM.stream_complete"]
    assert dropped[1].completion_start_ns is None and dropped[1].output is None
    assert not instrumented.open, "no span may stay open forever"


def test_example_program_runs_offline(tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    from spanmux.backends.local import LocalStore

    example = Path(__file__).resolve().parent.parent / "examples" / "llamaindex_rag.py"
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "answer:" in done.stdout and "DemoLLM.complete" in done.stdout
    with LocalStore(tmp_path / ".spanmux" / "spanmux.db") as db:
        found = db.list_traces(limit=10)
    assert sorted(t.name for t in found) == ["RetrieverQueryEngine.query", "norway-guide"]
    assert all(t.status == "ok" and t.total_tokens > 0 and t.models == ["gpt-4o-mini"] for t in found)


# -- one model call is one LLM call everywhere; requested and response model side by side ------------

class CompletionLLM(UsageLLM):
    """A completion (not chat) model: ``predict`` delegates to ``complete``."""

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name=self.model, num_output=64, is_chat_model=False)


def _store_and_langfuse(server: LangfuseContractServer, tmp_path: Any, mlflow_uri: str | None = None,
                        ) -> TracedStore:
    path = tmp_path / "store" / "spanmux.db"
    config: dict[str, Any] = {
        "backends": ["local", "langfuse"],
        "local": {"path": str(path)},
        "langfuse": {"public_key": server.public_key, "secret_key": server.secret_key, "host": server.url},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    }
    if mlflow_uri is not None:
        config["backends"].append("mlflow")
        config["mlflow"] = {"tracking_uri": mlflow_uri, "experiment_name": f"wrappers-{new_span_id()}"}
    spanmux.configure(config)
    return TracedStore(path)


def test_predict_over_complete_is_one_model_call_in_store_stats_and_every_backend(
        langfuse_server: LangfuseContractServer, mlflow_server: str, tmp_path: Any, instrumented: Any) -> None:
    store = _store_and_langfuse(langfuse_server, tmp_path, mlflow_server)
    llm = CompletionLLM()
    assert llm.predict(PromptTemplate("Capital of {country}?"), country="France") == "Paris."

    spans = store.only_trace()
    assert render_tree(spans) == ["llm: CompletionLLM.predict", "  llm: CompletionLLM.complete"]
    predict, complete = spans
    assert predict.attributes[attr.DELEGATES] is True
    assert predict.usage is None and predict.cost is None
    assert complete.usage is not None and complete.usage.total_tokens == 18
    assert complete.cost is not None and complete.cost.total > 0
    assert attr.DELEGATES not in (complete.attributes or {})
    summary = store.traces()[0]
    assert summary.llm_calls == 1, "predict wrapping complete is one model call"
    assert summary.total_tokens == 18 and summary.cost_total == pytest.approx(complete.cost.total)
    numbers = spanmux.stats()
    assert numbers["llm_calls"] == 1 and numbers["delegating_llm_spans"] == 1

    observations = langfuse_server.trace(complete.trace_id)
    generations = [o for o in observations if o.type == "generation"]
    assert [o.name for o in generations] == ["CompletionLLM.complete"]
    wrapper = langfuse_server.by_name("CompletionLLM.predict")
    assert wrapper.type == "span" and wrapper.usage is None and wrapper.cost is None
    assert wrapper.metadata()["kind"] == "llm"
    assert sum(o.cost["total"] for o in generations) == pytest.approx(summary.cost_total)

    from mlflow.tracing.client import TracingClient
    from mlflow.tracking import MlflowClient

    experiment = spanmux.runtime.settings().mlflow.experiment_name  # type: ignore[union-attr]
    spanmux.shutdown()
    trace = TracingClient(mlflow_server).get_trace(f"tr-{complete.trace_id}")
    (mlflow_wrapper,) = [s for s in trace.data.spans if s.name == "CompletionLLM.predict"]
    assert mlflow_wrapper.attributes[attr.DELEGATES] is True
    assert mlflow_wrapper.attributes.get("mlflow.chat.tokenUsage") is None
    assert trace.info.token_usage["total_tokens"] == 18
    client = MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "spanmux/traces.json", str(tmp_path)))
                       .read_text())
    (row,) = [dict(zip(table["columns"], r, strict=True)) for r in table["data"]]
    assert row["llm_calls"] == 1


async def test_wrappers_across_a_chain_delegate_too(captured: Captured, instrumented: Any) -> None:
    """``astructured_predict`` > program > ``achat`` > ``chat``: one call, three wrappers."""
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    class JsonLLM(UsageLLM):
        @llm_chat_callback()
        def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
            raw, extra = self._usage()
            return ChatResponse(message=ChatMessage(role="assistant", content='{"name": "Paris"}'), raw=raw,
                                additional_kwargs=extra)

    llm = JsonLLM()
    city = await llm.astructured_predict(City, PromptTemplate("Capital of {country}?"), country="France")
    assert city.name == "Paris"

    (spans,) = captured.traces()
    calls = [s for s in spans if s.kind == "llm" and attr.DELEGATES not in (s.attributes or {})]
    assert [s.name for s in calls] == ["JsonLLM.chat"]
    assert all(s.usage is None and s.cost is None for s in spans if s.kind == "llm" and s not in calls)
    totals = trace_totals(spans)
    assert totals.llm_calls == 1 and totals.total_tokens == 18


class NamedEmbedding(MockEmbedding):
    """MockEmbedding reporting a real model name (``model_name`` is what its event carries)."""

    model_name: str = "text-embedding-3-small"


async def test_requested_and_response_model_kept_and_embeddings_carry_their_model(
        langfuse_server: LangfuseContractServer, tmp_path: Any, instrumented: Any) -> None:
    store = _store_and_langfuse(langfuse_server, tmp_path)
    llm = UsageLLM(model="claude-3-5-haiku-latest", response_model="claude-3-5-haiku-20241022")
    with spanmux.span("ask"):
        await llm.achat([ChatMessage(role="user", content="Capital of France?")])
        NamedEmbedding(embed_dim=4).get_query_embedding("Capital of France?")

    spans = store.only_trace()
    assert render_tree(spans) == [
        "span: ask", "  llm: UsageLLM.achat", "    llm: UsageLLM.chat",
        "  embedding: NamedEmbedding.get_query_embedding", "    embedding: NamedEmbedding._get_query_embedding",
    ]
    achat, chat = one(spans, "UsageLLM.achat"), one(spans, "UsageLLM.chat")
    for s in (achat, chat):
        assert s.attributes[attr.GEN_AI_REQUEST_MODEL] == "claude-3-5-haiku-latest"
        assert s.attributes[attr.GEN_AI_RESPONSE_MODEL] == "claude-3-5-haiku-20241022"
        assert s.model is not None and s.model.name == "claude-3-5-haiku-20241022"  # the model that answered
    assert chat.cost is not None and chat.cost.total > 0  # priced under the response model
    assert store.traces()[0].models == ["claude-3-5-haiku-20241022", "text-embedding-3-small"]
    for name in ("NamedEmbedding.get_query_embedding", "NamedEmbedding._get_query_embedding"):
        embedding = one(spans, name)
        assert embedding.model is not None and embedding.model.name == "text-embedding-3-small", name
        assert embedding.attributes[attr.GEN_AI_REQUEST_MODEL] == "text-embedding-3-small"

    generation = langfuse_server.by_name("UsageLLM.chat")
    assert generation.type == "generation" and generation.model == "claude-3-5-haiku-20241022"
    assert generation.metadata()[attr.GEN_AI_REQUEST_MODEL] == "claude-3-5-haiku-latest"
    assert generation.metadata()[attr.GEN_AI_RESPONSE_MODEL] == "claude-3-5-haiku-20241022"
    assert langfuse_server.by_name("NamedEmbedding._get_query_embedding").model == "text-embedding-3-small"


class _Hostile:
    """Raises a chosen error from every attribute read: a hook handed it fails inside."""

    def __init__(self, error: type[Exception]) -> None:
        object.__setattr__(self, "error", error)

    def __getattr__(self, name: str) -> Any:
        raise object.__getattribute__(self, "error")(f"no {name}")


def test_handler_failures_logged_once_per_hook_and_error_type_and_all_counted(
        captured: Captured, instrumented: li.LlamaIndexTracer, caplog: pytest.LogCaptureFixture) -> None:
    tracer = instrumented
    before = spanmux.stats()["integration_failures"].get("llamaindex", {"total": 0, "by_hook": {}})
    caplog.set_level("DEBUG", logger="spanmux.integrations.llamaindex")
    for _ in range(3):
        tracer.enter("A.call-1", _Hostile(RuntimeError), None, None, None)  # new_span, RuntimeError
    tracer.enter("B.call-2", _Hostile(KeyError), None, None, None)  # new_span, another error type
    tracer.enter("C.call-3", None, None, None, None)
    tracer.exit("C.call-3", _Hostile(ValueError))  # another hook
    tracer.exit("C.call-3", None)

    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "failed" in r.getMessage()]
    assert [(r.args[1], r.args[2]) for r in warnings] == [  # type: ignore[index]
        ("new_span", "RuntimeError"), ("new_span", "KeyError"), ("prepare_to_exit_span", "ValueError")]
    assert all(r.exc_info for r in warnings), "each first failure is logged with its traceback"
    after = spanmux.stats()["integration_failures"]["llamaindex"]
    assert after["total"] - before["total"] == 5
    assert after["by_hook"]["new_span"] - before["by_hook"].get("new_span", 0) == 4
    assert tracer.failures == after["total"]
    (spans,) = captured.traces()
    assert render_tree(spans) == ["chain: C.call"]
