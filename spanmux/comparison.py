"""A/B comparison over the built-in store (``spanmux stats``): traces grouped by model, variant,
prompt, tag, user, session or name, with latency percentiles, tokens, cost and mean scores per
group. (Not named ``spanmux/stats.py``: that submodule would shadow the ``spanmux.stats()``
function as soon as it is imported.)

Tag a variant with ``spanmux.trace_context(metadata={"variant": "B"})`` and compare with
``spanmux stats --by metadata.variant`` (or ``--by variant``). A prompt's name and version in
trace metadata (``prompt.name`` / ``prompt.version``) group with ``--by prompt``.

Everything is read from the per-trace summaries (no span scan) plus one query for the scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from spanmux.attributes import PROMPT_NAME, PROMPT_VERSION, VARIANT

if TYPE_CHECKING:
    from spanmux.model import Score
    from spanmux.store import LocalStore, TraceFilter, TraceSummary

NONE_GROUP = "(none)"
GROUPINGS = ("model", "tag", "user", "session", "name", "prompt", "variant", "metadata.KEY")


class ScoreStats(msgspec.Struct, frozen=True):
    """One score name within a group. Numeric and boolean scores have a mean (booleans: the
    fraction true); categorical ones have their value counts. Several values of one name on a
    trace are averaged first, so every trace weighs the same."""

    data_type: str
    traces: int
    mean: float | None = None
    counts: dict[str, int] | None = None


class GroupStats(msgspec.Struct, frozen=True):
    """One group's figures. ``mean_cost`` is ``total_cost / priced_traces``: a trace whose models
    have no price has no cost (not a cost of 0), so it is left out of the mean rather than pulling
    it down; ``priced_traces < traces`` says how many were left out."""

    group: str
    traces: int
    errors: int
    error_rate: float
    p50_ms: float
    p95_ms: float
    mean_llm_calls: float
    mean_input_tokens: float
    mean_output_tokens: float
    mean_total_tokens: float
    priced_traces: int
    total_cost: float | None
    mean_cost: float | None
    scores: dict[str, ScoreStats]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _text(value: Any) -> str:
    if value is None or value == "":
        return NONE_GROUP
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def _metadata_value(metadata: dict[str, Any], key: str) -> Any:
    """``metadata[key]``, or a nested ``metadata["prompt"]["name"]`` for the dotted key."""
    if key in metadata:
        return metadata[key]
    head, _, rest = key.partition(".")
    inner = metadata.get(head)
    return _metadata_value(inner, rest) if rest and isinstance(inner, dict) else None


def check_grouping(by: str) -> None:
    """Raise ``ValueError`` naming the valid groupings unless ``by`` is one."""
    if by in GROUPINGS[:-1] or (by.startswith("metadata.") and len(by) > len("metadata.")):
        return
    raise ValueError(f"cannot group by {by!r}; use one of: {', '.join(GROUPINGS)}")


def group_keys(summary: TraceSummary, by: str) -> list[str]:
    """The groups a trace belongs to (a trace with several tags is in each tag's group)."""
    if by == "model":
        return [" + ".join(summary.models) if summary.models else NONE_GROUP]
    if by == "tag":
        return list(dict.fromkeys(summary.tags)) or [NONE_GROUP]
    if by == "user":
        return [_text(summary.user_id)]
    if by == "session":
        return [_text(summary.session_id)]
    if by == "name":
        return [_text(summary.name)]
    if by == "variant":
        return [_text(_metadata_value(summary.metadata, VARIANT))]
    if by == "prompt":
        name = _metadata_value(summary.metadata, PROMPT_NAME)
        if name is None:
            return [NONE_GROUP]
        version = _metadata_value(summary.metadata, PROMPT_VERSION)
        return [_text(name) if version is None else f"{_text(name)}@{_text(version)}"]
    check_grouping(by)
    return [_text(_metadata_value(summary.metadata, by.removeprefix("metadata.")))]


def _score_value(score: Score) -> float | str:
    value = score.value
    if score.data_type == "categorical" or isinstance(value, str):
        return str(value)
    return float(value)


def _score_stats(per_trace: dict[str, dict[str, list[Score]]], trace_ids: Iterable[str]) -> dict[str, ScoreStats]:
    by_name: dict[str, list[list[Score]]] = {}
    for trace_id in trace_ids:
        for name, scores in per_trace.get(trace_id, {}).items():
            by_name.setdefault(name, []).append(scores)
    out: dict[str, ScoreStats] = {}
    for name in sorted(by_name):
        traces = by_name[name]
        data_type = traces[0][0].data_type
        if data_type == "categorical":
            counts: dict[str, int] = {}
            for scores in traces:
                for score in scores:
                    label = str(score.value)
                    counts[label] = counts.get(label, 0) + 1
            out[name] = ScoreStats(data_type, len(traces), counts=dict(sorted(counts.items())))
            continue
        means = []
        for scores in traces:
            values = [v for v in (_score_value(s) for s in scores) if isinstance(v, float)]
            if values:
                means.append(sum(values) / len(values))
        out[name] = ScoreStats(data_type, len(traces), mean=sum(means) / len(means) if means else None)
    return out


def aggregate(
    summaries: Iterable[TraceSummary], scores: Iterable[Score], by: str = "model"
) -> list[GroupStats]:
    """Per-group figures, groups sorted by name with ``(none)`` last."""
    groups: dict[str, list[TraceSummary]] = {}
    for summary in summaries:
        for key in group_keys(summary, by):
            groups.setdefault(key, []).append(summary)
    per_trace: dict[str, dict[str, list[Score]]] = {}
    for score in scores:
        per_trace.setdefault(score.trace_id, {}).setdefault(score.name, []).append(score)
    out = []
    for key in sorted(groups, key=lambda k: (k == NONE_GROUP, k)):
        members = groups[key]
        count = len(members)
        latencies = [m.duration_ms for m in members]
        errors = sum(1 for m in members if m.status == "error")
        costs = [m.cost_total for m in members if m.cost_total is not None]
        out.append(GroupStats(
            group=key, traces=count, errors=errors, error_rate=errors / count,
            p50_ms=percentile(latencies, 50), p95_ms=percentile(latencies, 95),
            mean_llm_calls=sum(m.llm_calls for m in members) / count,
            mean_input_tokens=sum(m.input_tokens for m in members) / count,
            mean_output_tokens=sum(m.output_tokens for m in members) / count,
            mean_total_tokens=sum(m.total_tokens for m in members) / count,
            priced_traces=len(costs),
            total_cost=sum(costs) if costs else None,
            mean_cost=sum(costs) / len(costs) if costs else None,
            scores=_score_stats(per_trace, (m.trace_id for m in members)),
        ))
    return out


def compare(store: LocalStore, by: str = "model", where: TraceFilter | None = None, **filters: Any) -> list[GroupStats]:
    """Group the traces of ``store`` matching ``where`` (or the same filters as keywords)."""
    check_grouping(by)  # fail before reading anything
    summaries = list(store.iter_traces(where, **filters))
    return aggregate(summaries, store.iter_scores(where, **filters), by)
