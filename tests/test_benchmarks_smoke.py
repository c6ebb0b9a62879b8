"""The benchmark harness runs end to end in its tiny ``--smoke`` form and reports every figure.
No timing is asserted: figures on a shared CI machine mean nothing; only the shape is checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

ROOT = Path(__file__).resolve().parent.parent


def run_smoke(*extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", LITELLM_LOCAL_MODEL_COST_MAP="True", DO_NOT_TRACK="1")
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", *extra],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=240, check=False)


def test_smoke_json_has_every_figure() -> None:
    done = run_smoke("--json")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["smoke"] is True
    assert result["machine_before"]["cpus"] >= 1

    overhead = result["overhead"]
    assert overhead["errors"] == {}
    for workload in ("chain", "agent"):
        configs = overhead["workloads"][workload]["configs"]
        assert set(configs) == {"none", "noop_handler", "spanmux_local"}
        for row in configs.values():
            assert {"latency_us", "total_us", "added_latency_us", "added_total_us"} <= set(row)
            assert row["latency_us"] > 0 and row["total_us"] > 0
        assert "spanmux_vs_noop_added_total_us" in overhead["workloads"][workload]["ratios"]

    store = result["store"]
    assert store["spans"] == 5000
    assert store["pipeline"]["exported_spans"] == 5000 and store["pipeline"]["export_errors"] == 0
    assert store["direct"]["spans_per_s"] > 0 and store["direct"]["bytes_per_span"] > 0
    assert store["reads"]["list_traces_50_ms"] > 0 and store["reads"]["get_trace_ms"] > 0

    imports = result["memory"]["import"]
    assert imports["import_ms"] > 0
    assert imports["heavy_modules"] == []  # no framework or backend SDK at `import spanmux`
    memory = result["memory"]["memory"]
    assert memory["spans"] == 5000 and memory["export_attempts"] >= 1
    lane = memory["lane_counters"]
    assert lane["exported_spans"] == 0  # the backend is down: everything is spooled, dropped or queued
    assert lane["spooled_spans"] + lane["dropped_spans"] + memory["pipeline_counters"]["queued"] >= 1


def test_smoke_table_is_printed() -> None:
    done = run_smoke("--parts", "store")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingest direct (LocalBackend.export)" in done.stdout
    assert "list_traces(limit=50)" in done.stdout
