"""The data a page is built from, as plain functions of what the store returned (no Starlette, no
SQL): the tree rows ``trace.js`` draws, chart data, a span's detail, a trace's place in its session."""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any

from spanmux.comparison import GroupStats
from spanmux.model import Score, Span, time_to_first_token_ns
from spanmux.store import LocalStore, TimeBucket, TraceFilter, TraceSummary
from spanmux.ui import render

if TYPE_CHECKING:
    from spanmux.experiments import ExperimentComparison

_HEX = re.compile(r"^[0-9a-f]{1,32}$")


def resolve(db: LocalStore, trace_id: str) -> str | None:
    trace_id = trace_id.lower().removeprefix("tr-")
    if db.get_trace_summary(trace_id) is not None:
        return trace_id
    return db.find_trace_id(trace_id) if _HEX.match(trace_id) else None


def summary_scores(scores: list[Score]) -> list[tuple[str, str]]:
    """Per score name: the mean of numbers/booleans, else the last label (the list's score column)."""
    names: dict[str, list[Score]] = {}
    for score in scores:
        names.setdefault(score.name, []).append(score)
    out = []
    for name, group in names.items():
        values = [s.value for s in group]
        if all(isinstance(v, bool) for v in values) and len(values) == 1:
            out.append((name, render.fmt_score(values[0])))
        elif all(isinstance(v, (int, float)) for v in values):
            out.append((name, f"{sum(float(v) for v in values) / len(values):.2g}"))
        else:
            out.append((name, str(values[-1])))
    return out


def span_view(span: Span) -> dict[str, Any]:
    """What the span detail panel shows of one span."""
    attributes = dict(span.attributes or {})
    documents = render.documents_of(attributes)
    ttft = time_to_first_token_ns(span)
    return {
        "span": span, "input": render.show(span.input), "output": render.show(span.output),
        "documents": documents, "attributes": attributes, "ttft_ms": ttft / 1e6 if ttft is not None else None,
        "attributes_json": render.to_json(attributes) if attributes else None,
        "parameters_json": render.to_json(span.model.parameters) if span.model and span.model.parameters else None,
    }


def turn_of(db: LocalStore, summary: TraceSummary, most: int = 1_000) -> dict[str, Any] | None:
    """Where a trace sits in its session (turn number, previous and next trace), for the trace header."""
    if not summary.session_id:
        return None
    ids = [t.trace_id for t in itertools.islice(db.iter_traces(TraceFilter(session_id=summary.session_id)), most)]
    if summary.trace_id not in ids:
        return None
    at = ids.index(summary.trace_id)
    return {"number": at + 1, "of": len(ids), "previous": ids[at - 1] if at else None,
            "next": ids[at + 1] if at + 1 < len(ids) else None}


def depths(spans: list[Span]) -> dict[str, int]:
    """Each span's depth in tree order (``spans`` parents first)."""
    depth: dict[str, int] = {}
    for span in spans:
        depth[span.span_id] = depth[span.parent_id] + 1 if span.parent_id in depth else 0
    return depth


def tree_rows(summary: TraceSummary, rows: list[Any]) -> dict[str, Any]:
    """The tree as compact rows in tree order (see the contract): what ``trace.js`` draws."""
    ids = {r.span_id for r in rows}
    children: dict[str | None, list[Any]] = {}
    for row in rows:  # by start time already
        children.setdefault(row.parent_id if row.parent_id in ids else None, []).append(row)
    out: list[list[Any]] = []
    index: dict[str, int] = {}
    stack: list[tuple[Any, int, int]] = [(r, -1, 0) for r in reversed(children.get(None, []))]
    start = min([summary.start_ns, *(r.start_ns for r in rows)])
    end = max([summary.end_ns, *(r.end_ns for r in rows)])
    while stack:
        row, parent, depth = stack.pop()
        index[row.span_id] = len(out)
        out.append([row.span_id, parent, depth, row.name, row.kind, row.status,
                    round((row.start_ns - start) / 1e6, 3), round((row.end_ns - row.start_ns) / 1e6, 3),
                    len(children.get(row.span_id, [])), row.model, row.total_tokens])
        stack.extend((child, index[row.span_id], depth + 1) for child in reversed(children.get(row.span_id, [])))
    return {"trace_id": summary.trace_id, "start_ns": start, "end_ns": end,
            "columns": ["span_id", "parent_index", "depth", "name", "kind", "status", "start_offset_ms",
                        "duration_ms", "child_count", "model", "total_tokens"], "rows": out}


def compare_chart(groups: list[GroupStats]) -> dict[str, Any]:
    """The compare page's chart data (Chart.js datasets are built by ``static/charts.js``)."""
    score_names = sorted({name for g in groups for name, s in g.scores.items() if s.mean is not None})
    return {
        "labels": [g.group for g in groups],
        "p50_ms": [round(g.p50_ms, 2) for g in groups], "p95_ms": [round(g.p95_ms, 2) for g in groups],
        "input_tokens": [round(g.mean_input_tokens, 1) for g in groups],
        "output_tokens": [round(g.mean_output_tokens, 1) for g in groups],
        "cost": [g.mean_cost or 0 for g in groups], "error_rate": [round(g.error_rate * 100, 1) for g in groups],
        "scores": {name: [g.scores[name].mean if name in g.scores else None for g in groups] for name in score_names},
    }


def with_empty_buckets(buckets: list[TimeBucket], width_ns: int, most: int = 2_000) -> list[TimeBucket]:
    """The buckets with the empty ones between them put back (a chart's time axis must not skip a quiet
    hour); left as they are when that would make more than ``most`` buckets."""
    if len(buckets) < 2 or (buckets[-1].start_ns - buckets[0].start_ns) // width_ns >= most:
        return buckets
    known = {b.start_ns: b for b in buckets}
    return [known.get(start) or TimeBucket(start_ns=start, traces=0, errors=0, input_tokens=0, output_tokens=0,
                                           total_tokens=0, cost_total=None)
            for start in range(buckets[0].start_ns, buckets[-1].start_ns + 1, width_ns)]


def experiment_chart(comparison: ExperimentComparison) -> dict[str, Any]:
    """The experiment compare page's chart data: per scorer the means of both runs and the delta, as
    ``compare_runs`` computed them (nothing computed here; ``static/charts.js`` draws them)."""
    return {
        "labels": [d.name for d in comparison.scorers],
        "label_a": f"A: {comparison.name_a} {comparison.run_a[:8]}",
        "label_b": f"B: {comparison.name_b} {comparison.run_b[:8]}",
        "mean_a": [d.mean_a for d in comparison.scorers], "mean_b": [d.mean_b for d in comparison.scorers],
        "delta": [d.delta for d in comparison.scorers],
    }
