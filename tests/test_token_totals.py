"""Exact token and cost totals per trace on real multi-call programs of each framework.

The ground truth is what the (fake) provider itself returned on each call, recorded on the
provider side; the store must hold exactly that on the LLM spans that made the calls and, per
trace, exactly their sum: nothing on wrappers, chains, agents or tools, nothing counted twice.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from conftest import REACT_ANSWERS, REACT_QUESTION, TracedStore, add, weather
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

import spanmux
from spanmux.model import Span, Usage
from spanmux.tokens import estimate_usage


def library_cost(model: str, provider: str, usage: Usage) -> float:
    values = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        values["cache_read_tokens"] = usage.cache_read_tokens
    if usage.reasoning_tokens:
        values["output_reasoning_tokens"] = usage.reasoning_tokens
    return float(calc_price(PriceUsage(**values), model, provider_id=provider).total_price)


def assert_exact_totals(traced: TracedStore, truth: list[Usage], *, model: str, provider: str) -> list[Span]:
    """Every call's usage on exactly one llm span, none elsewhere; trace totals are their sums."""
    [summary] = traced.traces()
    spans = traced.trace(summary.trace_id)
    with_usage = [s for s in spans if s.usage is not None]
    assert all(s.kind == "llm" for s in with_usage), [(s.kind, s.name) for s in with_usage]
    recorded = sorted((s.usage.input_tokens, s.usage.output_tokens, s.usage.total_tokens, s.usage.cache_read_tokens,
                       s.usage.reasoning_tokens) for s in with_usage if s.usage is not None)
    expected = sorted((u.input_tokens, u.output_tokens, u.total_tokens, u.cache_read_tokens, u.reasoning_tokens)
                      for u in truth)
    assert recorded == expected
    assert not any(s.usage is not None and s.usage.estimated for s in with_usage)
    assert summary.input_tokens == sum(u.input_tokens for u in truth)
    assert summary.output_tokens == sum(u.output_tokens for u in truth)
    assert summary.total_tokens == sum(u.total_tokens for u in truth)
    assert summary.cost_total == pytest.approx(sum(library_cost(model, provider, u) for u in truth), rel=1e-9)
    assert all(s.cost is None for s in spans if s.usage is None)
    return spans


def scripted_usages(count: int) -> list[Usage]:
    """Distinct usage per call (cached and reasoning tokens included), so a swap or a double shows."""
    out = []
    for i in range(count):
        inp, out_tokens, cached, reasoning = 300 + 97 * i, 20 + 13 * i, 64 * i, 4 * i
        out.append(Usage(input_tokens=inp, output_tokens=out_tokens, total_tokens=inp + out_tokens,
                         cache_read_tokens=cached, reasoning_tokens=reasoning))
    return out


# ---- LangGraph tool-calling agent ------------------------------------------------------------------------

def test_langgraph_agent_three_calls(traced: TracedStore) -> None:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    from spanmux.integrations.langchain import CallbackHandler

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool
    def square(x: int) -> int:
        """Square an integer."""
        return x * x

    truth = scripted_usages(3)

    def message(usage: Usage, text: str, calls: list[dict[str, Any]]) -> AIMessage:
        return AIMessage(text, tool_calls=calls, response_metadata={"model_name": "gpt-4o-mini"}, usage_metadata={
            "input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens, "input_token_details": {"cache_read": usage.cache_read_tokens},
            "output_token_details": {"reasoning": usage.reasoning_tokens}})

    class Chat(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Chat:  # type: ignore[override]
            return self

    model = Chat(responses=[
        message(truth[0], "", [{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1", "type": "tool_call"}]),
        message(truth[1], "", [{"name": "square", "args": {"x": 5}, "id": "c2", "type": "tool_call"}]),
        message(truth[2], "(2+3)^2 = 25", []),
    ])
    result = create_agent(model, tools=[add, square]).invoke(
        {"messages": [("user", "(2+3)^2?")]}, config={"callbacks": [CallbackHandler()]})
    assert result["messages"][-1].content == "(2+3)^2 = 25"
    spans = assert_exact_totals(traced, truth, model="gpt-4o-mini", provider="openai")
    assert [s.kind for s in spans].count("llm") == 3 and [s.kind for s in spans].count("tool") == 2


def test_langchain_model_without_usage_is_estimated_once_per_call(traced: TracedStore) -> None:
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from spanmux.integrations.langchain import CallbackHandler

    prompt = ChatPromptTemplate.from_messages([("system", "Answer in one word."), ("human", "{q}")])
    chain = prompt | FakeListChatModel(responses=["Paris", "Berlin"]) | StrOutputParser()
    with spanmux.span("two questions", kind="chain"):
        chain.invoke({"q": "Capital of France?"}, config={"callbacks": [CallbackHandler()]})
        chain.invoke({"q": "Capital of Germany?"}, config={"callbacks": [CallbackHandler()]})
    [summary] = traced.traces()
    spans = traced.trace(summary.trace_id)
    llm_spans = [s for s in spans if s.kind == "llm"]
    assert len(llm_spans) == 2
    for s in llm_spans:
        assert s.usage is not None and s.usage.estimated and s.usage.output_tokens == 1
        assert s.usage == estimate_usage(s.input, s.output)  # counted from what the store holds
    assert all(s.usage is None for s in spans if s.kind != "llm")
    assert summary.total_tokens == sum(s.usage.total_tokens for s in llm_spans if s.usage)


# ---- LlamaIndex RAG query ------------------------------------------------------------------------------

def test_llamaindex_rag_query_with_refine_calls(traced: TracedStore) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.base.llms.types import ChatMessage, ChatResponse, CompletionResponse, LLMMetadata
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback

    from spanmux.integrations import llamaindex as li

    returned: list[Usage] = []
    script = iter(scripted_usages(10))

    def openai_raw() -> dict[str, Any]:
        usage = next(script)
        returned.append(usage)
        return {"id": "chatcmpl-1", "model": "gpt-4o-mini", "usage": {
            "prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens, "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}}

    class OpenAILikeLLM(CustomLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="gpt-4o-mini", num_output=64, is_chat_model=True)

        @llm_chat_callback()
        def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
            return ChatResponse(message=ChatMessage(role="assistant", content="Paris."), raw=openai_raw())

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            return CompletionResponse(text="Paris.", raw=openai_raw())

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Iterator[Any]:
            raise NotImplementedError

    texts = ["Paris is the capital of France.", "France is in Europe.", "The Seine flows through Paris."]
    index = VectorStoreIndex.from_documents([Document(text=t, id_=f"d{i}") for i, t in enumerate(texts)],
                                            embed_model=MockEmbedding(embed_dim=8))
    engine = index.as_query_engine(llm=OpenAILikeLLM(), similarity_top_k=3, response_mode="refine")
    li.instrument()
    try:
        assert str(engine.query("What is the capital of France?")) == "Paris."
    finally:
        li.uninstrument()
    assert len(returned) == 3  # refine: one call per retrieved node
    assert_exact_totals(traced, returned, model="gpt-4o-mini", provider="openai")


# ---- DSPy ReAct program ------------------------------------------------------------------------------------

def test_dspy_react_four_calls(traced: TracedStore) -> None:
    os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "spanmux-tests-dspy-cache"))
    dspy = pytest.importorskip("dspy")
    from dspy.clients.engines.dummy_engine import AsyncDummyEngine, DummyEngine
    from dspy.utils import DummyLM

    from spanmux.integrations.dspy import Callback

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    returned: list[Usage] = []
    script = iter(scripted_usages(4))

    class Engine(DummyEngine):
        """DummyLM's engine reporting litellm-shaped usage (what a real DSPy LM records)."""

        def complete_legacy(self, lm: Any, request: dict[str, Any], **context: Any) -> Any:
            result = super().complete_legacy(lm, request, **context)
            usage = next(script)
            returned.append(usage)
            result.usage = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                            "total_tokens": usage.total_tokens,
                            "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens},
                            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}
            result.response_model = "gpt-4o-mini-2024-07-18"
            return result

    class LM(DummyLM):
        def __init__(self, answers: Any) -> None:
            super().__init__(answers)
            self.model = "openai/gpt-4o-mini"
            self._engine_spec = Engine(self)
            self._async_engine_spec = AsyncDummyEngine(self._engine_spec)

    class QA(dspy.Signature):
        """Answer the question."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    lm = LM(REACT_ANSWERS)
    with dspy.context(lm=lm, callbacks=[Callback()]):
        result = dspy.ReAct(QA, tools=[add, weather])(question=REACT_QUESTION)
    assert result.answer == "5, sunny in Paris"
    assert len(returned) == 4
    spans = assert_exact_totals(traced, returned, model="gpt-4o-mini", provider="openai")
    assert spans[0].kind == "agent" and spans[0].name == "ReAct(QA)"
