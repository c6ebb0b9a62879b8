"""The benchmark harness behind ``make bench``: overhead against peers, store throughput, import
time and memory with backends down, web UI server and browser times (``ui.py``). Prints a table of
figures and ratios against design.md §7.

    .venv/bin/python benchmarks/run.py            # full run (several minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --smoke    # tiny version for CI (seconds; figures meaningless)
    .venv/bin/python benchmarks/run.py --json     # one JSON document on stdout

Each part runs in its own fresh interpreter (``overhead.py`` additionally runs one worker process
per configuration, driven round by round so configurations interleave).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, run_json

HERE = Path(__file__).resolve().parent
FULL = {
    "overhead": ["--rounds", "10", "--calls", "40"],
    "keeps_up": ["--keeps-up", "1000"],
    "store": ["--spans", "1000000", "--mlflow-spans", "4000"],
    "memory": ["--spans", "1000000", "--imports", "9"],
    "ui": ["--spans", "1000000", "--requests", "20", "--browser-runs", "5"],
}
SMOKE = {
    "overhead": ["--rounds", "2", "--calls", "2", "--configs", "none,noop_handler,spanmux_local"],
    "keeps_up": ["--keeps-up", "20"],
    "store": ["--spans", "5000", "--mlflow-spans", "0", "--process-spans", "4000"],
    "memory": ["--spans", "5000", "--imports", "2"],
    "ui": ["--smoke"],
}
SCRIPTS = {"keeps_up": "overhead"}
"""Parts measured by another part's script (with its own arguments)."""
TARGETS = {
    "spanmux_vs_noop_added_total_us": "<= 4x",
    "langfuse_handler_vs_spanmux_added_total_us": ">= 10x",
    "mlflow_autolog_vs_spanmux_added_total_us": ">= 10x",
    "spanmux_vs_noop_added_latency_us": "<= 4x",
    "langfuse_handler_vs_spanmux_added_latency_us": ">= 10x",
    "mlflow_autolog_vs_spanmux_added_latency_us": ">= 10x",
    "openinference_otel_vs_spanmux_otlp_added_total_us": ">= 5x",
    "langfuse_handler_vs_spanmux_langfuse_added_total_us": ">= 5x",
}


def run_all(smoke: bool, parts: list[str]) -> dict[str, Any]:
    plan = SMOKE if smoke else FULL
    result: dict[str, Any] = {"smoke": smoke, "machine_before": machine()}
    for part in parts:
        started = time.perf_counter()
        try:
            script = SCRIPTS.get(part, part)
            result[part] = run_json([str(HERE / f"{script}.py"), "--json", *plan[part]], timeout=3600)
        except Exception as exc:
            result[part] = {"status": "n/a", "reason": str(exc)[-500:]}
        result[part]["seconds"] = round(time.perf_counter() - started, 1)
    result["machine_after"] = machine()
    return result


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(result: dict[str, Any]) -> str:
    lines: list[str] = []
    m = result["machine_before"]
    lines.append(f"machine: {m['cpus']} cpus {m['cpu']}, Python {m['python']}, load average before "
                 f"{m['loadavg']} after {result['machine_after']['loadavg']}")
    overhead = result.get("overhead", {})
    for workload, data in overhead.get("workloads", {}).items():
        lines.append(f"\n## overhead per invoke: {workload} (median of {overhead['rounds']} rounds x "
                     f"{overhead['calls_per_round']} calls, microseconds)")
        lines.append(f"| {'configuration':<20} | {'latency':>9} | {'added':>9} | {'total+flush':>11} | {'added':>9} |")
        lines.append(f"|{'-' * 22}|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 11}|")
        for config, row in data["configs"].items():
            if "latency_us" not in row:
                lines.append(f"| {config:<20} | n/a: {row.get('reason', '')[:80]}")
                continue
            lines.append(f"| {config:<20} | {_fmt(row['latency_us']):>9} | {_fmt(row['added_latency_us']):>9} | "
                         f"{_fmt(row['total_us']):>11} | {_fmt(row['added_total_us']):>9} |")
        for key, value in data["ratios"].items():
            lines.append(f"  {key:<46} {_fmt(value):>8}   target {TARGETS.get(key, '')}")
    if "reason" in overhead:
        lines.append(f"\noverhead: n/a: {overhead['reason']}")
    keeping = result.get("keeps_up", {})
    if "flush_vs_loop" in keeping:
        lines.append(f"\n## worker keeps up: {keeping['invokes']:,} chain invokes from one thread, then flush()"
                     f" (median of {keeping['repeats']})")
        lines.append(f"  loop {keeping['loop_s']} s, flush {keeping['flush_s']} s: flush = "
                     f"{keeping['flush_vs_loop']:.1%} of the loop   target < 10%")
    elif keeping:
        lines.append(f"\nkeeps_up: n/a: {keeping.get('reason')}")
    store = result.get("store", {})
    if "direct" in store:
        lines.append(f"\n## built-in store, {store['spans']:,} spans")
        floor, ratios = store.get("floor", {}), store.get("ratios", {})
        if floor:
            lines.append(f"  raw SQLite floor (executemany, WAL)   {_fmt(floor['spans_per_s'])} spans/s with the spans"
                         f" index, {_fmt(floor['no_index_spans_per_s'])} without")
        lines.append(f"  ingest direct (LocalBackend.export)   {_fmt(store['direct']['spans_per_s'])} spans/s"
                     f"   {ratios.get('direct_vs_floor', 'n/a')}x the floor, target >= 0.66x")
        lines.append(f"  ingest pipeline (emit->worker->local) {_fmt(store['pipeline']['spans_per_s'])} spans/s"
                     f"   {ratios.get('pipeline_vs_floor', 'n/a')}x the floor, target >= 0.5x"
                     f" (caller's emit {store['pipeline']['emit_us_per_span']} us/span)")
        multi = store.get("processes") or {}
        if multi:
            lines.append(f"  {multi['processes']} processes, one file ({multi['spans']:,} spans)"
                         f"  {_fmt(multi['aggregate_spans_per_s'])} spans/s aggregate, one process"
                         f" {_fmt(multi['one_process_spans_per_s'])} spans/s ({multi['stored_spans']:,} stored)")
        lines.append(f"  list_traces(limit=50)                 {store['reads']['list_traces_50_ms']} ms"
                     "   target < 50 ms")
        lines.append(f"  get_trace                             {store['reads']['get_trace_ms']} ms")
        lines.append(f"  file size                             {store['direct']['bytes_per_span']} bytes/span "
                     f"({store['direct']['file_mb']} MB)")
        peer = store.get("mlflow_store", {})
        if "spans_per_s" in peer:
            lines.append(f"  MLflow sqlite trace store ({peer['spans']:,} spans) {_fmt(peer['spans_per_s'])} spans/s, "
                         f"{peer['bytes_per_span']} bytes/span")
        else:
            lines.append(f"  MLflow sqlite trace store: n/a ({peer.get('reason', 'skipped')})")
    elif store:
        lines.append(f"\nstore: n/a: {store.get('reason')}")
    memory = result.get("memory", {})
    if "import" in memory:
        imp = memory["import"]
        lines.append(f"\n## import and memory\n  import spanmux  {imp['import_ms']} ms median of {imp['runs']} "
                     f"(min {imp['import_ms_min']})   target < 100 ms; heavy modules imported: "
                     f"{imp['heavy_modules'] or 'none'}")
        mem = memory["memory"]
        lane = mem["lane_counters"]
        lines.append(f"  backend down, {mem['spans']:,} spans: RSS start {mem['rss_start_mb']} MB, peak "
                     f"{mem['rss_peak_mb']} MB, end {mem['rss_end_mb']} MB (spool bound {mem['spool_max_mb']} MB)")
        lines.append(f"  counted: spooled {lane.get('spooled_spans')}, dropped {lane.get('dropped_spans')}, "
                     f"overflowed {mem['pipeline_counters'].get('queue_overflowed')}, "
                     f"overflow dropped {mem['pipeline_counters'].get('overflow_dropped')}")
    elif memory:
        lines.append(f"\nmemory: n/a: {memory.get('reason')}")
    ui = result.get("ui", {})
    if "server" in ui:
        from ui import table as ui_table  # benchmarks/ui.py prints its own section

        lines.append("\n" + ui_table(ui))
    elif ui:
        lines.append(f"\nweb UI: n/a: {ui.get('reason')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--parts", default="overhead,keeps_up,store,memory,ui")
    parser.add_argument("--from-json", help="print the table of a saved --json result instead of measuring")
    args = parser.parse_args()
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = run_all(args.smoke, args.parts.split(","))
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))


if __name__ == "__main__":
    main()
