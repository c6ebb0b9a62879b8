"""The store writer's shortcuts (issue 16) keep the data exact: traces taken for new from the writer's
memory, values that may be None bound as a cheap stand-in, rows in statements of several sizes."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

import spanmux.backends.local as writer
from spanmux.backends.local import ROWS_PER_STATEMENT, LocalBackend, RecentTraces
from spanmux.config_schemas import LocalConfig
from spanmux.model import Cost, ModelInfo, Span, TraceAttributes, Usage, new_span_id, new_trace_id
from spanmux.store import SCHEMA_V2, LocalStore


def store_of_version(path: Path, version: int) -> str:
    """An empty store of ``version`` (2: what spanmux wrote before ``trace_ids``; 3: what it makes now)."""
    if version == 2:
        conn = sqlite3.connect(path)
        conn.executescript(SCHEMA_V2)
        conn.execute("INSERT INTO meta VALUES ('schema_version', '2')")
        conn.commit()
        conn.close()
    return str(path)


def llm_span(trace_id: str, parent: str | None, tokens: tuple[int, int], cost: float | None, start: int) -> Span:
    return Span(
        trace_id=trace_id, span_id=new_span_id(), parent_id=parent, name="ChatModel", kind="llm",
        framework="manual", start_ns=start, end_ns=start + 5_000_000, model=ModelInfo("gpt-4o-mini", "openai"),
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens)),
        cost=None if cost is None else Cost(cost / 2, cost / 2, cost, "price-table"),
    )


@pytest.mark.parametrize("version", [2, 3])
def test_a_trace_another_writer_stored_is_added_to_not_taken_for_new(tmp_path: Path, version: int) -> None:
    """Two writers of one file (two processes in real life), the second has not seen the trace.
    Version 2: it takes it for new, its INSERT fails on the unique trace id and the batch is written
    the looked-up way. Version 3: it sees the other's commit, indexes its traces, finds it there."""
    path = store_of_version(tmp_path / "s.db", version)
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


@pytest.mark.parametrize("version", [2, 3])
def test_a_forgotten_trace_is_found_again(tmp_path: Path, version: int) -> None:
    backend = LocalBackend(LocalConfig(path=store_of_version(tmp_path / "s.db", version)))
    trace_id, t0 = new_trace_id(), time.time_ns()
    root = llm_span(trace_id, None, (1, 1), 0.5, t0)
    backend.export([root], [])
    backend._recent = RecentTraces(version)  # as after the trace dropped out of the writer's memory
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


def test_readers_find_traces_indexed_or_not_yet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Version 3: ``trace_ids`` gets the new traces every TRACE_IDS_EVERY; readers find the ones not
    indexed yet by scanning the traces numbered above ``trace_ids_upto``."""
    monkeypatch.setattr(writer, "TRACE_IDS_EVERY", 4)
    path = tmp_path / "s.db"
    backend = LocalBackend(LocalConfig(path=str(path)))
    t0 = time.time_ns()
    roots = []
    for n in range(6):  # the fourth trace's batch indexes four; two stay unindexed while the writer is open
        roots.append(llm_span(new_trace_id(), None, (1, 1), 0.5, t0 + n))
        backend.export([roots[-1]], [])
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM trace_ids").fetchone()[0] == 4
    assert conn.execute("SELECT value FROM meta WHERE key = 'trace_ids_upto'").fetchone()[0] == "4"
    with LocalStore(path) as store:
        assert store.schema_version == 3
        for root in roots:
            trace_id = root.trace_id
            summary = store.get_trace_summary(trace_id)
            assert summary is not None and summary.root_span_id == root.span_id
            assert [s.span_id for s in store.get_trace(trace_id)] == [root.span_id]
            assert [r.span_id for r in store.span_rows(trace_id)] == [root.span_id]
            assert store.get_span(trace_id, root.span_id) == root
            assert store.find_trace_ids(trace_id[:12]) == [trace_id]
        everything = sorted(r.trace_id for r in roots)
        assert store.find_trace_ids("", limit=100) == everything
        assert store.get_trace_summary(new_trace_id()) is None and store.find_trace_ids("ffffffffffffffff") == []
    backend.export([llm_span(roots[-1].trace_id, roots[-1].span_id, (2, 2), 0.5, t0 + 10)], [])  # not indexed yet
    backend.shutdown(5)  # indexes the rest
    assert conn.execute("SELECT COUNT(*) FROM trace_ids").fetchone()[0] == 6
    assert conn.execute("SELECT COUNT(*) FROM traces").fetchone()[0] == 6
    conn.close()
    with LocalStore(path) as store:
        last = store.get_trace_summary(roots[-1].trace_id)
        assert last is not None and last.span_count == 2 and last.cost_total == 1.0


def test_traces_a_crashed_writer_left_unindexed_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that never closed (killed) leaves traces above ``trace_ids_upto``; the next writer
    indexes them at its first write, so a late span of one is added to it, not made a second trace."""
    monkeypatch.setattr(writer, "TRACE_IDS_EVERY", 1_000)
    path = str(tmp_path / "s.db")
    crashed = LocalBackend(LocalConfig(path=path))
    t0 = time.time_ns()
    root = llm_span(new_trace_id(), None, (1, 1), 0.5, t0)
    crashed.export([root, llm_span(new_trace_id(), None, (1, 1), 0.5, t0 + 1)], [])
    crashed._conn.close()  # no shutdown: nothing indexed
    after = LocalBackend(LocalConfig(path=path))
    after.export([llm_span(root.trace_id, root.span_id, (2, 2), 0.5, t0 + 2)], [])
    after.shutdown(5)
    with LocalStore(path) as store:
        assert store.count_traces() == 2 and store.count_spans() == 3
        summary = store.get_trace_summary(root.trace_id)
        assert summary is not None and summary.span_count == 2


def test_two_writers_of_a_version_3_store_interleaved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers taking turns, each adding to the other's traces, indexed or not: every trace once."""
    monkeypatch.setattr(writer, "TRACE_IDS_EVERY", 3)
    path = str(tmp_path / "s.db")
    writers = [LocalBackend(LocalConfig(path=path)), LocalBackend(LocalConfig(path=path))]
    t0 = time.time_ns()
    roots = [llm_span(new_trace_id(), None, (1, 1), 0.5, t0 + n) for n in range(8)]
    for n, root in enumerate(roots):
        writers[n % 2].export([root], [])
        earlier = roots[n // 2]
        writers[(n + 1) % 2].export([llm_span(earlier.trace_id, earlier.span_id, (1, 1), 0.5, t0 + 100 + n)], [])
    for w in writers:
        w.shutdown(5)
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT trace_id) FROM traces").fetchone() == (8, 8)
    assert conn.execute("SELECT COUNT(*) FROM trace_ids").fetchone()[0] == 8
    conn.close()
    with LocalStore(path) as store:
        assert store.count_spans() == 16
        assert sum(t.span_count for t in store.iter_traces()) == 16
        assert sorted(t.span_count for t in store.iter_traces()) == sorted(
            1 + sum(1 for n in range(8) if n // 2 == k) for k in range(8))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_and_its_parent_add_to_one_trace(tmp_path: Path) -> None:
    """The child inherits what the parent knows (still true: rows are never deleted) and its own
    connection; each sees the other's commits through ``data_version``: one trace, every span once."""
    path = str(tmp_path / "s.db")
    backend = LocalBackend(LocalConfig(path=path))
    t0 = time.time_ns()
    root = llm_span(new_trace_id(), None, (1, 1), 0.5, t0)
    backend.export([root], [])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            backend.export([llm_span(root.trace_id, root.span_id, (1, 1), 0.5, t0 + 1),
                            llm_span(new_trace_id(), None, (1, 1), 0.5, t0 + 2)], [])
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    backend.export([llm_span(root.trace_id, root.span_id, (1, 1), 0.5, t0 + 3)], [])
    backend.shutdown(5)
    with LocalStore(path) as store:
        assert store.count_traces() == 2 and store.count_spans() == 4
        summary = store.get_trace_summary(root.trace_id)
        assert summary is not None and summary.span_count == 3 and summary.cost_total == 1.5
