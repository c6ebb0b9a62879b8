"""``capture_content: false`` end to end: a program in each framework (LangChain, LlamaIndex,
DSPy, with their own fake models) puts a marker into every kind of content (prompt, system prompt,
messages, answer, retrieved document, tool argument, tool result, custom event data, error
message); then every field of every backend is searched for the markers: every column of every
table of the local store, every attribute of every Langfuse observation (contract server) and the
whole MLflow trace JSON (real ``mlflow server``). With ``capture_content: true`` the same program
stores every marker, so the search is not vacuous."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import spanmux
from spanmux import attributes as attr

M = uuid.uuid4().hex[:6]
MARKERS = {
    "prompt": f"PROMPT{M}",
    "system": f"SYSTEM{M}",
    "answer": f"ANSWER{M}",
    "document": f"DOCUMENT{M}",
    "tool_argument": f"TOOLARG{M}",
    "tool_result": f"TOOLRESULT{M}",
    "error": f"ERRMSG{M}",
    "event": f"EVENTDATA{M}",
}


def configure(tmp_path: Path, capture: bool, langfuse: Any = None, mlflow_uri: str | None = None) -> Path:
    path = tmp_path / "store.db"
    config: dict[str, Any] = {
        "backends": ["local"], "capture_content": capture, "local": {"path": str(path)},
        "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05,
    }
    if langfuse is not None:
        config["backends"].append("langfuse")
        config["langfuse"] = {"public_key": langfuse.public_key, "secret_key": langfuse.secret_key,
                              "host": langfuse.url}
    if mlflow_uri is not None:
        config["backends"].append("mlflow")
        config["mlflow"] = {"tracking_uri": mlflow_uri, "experiment_name": f"capture-{uuid.uuid4().hex[:8]}"}
    spanmux.configure(config)
    return path


def store_dump(path: Path) -> tuple[str, list[str]]:
    """Every value of every column of every table, as text, and the trace ids."""
    conn = sqlite3.connect(path)
    try:
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        parts = [repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')]
        trace_ids = [row[0] for row in conn.execute("SELECT trace_id FROM traces")]
    finally:
        conn.close()
    return "\n".join(parts), trace_ids


def found(text: str) -> set[str]:
    return {kind for kind, marker in MARKERS.items() if marker in text}


def check(tmp_path: Path, program: Callable[[], None], expected: set[str], langfuse: Any, mlflow_uri: str) -> None:
    """Off: no marker in any backend. On (local store only): every expected marker is stored."""
    path = configure(tmp_path / "on", True)
    program()
    assert spanmux.flush(timeout=30)
    spanmux.shutdown()
    stored, _ = store_dump(path)
    assert found(stored) == expected, "the program must put each kind of content into a span"

    path = configure(tmp_path / "off", False, langfuse, mlflow_uri)
    program()
    assert spanmux.flush(timeout=60)
    spanmux.shutdown()
    stored, trace_ids = store_dump(path)
    assert trace_ids, "nothing was stored"
    assert found(stored) == set(), "content in the local store"
    observations = [o for t in trace_ids for o in langfuse.trace(t)]
    assert observations, "nothing reached Langfuse"
    sent = json.dumps([[o.name, o.status_message, o.attributes] for o in observations], default=repr)
    assert found(sent) == set(), "content sent to Langfuse"
    from mlflow.tracing.client import TracingClient

    client = TracingClient(mlflow_uri)
    exported = "\n".join(client.get_trace(f"tr-{t}").to_json() for t in trace_ids)
    assert found(exported) == set(), "content sent to MLflow"


# ---- the rule itself ----------------------------------------------------------------------------

def test_every_content_key_is_listed_and_removed() -> None:
    from spanmux.processors import _without_content

    content = {attr.RETRIEVAL_DOCUMENTS, attr.FRAMEWORK_EVENT, attr.GEN_AI_INPUT_MESSAGES,
               attr.GEN_AI_OUTPUT_MESSAGES, attr.GEN_AI_SYSTEM_INSTRUCTIONS, attr.GEN_AI_TOOL_CALL_ARGUMENTS,
               attr.GEN_AI_TOOL_CALL_RESULT, attr.INPUT_VALUE, attr.OUTPUT_VALUE, attr.LLM_INPUT_MESSAGES,
               attr.LLM_OUTPUT_MESSAGES}
    assert content == attr.CONTENT_ATTRIBUTES
    kept = {attr.GEN_AI_REQUEST_MODEL: "m", attr.GEN_AI_TOOL_NAME: "t", attr.TAGS: ["x"], attr.STREAMING: True}
    span_attributes = {**{key: "secret" for key in content}, **kept,
                        "llm.input_messages.0.message.content": "secret",
                        "retrieval.documents.1.document.content": "secret",
                        attr.FRAMEWORK_EVENT: [{"name": "retry", "time_ns": 1, "data": {"q": "secret"}}]}
    cleaned = _without_content(span_attributes)
    assert "secret" not in json.dumps(cleaned)
    assert cleaned == {**kept, attr.FRAMEWORK_EVENT: [{"name": "retry", "time_ns": 1}]}


# ---- LangChain / LangGraph ----------------------------------------------------------------------

def test_langchain(tmp_path: Path, langfuse_server: Any, mlflow_server: str) -> None:
    pytest.importorskip("langgraph")
    from langchain.agents import create_agent
    from langchain_core.callbacks.manager import dispatch_custom_event
    from langchain_core.documents import Document
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.retrievers import BaseRetriever
    from langchain_core.runnables import RunnableLambda
    from langchain_core.tools import tool

    from spanmux.integrations.langchain import CallbackHandler

    class Chat(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Chat:  # type: ignore[override]
            return self

    class Docs(BaseRetriever):
        def _get_relevant_documents(self, query: str, *, run_manager: Any = None) -> list[Document]:
            return [Document(page_content=f"Paris {MARKERS['document']}", metadata={"source": "atlas"})]

    @tool
    def lookup(city: str) -> str:
        """Look a city up."""
        return f"found {MARKERS['tool_result']}"

    @tool
    def explode(reason: str) -> str:
        """Always fails."""
        raise ValueError(f"failed: {MARKERS['error']}")

    def call(name: str, **args: Any) -> dict[str, Any]:
        return {"name": name, "args": args, "id": f"c-{name}", "type": "tool_call"}

    def with_event(value: Any) -> Any:
        dispatch_custom_event("progress", {"note": MARKERS["event"]})
        return value

    def program() -> None:
        config: Any = {"callbacks": [CallbackHandler()]}
        usage = {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}
        model = Chat(responses=[
            AIMessage("", tool_calls=[call("lookup", city=MARKERS["tool_argument"])],
                      usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}),
            AIMessage(f"It is {MARKERS['answer']}", usage_metadata=usage,
                      response_metadata={"model_name": "gpt-4o-mini"}),
        ])
        prompt = ChatPromptTemplate.from_messages([("system", MARKERS["system"]), ("human", "{q}")])
        with spanmux.span("program", kind="agent"):
            Docs().invoke(f"where {MARKERS['prompt']}", config=config)
            (RunnableLambda(with_event) | prompt).invoke({"q": MARKERS["prompt"]}, config=config)
            agent = create_agent(model, tools=[lookup], system_prompt=MARKERS["system"])
            agent.invoke({"messages": [("user", MARKERS["prompt"])]}, config=config)
            with pytest.raises(ValueError, match="failed"):
                explode.invoke({"reason": "x"}, config=config)

    check(tmp_path, program, set(MARKERS), langfuse_server, mlflow_server)


# ---- LlamaIndex -----------------------------------------------------------------------------------

def test_llamaindex(tmp_path: Path, langfuse_server: Any, mlflow_server: str) -> None:
    pytest.importorskip("llama_index.core")
    import asyncio

    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        CompletionResponse,
        LLMMetadata,
    )
    from llama_index.core.embeddings import MockEmbedding
    from llama_index.core.llms import CustomLLM, MockFunctionCallingLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
    from llama_index.core.tools import FunctionTool

    from spanmux.integrations import llamaindex as li

    class AnswerLLM(CustomLLM):
        fail: bool = False

        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(model_name="gpt-4o-mini", num_output=16, is_chat_model=True)

        @llm_chat_callback()
        def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
            if self.fail:
                raise RuntimeError(f"provider said {MARKERS['error']}")
            return ChatResponse(message=ChatMessage(role="assistant", content=f"It is {MARKERS['answer']}"))

        @llm_completion_callback()
        def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
            return CompletionResponse(text=f"It is {MARKERS['answer']}")

        @llm_completion_callback()
        def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> Iterator[Any]:
            raise NotImplementedError

    def lookup(city: str = MARKERS["tool_argument"]) -> str:
        """Look a city up."""
        return f"found {MARKERS['tool_result']}"

    index = VectorStoreIndex.from_documents([Document(text=f"Paris is nice. {MARKERS['document']}", id_="d0")],
                                            embed_model=MockEmbedding(embed_dim=8))

    def program() -> None:
        li.instrument()
        try:
            with spanmux.span("program", kind="agent"):
                index.as_query_engine(llm=AnswerLLM(), similarity_top_k=1).query(f"Where? {MARKERS['prompt']}")
                agent = FunctionAgent(tools=[FunctionTool.from_defaults(lookup)], llm=MockFunctionCallingLLM(),
                                      system_prompt=MARKERS["system"])

                async def ask() -> Any:
                    return await agent.run(MARKERS["prompt"])

                asyncio.run(ask())
                with pytest.raises(RuntimeError):
                    AnswerLLM(fail=True).chat([ChatMessage(role="user", content=MARKERS["prompt"])])
        finally:
            li.uninstrument()

    # LlamaIndex has no custom-event data on spans
    check(tmp_path, program, set(MARKERS) - {"event"}, langfuse_server, mlflow_server)


# ---- DSPy -----------------------------------------------------------------------------------------

def test_dspy(tmp_path: Path, langfuse_server: Any, mlflow_server: str) -> None:
    os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "spanmux-tests-dspy-cache"))
    dspy = pytest.importorskip("dspy")
    from dspy.utils import DummyLM

    from spanmux.integrations.dspy import Callback

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

    class QA(dspy.Signature):
        question: str = dspy.InputField(desc=MARKERS["system"])
        answer: str = dspy.OutputField()

    class Passages(dspy.Retrieve):
        def forward(self, query: str, k: int | None = None, **kwargs: Any) -> Any:
            return dspy.Prediction(passages=[f"Paris {MARKERS['document']}"])

    def lookup(city: str) -> str:
        """Look a city up."""
        return f"found {MARKERS['tool_result']}"

    def explode(reason: str) -> str:
        """Always fails."""
        raise ValueError(f"failed: {MARKERS['error']}")

    answers = [
        {"next_thought": "look", "next_tool_name": "lookup", "next_tool_args": {"city": MARKERS["tool_argument"]}},
        {"next_thought": "try", "next_tool_name": "explode", "next_tool_args": {"reason": "x"}},
        {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}},
        {"reasoning": "known", "answer": f"It is {MARKERS['answer']}"},
    ]

    def program() -> None:
        with dspy.context(lm=DummyLM(list(answers)), callbacks=[Callback()]), spanmux.span("program", kind="agent"):
            Passages(k=1)(MARKERS["prompt"])
            dspy.ReAct(QA, tools=[lookup, explode])(question=MARKERS["prompt"])

    check(tmp_path, program, set(MARKERS) - {"event"}, langfuse_server, mlflow_server)
