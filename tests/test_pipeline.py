"""The pipeline: the caller only enqueues; the worker and lanes deliver everything exactly once,
even when a backend fails, the queue overflows, the process forks or exits."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from conftest import TracedStore

import spanmux
from spanmux import runtime
from spanmux.config_schemas import ObservabilityConfig
from spanmux.model import (
    Cost,
    ErrorInfo,
    ModelInfo,
    Score,
    Span,
    TraceAttributes,
    Usage,
    make_score,
    new_span_id,
    new_trace_id,
)
from spanmux.pipeline import Pipeline
from spanmux.processors import SpanProcessor, trace_is_sampled
from spanmux.testing import InMemoryBackend, capture


def make_span(name: str = "step", trace_id: str | None = None, **kw: object) -> Span:
    now = time.time_ns()
    return Span(trace_id=trace_id or new_trace_id(), span_id=new_span_id(), parent_id=None, name=name,
                kind="chain", framework="manual", start_ns=now, end_ns=now + 1000, **kw)  # type: ignore[arg-type]


def pipeline(tmp_path: Path, *backends: InMemoryBackend, **kw: object) -> Pipeline:
    settings = ObservabilityConfig()
    options = {"flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"), **kw}
    return Pipeline([(f"b{i}", b) for i, b in enumerate(backends)], SpanProcessor(settings), **options)  # type: ignore[arg-type]


def test_flush_waits_for_everything_emitted_before_it(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    p = pipeline(tmp_path, backend, flush_interval=60)  # no timer help: only flush delivers
    for i in range(1000):
        p.emit(make_span(f"s{i}"))
    p.emit(make_score(new_trace_id(), "quality", 1.0))
    assert p.flush(10)
    assert len(backend.spans) == 1000 and len(backend.scores) == 1
    assert [s.name for s in backend.spans] == [f"s{i}" for i in range(1000)]  # order kept
    p.shutdown()


def test_a_failing_backend_never_stops_the_others(tmp_path: Path) -> None:
    good, bad = InMemoryBackend(), InMemoryBackend()
    bad.fail()
    p = pipeline(tmp_path, good, bad)
    for _ in range(50):
        p.emit(make_span())
    assert not p.flush(1)  # the failing backend did not take them: flush says so
    stats = p.stats()["backends"]
    assert len(good.spans) == 50
    assert stats["b1"]["export_errors"] >= 1
    assert stats["b1"]["spooled_spans"] == 50  # kept on disk, not lost
    assert stats["b0"]["exported_spans"] == 50
    p.shutdown(0.5)


def test_a_backend_that_comes_back_gets_everything_exactly_once(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    backend.fail(times=3)
    p = pipeline(tmp_path, backend, batch_size=10)
    emitted = [make_span(f"s{i}") for i in range(100)]
    for span in emitted:
        p.emit(span)
    deadline = time.monotonic() + 20
    while len(backend.spans) < 100 and time.monotonic() < deadline:
        p.flush(5)  # each flush forces a replay attempt of the spool
    assert sorted(s.span_id for s in backend.spans) == sorted(s.span_id for s in emitted)
    p.shutdown()


def test_spool_is_replayed_by_the_next_process(tmp_path: Path) -> None:
    down = InMemoryBackend()
    down.fail()
    first = pipeline(tmp_path, down)
    spans = [make_span() for _ in range(20)]
    for s in spans:
        first.emit(s)
    first.shutdown(0.5)  # the backend stays down past the exit deadline
    assert list((tmp_path / "spool" / "b0").glob("*.batch")), "undelivered batches must wait on disk"
    back = InMemoryBackend()
    second = pipeline(tmp_path, back)
    assert second.flush(10)
    assert sorted(s.span_id for s in back.spans) == sorted(s.span_id for s in spans)
    assert not list((tmp_path / "spool" / "b0").glob("*.batch"))
    second.shutdown()


def test_queue_overflow_spills_to_disk_and_is_delivered(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    gate = threading.Event()
    settings = ObservabilityConfig()
    processor = SpanProcessor(settings)

    def slow_processor(span: Span) -> Span | None:
        if threading.current_thread().name == "spanmux-worker":  # the worker is stuck, callers are not
            gate.wait(30)
        return processor(span)

    p = Pipeline([("b0", backend)], slow_processor, queue_size=100, batch_size=10, flush_interval=0.05,
                 spool_dir=str(tmp_path / "spool"))
    spans = [make_span() for _ in range(400)]
    started = time.perf_counter()
    for s in spans:
        p.emit(s)
    assert time.perf_counter() - started < 5, "the caller must never wait for the worker"
    assert p.stats()["queue_overflowed"] > 0
    gate.set()
    for _ in range(5):
        p.flush(10)
    assert sorted(s.span_id for s in backend.spans) == sorted(s.span_id for s in spans)
    p.shutdown()


def test_shutdown_flushes_and_closes_backends(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    p = pipeline(tmp_path, backend, flush_interval=60)
    p.emit(make_span())
    p.shutdown(5)
    assert len(backend.spans) == 1 and backend.closed


def test_processor_errors_are_contained(tmp_path: Path) -> None:
    backend = InMemoryBackend()
    calls = {"n": 0}

    def flaky(span: Span) -> Span | None:
        calls["n"] += 1
        if span.name == "poison":
            raise RuntimeError("boom")
        return span

    p = Pipeline([("b0", backend)], flaky, flush_interval=0.05)
    p.emit(make_span("poison"))
    p.emit(make_span("fine"))
    assert p.flush(5)
    assert [s.name for s in backend.spans] == ["fine"]
    assert p.stats()["processor_errors"] == 1
    p.shutdown()


def test_sampling_keeps_or_drops_whole_traces() -> None:
    with capture(sample_rate=0.5) as captured:
        kept = 0
        for _ in range(200):
            with spanmux.span("root") as root, spanmux.span("child"):
                pass
            kept += trace_is_sampled(root.trace_id, 0.5)
        traces = captured.traces()
    assert len(traces) == kept and 60 < kept < 140
    assert all(len(t) == 2 for t in traces)


def test_the_processor_keeps_every_field_it_does_not_change() -> None:
    # it rebuilds the span positionally: a field added to Span and not to that call would be lost
    span = Span(
        trace_id=new_trace_id(), span_id=new_span_id(), parent_id=new_span_id(), name="ChatOpenAI", kind="llm",
        framework="langchain", start_ns=10, end_ns=90, status="error", error=ErrorInfo("ValueError", "bad", "tb"),
        input=[{"role": "user", "content": "hi"}], output={"role": "assistant", "content": "yo"},
        model=ModelInfo("gpt-4o-mini", "openai", {"temperature": 0.2}), usage=Usage(3, 2, 5),
        cost=Cost(0.1, 0.2, 0.3, "config"), completion_start_ns=40, attributes={"k": "v"},
        trace=TraceAttributes(name="t", user_id="u", session_id="s", tags=("a",), metadata={"m": 1}), truncated=True,
    )
    processor = SpanProcessor(ObservabilityConfig(estimate_tokens=False))
    processed = processor(span)
    assert processed is not None
    for field in Span.__struct_fields__:
        assert getattr(processed, field) == getattr(span, field), field
    assert processed.input is not span.input  # a copy: the caller may change its own objects later


def test_capture_content_false_records_no_inputs_or_outputs() -> None:
    with capture(capture_content=False) as captured:
        with spanmux.span("secret-work", input={"password": "hunter2"}) as s:
            s.set_output("the answer")
        (span,) = captured.spans
    assert span.input is None and span.output is None


def test_disabled_configuration_makes_everything_a_no_op(tmp_path: Path) -> None:
    spanmux.configure({"enabled": False})
    assert runtime.active() is None
    with spanmux.span("ignored") as s:
        s.set_output(1)
    assert spanmux.flush(1)
    assert not (tmp_path / ".spanmux").exists()


def test_after_fork_the_child_traces_into_the_same_store(traced: TracedStore) -> None:
    with spanmux.span("parent-before-fork"):
        pass
    traced.flush()
    pid = os.fork()
    if pid == 0:  # child: trace, flush, report by exit code only
        code = 1
        try:
            with spanmux.span("child"):
                pass
            code = 0 if spanmux.flush(10) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with spanmux.span("parent-after-fork"):
        pass
    names = sorted(t.name or "" for t in traced.traces())
    assert names == ["child", "parent-after-fork", "parent-before-fork"]  # nothing duplicated


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)


def test_records_are_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    result = run_script(tmp_path, """
        import spanmux
        spanmux.configure({"flush_interval": 60})  # the timer would not fire before exit
        with spanmux.span("last-words"):
            pass
    """)
    assert result.returncode == 0, result.stderr
    from spanmux.backends.local import LocalStore

    with LocalStore(tmp_path / ".spanmux" / "spanmux.db") as db:
        assert [t.name for t in db.list_traces()] == ["last-words"]


@pytest.mark.parametrize("signal_name", ["SIGTERM"])
def test_records_are_flushed_on_sigterm(tmp_path: Path, signal_name: str) -> None:
    result = run_script(tmp_path, """
        import os, signal, spanmux
        spanmux.configure({"flush_interval": 60})
        with spanmux.span("terminated"):
            pass
        os.kill(os.getpid(), signal.SIGTERM)
    """)
    assert result.returncode == -15
    from spanmux.backends.local import LocalStore

    with LocalStore(tmp_path / ".spanmux" / "spanmux.db") as db:
        assert [t.name for t in db.list_traces()] == ["terminated"]


def test_stats_count_every_record(traced: TracedStore) -> None:
    for _ in range(10):
        with spanmux.span("x") as s:
            s.score("ok", True)
    traced.flush()
    stats = spanmux.stats()
    assert stats["enabled"] is True
    assert stats["records_emitted"] == 20
    assert stats["backends"]["local"]["exported_spans"] == 10
    assert stats["backends"]["local"]["exported_scores"] == 10


def test_flush_says_false_when_records_were_dropped_for_want_of_a_spool(tmp_path: Path) -> None:
    down = InMemoryBackend()
    down.fail()
    p = pipeline(tmp_path, down, spool_dir=None)  # nowhere to keep what the backend refuses
    for _ in range(5):
        p.emit(make_span())
    assert not p.flush(1)  # dropped is not delivered
    assert p.stats()["backends"]["b0"]["dropped_spans"] == 5
    down.recover()
    p.emit(make_span())
    assert p.flush(5)  # the next flush judges only what came after
    p.shutdown(0.5)


class GatedBackend(InMemoryBackend):
    """Holds its first export until ``gate`` is set, so the lane's queue fills behind it."""

    def __init__(self, merge_up_to: int) -> None:
        super().__init__()
        self.merge_batches_up_to = merge_up_to  # type: ignore[misc]
        self.calls: list[int] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        self.calls.append(len(spans))
        self.entered.set()
        assert self.gate.wait(30)
        super().export(spans, scores)


def _gated_lane_calls(merge_up_to: int) -> tuple[list[int], int]:
    from spanmux.pipeline import Lane, _Batch, _Marker

    backend = GatedBackend(merge_up_to)
    lane = Lane("gated", backend, None, max_pending=10_000)
    batch = lambda: _Batch([make_span() for _ in range(10)])  # noqa: E731
    lane.submit(batch())
    assert backend.entered.wait(30)  # the first export holds the lane; the rest queues behind it
    for _ in range(3):
        lane.submit(batch())
    between = _Marker(1, time.monotonic() + 30)
    lane.mark(between)  # a flush marker: batches are never merged across it
    for _ in range(2):
        lane.submit(batch())
    backend.gate.set()
    last = _Marker(1, time.monotonic() + 30)
    lane.mark(last)
    assert between.done.wait(30) and last.done.wait(30)
    lane.stop(5)
    return backend.calls, len(backend.spans)


def test_a_lane_merges_queued_batches_for_a_backend_that_asks() -> None:
    calls, delivered = _gated_lane_calls(merge_up_to=25)
    assert calls == [10, 20, 10, 20] and delivered == 60  # up to 25 records a call, not across the marker


def test_a_lane_hands_over_one_batch_per_call_by_default() -> None:
    calls, delivered = _gated_lane_calls(merge_up_to=0)
    assert calls == [10] * 6 and delivered == 60


def test_the_worker_knows_when_a_flush_waits_and_the_lanes_are_idle(tmp_path: Path) -> None:
    # the worker skips its GIL yields only while a flush waits and every lane has nothing to do:
    # the count of waiting flushes returns to zero, and an idle lane says so
    backend = InMemoryBackend()
    pipe = pipeline(tmp_path, backend)
    try:
        for i in range(100):
            pipe.emit(make_span(f"s{i}"))
        assert pipe.flush(10)
        assert pipe._flushes == 0
        assert len(backend.spans) == 100
        deadline = time.monotonic() + 10
        while not pipe._lanes_idle() and time.monotonic() < deadline:
            time.sleep(0.01)  # the lane goes back to its wait right after the flush it answered
        assert pipe._lanes_idle()
        backend.fail()
        pipe.emit(make_span("late"))
        assert not pipe.flush(0.2)  # undelivered (spooled), and the count is still right
        assert pipe._flushes == 0
    finally:
        pipe.shutdown(5)


def test_the_processor_memo_serves_one_thread_and_a_forked_childs_worker() -> None:
    # the memo belongs to the first thread that processes (the worker); another thread converts
    # without it, and after a fork (a new worker thread) a fresh memo takes the new thread
    processor = SpanProcessor(ObservabilityConfig())
    span = make_span("s", input={"messages": ["a", "b"]})

    def on_a_thread() -> None:
        processor(span)

    worker = threading.Thread(target=on_a_thread)
    worker.start()
    worker.join()
    assert processor._memo.owner == worker.ident
    assert processor(span) is not None and processor._memo.owner == worker.ident  # another thread: no memo
    processor.after_fork()
    assert processor(span) is not None and processor._memo.owner == threading.get_ident()
