"""How many traces per second the MLflow backend drains, into sqlite and into a tracking server.

    .venv/bin/python benchmarks/mlflow_throughput.py [--traces 1000] [--server]

Each trace has 4 spans (agent > chain > llm, tool) with model, usage and cost, like a small agent
step. ``direct`` calls ``MlflowBackend.export`` with pipeline-sized batches (512 spans); ``pipeline``
emits through spanmux (the caller's cost) and then waits for ``flush``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import spanmux
from spanmux.backends.mlflow import MlflowBackend
from spanmux.config_schemas.observability import MlflowConfig
from spanmux.model import Cost, ModelInfo, Span, Usage, new_span_id, new_trace_id


def make_trace(start: int) -> list[Span]:
    t, root, chain, llm, tool = new_trace_id(), new_span_id(), new_span_id(), new_span_id(), new_span_id()

    def span(span_id: str, parent: str | None, name: str, kind: str, a: int, b: int, **extra: object) -> Span:
        return Span(trace_id=t, span_id=span_id, parent_id=parent, name=name, kind=kind, framework="manual",
                    start_ns=start + a, end_ns=start + b, **extra)  # type: ignore[arg-type]

    return [
        span(llm, chain, "ChatOpenAI", "llm", 2_000, 900_000, input=[{"role": "user", "content": "hi"}],
             output={"role": "assistant", "content": "hello"}, model=ModelInfo("gpt-4o-mini", "openai"),
             usage=Usage(50, 10, 60), cost=Cost(0.0000075, 0.000006, 0.0000135)),
        span(chain, root, "RunnableSequence", "chain", 1_000, 950_000, input={"q": "hi"}, output="hello"),
        span(tool, root, "search", "tool", 960_000, 990_000, input={"q": "x"}, output=["y"]),
        span(root, None, "agent", "agent", 0, 1_000_000, input={"q": "hi"}, output="hello"),
    ]


def direct(uri: str, traces: int, batch_spans: int = 512) -> float:
    backend = MlflowBackend(MlflowConfig(tracking_uri=uri, experiment_name=f"bench-{time.time_ns()}"), None)
    backend.export(make_trace(time.time_ns()), [])  # connect, migrate, create experiment and run
    spans = [s for n in range(traces) for s in make_trace(time.time_ns() + n)]
    started = time.perf_counter()
    for i in range(0, len(spans), batch_spans):
        backend.export(spans[i:i + batch_spans], [])
    backend.force_flush(30)
    elapsed = time.perf_counter() - started
    backend.shutdown(30)
    return traces / elapsed


def pipeline(uri: str, traces: int, folder: Path) -> tuple[float, float]:
    spanmux.configure({"backends": ["mlflow"], "spool_dir": str(folder / "spool"), "flush_interval": 0.05,
                       "mlflow": {"tracking_uri": uri, "experiment_name": f"bench-pipe-{time.time_ns()}"}})
    for s in make_trace(time.time_ns()):  # warm up: import mlflow, create the run
        spanmux.runtime.emit(s)
    spanmux.flush(120)
    batch = [s for n in range(traces) for s in make_trace(time.time_ns() + n)]
    started = time.perf_counter()
    for s in batch:
        spanmux.runtime.emit(s)
    emitted = time.perf_counter() - started
    assert spanmux.flush(600)
    drained = time.perf_counter() - started
    lane = spanmux.stats()["backends"]["mlflow"]
    assert lane["export_errors"] == 0, lane
    assert lane["exported_spans"] == len(batch) + 4, lane  # every span of the burst arrived
    spanmux.shutdown()
    return emitted / len(batch) * 1e6, traces / drained


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=1000)
    parser.add_argument("--server", action="store_true", help="also measure a local mlflow server")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="spanmux-mlflow-bench-"))
    os.chdir(folder)
    uris = [("sqlite", f"sqlite:///{folder / 'bench.db'}")]
    server = None
    if args.server:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from mlflow_server import MlflowServer

        server = MlflowServer(folder / "server").start()
        uris.append(("server", server.url))
    try:
        for label, uri in uris:
            rate = direct(uri, args.traces)
            print(f"{label:7} direct export: {rate:7.0f} traces/s ({args.traces} traces x 4 spans, 512-span batches)")
            per_span_us, drained = pipeline(uri, args.traces, folder)
            print(f"{label:7} pipeline: emit {per_span_us:.2f} us/span in the caller; drained {drained:.0f} traces/s")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
