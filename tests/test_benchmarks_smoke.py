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
    assert store["floor"]["spans_per_s"] > 0 and store["floor"]["no_index_spans_per_s"] > 0
    assert store["ratios"]["direct_vs_floor"] > 0 and store["ratios"]["pipeline_vs_floor"] > 0
    multi = store["processes"]  # four processes writing one file: every span stored once
    assert multi["processes"] == 4 and multi["stored_spans"] == multi["spans"] == 4000
    assert multi["aggregate_spans_per_s"] > 0 and multi["one_process_spans_per_s"] > 0
    keeping = result["keeps_up"]
    assert keeping["invokes"] == 20 and keeping["loop_s"] > 0 and keeping["flush_vs_loop"] >= 0

    imports = result["memory"]["import"]
    assert imports["import_ms"] > 0
    assert imports["heavy_modules"] == []  # no framework or backend SDK at `import spanmux`
    memory = result["memory"]["memory"]
    assert memory["spans"] == 5000 and memory["export_attempts"] >= 1
    lane = memory["lane_counters"]
    assert lane["exported_spans"] == 0  # the backend is down: everything is spooled, dropped or queued
    assert lane["spooled_spans"] + lane["dropped_spans"] + memory["pipeline_counters"]["queued"] >= 1

    ui = result["ui"]  # benchmarks/ui.py: server times per page, browser times with Chromium
    assert ui["spans"] == 2000 and ui["smoke"] is True
    assert ui["startup"]["median_ms"] > 0, ui["startup"]
    for label in ("trace list", "filtered: user", "filtered: errors", "search: recent text", "session page",
                  "compare by variant"):
        assert ui["server"][label]["median_ms"] > 0, (label, ui["server"][label])
    if os.access("/usr/bin/chromium", os.X_OK):
        assert ui["browser"]["trace_usable_ms"] > 0 and ui["browser"]["big_input_shown_ms"] > 0, ui["browser"]
    else:
        assert ui["browser"]["status"] == "n/a"


def test_smoke_table_is_printed() -> None:
    done = run_smoke("--parts", "store")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ingest direct (LocalBackend.export)" in done.stdout
    assert "list_traces(limit=50)" in done.stdout
