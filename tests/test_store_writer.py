"""The store writer's shortcuts (issue 16) keep the data exact: traces taken for new from the writer's
memory, values that may be None bound as a cheap stand-in, rows in statements of several sizes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from spanmux.backends.local import ROWS_PER_STATEMENT, LocalBackend, RecentTraces
from spanmux.config_schemas import LocalConfig
from spanmux.model import Cost, ModelInfo, Span, TraceAttributes, Usage, new_span_id, new_trace_id
from spanmux.store import LocalStore


def llm_span(trace_id: str, parent: str | None, tokens: tuple[int, int], cost: float | None, start: int) -> Span:
    return Span(
        trace_id=trace_id, span_id=new_span_id(), parent_id=parent, name="ChatModel", kind="llm",
        framework="manual", start_ns=start, end_ns=start + 5_000_000, model=ModelInfo("gpt-4o-mini", "openai"),
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens)),
        cost=None if cost is None else Cost(cost / 2, cost / 2, cost, "price-table"),
    )


def test_a_trace_another_writer_stored_is_added_to_not_taken_for_new(tmp_path: Path) -> None:
    """Two writers of one file (two processes in real life): the second has not seen the trace, takes
    it for new, its INSERT fails on the trace id and the batch is written the looked-up way."""
    path = str(tmp_path / "s.db")
    first, second = LocalBackend(LocalConfig(path=path)), LocalBackend(LocalConfig(path=path))
    trace_id, t0 = new_trace_id(), time.time_ns()
    root = llm_span(trace_id, None, (1, 1), 0.5, t0)
    first.export([root], [])
    child = llm_span(trace_id, root.span_id, (2, 3), 0.25, t0 + 10)
    other = llm_span(new_trace_id(), None, (4, 4), None, t0 + 20)
    second.export([other, child], [])
    assert second._recent.numbers.keys() == {trace_id, other.trace_id}  # learnt from the looked-up batch
    first.export([child], [])  # a replay: the first writer knows the trace, the span is already stored
    second.export([llm_span(trace_id, root.span_id, (5, 5), None, t0 + 30)], [])  # now known to both
    first.shutdown(5)
    second.shutdown(5)
    with LocalStore(path) as store:
        assert store.count_spans() == 4
        summary = store.get_trace_summary(trace_id)
        assert summary is not None
        assert (summary.span_count, summary.llm_calls, summary.input_tokens, summary.output_tokens) == (3, 3, 8, 9)
        assert summary.cost_total == 0.75 and summary.root_span_id == root.span_id
        lone = store.get_trace_summary(other.trace_id)
        assert lone is not None and lone.span_count == 1 and lone.cost_total is None
        assert sorted(t.trace_id for t in store.iter_traces()) == sorted({trace_id, other.trace_id})


def test_a_forgotten_trace_is_found_again(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    trace_id, t0 = new_trace_id(), time.time_ns()
    root = llm_span(trace_id, None, (1, 1), 0.5, t0)
    backend.export([root], [])
    backend._recent = RecentTraces()  # as after the trace dropped out of the writer's memory
    backend.export([llm_span(trace_id, root.span_id, (2, 2), 0.5, t0 + 1)], [])
    backend.shutdown(5)
    with LocalStore(tmp_path / "s.db") as store:
        summary = store.get_trace_summary(trace_id)
        assert summary is not None and summary.span_count == 2 and summary.cost_total == 1.0
        assert store.count_traces() == 1


def test_recent_traces_keep_the_newest() -> None:
    recent = RecentTraces()
    recent.KEEP = 3
    for n in range(1, 8):
        recent.learn({f"t{n}": n})
    assert list(recent.numbers) == ["t5", "t6", "t7"]


def test_nulls_and_empty_strings_are_stored_as_they_were(tmp_path: Path) -> None:
    """None goes to SQLite as a stand-in made NULL again in SQL; an empty string must stay empty."""
    path = tmp_path / "s.db"
    backend = LocalBackend(LocalConfig(path=str(path)))
    trace_id, t0 = new_trace_id(), time.time_ns()
    root = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=None, name="root", kind="agent",
                framework="manual", start_ns=t0, end_ns=t0 + 10, trace=TraceAttributes(user_id="u"))
    unnamed = Span(trace_id=trace_id, span_id=new_span_id(), parent_id="", name="", kind="llm", framework="",
                   start_ns=t0 + 1, end_ns=t0 + 2, model=ModelInfo(name=""))
    nameless = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=root.span_id, name="n", kind="llm",
                    framework="manual", start_ns=t0 + 3, end_ns=t0 + 4, model=ModelInfo(provider="openai"))
    backend.export([root, unnamed, nameless], [])
    backend.shutdown(5)
    conn = sqlite3.connect(path)
    rows = {name: rest for name, *rest in conn.execute(
        "SELECT name, typeof(parent_id), parent_id, typeof(model), model, typeof(detail) FROM spans")}
    trace = conn.execute("SELECT typeof(cost_total), typeof(models), user_id FROM traces").fetchone()
    conn.close()
    assert rows["root"] == ["null", None, "null", None, "text"]  # its detail holds the trace attributes
    assert rows[""] == ["text", "", "text", "", "text"]
    assert rows["n"] == ["text", root.span_id, "null", None, "text"]
    assert trace == ("null", "null", "u")
    with LocalStore(path) as store:
        assert {s.span_id: s for s in store.get_trace(trace_id)} == {s.span_id: s for s in (root, unnamed, nameless)}


def test_every_count_of_rows_is_written(tmp_path: Path) -> None:
    """Rows go in statements of ROWS_PER_STATEMENT and every power of two below: every remainder works."""
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    t0 = time.time_ns()
    written = 0
    for count in (1, 2, 3, 7, ROWS_PER_STATEMENT - 1, ROWS_PER_STATEMENT, 2 * ROWS_PER_STATEMENT + 5):
        backend.export([llm_span(new_trace_id(), None, (1, 1), 0.5, t0 + written + i) for i in range(count)], [])
        written += count
    backend.shutdown(5)
    with LocalStore(tmp_path / "s.db") as store:
        assert store.count_spans() == written == store.count_traces()
        assert sum(t.span_count for t in store.iter_traces()) == written
        assert sorted(t.start_ns for t in store.iter_traces()) == [t0 + i for i in range(written)]
