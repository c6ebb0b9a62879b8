"""Every backend maps every ``SpanKind`` to something deliberate: an entry of its own table (never a
fallback), a type its destination knows, and the kind itself kept where the destination has no
type of that name. A new kind, or a new built-in backend, fails here until it is mapped."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

from spanmux.config_schemas.observability import BUILTIN_BACKENDS
from spanmux.model import SPAN_KINDS, ModelInfo, Span, SpanKind, Usage, new_span_id, new_trace_id

KINDS: tuple[SpanKind, ...] = get_args(SpanKind)
TRACE = new_trace_id()


def _span(kind: SpanKind, parent: str | None = None) -> Span:
    return Span(trace_id=TRACE, span_id=new_span_id(), parent_id=parent, name=f"a {kind} step", kind=kind,
                framework="manual", start_ns=1_000, end_ns=2_000, model=ModelInfo("m", "p"), usage=Usage(3, 2, 5))


def test_the_kind_list_is_the_type() -> None:
    assert SPAN_KINDS == KINDS and len(set(KINDS)) == len(KINDS) == 11


def mlflow_types(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    pytest.importorskip("mlflow")
    from mlflow.entities import SpanType

    from spanmux.backends.mlflow import SPAN_TYPES, span_attributes, span_type_of

    assert set(SPAN_TYPES) == set(KINDS)
    known = {value for key, value in vars(SpanType).items() if not key.startswith("_")}
    out = {}
    for kind in KINDS:
        span = _span(kind)
        attributes = span_attributes(span)
        assert span_type_of(span) == SPAN_TYPES[kind] in known
        assert json.loads(attributes["spanmux.kind"]) == kind  # the kind travels too
        out[kind] = SPAN_TYPES[kind]
    assert [kind for kind, value in out.items() if value == "UNKNOWN"] == ["span"]
    return out


def langfuse_types(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    from langfuse_server import OBSERVATION_TYPES

    from spanmux.backends.langfuse import OBSERVATION_TYPE_BY_KIND, observation_attributes

    assert set(OBSERVATION_TYPE_BY_KIND) == set(KINDS)
    out = {}
    for kind in KINDS:
        attributes = observation_attributes(_span(kind))
        otype = attributes["langfuse.observation.type"]
        assert otype == OBSERVATION_TYPE_BY_KIND[kind] and otype in OBSERVATION_TYPES
        if otype != kind and (kind, otype) != ("llm", "generation"):
            # Langfuse has no type of that name: the observation says which kind it was
            assert attributes["langfuse.observation.metadata.kind"] == kind
        out[kind] = otype
    return out


def local_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    from spanmux.backends.local import LocalBackend, LocalStore

    root = _span("agent")
    spans = [root] + [_span(kind, root.span_id) for kind in KINDS if kind != "agent"]
    backend = LocalBackend(type("Section", (), {"path": str(tmp_path / "kinds.db")})())
    backend.export(spans, [])
    backend.shutdown(1)
    with LocalStore(tmp_path / "kinds.db") as store:
        stored = store.get_trace(TRACE)
    out = {s.name.split(" ")[1]: s.kind for s in stored}
    assert out == {kind: kind for kind in KINDS}  # stored as the kind itself, filterable by it
    return out


def console_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    from spanmux.backends.console import ConsoleBackend

    caplog.set_level(logging.INFO, logger="spanmux.console")
    ConsoleBackend(None).export([_span(kind) for kind in KINDS], [])
    lines = [r.getMessage() for r in caplog.records if r.name == "spanmux.console"]
    out = {}
    for kind, line in zip(KINDS, lines, strict=True):
        assert f" {kind} a {kind} step " in line
        out[kind] = kind
    return out


def otlp_kinds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> dict[str, str]:
    pytest.importorskip("opentelemetry.sdk.trace")
    from spanmux.backends.otlp import (
        OPENINFERENCE_KIND_BY_KIND,
        OPERATION_BY_KIND,
        genai_attributes,
        openinference_attributes,
        spanmux_attributes,
    )

    assert set(OPENINFERENCE_KIND_BY_KIND) == set(OPERATION_BY_KIND) == set(KINDS)
    known = {"LLM", "CHAIN", "TOOL", "RETRIEVER", "EMBEDDING", "AGENT", "RERANKER", "GUARDRAIL", "EVALUATOR"}
    operations = {"chat", "text_completion", "embeddings", "retrieval", "execute_tool", "invoke_agent"}
    out = {}
    for kind in KINDS:
        span = _span(kind)
        oi_kind = openinference_attributes(span)["openinference.span.kind"]
        assert oi_kind == OPENINFERENCE_KIND_BY_KIND[kind] in known
        assert genai_attributes(span).get("gen_ai.operation.name") == OPERATION_BY_KIND[kind]
        assert OPERATION_BY_KIND[kind] is None or OPERATION_BY_KIND[kind] in operations
        assert spanmux_attributes(span)["spanmux.kind"] == kind  # the kind travels too
        out[kind] = oi_kind
    return out


MAPPERS: dict[str, Callable[[Path, pytest.LogCaptureFixture], dict[str, str]]] = {
    "local": local_kinds,
    "superoptix": local_kinds,  # the same backend by SuperOptiX's name
    "console": console_kinds,
    "mlflow": mlflow_types,
    "langfuse": langfuse_types,
    "otlp": otlp_kinds,
    "phoenix": otlp_kinds,  # the same tables, Phoenix's defaults
}


def test_every_built_in_backend_is_checked() -> None:
    assert set(MAPPERS) == set(BUILTIN_BACKENDS), "a built-in backend without a kind mapping test"


@pytest.mark.parametrize("name", BUILTIN_BACKENDS)
def test_backend_maps_every_kind(name: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mapped = MAPPERS[name](tmp_path, caplog)
    assert set(mapped) == set(KINDS) and all(mapped.values())
