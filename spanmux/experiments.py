"""Experiments: run a dataset through a task, score every output, compare runs, in every backend.

    result = spanmux.evaluate(data=[...] | "items.jsonl" | "items.csv", task=agent_call,
                              scorers=[exact_match, judge], name="math-tutor", dataset="math-v1",
                              metadata={"variant": "B"}, concurrency=4)
    result.summary(); result.items

Each item runs in a trace of its own: a root span named after the experiment, the task inside it
(any framework the task calls is traced as usual) and one ``evaluator`` span per scorer, so a judge
that calls a model is traced in the same trace with its tokens and cost apart from the task's. The
trace carries the experiment's name, run id, dataset and item id as tags and metadata; scores are
``spanmux.score`` records on it (source ``code``, ``llm_judge`` for a scorer marked so).

The per-item figures are counted on the caller's side: the run watches the spans its items emit
(``Pipeline.observers``) and puts them through a private ``SpanProcessor``, the same rules the
worker applies (usage normalisation, estimates, delegating wrappers, prices), so ``result.items``
is right when ``evaluate`` returns, without waiting for any backend. The run itself then travels
as one ``ExperimentRun`` record through the pipeline, behind the spans and scores of its items, to
every backend's ``export_experiments`` (lanes, spools and replay carry it like the rest).

Items run on a thread pool (``concurrency`` threads), each in a copy of the caller's context taken
for it alone, so nothing set by one item (open spans, trace attributes) leaks into another; an
async task or scorer runs on an event loop of its own in that thread. A task or scorer that
raises marks the item (or the score) as an error and the run goes on; Ctrl-C stops the run,
keeps what finished (``status="interrupted"``) and returns it.

This module imports no framework; ``rich`` (the progress bar) is imported only when shown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import csv
import hashlib
import inspect
import json
import logging
import math
import numbers
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec

from spanmux import attributes as attr
from spanmux import runtime
from spanmux.context import CURRENT_SPAN, TRACE_ATTRIBUTES
from spanmux.model import (
    ExperimentItem,
    ExperimentRun,
    Score,
    ScoreSource,
    Span,
    new_trace_id,
)
from spanmux.serialize import to_jsonable
from spanmux.tracer import ManualSpan, score, span, trace_context

log = logging.getLogger("spanmux.experiments")

__all__ = [
    "DataItem", "ExperimentComparison", "ExperimentResult", "ExperimentSummary", "ItemChange", "ScorerDelta",
    "ScorerSummary", "compare_runs", "evaluate", "load_data", "scorer", "summarize",
]

ScoreValue = float | bool | str
_CONTENT_LIMIT = 64 * 1024


# ---------------------------------------------------------------- data

class DataItem(msgspec.Struct, frozen=True):
    """One dataset item as the task and the scorers see it."""

    id: str
    input: Any
    expected: Any = None
    metadata: dict[str, Any] | None = None


_EXPECTED_KEYS = ("expected", "expected_output", "reference", "answer")
_RESERVED = ("id", "input", "metadata", *_EXPECTED_KEYS)


def _item_of(raw: Any, index: int) -> tuple[str | None, Any, Any, dict[str, Any] | None]:
    if not isinstance(raw, Mapping):
        return None, raw, None, None
    expected = next((raw[k] for k in _EXPECTED_KEYS if k in raw), None)
    # a flat record (a CSV row) without an input column: every other column is the input
    value = raw["input"] if "input" in raw else {k: v for k, v in raw.items() if k not in _RESERVED}
    metadata = raw.get("metadata")
    if isinstance(metadata, str) and metadata.strip().startswith("{"):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = {"metadata": metadata}
    item_id = raw.get("id")
    return (str(item_id) if item_id not in (None, "") else None), value, expected, (
        dict(metadata) if isinstance(metadata, Mapping) else None)


def content_id(value: Any) -> str:
    """A stable id for an item without one: the hash of its input (the same in every run, so runs
    can be compared and Langfuse dataset items are not duplicated)."""
    text = json.dumps(value, sort_keys=True, default=repr, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_data(data: Iterable[Any] | str | Path) -> list[DataItem]:
    """Items from a list (dicts with ``input``, ``expected``, ``id``, ``metadata``; anything else is
    the input itself) or a ``.jsonl`` / ``.csv`` file of such records. Items without an id get the
    hash of their input; ids are unique within the data."""
    if isinstance(data, (str, Path)):
        path = Path(data)
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                records: list[Any] = list(csv.DictReader(handle))
        elif path.suffix.lower() in (".jsonl", ".ndjson"):
            records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        else:
            raise ValueError(f"spanmux.evaluate reads .jsonl and .csv files, not {path.name}")
    else:
        records = list(data)
    items: list[DataItem] = []
    seen: set[str] = set()
    for index, raw in enumerate(records):
        item_id, value, expected, metadata = _item_of(raw, index)
        base = item_id or content_id(value)
        unique, n = base, 1
        while unique in seen:
            n += 1
            unique = f"{base}-{n}"
        seen.add(unique)
        items.append(DataItem(unique, value, expected, metadata))
    return items


# ---------------------------------------------------------------- scorers

def scorer(name: str | None = None, *, judge: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Name a scorer and say whether it is an LLM judge (its scores get source ``llm_judge``)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.spanmux_scorer_name = name or getattr(fn, "__name__", "score")  # type: ignore[attr-defined]
        fn.spanmux_score_source = "llm_judge" if judge else "code"  # type: ignore[attr-defined]
        return fn

    return mark


class _Scorer:
    """A scorer callable with its name, source and the keywords it takes."""

    NAMES = ("input", "output", "expected", "metadata", "item")

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.name = str(getattr(fn, "spanmux_scorer_name", None) or getattr(fn, "name", None)
                        or getattr(fn, "__name__", None) or type(fn).__name__)
        source = getattr(fn, "spanmux_score_source", None) or getattr(fn, "source", None)
        self.source: ScoreSource = "llm_judge" if source == "llm_judge" else "code"
        try:
            parameters = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            parameters = {}  # type: ignore[assignment]
        variadic = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        by_name = [n for n in self.NAMES if n in parameters]
        self.keywords: tuple[str, ...] | None = self.NAMES if variadic else (tuple(by_name) if by_name else None)

    def __call__(self, item: DataItem, output: Any) -> Any:
        values = {"input": item.input, "output": output, "expected": item.expected, "metadata": item.metadata,
                  "item": item}
        if self.keywords is None:
            return _resolve(self.fn(item.input, output, item.expected))
        return _resolve(self.fn(**{k: values[k] for k in self.keywords}))


def _resolve(value: Any) -> Any:
    """The value of a call, awaited on an event loop of its own when it is a coroutine."""
    if inspect.isawaitable(value):
        async def wait() -> Any:
            return await value

        return asyncio.run(wait())
    return value


def _score_parts(name: str, value: Any) -> tuple[str, ScoreValue, str | None, ScoreSource | None]:
    """(name, value, comment, source) of what a scorer returned: a number, bool, label or Score."""
    if isinstance(value, Score):
        return value.name or name, value.value, value.comment, value.source
    if isinstance(value, bool | str):
        return name, value, None, None
    if isinstance(value, numbers.Real) and not math.isnan(float(value)):  # numpy numbers too
        return name, float(value), None, None
    raise TypeError(f"scorer {name!r} returned {type(value).__name__}; return a number, bool, str or spanmux.Score")


# ---------------------------------------------------------------- per-item figures

class _Watch:
    """The raw spans of the traces this run started, as they are emitted (any thread)."""

    def __init__(self) -> None:
        self.spans: dict[str, list[Span]] = {}

    def add(self, trace_id: str) -> None:
        self.spans[trace_id] = []

    def __call__(self, record: Any) -> None:
        if type(record) is Span:
            found = self.spans.get(record.trace_id)
            if found is not None:
                found.append(record)

    def take(self, trace_id: str) -> list[Span]:
        return self.spans.pop(trace_id, [])


_COUNTED_KINDS = frozenset({"llm", "embedding"})


class _Figures:
    """Task and evaluator tokens and cost of one trace, from its spans processed as the worker does."""

    def __init__(self, processor: Any) -> None:
        self._processor = processor
        self._lock = threading.Lock()  # the processor keeps a little state (delegating wrappers)

    def of(self, spans: list[Span], evaluator_ids: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0, "cost": None,
                               "evaluator_tokens": 0, "evaluator_cost": None}
        if self._processor is None:
            return out
        processed = []
        with self._lock:
            for raw in spans:
                if raw.kind not in _COUNTED_KINDS and raw.usage is None and raw.cost is None:
                    processed.append(raw)  # carries no figures: only its place in the tree matters
                    continue
                try:
                    done = self._processor(raw)
                except Exception:  # the worker logs its own failures; a figure is not worth a second one
                    done = None
                processed.append(done if done is not None else raw)
        parents = {s.span_id: s.parent_id for s in processed}

        def judged(span_id: str | None) -> bool:
            hops = 0
            while span_id is not None and hops < 1000:
                if span_id in evaluator_ids:
                    return True
                span_id, hops = parents.get(span_id), hops + 1
            return False

        for s in processed:
            usage, cost = s.usage, s.cost
            if judged(s.span_id):
                out["evaluator_tokens"] += usage.total_tokens if usage else 0
                if cost is not None:
                    out["evaluator_cost"] = (out["evaluator_cost"] or 0.0) + cost.total
                continue
            if usage is not None:
                out["input_tokens"] += usage.input_tokens
                out["output_tokens"] += usage.output_tokens
                out["total_tokens"] += usage.total_tokens
            if cost is not None:
                out["cost"] = (out["cost"] or 0.0) + cost.total
        return out


class ItemCounter:
    """Counts each experiment item's task and evaluator figures: watches the spans its traces emit
    (``Pipeline.observers``, while started) and processes them as the worker does. Used by
    ``evaluate`` and by the DSPy integration's ``dspy.Evaluate`` runs."""

    def __init__(self) -> None:
        settings = runtime.settings()
        self.pipeline = runtime.active()
        processor = None
        if settings is not None and self.pipeline is not None:
            from spanmux.processors import SpanProcessor

            processor = SpanProcessor(settings)
        self._watch = _Watch()
        self._figures = _Figures(processor)

    def start(self) -> None:
        if self.pipeline is not None:
            self.pipeline.observers = (*self.pipeline.observers, self._watch)

    def stop(self) -> None:
        if self.pipeline is not None:
            self.pipeline.observers = tuple(o for o in self.pipeline.observers if o is not self._watch)

    def track(self, trace_id: str) -> None:
        self._watch.add(trace_id)

    def figures(self, trace_id: str, evaluator_ids: set[str]) -> dict[str, Any]:
        """The item's ``ExperimentItem`` figures (tokens and cost, task and evaluator apart); the
        trace is forgotten afterwards."""
        return self._figures.of(self._watch.take(trace_id), evaluator_ids)


class _ItemSpan(ManualSpan):
    """An item's root span: always the first span of a new trace, wherever ``evaluate`` is called."""

    __slots__ = ()

    def place(self, parent: Any, exact_parent: bool = False) -> None:
        self.trace_id, self.parent_id, self.trace = new_trace_id(), None, TRACE_ATTRIBUTES.get()


# ---------------------------------------------------------------- results

class ScorerSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One scorer over a run: the mean of numbers (a bool counts 1 for true: the pass rate), the
    counts of labels, how many items it scored and how often it failed."""

    name: str
    kind: Literal["numeric", "boolean", "categorical", "none"]
    mean: float | None
    count: int
    errors: int
    labels: dict[str, int] = {}


class ExperimentSummary(msgspec.Struct, frozen=True, kw_only=True):
    """What ``ExperimentResult.summary()`` and ``spanmux experiments show`` report."""

    run_id: str
    name: str
    dataset: str | None
    status: str
    items: int
    errors: int
    scorers: dict[str, ScorerSummary]
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost: float | None
    evaluator_tokens: int
    evaluator_cost: float | None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _scorer_names(run: ExperimentRun) -> list[str]:
    names = list(run.scorers)
    for item in run.items:
        for name in (*item.scores, *item.scorer_errors):
            if name not in names:
                names.append(name)
    return names


def _summarize_scorer(name: str, items: Sequence[ExperimentItem]) -> ScorerSummary:
    values = [i.scores[name] for i in items if name in i.scores]
    errors = sum(1 for i in items if name in i.scorer_errors)
    labels: dict[str, int] = {}
    numbers: list[float] = []
    for value in values:
        if isinstance(value, str):
            labels[value] = labels.get(value, 0) + 1
        else:
            numbers.append(float(value))
    if labels and not numbers:
        kind: Literal["numeric", "boolean", "categorical", "none"] = "categorical"
    elif numbers:
        kind = "boolean" if all(isinstance(v, bool) for v in values) else "numeric"
    else:
        kind = "none"
    mean = sum(numbers) / len(numbers) if numbers else None
    return ScorerSummary(name=name, kind=kind, mean=mean, count=len(values), errors=errors, labels=labels)


def _sum_cost(values: Iterable[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def summarize(run: ExperimentRun) -> ExperimentSummary:
    """The one summary of a run (the result, the CLI, MLflow's metrics all use it)."""
    items = run.items
    latencies = [i.latency_ms for i in items if i.error is None]
    return ExperimentSummary(
        run_id=run.run_id, name=run.name, dataset=run.dataset, status=run.status, items=len(items),
        errors=sum(1 for i in items if i.error is not None),
        scorers={name: _summarize_scorer(name, items) for name in _scorer_names(run)},
        latency_p50_ms=_percentile(latencies, 0.5), latency_p95_ms=_percentile(latencies, 0.95),
        input_tokens=sum(i.input_tokens for i in items), output_tokens=sum(i.output_tokens for i in items),
        total_tokens=sum(i.total_tokens for i in items), cost=_sum_cost(i.cost for i in items),
        evaluator_tokens=sum(i.evaluator_tokens for i in items),
        evaluator_cost=_sum_cost(i.evaluator_cost for i in items),
    )


class ExperimentResult:
    """What ``evaluate`` returns: the run (``run``), its items in dataset order and its summary."""

    def __init__(self, run: ExperimentRun) -> None:
        self.run = run

    @property
    def run_id(self) -> str:
        return self.run.run_id

    @property
    def items(self) -> list[ExperimentItem]:
        return self.run.items

    @property
    def interrupted(self) -> bool:
        return self.run.status == "interrupted"

    def summary(self) -> ExperimentSummary:
        return summarize(self.run)

    def __repr__(self) -> str:
        return f"ExperimentResult(name={self.run.name!r}, run_id={self.run.run_id!r}, items={len(self.items)})"


# ---------------------------------------------------------------- comparison

Verdict = Literal["better", "worse", "same", "mixed"]


class ScorerDelta(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    mean_a: float | None
    mean_b: float | None
    delta: float | None
    better: int
    worse: int
    same: int


class ItemChange(msgspec.Struct, frozen=True, kw_only=True):
    """One item present in both runs: its scores in each and the verdict (higher is better; an
    item that failed in one run is worse there; a changed label alone is ``mixed``)."""

    item_id: str
    verdict: Verdict
    scores_a: dict[str, ScoreValue]
    scores_b: dict[str, ScoreValue]
    trace_a: str
    trace_b: str
    error_a: str | None = None
    error_b: str | None = None


class ExperimentComparison(msgspec.Struct, frozen=True, kw_only=True):
    """Run B against run A (``LocalStore.compare_experiments``, ``spanmux experiments compare``)."""

    run_a: str
    run_b: str
    name_a: str
    name_b: str
    scorers: list[ScorerDelta]
    items: list[ItemChange]
    only_a: list[str]
    only_b: list[str]
    latency_p50_delta_ms: float | None
    cost_delta: float | None

    def counts(self) -> dict[str, int]:
        out = {"better": 0, "worse": 0, "same": 0, "mixed": 0}
        for item in self.items:
            out[item.verdict] += 1
        return out


def _direction(a: ScoreValue | None, b: ScoreValue | None) -> int | None:
    """+1 better, -1 worse, 0 same, None: not comparable in order (labels, a missing side)."""
    if a is None or b is None:
        return None if a is not b else 0
    if isinstance(a, str) or isinstance(b, str):
        return 0 if a == b else None
    return (float(b) > float(a)) - (float(b) < float(a))


def _verdict(a: ExperimentItem, b: ExperimentItem, names: list[str]) -> Verdict:
    if (a.error is None) != (b.error is None):
        return "worse" if b.error is not None else "better"
    directions = [_direction(a.scores.get(n), b.scores.get(n)) for n in names]
    up = any(d == 1 for d in directions)
    down = any(d == -1 for d in directions)
    if up and down or (None in directions and not (up or down)):
        return "mixed"
    return "better" if up else "worse" if down else "same"


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def compare_runs(a: ExperimentRun, b: ExperimentRun) -> ExperimentComparison:
    """Run B against run A, items joined on their id."""
    names = [n for n in _scorer_names(a) if n in _scorer_names(b)] + [
        n for n in _scorer_names(b) if n not in _scorer_names(a)]
    by_id_a = {i.item_id: i for i in a.items}
    by_id_b = {i.item_id: i for i in b.items}
    changes = []
    counts = {n: [0, 0, 0] for n in names}
    for item_id, item_b in by_id_b.items():
        item_a = by_id_a.get(item_id)
        if item_a is None:
            continue
        for n in names:
            d = _direction(item_a.scores.get(n), item_b.scores.get(n))
            if d is not None:
                counts[n][{1: 0, -1: 1, 0: 2}[d]] += 1
        changes.append(ItemChange(
            item_id=item_id, verdict=_verdict(item_a, item_b, names), scores_a=dict(item_a.scores),
            scores_b=dict(item_b.scores), trace_a=item_a.trace_id, trace_b=item_b.trace_id,
            error_a=item_a.error, error_b=item_b.error,
        ))
    sa, sb = summarize(a), summarize(b)
    deltas = []
    for n in names:
        mean_a = sa.scorers[n].mean if n in sa.scorers else None
        mean_b = sb.scorers[n].mean if n in sb.scorers else None
        deltas.append(ScorerDelta(name=n, mean_a=mean_a, mean_b=mean_b, delta=_delta(mean_a, mean_b),
                                  better=counts[n][0], worse=counts[n][1], same=counts[n][2]))
    return ExperimentComparison(
        run_a=a.run_id, run_b=b.run_id, name_a=a.name, name_b=b.name, scorers=deltas, items=changes,
        only_a=[i for i in by_id_a if i not in by_id_b], only_b=[i for i in by_id_b if i not in by_id_a],
        latency_p50_delta_ms=_delta(sa.latency_p50_ms, sb.latency_p50_ms), cost_delta=_delta(sa.cost, sb.cost),
    )


# ---------------------------------------------------------------- running

class Content:
    """What of an item a record keeps, by the configuration's ``capture_content`` rule: inputs,
    outputs and error messages only when content is captured (an error message may quote either),
    serialized with its size bound. Used by ``evaluate`` and the DSPy integration alike."""

    def __init__(self) -> None:
        settings = runtime.settings()
        self.capture = bool(getattr(settings, "capture_content", True))
        self.limit = int(getattr(settings, "max_content_bytes", _CONTENT_LIMIT) or _CONTENT_LIMIT)

    def value(self, value: Any) -> Any:
        if not self.capture or value is None:
            return None
        return to_jsonable(value, self.limit)[0]

    def error(self, exc: BaseException) -> str:
        if not self.capture:
            return type(exc).__name__
        text = f"{type(exc).__name__}: {exc}"
        return text if len(text) <= 2000 else text[:2000] + "..."


def item_trace_fields(name: str, run_id: str, dataset: str | None, metadata: Mapping[str, Any] | None,
                      item_id: str, item_metadata: Mapping[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    """The tags and metadata of an item's trace: the run's metadata, the item's, and the experiment's
    name, run id, dataset and item id (``spanmux.attributes.EXPERIMENT_*``). One place, so a backend
    that re-describes an item's root (Langfuse) says the same."""
    fields = {**(metadata or {}), **(item_metadata or {}), attr.EXPERIMENT_NAME: name,
              attr.EXPERIMENT_RUN_ID: run_id, attr.EXPERIMENT_ITEM_ID: item_id}
    tags = [f"experiment:{name}"]
    if dataset:
        fields[attr.EXPERIMENT_DATASET] = dataset
        tags.append(f"dataset:{dataset}")
    return tags, fields


class _Runner:
    """One run of an experiment: the shared parts every item uses."""

    def __init__(self, name: str, task: Callable[..., Any], scorers: Sequence[Callable[..., Any]],
                 dataset: str | None, metadata: Mapping[str, Any] | None) -> None:
        self.name = name
        self.task = task
        self.scorers = [_Scorer(s) for s in scorers]
        self.dataset = dataset
        self.metadata = dict(metadata or {})
        self.run_id = new_trace_id()
        self.content = Content()
        self.counter = ItemCounter()
        try:
            parameters = list(inspect.signature(task).parameters)
        except (TypeError, ValueError):
            parameters = []
        self.takes_input = parameters == ["input"]
        """The task's one parameter is named ``input``: it gets the item's input, else the item."""

    def _content(self, value: Any) -> Any:
        return self.content.value(value)

    def _call_task(self, item: DataItem) -> Any:
        if self.takes_input:
            return _resolve(self.task(item.input))
        return _resolve(self.task({"input": item.input, "expected": item.expected, "metadata": item.metadata,
                                   "id": item.id}))

    def run_item(self, index: int, item: DataItem) -> ExperimentItem:
        """Run one item in its own trace (the caller gives each item a fresh context copy)."""
        CURRENT_SPAN.set(None)  # an item never nests under a span open where evaluate was called
        tags, metadata = item_trace_fields(self.name, self.run_id, self.dataset, self.metadata, item.id,
                                           item.metadata)
        error: str | None = None
        output: Any = None
        scores: dict[str, ScoreValue] = {}
        score_ids: dict[str, str] = {}
        scorer_errors: dict[str, str] = {}
        evaluator_ids: set[str] = set()
        with trace_context(name=self.name, tags=tags, metadata=metadata):
            root = _ItemSpan(self.name, "chain", item.input, {"experiment.item_id": item.id})
            root.start()
            self.counter.track(root.trace_id)
            start = time.time_ns()
            try:
                output = self._call_task(item)
            except Exception as exc:
                error = self.content.error(exc)
                root.record_error(exc)
            end = time.time_ns()
            root.set_output(output)
            if error is None:
                for judge in self.scorers:
                    self._score(judge, item, output, root, scores, score_ids, scorer_errors, evaluator_ids)
            root.end()
        root_end = time.time_ns()
        figures = self.counter.figures(root.trace_id, evaluator_ids)
        return ExperimentItem(
            item_id=item.id, index=index, trace_id=root.trace_id, span_id=root.span_id, start_ns=start, end_ns=end,
            input=self._content(item.input), expected=self._content(item.expected), output=self._content(output),
            metadata=item.metadata, scores=scores, score_ids=score_ids, error=error, scorer_errors=scorer_errors,
            root_end_ns=root_end, **figures,
        )

    def _score(self, judge: _Scorer, item: DataItem, output: Any, root: ManualSpan,
               scores: dict[str, ScoreValue], score_ids: dict[str, str], errors: dict[str, str],
               evaluator_ids: set[str]) -> None:
        with span(judge.name, kind="evaluator", input={"output": output, "expected": item.expected}) as evaluator:
            evaluator_ids.add(evaluator.span_id)
            try:
                name, value, comment, source = _score_parts(judge.name, judge(item, output))
            except Exception as exc:
                errors[judge.name] = self.content.error(exc)
                evaluator.record_error(exc)
                return
            evaluator.set_output(value)
        scores[name] = value
        score_id = score(root.trace_id, name, value, comment=comment, span_id=root.span_id,
                         source=source or judge.source)
        if score_id is not None:
            score_ids[name] = score_id


class _Progress:
    """A rich progress bar on stderr (only in a terminal, unless asked for)."""

    def __init__(self, show: bool | None, name: str, total: int) -> None:
        self._bar: Any = None
        if show is None:
            show = sys.stderr.isatty()
        if not show:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[errors]} errors"), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task(name, total=total, errors=0)
        self._bar.start()

    def advance(self, errors: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, advance=1, errors=errors)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def evaluate(
    *,
    data: Iterable[Any] | str | Path,
    task: Callable[..., Any],
    scorers: Sequence[Callable[..., Any]] = (),
    name: str | None = None,
    dataset: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    concurrency: int = 1,
    progress: bool | None = None,
) -> ExperimentResult:
    """Run every item of ``data`` through ``task`` (sync or async; called with the item's input when
    its one parameter is named ``input``, else with the item as a dict), score each output with
    ``scorers`` (callables taking any of ``input``, ``output``, ``expected``, ``metadata``, ``item``,
    or those first three positionally, returning a number, bool, label or ``spanmux.Score``) and file
    the run in every configured backend. ``concurrency`` items run at once. Never raises for a
    failing task or scorer (the item records the error); Ctrl-C returns what finished."""
    items = load_data(data)
    title = name or getattr(task, "__name__", None) or "experiment"
    runner = _Runner(title, task, scorers, dataset, metadata)
    runner.counter.start()
    started = time.time_ns()
    done: dict[int, ExperimentItem] = {}
    status: Literal["finished", "interrupted"] = "finished"
    bar = _Progress(progress, title, len(items))
    pool = concurrent.futures.ThreadPoolExecutor(max(1, int(concurrency)), thread_name_prefix="spanmux-evaluate")
    futures: dict[concurrent.futures.Future[ExperimentItem], int] = {}
    try:
        futures = {pool.submit(contextvars.copy_context().run, runner.run_item, index, item): index
                   for index, item in enumerate(items)}
        errors = 0
        for future in concurrent.futures.as_completed(futures):
            index = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # a bug of ours, not the task's: keep the item as an error
                log.exception("spanmux.evaluate: item %d failed", index)
                item = items[index]
                result = ExperimentItem(item_id=item.id, index=index, trace_id="", span_id="", start_ns=0,
                                        end_ns=0, error=runner.content.error(exc))
            done[index] = result
            errors += result.error is not None
            bar.advance(errors)
    except KeyboardInterrupt:
        status = "interrupted"
        for future, index in futures.items():  # finished while the interrupt was on its way
            if index not in done and future.done() and not future.cancelled() and future.exception() is None:
                done[index] = future.result()
        log.warning("spanmux.evaluate %r interrupted: keeping the %d items that finished", title, len(done))
    finally:
        pool.shutdown(wait=status == "finished", cancel_futures=True)
        bar.close()
        runner.counter.stop()
    run = ExperimentRun(
        run_id=runner.run_id, name=title, start_ns=started, end_ns=time.time_ns(), dataset=dataset,
        metadata=runner.metadata or None, scorers=[s.name for s in runner.scorers],
        items=[done[i] for i in sorted(done)], status=status,
    )
    emit_run(run)
    return ExperimentResult(run)


def emit_run(run: ExperimentRun) -> None:
    """Hand a finished run to the pipeline, behind the spans and scores of its items."""
    pipeline = runtime.active()
    if pipeline is not None:
        pipeline.emit(run)

