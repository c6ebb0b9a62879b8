"""Shared fixtures. Every test runs in its own temporary folder with spanmux reset afterwards,
so nothing leaks into the repository or between tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("DO_NOT_TRACK", "1")

import spanmux
from spanmux.backends.local import LocalStore, TraceSummary
from spanmux.model import Span
from spanmux.testing import Captured, capture, reset
from spanmux.usage import is_model_call


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPANMUX_CONFIG", raising=False)
    yield
    reset(timeout=1.0)  # uninstrument, forget the configuration; a backend left down is not retried for 10 s


def flush(timeout: float = 30) -> None:
    """``spanmux.flush`` that fails the test when the backends have not drained in ``timeout`` s."""
    assert spanmux.flush(timeout=timeout), "spanmux.flush timed out"


def lane_stats(name: str) -> dict[str, Any]:
    """The figures of backend ``name``'s lane in ``spanmux.stats()``."""
    return dict(spanmux.stats()["backends"][name])


def store_without_experiment_tables(path: Path) -> Path:
    """A store at ``path`` as a spanmux from before experiments left it: no experiment tables."""
    import sqlite3

    from spanmux.backends.local import open_database

    open_database(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE experiment_runs")
    conn.execute("DROP TABLE experiment_items")
    conn.commit()
    conn.close()
    return path


class TracedStore:
    """A spanmux configured to a fresh built-in store, with readers that flush first."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def flush(self) -> None:
        assert spanmux.flush(timeout=30), "spanmux.flush timed out"

    def store(self) -> LocalStore:
        self.flush()
        return LocalStore(self.path)

    def traces(self, **filters: Any) -> list[TraceSummary]:
        with self.store() as db:
            return db.list_traces(limit=10_000, **filters)

    def trace(self, trace_id: str) -> list[Span]:
        with self.store() as db:
            return db.get_trace(trace_id)

    def only_trace(self) -> list[Span]:
        """The spans of the single trace in the store (fails if there is not exactly one)."""
        found = self.traces()
        assert len(found) == 1, f"expected one trace, found {len(found)}: {[t.name for t in found]}"
        return self.trace(found[0].trace_id)


class Totals(NamedTuple):
    """A trace's figures summed from its spans, the way the store's trace summary counts them
    (the store's own summary is tested in test_local_store.py and test_token_totals.py)."""

    spans: int
    errors: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_total: float | None
    models: list[str]


def trace_totals(spans: list[Span]) -> Totals:
    usages = [s.usage for s in spans if s.usage is not None]
    costs = [s.cost.total for s in spans if s.cost is not None and s.cost.total is not None]
    models = list(dict.fromkeys(s.model.name for s in spans if s.model is not None and s.model.name))
    return Totals(
        len(spans), sum(s.status == "error" for s in spans), sum(is_model_call(s) for s in spans),
        sum(u.input_tokens for u in usages), sum(u.output_tokens for u in usages), sum(u.total_tokens for u in usages),
        sum(costs) if costs else None, models,
    )


@pytest.fixture
def traced(tmp_path: Path) -> TracedStore:
    path = tmp_path / "store" / "spanmux.db"
    spanmux.configure({
        "backends": ["local"],
        "local": {"path": str(path)},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
    })
    return TracedStore(path)


@pytest.fixture
def captured() -> Iterator[Captured]:
    """spanmux configured with an InMemoryBackend (``spanmux.testing.capture``) for the test."""
    with capture(flush_interval=0.05) as found:
        yield found


@pytest.fixture
def langfuse_server() -> Iterator[Any]:
    """A Langfuse contract server on loopback (tests/langfuse_server.py), stopped afterwards."""
    from langfuse_server import LangfuseContractServer  # tests/ is on sys.path (rootdir conftest)

    server = LangfuseContractServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real ``mlflow server`` (sqlite store, loopback, one worker), started once per session."""
    pytest.importorskip("mlflow")
    from mlflow_server import MlflowServer  # tests/ is on sys.path (rootdir conftest)

    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def weather_agent() -> Any:
    """A LangGraph agent (``langchain.agents.create_agent``) whose fake chat model calls the tool
    ``get_weather(city="Paris")`` and then answers "It is sunny in Paris."; both model calls report
    gpt-4o-mini and 40 input + 8 output = 48 tokens. Invoke it with "weather in Paris?"."""
    pytest.importorskip("langchain.agents")
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """Weather of a city."""
        return f"sunny in {city}"

    class ToolModel(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    usage = {"input_tokens": 40, "output_tokens": 8, "total_tokens": 48}
    model = ToolModel(responses=[
        AIMessage(content="", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call-1"}],
                  usage_metadata=usage, response_metadata={"model_name": "gpt-4o-mini"}),
        AIMessage(content="It is sunny in Paris.", usage_metadata=usage,
                  response_metadata={"model_name": "gpt-4o-mini"}),
    ])
    return create_agent(model, tools=[get_weather])


@pytest.fixture
def named_mock_llm() -> Any:
    """``named_mock_llm(max_tokens=6)``: LlamaIndex's MockLLM reporting the model gpt-4o-mini, so its
    spans carry a model and the price table applies (class name ``NamedMockLLM``)."""
    pytest.importorskip("llama_index.core")
    from llama_index.core.base.llms.types import LLMMetadata
    from llama_index.core.llms import MockLLM

    class NamedMockLLM(MockLLM):
        @property
        def metadata(self) -> LLMMetadata:
            return LLMMetadata(num_output=self.max_tokens or -1, model_name="gpt-4o-mini")

    return NamedMockLLM


# A ReAct episode with two tools, scripted for DSPy's DummyLM-style models (test_dspy, test_token_totals).
REACT_QUESTION = "What is 2+3 and the weather in Paris?"
REACT_ANSWERS: list[dict[str, Any]] = [
    {"next_thought": "Add first.", "next_tool_name": "add", "next_tool_args": {"a": 2, "b": 3}},
    {"next_thought": "Now the weather.", "next_tool_name": "weather", "next_tool_args": {"city": "Paris"}},
    {"next_thought": "Done.", "next_tool_name": "finish", "next_tool_args": {}},
    {"reasoning": "Both known.", "answer": "5, sunny in Paris"},
]


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def weather(city: str) -> str:
    """Current weather in a city."""
    return f"sunny in {city}"
