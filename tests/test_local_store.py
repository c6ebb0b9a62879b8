"""The built-in store: totals without scans, idempotent writes, trees, filters, several writers."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import TracedStore

import spanmux
from spanmux.backend import BackendSetupError
from spanmux.backends.local import LocalBackend
from spanmux.config_schemas import LocalConfig
from spanmux.model import Cost, ModelInfo, Span, TraceAttributes, Usage, make_score, new_span_id, new_trace_id
from spanmux.store import LocalStore, StoreSchemaError, TraceCursor, TraceFilter, order_tree


def llm_span(trace_id: str, parent: str | None, tokens: tuple[int, int], cost: float, start: int) -> Span:
    return Span(
        trace_id=trace_id, span_id=new_span_id(), parent_id=parent, name="ChatModel", kind="llm",
        framework="manual", start_ns=start, end_ns=start + 5_000_000,
        model=ModelInfo("gpt-4o-mini", "openai"),
        usage=Usage(input_tokens=tokens[0], output_tokens=tokens[1], total_tokens=sum(tokens)),
        cost=Cost(cost / 2, cost / 2, cost, "price-table"),
    )


def test_trace_totals_are_recomputed_across_batches_and_never_double_count(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    trace_id, root_id, t0 = new_trace_id(), new_span_id(), time.time_ns()
    first = llm_span(trace_id, root_id, (10, 5), 0.001, t0 + 1)
    second = llm_span(trace_id, root_id, (20, 7), 0.002, t0 + 2)
    root = Span(trace_id=trace_id, span_id=root_id, parent_id=None, name="agent", kind="agent", framework="manual",
                start_ns=t0, end_ns=t0 + 50_000_000, trace=TraceAttributes(user_id="u1", tags=("prod",)))
    backend.export([first], [])           # children first, in separate batches
    backend.export([second], [])
    backend.export([root], [])
    backend.export([first, second, root], [])  # a replayed batch: written twice, counted once
    backend.shutdown(1)
    with LocalStore(tmp_path / "s.db") as db:
        (summary,) = db.list_traces()
        assert summary.name == "agent" and summary.root_span_id == root_id
        assert summary.span_count == 3 and summary.llm_calls == 2
        assert (summary.input_tokens, summary.output_tokens, summary.total_tokens) == (30, 12, 42)
        assert abs((summary.cost_total or 0) - 0.003) < 1e-12
        assert summary.duration_ms == 50.0
        assert summary.user_id == "u1" and summary.tags == ["prod"]
        assert summary.models == ["gpt-4o-mini"]
        assert [s.name for s in db.get_trace(trace_id)] == ["agent", "ChatModel", "ChatModel"]


def test_errors_mark_the_trace(traced: TracedStore) -> None:
    try:
        with spanmux.span("root"), spanmux.span("step", kind="tool"):
            raise ValueError("bad tool input")
    except ValueError:
        pass
    (summary,) = traced.traces()
    assert summary.status == "error" and summary.error_count == 2
    spans = traced.trace(summary.trace_id)
    assert spans[1].error is not None and spans[1].error.type == "ValueError"
    assert "bad tool input" in spans[1].error.message and "Traceback" in (spans[1].error.traceback or "")


def test_filters_and_prefix_lookup(traced: TracedStore) -> None:
    with spanmux.trace_context(user_id="alice", session_id="s1", tags=["prod"], metadata={"variant": "A"}):
        with spanmux.span("a"):
            pass
    with spanmux.trace_context(user_id="bob", tags=["dev"], metadata={"variant": "B"}), spanmux.span("b"):
        pass
    assert [t.name for t in traced.traces(user_id="alice")] == ["a"]
    assert [t.name for t in traced.traces(tag="dev")] == ["b"]
    assert [t.name for t in traced.traces(metadata={"variant": "B"})] == ["b"]
    assert [t.name for t in traced.traces(session_id="s1")] == ["a"]
    assert [t.name for t in traced.traces()] == ["b", "a"]  # newest first
    with traced.store() as db:
        full = db.list_traces()[0].trace_id
        assert db.find_trace_id(full[:10]) == full


def test_scores_are_stored_with_their_types(traced: TracedStore) -> None:
    with spanmux.span("answer") as s:
        pass
    spanmux.score(s.trace_id, "correctness", 0.75, comment="close", source="llm_judge")
    spanmux.score(s.trace_id, "safe", True, span_id=s.span_id)
    spanmux.score(s.trace_id, "tone", "friendly", source="human")
    with traced.store() as db:
        scores = {sc.name: sc for sc in db.get_scores(s.trace_id)}
    assert scores["correctness"].value == 0.75 and scores["correctness"].data_type == "numeric"
    assert scores["correctness"].comment == "close" and scores["correctness"].source == "llm_judge"
    assert scores["safe"].value is True and scores["safe"].data_type == "boolean"
    assert scores["safe"].span_id == s.span_id
    assert scores["tone"].value == "friendly" and scores["tone"].data_type == "categorical"


def test_order_tree_puts_parents_before_children() -> None:
    t = new_trace_id()
    root = Span(trace_id=t, span_id="r" * 16, parent_id=None, name="r", kind="chain", framework="manual",
                start_ns=0, end_ns=10)
    child = Span(trace_id=t, span_id="c" * 16, parent_id="r" * 16, name="c", kind="chain", framework="manual",
                 start_ns=1, end_ns=2)
    grandchild = Span(trace_id=t, span_id="g" * 16, parent_id="c" * 16, name="g", kind="llm", framework="manual",
                      start_ns=1, end_ns=2)
    orphan = Span(trace_id=t, span_id="o" * 16, parent_id="x" * 16, name="o", kind="tool", framework="manual",
                  start_ns=5, end_ns=6)
    assert [s.name for s in order_tree([grandchild, orphan, child, root])] == ["r", "c", "g", "o"]


def test_several_processes_write_one_file(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import spanmux
        spanmux.configure({{"local": {{"path": {str(db)!r}}}, "batch_size": 50, "flush_interval": 0.01}})
        for i in range(300):
            with spanmux.span("w"), spanmux.span("child"):
                pass
        assert spanmux.flush(60)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env) for _ in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    with LocalStore(db) as store:
        assert store.count_spans() == 3 * 300 * 2
        assert len(store.list_traces(limit=10_000)) == 900


def test_scores_and_spans_round_trip_every_field(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "r.db")))
    span = Span(
        trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="llm", kind="llm", framework="langchain",
        start_ns=1, end_ns=2, status="ok", input={"messages": [{"role": "user", "content": "hi"}]},
        output="hello", model=ModelInfo("m", "p", {"temperature": 0.1}),
        usage=Usage(input_tokens=1, output_tokens=2, total_tokens=3, cache_read_tokens=1, reasoning_tokens=1,
                    estimated=True),
        cost=Cost(0.1, 0.2, 0.3, "provider"), completion_start_ns=1, attributes={"k": [1, 2]},
        trace=TraceAttributes(name="n", user_id="u", session_id="s", tags=("t",), metadata={"variant": "A"}),
        truncated=True,
    )
    score = make_score(span.trace_id, "q", 1.0)
    backend.export([span], [score])
    backend.shutdown(1)
    with LocalStore(tmp_path / "r.db") as db:
        assert db.get_trace(span.trace_id) == [span]
        assert db.get_scores(span.trace_id) == [score]


def test_root_and_trace_name_win_whatever_the_arrival_order(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    trace_id, root_id, t0 = new_trace_id(), new_span_id(), time.time_ns()
    child = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=root_id, name="step", kind="chain",
                 framework="langchain", start_ns=t0 + 1, end_ns=t0 + 2, trace=TraceAttributes(name="checkout"))
    root = Span(trace_id=trace_id, span_id=root_id, parent_id=None, name="agent", kind="agent", framework="manual",
                start_ns=t0, end_ns=t0 + 10, status="error")
    backend.export([child], [])  # the child alone: provisional root, the trace's own name already set
    with LocalStore(tmp_path / "s.db") as db:
        early = db.get_trace_summary(trace_id)
        assert early is not None and early.root_span_id == child.span_id and early.name == "checkout"
    backend.export([root, root], [])  # the real root (sent twice in one batch) takes over, the name stays
    backend.shutdown(1)
    with LocalStore(tmp_path / "s.db") as db:
        summary = db.get_trace_summary(trace_id)
        assert summary is not None and summary.root_span_id == root_id and summary.name == "checkout"
        assert (summary.status, summary.framework, summary.span_count, summary.error_count) == ("error", "manual", 2, 1)
        assert (summary.start_ns, summary.end_ns) == (t0, t0 + 10)
        assert [s.span_id for s in db.get_trace(trace_id)] == [root_id, child.span_id]
        assert db.count_spans() == 2


def test_a_store_of_another_schema_version_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
        conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    conn.close()
    with pytest.raises(BackendSetupError, match="schema version 1"):
        LocalBackend(LocalConfig(path=str(path)))
    with pytest.raises(StoreSchemaError, match="move the file away"):
        LocalStore(path)


DROP_DAC = "-dac_override,-dac_read_search,-fowner"


def unprivileged(command: list[str]) -> list[str]:
    """``command`` as a process that file permissions apply to: root reads and writes anything, so
    as root it runs without the capabilities that bypass them (setpriv)."""
    if os.geteuid() != 0:
        return command
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be enforced")
    return [setpriv, "--bounding-set", DROP_DAC, "--inh-caps", DROP_DAC, *command]


def skip_unless_denied(command: list[str]) -> None:
    if subprocess.run(unprivileged(command), check=False, capture_output=True).returncode == 0:
        pytest.skip("this environment ignores file permissions")


def run_reader(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    command = unprivileged([sys.executable, "-m", "spanmux.cli", *args])
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def seed_store(folder: Path) -> tuple[Path, str]:
    """A store with one scored trace, written and closed cleanly (no -wal/-shm left)."""
    path = folder / "spanmux.db"
    spanmux.configure({"local": {"path": str(path)}, "spool_dir": str(folder.parent / "spool"),
                       "flush_interval": 0.05})
    with spanmux.trace_context(user_id="alice"), spanmux.span("agent", kind="agent") as root:
        with spanmux.span("llm", kind="llm", model="gpt-4o-mini") as llm:
            llm.set_usage(input_tokens=10, output_tokens=5)
    spanmux.score(root.trace_id, "quality", 0.5)
    assert spanmux.flush(30)
    spanmux.shutdown(5)
    assert not Path(f"{path}-wal").exists()
    return path, root.trace_id


@pytest.mark.parametrize("read_only", ["folder", "folder and file"])
def test_read_commands_work_on_a_read_only_store(tmp_path: Path, read_only: str) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path, trace_id = seed_store(folder)
    if "file" in read_only:
        path.chmod(0o444)
    folder.chmod(0o555)
    try:
        skip_unless_denied(["touch", str(folder / "probe")])
        store = ["--store", str(path)]
        listing = run_reader(["traces", *store, "--json"], tmp_path)
        assert listing.returncode == 0, listing.stderr
        assert [row["trace_id"] for row in json.loads(listing.stdout)] == [trace_id]
        shown = run_reader(["show", trace_id[:8], *store], tmp_path)
        assert shown.returncode == 0, shown.stderr
        assert "llm" in shown.stdout and "quality" in shown.stdout and "user: alice" in shown.stdout
        stats = run_reader(["stats", *store, "--json"], tmp_path)
        assert stats.returncode == 0, stats.stderr
        assert json.loads(stats.stdout)["groups"][0]["traces"] == 1
        assert sorted(p.name for p in folder.iterdir()) == ["spanmux.db"]  # nothing created, nothing changed
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)


def test_an_unreadable_store_is_a_one_line_error(tmp_path: Path) -> None:
    folder = tmp_path / "store"
    folder.mkdir()
    path, _ = seed_store(folder)
    path.chmod(0o000)
    try:
        skip_unless_denied(["cat", str(path)])
        for command in ("traces", "stats"):
            result = run_reader([command, "--store", str(path)], tmp_path)
            assert result.returncode == 1
            assert result.stderr.strip() == f"cannot read the spanmux store at {path}: permission denied"
    finally:
        path.chmod(0o644)
    garbage = tmp_path / "notes.db"
    garbage.write_text("not a database, just notes\n" * 100)
    result = run_reader(["traces", "--store", str(garbage)], tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"cannot read the spanmux store at {garbage}: not a SQLite database"


def test_reader_is_read_only_and_follows_a_live_writer(tmp_path: Path) -> None:
    """The CLI reads while a program writes (WAL): it sees each committed batch, never blocks the
    writer, and its connection cannot write."""
    db = tmp_path / "live.db"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        import spanmux
        spanmux.configure({{"local": {{"path": {str(db)!r}}}, "flush_interval": 0.01}})
        for line in sys.stdin:              # one trace per line the test sends, then acknowledge
            with spanmux.span("job"):
                pass
            assert spanmux.flush(30)
            print("written", flush=True)
        spanmux.shutdown(5)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writer = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert writer.stdin is not None and writer.stdout is not None
    try:
        for expected in range(1, 6):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "written"
            with LocalStore(db) as store:  # opened while the writer holds the file open
                assert len(store.list_traces(limit=100)) == expected
                with pytest.raises(sqlite3.OperationalError, match="readonly"):
                    store._conn.execute("DELETE FROM traces")
    finally:
        writer.stdin.close()
        assert writer.wait(60) == 0
    with LocalStore(db) as store:
        assert len(store.list_traces(limit=100)) == 5


def test_the_reader_lives_in_the_core_and_stays_importable_from_the_backend() -> None:
    import spanmux.backends.local as writer
    import spanmux.store as store

    for name in ("LocalStore", "TraceSummary", "order_tree", "StoreSchemaError", "StoreReadError", "DEFAULT_PATH",
                 "SCHEMA_VERSION", "connect_readonly"):
        assert getattr(writer, name) is getattr(store, name)


def test_the_core_never_imports_a_backend() -> None:
    """Layers: integrations -> core -> backends. The core reaches backends only by name (registry)."""
    import ast

    core = Path(spanmux.__file__).parent
    offenders = []
    for module in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{module.name}: {n}" for n in names if n.startswith(("spanmux.backends", "backends"))]
    assert offenders == []
    code = ("import sys, spanmux.store, spanmux.replay, spanmux.doctor, spanmux.cli; "
            "print([m for m in sys.modules if m.startswith('spanmux.backends')])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def write_traces(path: Path, starts: list[int], **fields: object) -> list[str]:
    """One single-span trace per start time (several may share one), written in this order."""
    backend = LocalBackend(LocalConfig(path=str(path)))
    ids = []
    for start in starts:
        span = Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="job", kind="chain",
                    framework="manual", start_ns=start, end_ns=start + 1_000_000, **fields)  # type: ignore[arg-type]
        backend.export([span], [])
        ids.append(span.trace_id)
    backend.shutdown(1)
    return ids


def test_keyset_pages_cover_every_trace_once_newest_first_even_with_equal_start_times(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    starts = [1_000, 2_000, 2_000, 2_000, 3_000, 4_000, 4_000]
    ids = write_traces(path, starts)
    with LocalStore(path) as db:
        pages, after = [], None
        while True:
            page = db.page_traces(limit=3, after=after)
            pages.append([t.trace_id for t in page.traces])
            if page.next is None:
                break
            after = TraceCursor.parse(str(page.next))  # as a URL would carry it
        seen = [trace_id for p in pages for trace_id in p]
        assert [len(p) for p in pages] == [3, 3, 1]
        assert sorted(seen) == sorted(ids) and len(set(seen)) == len(ids)
        assert seen == [ids[i] for i in (5, 6, 4, 1, 2, 3, 0)]  # newest first; equal starts in order of arrival
        assert db.page_traces(limit=7).next is None  # exactly one page: no empty page after it
        first = db.page_traces(limit=2)
    write_traces(path, [5_000])  # a trace written meanwhile is newer: it never shifts the next page
    with LocalStore(path) as db:
        assert [t.trace_id for t in db.page_traces(limit=2, after=first.next).traces] == [ids[4], ids[1]]
    with pytest.raises(ValueError, match="not a trace cursor"):
        TraceCursor.parse("12")


def test_trace_filter_combines_and_matches_the_keyword_form(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    backend = LocalBackend(LocalConfig(path=str(path)))
    trace_id = new_trace_id()
    backend.export([llm_span(trace_id, None, (10, 5), 0.5, 10_000_000)], [])
    slow = new_trace_id()
    backend.export([Span(trace_id=slow, span_id=new_span_id(), parent_id=None, name="slow", kind="chain",
                         framework="manual", start_ns=20_000_000, end_ns=920_000_000)], [])
    backend.shutdown(1)
    with LocalStore(path) as db:
        def ids(where: TraceFilter) -> list[str]:
            return [t.trace_id for t in db.page_traces(where).traces]

        assert ids(TraceFilter(min_duration_ms=100)) == [slow]
        assert ids(TraceFilter(min_cost=0.25)) == [trace_id]
        assert ids(TraceFilter(min_cost=0.25, model="gpt-4o-mini", until_ns=20_000_000)) == [trace_id]
        assert ids(TraceFilter(since_ns=20_000_000)) == [slow]
        assert ids(TraceFilter(name="slow", model="gpt-4o-mini")) == []
        where = TraceFilter(model="gpt-4o-mini")
        assert db.list_traces(where=where) == db.list_traces(model="gpt-4o-mini") == list(db.iter_traces(where))
        with pytest.raises(TypeError, match="not both"):
            db.list_traces(where=where, name="slow")


def test_detail_leaves_out_zero_usage_and_reads_back_the_same_span(tmp_path: Path) -> None:
    from spanmux.backends.local import _Detail
    from spanmux.store import DETAIL_FIELDS

    assert _Detail.__struct_fields__ == (*DETAIL_FIELDS, "truncated")  # one encoder for exactly those fields
    path = tmp_path / "s.db"
    backend = LocalBackend(LocalConfig(path=str(path)))
    trace_id, t0 = new_trace_id(), time.time_ns()
    plain = llm_span(trace_id, None, (50, 10), 0.01, t0)
    detailed = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=plain.span_id, name="cached", kind="llm",
                    framework="manual", start_ns=t0 + 1, end_ns=t0 + 9, input=[{"role": "user", "content": "q"}],
                    usage=Usage(input_tokens=9, output_tokens=3, total_tokens=12, cache_read_tokens=4,
                                reasoning_tokens=1, estimated=True), completion_start_ns=t0 + 5, truncated=True)
    bare = Span(trace_id=trace_id, span_id=new_span_id(), parent_id=plain.span_id, name="bare", kind="tool",
                framework="manual", start_ns=t0 + 2, end_ns=t0 + 3)
    backend.export([plain, detailed, bare], [])
    backend.shutdown(5)
    conn = sqlite3.connect(path)
    details = dict(conn.execute("SELECT name, detail FROM spans").fetchall())
    conn.close()
    assert json.loads(details["ChatModel"])["usage"] == {"input_tokens": 50, "output_tokens": 10, "total_tokens": 60}
    assert json.loads(details["ChatModel"])["model"] == {"name": "gpt-4o-mini", "provider": "openai"}
    assert details["bare"] is None
    with LocalStore(path) as store:
        read = {s.name: s for s in store.get_trace(trace_id)}
    assert read["ChatModel"] == plain and read["cached"] == detailed and read["bare"] == bare


def test_the_log_is_copied_back_off_the_writers_thread(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    backend = LocalBackend(LocalConfig(path=str(path)))
    assert backend._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] > 1000  # not inside its commits
    trace_id = new_trace_id()
    backend.export([llm_span(trace_id, None, (1, 1), 0.0, time.time_ns() + i) for i in range(300)], [])
    checkpointer = backend._checkpointer
    assert checkpointer is not None
    deadline = time.monotonic() + 30
    while checkpointer.runs == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert checkpointer.runs >= 1
    conn = sqlite3.connect(path)
    busy, logged, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    conn.close()
    assert busy == 0 and logged == copied
    backend.shutdown(5)
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    with LocalStore(path) as store:
        assert store.count_spans() == 300


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_fork_waits_for_a_checkpoint_in_progress_and_the_child_writes(tmp_path: Path) -> None:
    """A child forked while the checkpoint thread was inside SQLite hung at its first write (seen
    as a failed flush in the fork test of the full suite): fork now waits for the checkpoint."""
    import threading

    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    backend.export([llm_span(new_trace_id(), None, (1, 1), 0.0, time.time_ns())], [])
    checkpointer = backend._checkpointer
    assert checkpointer is not None
    inside, finished, go_on = threading.Event(), threading.Event(), threading.Event()
    real = checkpointer._conn

    class SlowCheckpoint:
        def execute(self, sql: str) -> sqlite3.Cursor:
            inside.set()
            go_on.wait(30)
            cursor = real.execute(sql)
            finished.set()
            return cursor

        def close(self) -> None:
            real.close()

    checkpointer._conn = SlowCheckpoint()  # type: ignore[assignment]
    backend.export([llm_span(new_trace_id(), None, (1, 1), 0.0, time.time_ns())], [])
    assert inside.wait(30)
    threading.Timer(0.2, go_on.set).start()  # the checkpoint ends while fork() is waiting for it
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            backend.export([llm_span(new_trace_id(), None, (1, 1), 0.0, time.time_ns())], [])
            code = 0
        finally:
            os._exit(code)
    assert finished.is_set()  # fork returned only after the checkpoint was done
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    backend.shutdown(5)
    with LocalStore(tmp_path / "s.db") as store:
        assert store.count_spans() == 3


def test_totals_of_many_traces_written_in_many_row_statements(tmp_path: Path) -> None:
    from spanmux.backends.local import ROWS_PER_STATEMENT

    count = ROWS_PER_STATEMENT + 44  # full statements of rows and a remainder, new traces then known ones
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    t0 = time.time_ns()
    trace_ids = [new_trace_id() for _ in range(count)]
    roots = [llm_span(t, None, (1, 1), 0.5, t0 + i) for i, t in enumerate(trace_ids)]
    backend.export(roots, [])
    backend.export([llm_span(t, r.span_id, (2, 3), 0.25, t0 + 10_000 + i)
                    for i, (t, r) in enumerate(zip(trace_ids, roots, strict=True))], [])
    backend.shutdown(5)
    with LocalStore(tmp_path / "s.db") as store:
        assert store.count_spans() == 2 * count
        totals = {t.trace_id: t for t in store.iter_traces()}
    assert set(totals) == set(trace_ids)
    for root in roots:
        summary = totals[root.trace_id]
        assert (summary.span_count, summary.llm_calls, summary.input_tokens, summary.output_tokens) == (2, 2, 3, 4)
        assert summary.cost_total == 0.75 and summary.root_span_id == root.span_id and summary.start_ns == root.start_ns
