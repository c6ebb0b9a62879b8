"""The ``phoenix`` backend against a real Arize Phoenix (``phoenix serve``, offline, loopback),
started once per session from its own venv (tests/phoenix_server.py; ``make test`` creates it and
sets SPANMUX_PHOENIX_PYTHON). What Phoenix stored is read back with ``phoenix.client.Client``
and compared with what spanmux produced (an ``InMemoryBackend`` beside it in the same pipeline)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from phoenix_server import PYTHON_ENV, PhoenixServer, phoenix_python  # tests/ is on sys.path

import spanmux
from spanmux.backends.otlp import OPENINFERENCE_KIND_BY_KIND
from spanmux.model import Span, new_span_id, new_trace_id
from spanmux.testing import InMemoryBackend
from spanmux.usage import is_model_call

pytestmark = pytest.mark.slow
os.environ.setdefault("DSPY_CACHEDIR", os.path.join(tempfile.gettempdir(), "spanmux-tests-dspy-cache"))


@pytest.fixture(scope="session")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhoenixServer]:
    python = phoenix_python()
    if python is None:
        pytest.skip(f"no Phoenix venv: run `make .venv-phoenix` or set {PYTHON_ENV}")
    server = PhoenixServer(python, tmp_path_factory.mktemp("phoenix")).start()
    try:
        yield server
    finally:
        server.stop()


def configure(phoenix: PhoenixServer, tmp_path: Path, project: str) -> InMemoryBackend:
    memory = InMemoryBackend()
    spanmux.configure({
        "backends": [memory, "phoenix"],
        "phoenix": {"endpoint": phoenix.url + "/v1/traces", "project": project},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    })
    return memory


def flush() -> None:
    assert spanmux.flush(timeout=60), "spanmux.flush timed out"


def check_same_spans(produced: list[Span], stored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every span spanmux produced is in Phoenix exactly once, with our ids, parent, kind, model and
    token counts; returns Phoenix's spans by span id."""
    ids = [s["context"]["span_id"] for s in stored]
    assert len(ids) == len(set(ids)), "a span stored twice"
    by_id = {s["context"]["span_id"]: s for s in stored}
    assert set(by_id) == {s.span_id for s in produced}
    for span in produced:
        got = by_id[span.span_id]
        attributes = got["attributes"]
        assert got["context"]["trace_id"] == span.trace_id
        assert got["parent_id"] == span.parent_id
        assert got["span_kind"] == OPENINFERENCE_KIND_BY_KIND[span.kind], span.name
        assert attributes["spanmux.kind"] == span.kind
        if span.kind == "llm" and span.model is not None and span.model.name:
            assert attributes["llm.model_name"] == span.model.name
        if is_model_call(span) and span.usage is not None:
            assert attributes["llm.token_count.prompt"] == span.usage.input_tokens
            assert attributes["llm.token_count.completion"] == span.usage.output_tokens
    return by_id


def test_langgraph_agent_arrives_with_kinds_parents_model_tokens_messages(
        phoenix: PhoenixServer, weather_agent: Any, tmp_path: Path) -> None:
    integration = pytest.importorskip("spanmux.integrations.langchain")
    memory = configure(phoenix, tmp_path, "langgraph")
    with spanmux.trace_context(user_id="lg-user", session_id="lg-session"):
        weather_agent.invoke({"messages": [("user", "weather in Paris?")]},
                             config={"callbacks": [integration.CallbackHandler()]})
    flush()

    produced = memory.spans
    stored = phoenix.read("langgraph", expect_spans=len(produced))["spans"]
    by_id = check_same_spans(produced, stored)
    kinds = sorted(s["span_kind"] for s in stored)
    assert kinds.count("LLM") == 2 and kinds.count("TOOL") == 1 and kinds.count("AGENT") == 1
    llms = [s for s in stored if s["span_kind"] == "LLM"]
    for llm in llms:
        a = llm["attributes"]
        assert a["llm.model_name"] == "gpt-4o-mini" and a["llm.token_count.total"] == 48
        assert a["llm.input_messages.0.message.role"] == "user"
        assert a["llm.input_messages.0.message.content"] == "weather in Paris?"
        assert a["session.id"] == "lg-session" and a["user.id"] == "lg-user"
    call_name = "llm.output_messages.0.message.tool_calls.0.tool_call.function.name"
    first = next(s for s in llms if call_name in s["attributes"])
    assert first["attributes"][call_name] == "get_weather"
    last = next(s for s in llms if s is not first)
    assert last["attributes"]["llm.output_messages.0.message.content"] == "It is sunny in Paris."
    tool_span = next(s for s in stored if s["span_kind"] == "TOOL")
    assert tool_span["attributes"]["tool.name"] == "get_weather"
    root = next(s for s in stored if s["parent_id"] is None)
    assert root["span_kind"] == "AGENT" and by_id[tool_span["parent_id"]]  # the tool hangs in the tree


def test_llamaindex_rag_arrives_with_documents_embeddings_and_llm(phoenix: PhoenixServer, named_mock_llm: Any,
                                                                   tmp_path: Path) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.embeddings import MockEmbedding

    from spanmux.integrations.llamaindex import instrument, uninstrument

    memory = configure(phoenix, tmp_path, "llamaindex")
    instrument()  # undone below: a LlamaIndex handler left behind traced the next tests' index builds
    documents = [Document(text="Bergen is the rainiest city in Norway.", id_="bergen"),
                 Document(text="Oslo is the capital of Norway.", id_="oslo")]
    try:
        with spanmux.trace_context(user_id="li-user", session_id="li-session"), \
                spanmux.span("norway-guide", kind="chain", input={"question": "rainiest?"}):
            index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
            answer = index.as_query_engine(llm=named_mock_llm(max_tokens=6), similarity_top_k=2).query("rainiest city?")
    finally:
        uninstrument()
    assert str(answer)
    flush()

    produced = memory.spans
    stored = phoenix.read("llamaindex", expect_spans=len(produced))["spans"]
    check_same_spans(produced, stored)
    kinds = {s["span_kind"] for s in stored}
    assert {"CHAIN", "EMBEDDING", "RETRIEVER", "LLM"} <= kinds
    retrievers = [s for s in stored if s["span_kind"] == "RETRIEVER"]
    contents = {v for s in retrievers for k, v in s["attributes"].items()
                if k.startswith("retrieval.documents.") and k.endswith(".document.content")}
    assert contents == {"Bergen is the rainiest city in Norway.", "Oslo is the capital of Norway."}
    calls = [s for s in stored if s["span_kind"] == "LLM" and "llm.token_count.prompt" in s["attributes"]]
    assert calls and all(s["attributes"]["llm.model_name"] == "gpt-4o-mini" for s in calls)
    assert all(s["attributes"]["session.id"] == "li-session" and s["attributes"]["user.id"] == "li-user"
               for s in stored)


def test_dspy_react_arrives_with_tools_and_lm_calls(phoenix: PhoenixServer, tmp_path: Path) -> None:
    dspy = pytest.importorskip("dspy")
    from conftest import REACT_ANSWERS, REACT_QUESTION, add, weather
    from dspy.utils import DummyLM

    from spanmux.integrations.dspy import Callback

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)

    class QA(dspy.Signature):
        """Answer the question."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    memory = configure(phoenix, tmp_path, "dspy")
    with spanmux.trace_context(user_id="ds-user", session_id="ds-session"), \
            dspy.context(lm=DummyLM(REACT_ANSWERS), callbacks=[Callback()]):
        result = dspy.ReAct(QA, tools=[add, weather])(question=REACT_QUESTION)
    assert result.answer == "5, sunny in Paris"
    flush()

    produced = memory.spans
    stored = phoenix.read("dspy", expect_spans=len(produced))["spans"]
    check_same_spans(produced, stored)
    root = next(s for s in stored if s["parent_id"] is None)
    assert root["span_kind"] == "AGENT" and root["name"] == "ReAct(QA)"
    tools = {s["name"]: s for s in stored if s["span_kind"] == "TOOL"}
    assert {"add", "weather"} <= set(tools)
    assert json.loads(tools["add"]["attributes"]["input.value"]) == {"a": 2, "b": 3}
    assert tools["weather"]["attributes"]["output.value"] == "sunny in Paris"
    assert all(t["parent_id"] == root["context"]["span_id"] for t in tools.values())
    llms = [s for s in stored if s["span_kind"] == "LLM"]
    assert len(llms) == 4 and all(s["attributes"]["llm.input_messages.0.message.role"] for s in llms)
    assert all(s["attributes"]["session.id"] == "ds-session" and s["attributes"]["user.id"] == "ds-user"
               for s in stored)


def test_scores_arrive_as_annotations(phoenix: PhoenixServer, tmp_path: Path) -> None:
    configure(phoenix, tmp_path, "scores")
    with spanmux.span("answer", kind="agent", input="q") as root, spanmux.span("judge-me", kind="llm") as llm:
        llm.set_model("gpt-4o-mini", "openai")
    spanmux.score(root.trace_id, "helpfulness", 0.8, comment="clear")
    spanmux.score(root.trace_id, "correct", True, span_id=llm.span_id, source="llm_judge")
    flush()
    spanmux.score(root.trace_id, "tone", "warm", span_id=root.span_id, source="human")  # a later batch
    flush()

    found = phoenix.read("scores", expect_spans=2)
    span_annotations = {a["name"]: a for a in found["span_annotations"]}
    trace_annotations = {a["name"]: a for a in found["trace_annotations"]}
    assert trace_annotations["helpfulness"]["result"]["score"] == 0.8
    assert trace_annotations["helpfulness"]["result"]["explanation"] == "clear"
    assert trace_annotations["helpfulness"]["trace_id"] == root.trace_id
    correct = span_annotations["correct"]
    assert correct["span_id"] == llm.span_id and correct["annotator_kind"] == "LLM"
    assert correct["result"]["label"] == "true" and correct["result"]["score"] == 1.0
    tone = span_annotations["tone"]
    assert tone["result"]["label"] == "warm" and tone["annotator_kind"] == "HUMAN"


def test_phoenix_stopped_mid_run_and_started_again_gets_every_span_once(
        phoenix: PhoenixServer, tmp_path: Path) -> None:
    memory = configure(phoenix, tmp_path, "outage")

    def run(n: int) -> None:
        for i in range(n):
            with spanmux.span(f"request-{i}", kind="agent"), spanmux.span("call", kind="llm") as llm:
                llm.set_model("gpt-4o-mini", "openai")
                llm.set_usage(input_tokens=5, output_tokens=1)

    run(5)
    flush()
    phoenix.stop()
    try:
        run(5)
        assert not spanmux.flush(timeout=2)  # Phoenix is down: the records wait in the spool
        assert spanmux.stats()["backends"]["phoenix"]["spooled_spans"] >= 10
    finally:
        phoenix.start()  # same working dir and ports
    flush()

    produced = memory.spans
    assert len(produced) == 20
    stored = phoenix.read("outage", expect_spans=len(produced))["spans"]
    check_same_spans(produced, stored)


def test_a_batch_sent_twice_is_stored_once(phoenix: PhoenixServer) -> None:
    """The lane re-sends a whole batch when a later part of it failed (e.g. its annotations): Phoenix
    keeps one copy of each span id, so redelivery is idempotent."""
    from spanmux.backends.phoenix import PhoenixBackend, PhoenixConfig

    trace_id, root_id = new_trace_id(), new_span_id()
    spans = [Span(trace_id=trace_id, span_id=root_id, parent_id=None, name="twice", kind="agent",
                  framework="manual", start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_100_000_000),
             Span(trace_id=trace_id, span_id=new_span_id(), parent_id=root_id, name="child", kind="tool",
                  framework="manual", start_ns=1_700_000_000_010_000_000, end_ns=1_700_000_000_020_000_000)]
    backend = PhoenixBackend(PhoenixConfig(endpoint=phoenix.url + "/v1/traces", project="twice"))
    backend.export(spans, [])
    backend.export(spans, [])
    backend.shutdown(1)
    stored = phoenix.read("twice", expect_spans=2)["spans"]
    check_same_spans(spans, stored)
