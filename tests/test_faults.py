"""Zero-loss delivery under faults: every span and score emitted ends up in each backend exactly
once, or waits in that backend's spool. Backends that fail, hang, refuse the keys, disappear for a
while or a process killed with SIGKILL never lose what reached the spool, and never slow the caller."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import spanmux
from spanmux.backends.local import LocalStore
from spanmux.model import Span
from spanmux.spool import SpooledBatch
from spanmux.testing import InMemoryBackend

TRACES = "/api/public/otel/v1/traces"


# ---------------------------------------------------------------- test backends
class HangingBackend(InMemoryBackend):
    """An export that does not return until the test releases it (a server that stopped answering)."""

    def __init__(self, name: str = "hanging") -> None:
        super().__init__(name)
        self.release = threading.Event()

    def export(self, spans: Any, scores: Any) -> None:
        self.release.wait()
        super().export(spans, scores)


@pytest.fixture
def hanging() -> Iterator[HangingBackend]:
    backend = HangingBackend()
    yield backend
    backend.release.set()  # free a lane thread still stuck in it


def lane_stats(name: str) -> dict[str, Any]:
    return dict(spanmux.stats()["backends"][name])


# ---------------------------------------------------------------- helpers
def spooled(folder: Path) -> tuple[list[str], list[str]]:
    """Span ids and score ids waiting in one backend's spool (pending and claimed batches)."""
    span_ids: list[str] = []
    score_ids: list[str] = []
    if not folder.is_dir():
        return span_ids, score_ids
    for path in sorted(folder.iterdir()):
        if path.name.endswith(".batch") or ".claimed-" in path.name:
            batch = msgspec.msgpack.decode(path.read_bytes(), type=SpooledBatch)
            span_ids += [s.span_id for s in batch.spans]
            score_ids += [s.id for s in batch.scores]
    return span_ids, score_ids


def flush_until_spools_empty(*names: str, rounds: int = 300) -> None:
    """Each flush forces one replay attempt of every spool; stop once they are empty."""
    for _ in range(rounds):
        assert spanmux.flush(timeout=30), "flush timed out"
        if all(lane_stats(n)["spool_pending_batches"] == 0 for n in names):
            return
    raise AssertionError({n: lane_stats(n) for n in names})


def emit_traces(count: int, prefix: str = "job") -> tuple[list[str], list[str]]:
    """``count`` traces of a root and two children, each with a score: (span ids, trace ids)."""
    span_ids: list[str] = []
    trace_ids: list[str] = []
    for n in range(count):
        with spanmux.span(f"{prefix}-{n}", kind="agent") as root:
            with spanmux.span("retrieve", kind="retriever") as a:
                pass
            with spanmux.span("answer", kind="llm") as b:
                pass
        root.score("quality", n % 5 / 4)
        span_ids += [root.span_id, a.span_id, b.span_id]
        trace_ids.append(root.trace_id)
    return span_ids, trace_ids


def next_run_delivers_exactly(tmp_path: Path, langfuse_server: Any, span_ids: list[str], scores: int) -> None:
    """A new configuration with a working Langfuse sends exactly what waited in its spool."""
    spanmux.configure(base_config(tmp_path, ["langfuse"], langfuse=langfuse_section(langfuse_server)))
    flush_until_spools_empty("langfuse")
    assert sorted(o.span_id for o in langfuse_server.all_observations()) == sorted(span_ids)
    assert len(langfuse_server.all_scores()) == scores


def base_config(tmp_path: Path, backends: list[Any], **extra: Any) -> dict[str, Any]:
    return {
        "backends": backends,
        "local": {"path": str(tmp_path / "store.db")},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
        **extra,
    }


def langfuse_section(server: Any, **extra: Any) -> dict[str, Any]:
    return {"public_key": server.public_key, "secret_key": server.secret_key, "host": server.url, **extra}


def local_counts(tmp_path: Path) -> tuple[list[str], int]:
    with LocalStore(tmp_path / "store.db") as db:
        ids = [s.span_id for batch in db.iter_spans() for s in batch]
        return ids, len(db.get_scores())


# ---------------------------------------------------------------- Langfuse failing, then back
def test_langfuse_answering_503_first_then_200_gets_everything_once(langfuse_server: Any, tmp_path: Path) -> None:
    spanmux.configure(base_config(tmp_path, ["local", "langfuse"], langfuse=langfuse_section(langfuse_server),
                                  batch_size=20))
    langfuse_server.fail_next(6, status=503)
    span_ids, _ = emit_traces(40)
    flush_until_spools_empty("langfuse")

    observed = [o.span_id for o in langfuse_server.all_observations()]
    assert sorted(observed) == sorted(span_ids)  # each exactly once (upserted by id)
    assert len(langfuse_server.all_scores()) == 40
    assert langfuse_server.statuses(TRACES).count(503) + langfuse_server.statuses("/api/public/scores").count(503) == 6
    stats = lane_stats("langfuse")
    assert stats["export_errors"] >= 1 and stats["replayed_batches"] >= 1 and stats["dropped_spans"] == 0
    stored, scores = local_counts(tmp_path)
    assert sorted(stored) == sorted(span_ids) and scores == 40  # the local store never noticed


def test_wrong_langfuse_key_is_reported_once_and_kept_until_fixed(
    langfuse_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spanmux")
    spanmux.configure(base_config(tmp_path, ["local", "langfuse"],
                                  langfuse=langfuse_section(langfuse_server, secret_key="sk-lf-WRONG")))
    span_ids, _ = emit_traces(5)
    for _ in range(3):
        started = time.monotonic()
        assert not spanmux.flush(timeout=30)  # not delivered, and retrying cannot fix a wrong key
        assert time.monotonic() - started < 10
    reports = [r.getMessage() for r in caplog.records if "HTTP 401" in r.getMessage()]
    assert len(reports) == 1 and "not retryable" in reports[0], reports
    assert not langfuse_server.all_observations()
    waiting_spans, waiting_scores = spooled(tmp_path / "spool" / "langfuse")
    assert sorted(waiting_spans) == sorted(span_ids) and len(waiting_scores) == 5
    spanmux.shutdown(5)

    next_run_delivers_exactly(tmp_path, langfuse_server, span_ids, 5)  # the key is fixed
    assert spooled(tmp_path / "spool" / "langfuse") == ([], [])


# ---------------------------------------------------------------- hanging backends
def test_hanging_backend_never_blocks_the_caller_nor_the_other_backends(
    hanging: HangingBackend, tmp_path: Path
) -> None:
    spanmux.configure(base_config(tmp_path, ["local", hanging], batch_size=25))
    started = time.perf_counter()
    span_ids, _ = emit_traces(100)
    emit_seconds = time.perf_counter() - started
    assert not spanmux.flush(timeout=2), "the hanging backend cannot have confirmed"
    stored, scores = local_counts(tmp_path)
    assert sorted(stored) == sorted(span_ids) and scores == 100  # local kept receiving
    assert emit_seconds < 5

    started = time.perf_counter()
    spanmux.shutdown(timeout=1.0)
    assert time.perf_counter() - started < 3, "shutdown must honour its deadline"
    waiting_spans, waiting_scores = spooled(tmp_path / "spool" / "hanging")
    assert sorted(set(waiting_spans)) == sorted(span_ids) and len(set(waiting_scores)) == 100

    # the next run, with the backend answering again, replays the spool
    hanging.release.set()
    fresh = InMemoryBackend("hanging")  # same name, so the same spool
    spanmux.configure(base_config(tmp_path, [fresh]))
    flush_until_spools_empty("hanging")
    assert sorted({s.span_id for s in fresh.spans}) == sorted(span_ids)
    assert len({s.id for s in fresh.scores}) == 100


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    sock.close()


def test_langfuse_timing_out_keeps_records_and_local_keeps_receiving(
    silent_server: str, langfuse_server: Any, tmp_path: Path
) -> None:
    section = {"public_key": "pk-lf-contract", "secret_key": "sk-lf-contract", "host": silent_server, "timeout": 0.3}
    spanmux.configure(base_config(tmp_path, ["local", "langfuse"], langfuse=section))
    span_ids, _ = emit_traces(20)
    assert not spanmux.flush(timeout=1)  # Langfuse never answered: flush says so
    stored, scores = local_counts(tmp_path)
    assert sorted(stored) == sorted(span_ids) and scores == 20
    stats = lane_stats("langfuse")
    assert stats["exported_spans"] == 0 and "did not answer" in (stats["last_error"] or "")
    waiting_spans, waiting_scores = spooled(tmp_path / "spool" / "langfuse")
    assert sorted(waiting_spans) == sorted(span_ids) and len(waiting_scores) == 20
    spanmux.shutdown(5)

    next_run_delivers_exactly(tmp_path, langfuse_server, span_ids, 20)


# ---------------------------------------------------------------- every backend down, 100,000 spans
class RssPeak:
    """Peak growth of the resident set size while the block runs, sampled every 20 ms
    (tracemalloc would slow every allocation and spoil the timing it runs next to)."""

    def __init__(self) -> None:
        self.peak_delta = 0
        self._stop = threading.Event()
        self._page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak_delta = max(self.peak_delta, self._rss() - self._start)

    def __enter__(self) -> RssPeak:
        self._start = self._rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_delta = max(self.peak_delta, self._rss() - self._start)


def _per_call_seconds(count: int, chunk: int = 1000) -> float:
    """Median cost of one finished manual span, over chunks of ``chunk`` calls."""
    timings = []
    for _ in range(count // chunk):
        started = time.perf_counter()
        for _ in range(chunk):
            with spanmux.span("step", kind="chain"):
                pass
        timings.append((time.perf_counter() - started) / chunk)
    return statistics.median(timings)


def test_100k_spans_while_every_backend_is_down(tmp_path: Path) -> None:
    memories = {name: InMemoryBackend(name) for name in ("mem_a", "mem_b")}
    spanmux.configure(base_config(tmp_path, list(memories.values()), queue_size=20_000))
    normal = _per_call_seconds(10_000)  # both backends up
    assert spanmux.flush(timeout=30)
    delivered_before = len(memories["mem_a"].spans)
    assert delivered_before == len(memories["mem_b"].spans) == 10_000

    for memory in memories.values():
        memory.fail()  # unreachable, like a server that is down
    gc.collect()
    with RssPeak() as rss:
        down = _per_call_seconds(100_000)
        assert not spanmux.flush(timeout=1)  # everything is spooled, nothing delivered
    peak = rss.peak_delta
    ratio = down / normal
    logging.getLogger(__name__).warning(
        "per-call cost: up %.1fus, down %.1fus, ratio %.2f; RSS peak growth %.1f MB for 100,000 spans",
        normal * 1e6, down * 1e6, ratio, peak / 1e6)
    assert ratio < 3, f"caller cost went from {normal * 1e6:.1f}us to {down * 1e6:.1f}us"
    assert peak < 80e6, f"{peak / 1e6:.1f} MB: memory is not bounded by the queue"
    stats = spanmux.stats()
    for name in ("mem_a", "mem_b"):
        lane = stats["backends"][name]
        assert lane["spooled_spans"] == 100_000 and lane["dropped_spans"] == 0
    assert stats["overflow_dropped"] == 0

    for memory in memories.values():
        memory.recover()
    flush_until_spools_empty("mem_a", "mem_b")
    for name in ("mem_a", "mem_b"):
        ids = [s.span_id for s in memories[name].spans]
        assert len(ids) == len(set(ids)) == 110_000


# ---------------------------------------------------------------- kill -9, then the next process
KILLED_SCRIPT = """
    import sys, time, spanmux
    spanmux.configure({
        "backends": ["langfuse"],
        "langfuse": {"public_key": "pk-lf-contract", "secret_key": "sk-lf-contract", "host": sys.argv[1],
                     "timeout": 0.5},
        "spool_dir": sys.argv[2], "flush_interval": 0.02, "batch_size": 10,
    })
    for n in range(200):
        with spanmux.span(f"early-{n}") as s:
            pass
        spanmux.score(s.trace_id, "n", n)
    assert not spanmux.flush(1)  # the backend refuses connections: all of it waits in the spool
    print("spooled", flush=True)
    n = 0
    while True:  # keeps tracing (and retrying the dead backend) until killed
        with spanmux.span(f"late-{n}"):
            pass
        n += 1
        if n % 50 == 0:
            time.sleep(0.005)
"""


def refused_url() -> str:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_sigkill_loses_nothing_that_reached_the_spool(langfuse_server: Any, tmp_path: Path) -> None:
    script = tmp_path / "killed.py"
    script.write_text(textwrap.dedent(KILLED_SCRIPT))
    spool_dir = tmp_path / "spool"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, str(script), refused_url(), str(spool_dir)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "spooled", process.stderr.read() if process.stderr else ""
        while len(spooled(spool_dir / "langfuse")[0]) < 400:  # wait until some late spans reached disk
            time.sleep(0.01)  # polling the child's progress on disk, not waiting for an export
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert process.returncode == -signal.SIGKILL

    span_ids, score_ids = spooled(spool_dir / "langfuse")
    assert len(span_ids) == len(set(span_ids)) >= 400 and len(score_ids) == 200

    # the next process: same spool folder, the backend answers now
    spanmux.configure({"backends": ["langfuse"], "langfuse": langfuse_section(langfuse_server),
                       "spool_dir": str(spool_dir), "flush_interval": 0.05})
    flush_until_spools_empty("langfuse")
    observations = langfuse_server.all_observations()
    assert sorted(o.span_id for o in observations) == sorted(span_ids)
    assert sum(o.name.startswith("early-") for o in observations) == 200
    assert sorted(s["id"] for s in langfuse_server.all_scores()) == sorted(score_ids)
    leftovers = [p.name for p in (spool_dir / "langfuse").iterdir() if not p.name.endswith(".tmp")]
    assert leftovers == []


# ---------------------------------------------------------------- 16 threads + 1,000 asyncio tasks
THREADS, TRACES_PER_THREAD, TASKS = 16, 10, 1000


def test_threads_and_asyncio_tasks_with_an_intermittent_backend(tmp_path: Path) -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate

    from spanmux.integrations.langchain import CallbackHandler

    flaky = InMemoryBackend("flaky")
    flaky.fail(every=3)  # every third export call answers 503
    spanmux.configure(base_config(tmp_path, ["local", flaky], batch_size=64))
    usage = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}
    chat = FakeMessagesListChatModel(responses=[AIMessage("Paris", usage_metadata=usage,
                                                          response_metadata={"model_name": "gpt-4o-mini"})])
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | StrOutputParser()
    handler = CallbackHandler()
    roots: dict[str, str] = {}  # trace id -> root name
    roots_lock = threading.Lock()
    errors: list[BaseException] = []

    def remember(root: Any) -> None:
        with roots_lock:
            roots[root.trace_id] = root.name

    def in_thread(index: int) -> None:
        try:
            for n in range(TRACES_PER_THREAD):
                with spanmux.span(f"thread-{index}-{n}", kind="agent") as root:
                    with spanmux.span("lookup", kind="tool"):
                        pass
                    assert chain.invoke({"q": f"{index}/{n}"}, config={"callbacks": [handler]}) == "Paris"
                root.score("ok", True)
                remember(root)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    async def task(index: int) -> None:
        with spanmux.span(f"task-{index}", kind="agent") as root:
            await asyncio.sleep(0)
            with spanmux.span("lookup", kind="tool"):
                await asyncio.sleep(0)
            assert await chain.ainvoke({"q": str(index)}, config={"callbacks": [handler]}) == "Paris"
        root.score("ok", True)
        remember(root)

    async def all_tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(TASKS)))

    threads = [threading.Thread(target=in_thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    asyncio.run(all_tasks())
    for t in threads:
        t.join()
    assert not errors, errors
    traces = THREADS * TRACES_PER_THREAD + TASKS
    assert len(roots) == traces

    flush_until_spools_empty("flaky")
    with LocalStore(tmp_path / "store.db") as db:
        summaries = db.list_traces(limit=10_000)
        assert sorted((s.trace_id, s.name) for s in summaries) == sorted(roots.items())
        shapes = {tuple(_shape(db.get_trace(s.trace_id))) for s in summaries}
        local_ids = sorted(s.span_id for batch in db.iter_spans() for s in batch)
        assert len(db.get_scores()) == traces
    assert shapes == {(
        (0, "agent"), (1, "tool"), (1, "chain"), (2, "chain"), (2, "llm"), (2, "parser"),
    )}, shapes
    assert len(local_ids) == traces * 6
    assert sorted(s.span_id for s in flaky.spans) == local_ids  # exactly once, after the retries
    assert len(flaky.scores) == traces and lane_stats("flaky")["export_errors"] >= 1


def _shape(spans: list[Span]) -> list[tuple[int, str]]:
    """(depth, kind) in tree order, checking that every parent is in the same trace."""
    ids = {s.span_id for s in spans}
    depth: dict[str, int] = {}
    out = []
    for s in spans:
        assert s.parent_id is None or s.parent_id in ids, f"{s.name}: parent {s.parent_id} missing"
        d = depth[s.parent_id] + 1 if s.parent_id else 0
        depth[s.span_id] = d
        out.append((d, s.kind))
    return out


# ---------------------------------------------------------------- exit with a hanging backend
EXIT_SCRIPT = """
    import sys, spanmux
    spanmux.configure({
        "backends": ["local", "langfuse"],
        "langfuse": {"public_key": "pk-lf-contract", "secret_key": "sk-lf-contract", "host": sys.argv[1],
                     "timeout": 60},
        "local": {"path": "store.db"}, "spool_dir": "spool", "flush_interval": 60,
    })
    for n in range(30):
        with spanmux.span(f"exit-{n}") as s:
            pass
        s.score("n", n)
"""


def test_exit_honours_its_deadline_and_keeps_the_rest_in_the_spool(silent_server: str, tmp_path: Path) -> None:
    script = tmp_path / "exiting.py"
    script.write_text(textwrap.dedent(EXIT_SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "SPANMUX_EXIT_TIMEOUT": "1"}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, str(script), silent_server], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert elapsed < 15, f"exit took {elapsed:.1f}s with a 1 s deadline (the backend's timeout is 60 s)"
    assert "kept in its spool for the next run" in result.stderr
    stored, scores = local_counts(tmp_path)
    assert len(stored) == 30 and scores == 30
    waiting_spans, waiting_scores = spooled(tmp_path / "spool" / "langfuse")
    assert sorted(set(waiting_spans)) == sorted(stored) and len(set(waiting_scores)) == 30


# ---------------------------------------------------------------- MLflow server stopped, then restarted
def test_mlflow_server_stopped_mid_run_then_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracing.client import TracingClient
    from mlflow_server import MlflowServer

    server = MlflowServer(tmp_path / "mlflow-server").start()  # its own port and database
    try:
        spanmux.configure(base_config(tmp_path, ["local", "mlflow"], batch_size=10, mlflow={
            "tracking_uri": server.url, "timeout": 2.0, "experiment_name": "outage"}))
        before_spans, before = emit_traces(4, "before")
        flush_until_spools_empty("mlflow")

        server.stop()  # the outage: spans keep coming, MLflow is gone
        outage_started = time.monotonic()
        during_spans, during = emit_traces(6, "during")
        assert not spanmux.flush(timeout=2)  # MLflow is gone: not delivered, and flush says so
        lane = lane_stats("mlflow")
        assert lane["export_errors"] >= 1 and lane["spool_pending_batches"] >= 1
        waiting_spans, waiting_scores = spooled(tmp_path / "spool" / "mlflow")
        assert sorted(waiting_spans) == sorted(during_spans) and len(waiting_scores) == 6

        server.start()  # same port, same database; start() polls /health
        outage = time.monotonic() - outage_started
        flush_until_spools_empty("mlflow")
        after_spans, after = emit_traces(3, "after")
        flush_until_spools_empty("mlflow")
        logging.getLogger(__name__).warning("MLflow outage lasted %.1fs (stop, emit, restart)", outage)

        tracing = TracingClient(server.url)
        for trace_id, root in zip(before + during + after, [f"before-{n}" for n in range(4)]
                                  + [f"during-{n}" for n in range(6)] + [f"after-{n}" for n in range(3)], strict=True):
            trace = tracing.get_trace(f"tr-{trace_id}")
            assert sorted(s.name for s in trace.data.spans) == sorted([root, "retrieve", "answer"])
            assert [a.name for a in trace.info.assessments] == ["quality"]
        lane = lane_stats("mlflow")
        assert lane["exported_spans"] == len(before_spans + during_spans + after_spans) == 39
        assert lane["exported_scores"] == 13 and lane["dropped_spans"] == 0
        stored, scores = local_counts(tmp_path)
        assert sorted(stored) == sorted(before_spans + during_spans + after_spans) and scores == 13
    finally:
        spanmux.shutdown(10)
        server.stop()


# ---------------------------------------------------------------- the queue overflows for a long time
def test_long_queue_overflow_is_cheap_for_the_caller_and_fully_delivered(tmp_path: Path) -> None:
    from spanmux.config_schemas import ObservabilityConfig
    from spanmux.pipeline import Pipeline
    from spanmux.processors import SpanProcessor

    processor = SpanProcessor(ObservabilityConfig())
    gate = threading.Event()

    def stuck_worker(span: Span) -> Span | None:
        if threading.current_thread().name == "spanmux-worker":
            gate.wait(60)
        return processor(span)

    memory = InMemoryBackend()
    pipeline = Pipeline([("mem", memory)], stuck_worker, queue_size=1000, batch_size=100, flush_interval=0.05,
                        spool_dir=str(tmp_path / "spool"))
    spans = [_span(n) for n in range(30_000)]
    started = time.perf_counter()
    for span in spans:
        pipeline.emit(span)
    per_call = (time.perf_counter() - started) / len(spans)
    assert pipeline.stats()["queue_overflowed"] >= 28_000
    files = len(list((tmp_path / "spool" / "_overflow").glob("*.batch")))
    assert files <= 30_000 // 64 + 2, f"{files} overflow files: records must be parked in batches"
    gate.set()
    started = time.perf_counter()
    for _ in range(10):
        assert pipeline.flush(60)
        if len(memory.spans) >= 30_000:
            break
    drained = time.perf_counter() - started
    logging.getLogger(__name__).warning("overflow: %.1fus per call while the worker was stuck; drained in %.1fs",
                                        per_call * 1e6, drained)
    assert sorted(s.span_id for s in memory.spans) == sorted(s.span_id for s in spans)
    assert pipeline.stats()["overflow_dropped"] == 0
    pipeline.shutdown(5)


def _span(n: int) -> Span:
    now = time.time_ns()
    return Span(trace_id=f"{n:032x}", span_id=f"{n:016x}", parent_id=None, name=f"s{n}", kind="chain",
                framework="manual", start_ns=now, end_ns=now + 1000)
