"""Built-in store: sustained ingest, listing and lookup latency, size on disk; MLflow's trace store
on a subset of the same spans for comparison.

    .venv/bin/python benchmarks/store.py [--spans 1000000] [--mlflow-spans 4000] [--processes 4] [--json]

Spans come as 4-span traces (agent > chain > llm, tool) shaped like what the LangChain handler
emits: the LLM span carries model and token usage (no cost: the worker prices it), inputs and
outputs are small JSON values. ``pipeline`` emits them through spanmux (emit -> worker ->
processors -> LocalBackend) in chunks of 50,000, each followed by ``flush()``, so the queue never
overflows and the rate is what the worker sustains; ``direct`` calls ``LocalBackend.export`` with
pipeline-sized batches (512) of already-processed spans. ``floor`` is raw SQLite on the same rows
(plain ``executemany`` in WAL mode, rows built before the clock starts), measured in the same run so
the ratios mean something on a shared machine; ``processes`` has four processes write one file at
once, beside one process writing the same number.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median

import spanmux
from spanmux.model import ModelInfo, Span, Usage, new_span_id, new_trace_id

CHUNK = 50_000
BATCH = 512


def make_trace(start: int, n: int) -> list[Span]:
    t, root, chain, llm, tool = new_trace_id(), new_span_id(), new_span_id(), new_span_id(), new_span_id()

    def span(span_id: str, parent: str | None, name: str, kind: str, a: int, b: int, **extra: Any) -> Span:
        return Span(trace_id=t, span_id=span_id, parent_id=parent, name=name, kind=kind,  # type: ignore[arg-type]
                    framework="langchain", start_ns=start + a, end_ns=start + b, **extra)

    question = f"question {n}"
    return [
        span(llm, chain, "ChatOpenAI", "llm", 2_000, 900_000, input=[{"role": "user", "content": question}],
             output={"role": "assistant", "content": "hello"}, model=ModelInfo("gpt-4o-mini", "openai"),
             usage=Usage(50, 10, 60)),
        span(chain, root, "RunnableSequence", "chain", 1_000, 950_000, input={"q": question}, output="hello"),
        span(tool, root, "search", "tool", 960_000, 990_000, input={"q": question}, output=["y"]),
        span(root, None, "agent", "agent", 0, 1_000_000, input={"q": question}, output="hello"),
    ]


def spans_in_chunks(total: int, chunk: int) -> Iterator[list[Span]]:
    base = time.time_ns() - total * 2_000_000
    made = 0
    while made < total:
        out: list[Span] = []
        while len(out) < chunk and made < total:
            trace = make_trace(base + made * 500_000, made)
            out.extend(trace)
            made += len(trace)
        yield out


def pipeline_ingest(total: int, folder: Path) -> dict[str, Any]:
    spanmux.configure({"backends": ["local"], "local": {"path": str(folder / "pipeline.db")},
                       "spool_dir": str(folder / "spool"), "estimate_tokens": False})
    elapsed = 0.0
    emit_s = 0.0
    for chunk in spans_in_chunks(total, min(CHUNK, total)):
        started = time.perf_counter()
        for span in chunk:
            spanmux.runtime.emit(span)
        emit_s += time.perf_counter() - started
        if not spanmux.flush(600):
            raise RuntimeError("flush timed out")
        elapsed += time.perf_counter() - started
    lane = spanmux.stats()["backends"]["local"]
    spanmux.shutdown()
    return {"spans_per_s": round(total / elapsed), "emit_us_per_span": round(emit_s / total * 1e6, 2),
            "exported_spans": lane.get("exported_spans"), "export_errors": lane.get("export_errors")}


def direct_ingest(total: int, path: Path) -> dict[str, Any]:
    from spanmux.backends.local import LocalBackend
    from spanmux.config_schemas.observability import LocalConfig

    backend = LocalBackend(LocalConfig(path=str(path)))
    elapsed = 0.0
    trace_ids: list[str] = []
    newest: list[str] = []
    for chunk in spans_in_chunks(total, CHUNK):
        trace_ids.extend(chunk[i].trace_id for i in range(0, len(chunk), 4 * 997))
        newest = [chunk[i].trace_id for i in range(max(0, len(chunk) - 4 * 200), len(chunk), 4)]
        started = time.perf_counter()
        for i in range(0, len(chunk), BATCH):
            backend.export(chunk[i:i + BATCH], [])
        elapsed += time.perf_counter() - started
    newest_ms = newest_lookup_ms(path, newest)  # while the writer is open: the newest not indexed yet
    backend.shutdown(30)
    size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
    return {"spans_per_s": round(total / elapsed), "bytes_per_span": round(size / total, 1),
            "file_mb": round(size / 1e6, 1), "sample_trace_ids": trace_ids, "get_trace_newest_ms": newest_ms}


def newest_lookup_ms(path: Path, trace_ids: list[str]) -> float:
    """``get_trace`` of the newest traces, the writer still open: in a version-3 store the traces
    that arrived since the last bulk insert into ``trace_ids`` are found by a scan of at most
    ``TRACE_IDS_EVERY`` rows; every other lookup goes through the index."""
    from spanmux.store import LocalStore

    with LocalStore(path) as store:
        store.get_trace(trace_ids[0])
        times = []
        for trace_id in trace_ids:
            t0 = time.perf_counter()
            spans = store.get_trace(trace_id)
            times.append(time.perf_counter() - t0)
            assert len(spans) == 4
    return round(median(times) * 1e3, 3)


FLOOR_SCHEMA = """
CREATE TABLE spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, parent_id TEXT, name TEXT NOT NULL,
    kind TEXT NOT NULL, framework TEXT NOT NULL, start_ns INTEGER NOT NULL, end_ns INTEGER NOT NULL,
    status TEXT NOT NULL, model TEXT, detail TEXT, trace_seq INTEGER NOT NULL);
"""
FLOOR_INDEX = "CREATE UNIQUE INDEX spans_by_trace ON spans (trace_seq, span_id)"


def floor_rows(total: int) -> list[tuple[Any, ...]]:
    """The store's own span rows for the same spans (columns, ``detail`` JSON, trace number), made
    before the clock starts: the floor pays no encoding."""
    from spanmux.backends.local import _span_row

    numbers: dict[str, int] = {}
    rows = []
    for chunk in spans_in_chunks(total, CHUNK):
        for s in chunk:
            rows.append(_span_row(s, numbers.setdefault(s.trace_id, len(numbers) + 1)))
    return rows


def raw_floor(rows: list[tuple[Any, ...]], path: Path, index: bool) -> dict[str, Any]:
    """Plain ``executemany`` of the rows, a transaction per pipeline-sized batch, WAL mode and
    ``synchronous=NORMAL`` like the store: what SQLite itself costs. With ``index``, the store's
    unique (trace number, span id) index is kept up too; no ``traces`` table, no lookups."""
    import sqlite3

    conn = sqlite3.connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(FLOOR_SCHEMA)
    if index:
        conn.execute(FLOOR_INDEX)
    insert = f"INSERT INTO spans VALUES ({', '.join('?' * len(rows[0]))})"
    started = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        conn.execute("BEGIN")
        conn.executemany(insert, rows[i:i + BATCH])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return {"spans_per_s": round(len(rows) / elapsed)}


def _writer(path: str, total: int) -> None:
    """One of the processes of ``multi_process``: build its spans, say ready, write on "go"."""
    from spanmux.backends.local import LocalBackend
    from spanmux.config_schemas.observability import LocalConfig

    chunks = list(spans_in_chunks(total, CHUNK))
    backend = LocalBackend(LocalConfig(path=path))
    print("ready", flush=True)
    sys.stdin.readline()
    for chunk in chunks:
        for i in range(0, len(chunk), BATCH):
            backend.export(chunk[i:i + BATCH], [])
    backend.shutdown(30)
    print("done", flush=True)


def multi_process(total: int, processes: int, folder: Path) -> dict[str, Any]:
    """``processes`` processes writing ``total`` spans between them into one store file at once
    (WAL and the busy timeout serialize their transactions), against one process writing the
    same number into a fresh file: aggregate spans/s of each."""
    import subprocess

    from _common import child_env, python

    def run(count: int, path: Path) -> float:
        each = total // count
        procs = [subprocess.Popen([python(), __file__, "--writer", str(path), "--spans", str(each)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env())
                 for _ in range(count)]
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a writer process failed to start")
        started = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "done" or proc.wait(600) != 0:
                raise RuntimeError("a writer process failed")
        return each * count / (time.perf_counter() - started)

    one = run(1, folder / "one-process.db")
    many = run(processes, folder / "processes.db")
    from spanmux.store import LocalStore

    with LocalStore(folder / "processes.db") as store:
        stored = store.count_spans()
    return {"spans": total, "processes": processes, "one_process_spans_per_s": round(one),
            "aggregate_spans_per_s": round(many), "stored_spans": stored}


def read_latency(path: Path, trace_ids: list[str], repeats: int) -> dict[str, Any]:
    from spanmux.store import LocalStore

    with LocalStore(path) as store:
        store.list_traces(limit=50)  # first query pays for opening pages
        listing = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            newest = store.list_traces(limit=50)
            listing.append(time.perf_counter() - t0)
        assert len(newest) == 50
        lookups = []
        rng = random.Random(7)
        for _ in range(repeats):
            trace_id = rng.choice(trace_ids)
            t0 = time.perf_counter()
            spans = store.get_trace(trace_id)
            lookups.append(time.perf_counter() - t0)
            assert len(spans) == 4
    return {"list_traces_50_ms": round(median(listing) * 1e3, 3), "get_trace_ms": round(median(lookups) * 1e3, 3)}


def mlflow_ingest(total: int, folder: Path) -> dict[str, Any]:
    """MLflow's own sqlite trace store, fed the same spans through spanmux's MLflow backend."""
    if total <= 0:
        return {"status": "n/a", "reason": "skipped (--mlflow-spans 0)"}
    try:
        from spanmux.backends.mlflow import MlflowBackend
        from spanmux.config_schemas import ObservabilityConfig
        from spanmux.config_schemas.observability import MlflowConfig
        from spanmux.processors import SpanProcessor
    except ImportError as exc:
        return {"status": "n/a", "reason": repr(exc)}
    try:
        process = SpanProcessor(ObservabilityConfig(estimate_tokens=False))
        uri = f"sqlite:///{folder / 'mlflow.db'}"
        backend = MlflowBackend(MlflowConfig(tracking_uri=uri, experiment_name="bench-store"), None)
        backend.export([p for s in make_trace(time.time_ns(), 0) if (p := process(s))], [])  # migrate, warm up
        spans = [p for chunk in spans_in_chunks(total, total) for s in chunk if (p := process(s))]
        started = time.perf_counter()
        for i in range(0, len(spans), BATCH):
            backend.export(spans[i:i + BATCH], [])
        backend.force_flush(120)
        elapsed = time.perf_counter() - started
        backend.shutdown(30)
    except Exception as exc:
        return {"status": "n/a", "reason": repr(exc)[:300]}
    size = sum(p.stat().st_size for p in folder.glob("mlflow.db*"))
    return {"spans": total, "spans_per_s": round(total / elapsed), "bytes_per_span": round(size / total, 1)}


def measure(spans: int, mlflow_spans: int, repeats: int = 50, processes: int = 4,
            process_spans: int = 200_000) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="spanmux-store-") as tmp:
        folder = Path(tmp)
        rows = floor_rows(spans)
        floor = raw_floor(rows, folder / "floor.db", index=True)
        floor["no_index_spans_per_s"] = raw_floor(rows, folder / "floor-no-index.db", index=False)["spans_per_s"]
        del rows
        for name in ("floor.db", "floor-no-index.db"):
            for p in folder.glob(name + "*"):
                p.unlink()
        direct = direct_ingest(spans, folder / "direct.db")
        reads = read_latency(folder / "direct.db", direct.pop("sample_trace_ids"), repeats)
        reads["get_trace_newest_ms"] = direct.pop("get_trace_newest_ms")
        piped = pipeline_ingest(spans, folder)
        multi = multi_process(min(process_spans, spans), processes, folder) if processes > 1 else {}
        mlflow_dir = folder / "mlflow"
        mlflow_dir.mkdir()
        peer = mlflow_ingest(mlflow_spans, mlflow_dir)
    ratios = {"direct_vs_floor": round(direct["spans_per_s"] / floor["spans_per_s"], 2),
              "pipeline_vs_floor": round(piped["spans_per_s"] / floor["spans_per_s"], 2)}
    return {"spans": spans, "floor": floor, "direct": direct, "pipeline": piped, "ratios": ratios, "reads": reads,
            "processes": multi, "mlflow_store": peer}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--mlflow-spans", type=int, default=4_000)
    parser.add_argument("--processes", type=int, default=4, help="writers of one file at once (0: skip)")
    parser.add_argument("--process-spans", type=int, default=200_000, help="spans they write between them")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--writer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        _writer(args.writer, args.spans)
        return
    result = measure(args.spans, args.mlflow_spans, processes=args.processes, process_spans=args.process_spans)
    result["machine"] = machine()
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
