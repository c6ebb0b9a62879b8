"""``import spanmux`` time, and resident memory while 1,000,000 spans pass with the backend down.

    .venv/bin/python benchmarks/memory.py [--spans 1000000] [--imports 9] [--json]

Import time is measured in fresh interpreters (the interpreter's own start-up excluded), median
of several; each run also lists which framework or backend SDK modules ``import spanmux`` pulled
in (there should be none). The memory run builds a real ``Pipeline`` (queue, worker, processors,
one lane with a bounded disk spool) over a backend whose every export raises a retryable
``ExportError``, emits the spans as fast as the caller can, and samples RSS as it goes.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, median, rss_kb, run_json

HEAVY_MODULES = ("langchain_core", "langchain", "langgraph", "llama_index", "dspy", "mlflow", "langfuse",
                 "opentelemetry", "genai_prices", "tiktoken", "litellm", "openai", "pydantic_core._pydantic_core_x")

_IMPORT_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import spanmux
elapsed = time.perf_counter() - t0
heavy = sorted({m.split('.')[0] for m in sys.modules} & set(%r))
print(json.dumps({"ms": elapsed * 1e3, "heavy": heavy}))
"""


def import_time(runs: int) -> dict[str, Any]:
    samples = [run_json(["-c", _IMPORT_PROBE % (HEAVY_MODULES,)], timeout=120) for _ in range(runs)]
    heavy = sorted({m for s in samples for m in s["heavy"]})
    return {"import_ms": round(median([s["ms"] for s in samples]), 1),
            "import_ms_min": round(min(s["ms"] for s in samples), 1), "runs": runs, "heavy_modules": heavy}


class DownBackend:
    """Every export fails as if the service were unreachable (retryable)."""

    name = "down"
    config_model = None
    required_modules: tuple[str, ...] = ()
    extra = None

    def __init__(self) -> None:
        self.calls = 0

    def export(self, spans: Any, scores: Any) -> None:
        from spanmux.backend import ExportError

        self.calls += 1
        raise ExportError("service unavailable (benchmark)", retryable=True)

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


def memory_backend_down(total: int, spool_mb: int) -> dict[str, Any]:
    from store import spans_in_chunks

    from spanmux.config_schemas import ObservabilityConfig
    from spanmux.pipeline import Pipeline
    from spanmux.processors import SpanProcessor

    settings = ObservabilityConfig(estimate_tokens=False)
    backend = DownBackend()
    with tempfile.TemporaryDirectory(prefix="spanmux-mem-") as tmp:
        start_rss = rss_kb()
        pipeline = Pipeline([("down", backend)], SpanProcessor(settings), queue_size=settings.queue_size,
                            batch_size=settings.batch_size, flush_interval=settings.flush_interval,
                            spool_dir=tmp, spool_max_bytes=spool_mb * 1024 * 1024)
        peak = start_rss
        samples: list[tuple[int, int]] = []
        emitted = 0
        started = time.perf_counter()
        for chunk in spans_in_chunks(total, 10_000):
            for span in chunk:
                pipeline.emit(span)
            emitted += len(chunk)
            now = rss_kb()
            peak = max(peak, now)
            if emitted % 100_000 == 0 or emitted == total:
                samples.append((emitted, now))
        emit_s = time.perf_counter() - started
        pipeline.flush(0.5)  # cannot deliver: returns False at its deadline
        stats = pipeline.stats()
        spool_bytes = sum(p.stat().st_size for p in Path(tmp).rglob("*") if p.is_file())
        pipeline.shutdown(0.5)
        end_rss = rss_kb()
        peak = max(peak, end_rss)
    lane = stats.get("backends", {}).get("down", stats.get("lanes", {}).get("down", {}))
    return {
        "spans": total, "emit_s": round(emit_s, 1), "spool_max_mb": spool_mb,
        "rss_start_mb": round(start_rss / 1024, 1), "rss_peak_mb": round(peak / 1024, 1),
        "rss_end_mb": round(end_rss / 1024, 1), "ru_maxrss_mb": round(resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_by_emitted_mb": [[n, round(kb / 1024, 1)] for n, kb in samples],
        "spool_bytes_on_disk": spool_bytes, "export_attempts": backend.calls,
        "pipeline_counters": {k: v for k, v in stats.items() if not isinstance(v, dict)},
        "lane_counters": lane,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--imports", type=int, default=9)
    parser.add_argument("--spool-mb", type=int, default=16)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=("import", "memory"))
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.only != "memory":
        result["import"] = import_time(args.imports)
    if args.only != "import":
        result["memory"] = memory_backend_down(args.spans, args.spool_mb)
    result["machine"] = machine()
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
