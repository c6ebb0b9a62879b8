"""Property-based fuzzing of every integration hook: whatever a framework (or a bug in it) passes,
in whatever order, no exception reaches the caller, and the pipeline keeps working afterwards."""

from __future__ import annotations

import inspect
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import TracedStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spanmux

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)


class Hostile:
    """An object that fails at everything a hook might try on it."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"hostile attribute {name}")

    def __repr__(self) -> str:
        raise RuntimeError("hostile repr")

    def __str__(self) -> str:
        raise RuntimeError("hostile str")

    def __len__(self) -> int:
        raise RuntimeError("hostile len")

    def __iter__(self) -> Any:
        raise RuntimeError("hostile iter")

    def __bool__(self) -> bool:
        raise RuntimeError("hostile bool")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("hostile eq")

    __hash__ = object.__hash__


class Weird(str):
    """A str subclass (as LangChain's TextAccessor) with extra state."""


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
           | st.binary(max_size=20) | st.builds(Weird, st.text(max_size=10)) | st.uuids()
           | st.just(float("nan")) | st.just(10**40) | st.builds(Hostile))
VALUES = st.recursive(
    SCALARS,
    lambda inner: (st.lists(inner, max_size=4) | st.tuples(inner, inner)
                   | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=4)
                   | st.builds(lambda d: SimpleNamespace(**d),
                               st.dictionaries(st.sampled_from(["model", "usage_metadata", "response_metadata",
                                                                "llm_output", "generations", "message",
                                                                "content", "name", "metadata", "tool_calls",
                                                                "text", "raw", "span_id", "id_"]),
                                               inner, max_size=4))),
    max_leaves=10,
)
IDS = [uuid.uuid4() for _ in range(4)]
STRING_IDS = ["a", "b", "Agent.run-1", "OpenAI.chat-2", ""]


def call_hooks(data: Any, target: Any, hooks: list[str], draw_positional: Any, draw_keywords: Any) -> None:
    """Call a random sequence of hooks with drawn arguments; any exception fails the example."""
    for _ in range(data.draw(st.integers(1, 10), label="calls")):
        hook = data.draw(st.sampled_from(hooks), label="hook")
        method = getattr(target, hook)
        params = [p for p in inspect.signature(method).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
        args = [draw_positional(data, p.name) for p in params]
        taken = {p.name for p in params}
        kwargs = {k: v for k, v in draw_keywords(data, method).items() if k not in taken}
        method(*args, **kwargs)


def after_fuzzing_the_pipeline_still_works(traced: TracedStore) -> None:
    assert spanmux.flush(30)
    with spanmux.span("still-alive"):
        pass
    names = [t.name for t in traced.traces()]
    assert "still-alive" in names
    stats = spanmux.stats()
    assert stats["processor_errors"] == 0
    assert stats["backends"]["local"]["export_errors"] == 0, stats


# ---------------------------------------------------------------- LangChain
def test_langchain_callback_hooks_never_raise(traced: TracedStore) -> None:
    pytest.importorskip("langchain_core")
    from spanmux.integrations.langchain import CallbackHandler

    handler = CallbackHandler()
    hooks = sorted(name for name in dir(CallbackHandler) if name.startswith("on_"))
    assert len(hooks) >= 18

    def positional(data: Any, name: str) -> Any:
        return data.draw(VALUES, label=name)

    def keywords(data: Any, method: Any) -> dict[str, Any]:
        ids = st.sampled_from(IDS) | VALUES
        kwargs = {"run_id": data.draw(ids, label="run_id"),
                  "parent_run_id": data.draw(st.none() | st.sampled_from(IDS) | VALUES, label="parent")}
        extra = data.draw(st.dictionaries(st.sampled_from(["tags", "metadata", "name", "run_type",
                                                           "invocation_params", "inputs", "serialized"]),
                                          VALUES, max_size=3), label="extra")
        return {**kwargs, **extra}

    @FUZZ
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        call_hooks(data, handler, hooks, positional, keywords)

    fuzz()
    after_fuzzing_the_pipeline_still_works(traced)


# ---------------------------------------------------------------- LlamaIndex
def test_llamaindex_span_and_event_handlers_never_raise(traced: TracedStore) -> None:
    pytest.importorskip("llama_index.core")
    from spanmux.integrations.llamaindex import LlamaIndexTracer, _handlers

    tracer = LlamaIndexTracer()
    span_handler, event_handler = _handlers(tracer)
    event_types = {name: type(name, (SimpleNamespace,), {}) for name in tracer.events}
    assert event_types, "the tracer handles no events?"
    attributes = ["span_id", "model_dict", "additional_kwargs", "messages", "response", "prompt", "chunks",
                  "query", "nodes", "str_or_query_bundle", "exception", "tool", "arguments", "chunk", "id_"]

    def positional(data: Any, name: str) -> Any:
        if name in ("id_", "span_id", "parent_span_id"):
            return data.draw(st.sampled_from(STRING_IDS) | VALUES, label=name)
        if name == "event":
            kind = data.draw(st.sampled_from(sorted(event_types)), label="event type")
            values = data.draw(st.dictionaries(st.sampled_from(attributes), VALUES, max_size=5), label="attrs")
            if data.draw(st.booleans(), label="known span"):
                values["span_id"] = data.draw(st.sampled_from(STRING_IDS), label="span")
            return event_types[kind](**values)
        return data.draw(VALUES, label=name)

    def keywords(data: Any, method: Any) -> dict[str, Any]:
        names = [n for n in ("instance", "parent_span_id", "tags", "result", "err")
                 if n in inspect.signature(method).parameters]
        return data.draw(st.dictionaries(st.sampled_from(names) if names else st.nothing(), VALUES, max_size=3),
                         label="kwargs")

    @FUZZ
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        call_hooks(data, span_handler, ["new_span", "prepare_to_exit_span", "prepare_to_drop_span"],
                   positional, keywords)
        call_hooks(data, event_handler, ["handle"], positional, lambda data, method: {})

    fuzz()
    after_fuzzing_the_pipeline_still_works(traced)


# ---------------------------------------------------------------- DSPy
def test_dspy_callback_hooks_never_raise(traced: TracedStore) -> None:
    pytest.importorskip("dspy")
    from spanmux.integrations.dspy import Callback

    callback = Callback()
    hooks = sorted(name for name in dir(Callback) if name.startswith("on_") and callable(getattr(Callback, name)))
    assert len(hooks) >= 12

    def positional(data: Any, name: str) -> Any:
        if name == "call_id":
            return data.draw(st.sampled_from(STRING_IDS) | VALUES, label=name)
        if name == "inputs":
            return data.draw(st.dictionaries(st.sampled_from(["kwargs", "args", "question", "messages", "prompt"]),
                                             VALUES, max_size=3) | VALUES, label=name)
        return data.draw(VALUES, label=name)

    def keywords(data: Any, method: Any) -> dict[str, Any]:
        if "exception" not in inspect.signature(method).parameters:
            return {}
        return {"exception": data.draw(st.none() | st.builds(RuntimeError, st.text(max_size=10))
                                       | st.builds(Hostile), label="exception")}

    @FUZZ
    @given(data=st.data())
    def fuzz(data: Any) -> None:
        call_hooks(data, callback, hooks, positional, keywords)

    fuzz()
    after_fuzzing_the_pipeline_still_works(traced)
