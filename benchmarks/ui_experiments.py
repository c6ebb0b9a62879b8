"""Server time of the web UI's experiment pages on a store of many runs (written straight through
``LocalBackend.export_experiments``, no tracing): the list (first visit, which summarizes every listed
run, and later visits, which reuse those summaries), one run's page and the compare page.

    .venv/bin/python benchmarks/ui_experiments.py [--runs 50] [--items 1000] [--requests 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from backends.local import LocalBackend
from benchmarks._common import median
from spanmux.model import ExperimentItem, ExperimentRun


def build(path: Path, runs: int, items: int) -> list[str]:
    """``runs`` runs of ``items`` items each (two scorers, tokens, cost, a changed item in seven)."""
    start = time.time_ns()
    made = []
    for r in range(runs):
        rows = [ExperimentItem(
            item_id=f"q{i}", index=i, trace_id=f"{r:04x}{i:028x}", span_id="1", start_ns=start,
            end_ns=start + (i % 97) * 10**6, input={"question": f"question {i} " * 5}, expected=str(i),
            output=str(i if (i + r) % 7 else -1), scores={"exact": (i + r) % 7 != 0, "judge": (i * r % 10) / 10},
            input_tokens=100, output_tokens=20, total_tokens=120, cost=0.0001) for i in range(items)]
        made.append(ExperimentRun(run_id=f"{r:032x}", name="bench", start_ns=start + r, end_ns=start + r + 1,
                                  dataset="bench-v1", metadata={"variant": "AB"[r % 2]}, scorers=["exact", "judge"],
                                  items=rows))
    backend = LocalBackend(types.SimpleNamespace(path=str(path)))
    backend.export_experiments(made, None)
    backend.shutdown(5.0)
    return [run.run_id for run in made]


def measure(runs: int, items: int, requests: int) -> dict[str, Any]:
    from starlette.testclient import TestClient

    from spanmux.ui.app import create_app

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "spanmux.db"
        ids = build(path, runs, items)
        out: dict[str, Any] = {"runs": runs, "items_per_run": items}
        with TestClient(create_app(str(path)), base_url="http://127.0.0.1") as client:
            pages = {"list_first_visit": "/experiments", "list": "/experiments", "run": f"/experiments/{ids[0]}",
                     "compare": f"/experiments/compare?a={ids[1]}&b={ids[0]}"}
            for label, url in pages.items():
                times, size = [], 0
                for _ in range(1 if label == "list_first_visit" else requests):
                    began = time.perf_counter()
                    response = client.get(url)
                    times.append((time.perf_counter() - began) * 1000)
                    assert response.status_code == 200, (url, response.status_code)
                    size = len(response.content)
                out[label] = {"median_ms": round(median(times), 1), "kb": round(size / 1024)}
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.runs, args.items, args.requests)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{result['runs']} runs x {result['items_per_run']} items")
    for label in ("list_first_visit", "list", "run", "compare"):
        print(f"  {label:18s} {result[label]['median_ms']:8.1f} ms  {result[label]['kb']:5d} KB")


if __name__ == "__main__":
    main()
