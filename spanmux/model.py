"""The event model every integration emits and every backend receives.

Records are ``msgspec.Struct`` (frozen): building a Span with eleven keyword arguments costs about
0.8 us on the framework's thread against 3.5 us for a frozen slotted dataclass with the same fields
(timeit, this repository's dev machine), and the same types encode to msgpack for the spool and to
JSON for the store. Pydantic is kept for configuration only.

``input``/``output`` hold the framework's raw objects when a span is emitted; the worker thread
replaces them with JSON-able, size-bounded values before any backend sees them.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any, Final, Literal, Protocol, get_args

import msgspec

SpanKind = Literal[
    "agent", "chain", "llm", "embedding", "retriever", "reranker", "tool", "parser",
    "evaluator", "guardrail", "span",
]
"""What a span is; the one list every backend maps from (``Span.kind``). A type only: building a
Span checks nothing (msgspec validates on decode, so spool files are checked when read back)."""
SPAN_KINDS: Final[tuple[SpanKind, ...]] = get_args(SpanKind)
Framework = Literal["langchain", "llamaindex", "dspy", "manual"]
Status = Literal["ok", "error"]
ScoreDataType = Literal["numeric", "boolean", "categorical"]
ScoreSource = Literal["human", "llm_judge", "code"]
CostSource = Literal["provider", "price-table", "config"]


_ids = random.Random()
"""Our own generator, seeded from ``os.urandom``: ``random.seed()`` in the user's program does not
touch it, and a forked child reseeds it (below). Half the cost of ``os.urandom`` per id (one
system call each), on every span's start."""
os.register_at_fork(after_in_child=_ids.seed)
_random_bits = _ids.getrandbits


def new_trace_id() -> str:
    """32 lowercase hex digits, never all zeros: a valid OpenTelemetry trace id, reused as-is by
    every backend."""
    return "%032x" % (_random_bits(128) or 1)


def new_span_id() -> str:
    """16 lowercase hex digits, never all zeros: a valid OpenTelemetry span id."""
    return "%016x" % (_random_bits(64) or 1)


class ErrorInfo(msgspec.Struct, frozen=True):
    type: str
    message: str
    traceback: str | None = None


class ModelInfo(msgspec.Struct, frozen=True):
    name: str | None = None
    provider: str | None = None
    parameters: dict[str, Any] | None = None


class Usage(msgspec.Struct, frozen=True):
    """Token counts of one model call. Buckets follow OpenAI semantics: ``input_tokens`` includes
    cached tokens and ``output_tokens`` includes reasoning tokens; backends that want exclusive
    buckets (Langfuse) subtract."""

    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


class Cost(msgspec.Struct, frozen=True):
    """USD cost of one model call and where the figure came from."""

    input: float = 0.0
    output: float = 0.0
    total: float = 0.0
    source: CostSource = "price-table"


class TraceAttributes(msgspec.Struct, frozen=True):
    """Trace-level fields set by ``spanmux.trace_context``; one instance is shared by reference
    by every span started inside the context."""

    name: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] | None = None


class Span(msgspec.Struct, frozen=True):
    """One finished span. Not ``kw_only``: ``OpenSpan.finish()`` builds one per span on the
    framework's thread with positional arguments, 0.35 us against 2 us for the same eighteen by
    keyword (msgspec 0.23, timeit), and so does ``SpanProcessor`` on the worker; everything else
    builds it by keyword, in any order. Fields are only ever added at the end
    (``tests/test_open_spans.py`` holds the order)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: SpanKind
    framework: str
    start_ns: int
    end_ns: int
    status: Status = "ok"
    error: ErrorInfo | None = None
    input: Any = None
    output: Any = None
    model: ModelInfo | None = None
    usage: Usage | None = None
    cost: Cost | None = None
    completion_start_ns: int | None = None
    attributes: dict[str, Any] | None = None
    trace: TraceAttributes | None = None
    truncated: bool = False

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class _Streamed(Protocol):
    @property
    def start_ns(self) -> int: ...
    @property
    def completion_start_ns(self) -> int | None: ...


def time_to_first_token_ns(span: _Streamed) -> int | None:
    """Nanoseconds from a call's start to its first streamed token, None when it did not stream.
    The one derivation of time to first token: integrations only record ``completion_start_ns``;
    the span's ``llm.time_to_first_token_ms`` attribute and every backend's field come from here."""
    first = span.completion_start_ns
    return None if first is None else first - span.start_ns


class Score(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    trace_id: str
    name: str
    value: float | bool | str
    data_type: ScoreDataType
    span_id: str | None = None
    comment: str | None = None
    source: ScoreSource = "code"
    timestamp_ns: int = 0


def infer_score_type(value: float | bool | str) -> ScoreDataType:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "numeric"
    return "categorical"


def make_score(
    trace_id: str,
    name: str,
    value: float | bool | str,
    *,
    span_id: str | None = None,
    comment: str | None = None,
    source: ScoreSource = "code",
    data_type: ScoreDataType | None = None,
) -> Score:
    return Score(
        id=new_span_id() + new_span_id(),
        trace_id=trace_id,
        span_id=span_id,
        name=name,
        value=value,
        data_type=data_type or infer_score_type(value),
        comment=comment,
        source=source,
        timestamp_ns=time.time_ns(),
    )


ExperimentStatus = Literal["finished", "interrupted"]


class ExperimentItem(msgspec.Struct, frozen=True, kw_only=True):
    """One dataset item run through an experiment's task and scored: what every backend files per
    item. ``input``/``expected``/``output`` are already JSON-able (serialized by the runner).
    Tokens and cost are the task's; a scorer's own model calls (under its ``evaluator`` span) are
    the ``evaluator_*`` figures, so a judge never inflates what the task cost."""

    item_id: str
    index: int
    trace_id: str
    span_id: str
    start_ns: int
    end_ns: int
    input: Any = None
    expected: Any = None
    output: Any = None
    metadata: dict[str, Any] | None = None
    scores: dict[str, float | bool | str] = {}
    score_ids: dict[str, str] = {}
    error: str | None = None
    scorer_errors: dict[str, str] = {}
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    cost: float | None = None
    evaluator_tokens: int = 0
    evaluator_cost: float | None = None
    root_end_ns: int | None = None
    """When the item's root span ended (after its scorers); ``end_ns`` is the task's end."""

    @property
    def latency_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


class ExperimentRun(msgspec.Struct, frozen=True, kw_only=True):
    """One run of an experiment (``spanmux.evaluate``, or a traced ``dspy.Evaluate``) with its
    items: a record the pipeline carries to every backend beside spans and scores. ``run_id`` is
    new for every run (rerunning an experiment name makes a new run); delivering the same record
    twice must change nothing (backends upsert by ``run_id`` and item id)."""

    run_id: str
    name: str
    start_ns: int
    end_ns: int
    dataset: str | None = None
    metadata: dict[str, Any] | None = None
    scorers: list[str] = []
    items: list[ExperimentItem] = []
    status: ExperimentStatus = "finished"
    source: str = "spanmux"
