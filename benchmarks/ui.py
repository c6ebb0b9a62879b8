"""Web UI: server time of each page on a 1,000,000-span store, browser time of a 10,000-span trace
and of a 10 MB input, with the same Debian Chromium the browser tests drive.

    .venv/bin/python benchmarks/ui.py [--spans 1000000] [--requests 20] [--browser-runs 5] [--json]
    .venv/bin/python benchmarks/ui.py --smoke      # tiny sizes (seconds; figures meaningless)

The big store is LangChain-shaped 4-span traces (agent > chain > llm, tool) with users, sessions,
tags, A/B metadata and a failed tool every 40th trace, written through the local backend's own
``LocalBackend.export`` in pipeline-sized batches. It is cached under ``.spanmux/bench/`` keyed by
the store's schema version, this generator's version and the span count, so reruns only measure.

Server time: ``spanmux ui`` in its own process (as a user runs it), each URL requested once to warm up,
then ``--requests`` times with httpx; the median wall time of a request (what a user waits, HTTP
on loopback included). Browser time: Chromium from the start of navigation to the tree and
waterfall usable (first bars visible, a click on a tree node shows that span's detail), median of
``--browser-runs`` fresh pages; the 10 MB input: from navigation with ``?span=`` to the input's
first part shown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # browser.py: the Chromium/uvicorn kit
from _common import ROOT, machine, median

from spanmux.model import Cost, ErrorInfo, ModelInfo, Span, TraceAttributes, Usage, new_span_id, new_trace_id
from spanmux.store import SCHEMA_VERSION

GENERATOR_VERSION = 1  # bump when the shape of the generated traces changes (invalidates the cache)
BATCH = 512
CACHE = ROOT / ".spanmux" / "bench"
USERS = 1000
TRACES_PER_SESSION = 5


def make_trace(start: int, n: int) -> list[Span]:
    """Trace number ``n``: the 4 spans the LangChain handler emits for an agent with a tool, the
    trace fields on the root (user, session, tags, variant), a failed tool every 40th trace."""
    t, root, chain, llm, tool = new_trace_id(), new_span_id(), new_span_id(), new_span_id(), new_span_id()
    question = f"question {n} about city-{n % 997}"
    failed = n % 40 == 0
    attrs = TraceAttributes(user_id=f"user-{n % USERS}", session_id=f"session-{n // TRACES_PER_SESSION}",
                            tags=("bench", f"tag-{n % 10}"),
                            metadata={"variant": "AB"[n % 2], "prompt_version": f"v{n % 3}"})

    def span(span_id: str, parent: str | None, name: str, kind: str, a: int, b: int, **extra: Any) -> Span:
        return Span(trace_id=t, span_id=span_id, parent_id=parent, name=name, kind=kind,  # type: ignore[arg-type]
                    framework="langchain", start_ns=start + a, end_ns=start + b, **extra)

    tokens_in = 50 + n % 50
    return [
        span(llm, chain, "ChatOpenAI", "llm", 2_000, 900_000 + (n % 7) * 100_000,
             input=[{"role": "user", "content": question}],
             output={"role": "assistant", "content": f"answer {n}"}, model=ModelInfo("gpt-4o-mini", "openai"),
             usage=Usage(tokens_in, 10, tokens_in + 10),
             cost=Cost(input=tokens_in * 0.15e-6, output=10 * 0.6e-6, total=tokens_in * 0.15e-6 + 6e-6)),
        span(chain, root, "RunnableSequence", "chain", 1_000, 1_950_000, input={"q": question}, output=f"answer {n}"),
        span(tool, root, "search", "tool", 1_960_000, 1_990_000, input={"q": question},
             output=None if failed else ["y"], status="error" if failed else "ok",
             error=ErrorInfo("TimeoutError", "search backend timed out") if failed else None),
        span(root, None, "agent", "agent", 0, 2_000_000, input={"q": question}, output=f"answer {n}",
             status="error" if n % 80 == 0 else "ok", trace=attrs),
    ]


def spans_in_batches(total: int) -> Iterator[list[Span]]:
    """``total`` spans as 4-span traces, one trace started every ~2.4 s up to now (a week for 1M)."""
    traces = max(1, total // 4)
    step = 2_400_000_000
    base = time.time_ns() - traces * step
    batch: list[Span] = []
    for n in range(traces):
        batch.extend(make_trace(base + n * step, n))
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def cached_store(spans: int, folder: Path = CACHE) -> tuple[Path, float | None]:
    """The path of the big store, built when missing (and the seconds building took, else None)."""
    from spanmux.backends.local import LocalBackend
    from spanmux.config_schemas.observability import LocalConfig

    path = folder / f"ui-schema{SCHEMA_VERSION}-gen{GENERATOR_VERSION}-{spans}.db"
    if path.exists():
        return path, None
    folder.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".building")
    for old in folder.glob(building.name + "*"):
        old.unlink()
    started = time.perf_counter()
    backend = LocalBackend(LocalConfig(path=str(building)))
    for batch in spans_in_batches(spans):
        backend.export(batch, [])
    backend.shutdown(30)  # closing the last connection checkpoints the WAL into the file
    for leftover in (Path(f"{building}-wal"), Path(f"{building}-shm")):
        if leftover.exists() and leftover.stat().st_size == 0:
            leftover.unlink()
    building.rename(path)
    return path, round(time.perf_counter() - started, 1)


def _store_facts(path: Path) -> dict[str, Any]:
    """A user, a session, a trace of the newest traces, for the URLs to ask about."""
    from spanmux.store import LocalStore

    with LocalStore(path) as store:
        newest = store.list_traces(limit=2)
        a, b = newest[0], newest[-1]
    return {"user": a.user_id, "session": a.session_id, "trace_a": a.trace_id, "trace_b": b.trace_id,
            "tag": a.tags[-1], "variant": a.metadata["variant"], "old_question": "question 17 about"}


def server_urls(facts: dict[str, Any]) -> dict[str, str]:
    return {
        "trace list": "/traces",
        "filtered: user": f"/traces?user={facts['user']}",
        "filtered: errors": "/traces?errors=1",
        "filtered: tag": "/traces?tag=tag-3",
        "filtered: metadata": "/traces?meta=variant=B",
        "filtered: combined": f"/traces?user={facts['user']}&tag={facts['tag']}&meta=variant={facts['variant']}",
        "search: recent text": "/traces?q=city-5",
        "search: rare text (budget)": f"/traces?q={facts['old_question']}",
        "sessions list": "/sessions",
        "session page": f"/sessions/{facts['session']}",
        "trace page": f"/traces/{facts['trace_a']}",
        "compare by variant": "/compare?by=variant",
        "compare two traces": f"/compare/traces?a={facts['trace_a']}&b={facts['trace_b']}",
        "over time (hour)": "/over-time?bucket=hour",
    }


def server_times(store: Path, requests: int) -> dict[str, Any]:
    import httpx
    from browser import UiProcess

    out: dict[str, Any] = {}
    with UiProcess(store) as server, httpx.Client(base_url=server.url, timeout=120) as client:
        for label, url in server_urls(_store_facts(store)).items():
            first = client.get(url)
            if first.status_code != 200 or 'data-testid="store-error"' in first.text:
                out[label] = {"url": url, "status": first.status_code}
                continue
            times = []
            for _ in range(requests):
                t0 = time.perf_counter()
                response = client.get(url)
                times.append(time.perf_counter() - t0)
                response.raise_for_status()
            out[label] = {"url": url, "median_ms": round(median(times) * 1e3, 1),
                          "p90_ms": round(sorted(times)[int(0.9 * (len(times) - 1))] * 1e3, 1),
                          "bytes": len(first.content)}
    return out


def startup_times(store: Path, runs: int) -> dict[str, Any]:
    """``spanmux ui`` from process start to the first 200 on /healthz (the issue's "starts in under 2 s")."""
    from browser import UiProcess

    times = []
    for _ in range(runs):
        started = time.perf_counter()
        with UiProcess(store):
            times.append(time.perf_counter() - started)
    return {"runs": runs, "median_ms": round(median(times) * 1e3), "max_ms": round(max(times) * 1e3)}


def _browser_store(folder: Path, big_spans: int, input_bytes: int) -> dict[str, Any]:
    """A small store with one ``big_spans``-span trace and one span whose input is ``input_bytes``."""
    from browser import big_trace

    import spanmux

    path = folder / "browser.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(path)}, "spool_dir": str(folder / "spool"),
                       "max_content_bytes": input_bytes * 2, "estimate_tokens": False})
    big = big_trace(spanmux, big_spans)
    with spanmux.span("big-input", kind="chain", input="x" * input_bytes) as span:
        span.set_output("done")
    if not spanmux.flush(300):
        raise RuntimeError("flush timed out")
    spanmux.shutdown()
    return {"path": path, "big": big, "input_trace": span.trace_id, "input_span": span.span_id}


def browser_times(folder: Path, big_spans: int, input_bytes: int, runs: int) -> dict[str, Any]:
    from browser import UiProcess, browser_page, chromium_path, launch_chromium

    executable = chromium_path()
    if executable is None:
        return {"status": "n/a", "reason": "no Chromium (apt-get install chromium)"}
    from playwright.sync_api import sync_playwright

    facts = _browser_store(folder, big_spans, input_bytes)
    bars_ms: list[float] = []
    tree_ms: list[float] = []
    input_ms: list[float] = []
    with UiProcess(facts["path"]) as server, sync_playwright() as pw:
        fragments = _fragment_times(server.url, facts, runs)
        browser = launch_chromium(pw, executable)
        for _ in range(runs + 1):  # the first run warms the server's and the browser's caches
            with browser_page(browser, offline_guard=False) as (page, _guard, _dialogs):
                t0 = time.perf_counter()
                page.goto(f"{server.url}/traces/{facts['big']}", wait_until="commit")
                page.locator("[data-testid=bar]").first.wait_for(state="visible", timeout=60_000)
                bars_ms.append((time.perf_counter() - t0) * 1e3)
                node = page.locator("[data-testid=tree-node]").nth(3)
                span_id = node.get_attribute("data-span-id")
                node.click()
                page.locator(f"[data-testid=span-detail] [data-span-id='{span_id}']").first.wait_for(timeout=60_000)
                tree_ms.append((time.perf_counter() - t0) * 1e3)
            with browser_page(browser, offline_guard=False) as (page, _guard, _dialogs):
                t0 = time.perf_counter()
                page.goto(f"{server.url}/traces/{facts['input_trace']}?span={facts['input_span']}",
                          wait_until="commit")
                page.locator("[data-testid=span-detail] [data-testid=input]").first.wait_for(
                    state="visible", timeout=60_000)
                input_ms.append((time.perf_counter() - t0) * 1e3)
        browser.close()

    def mid(values: list[float]) -> float:
        return round(statistics.median(values[1:] or values), 1)

    return {"big_trace_spans": big_spans, "input_bytes": input_bytes, "runs": runs,
            "first_bars_ms": mid(bars_ms), "trace_usable_ms": mid(tree_ms),
            "trace_usable_ms_max": round(max(tree_ms[1:] or tree_ms), 1), "big_input_shown_ms": mid(input_ms),
            **fragments}


def _fragment_times(url: str, facts: dict[str, Any], runs: int) -> dict[str, Any]:
    """Server side of the browser figures: the 10k-span tree.json and the big span's detail fragment."""
    import httpx

    out: dict[str, Any] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for key, path in (("tree_json", f"/traces/{facts['big']}/tree.json"),
                          ("big_detail", f"/traces/{facts['input_trace']}/spans/{facts['input_span']}")):
            times, size = [], 0
            for _ in range(runs + 1):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append(time.perf_counter() - t0)
                response.raise_for_status()
                size = len(response.content)
            out[f"{key}_ms"] = round(median(times[1:] or times) * 1e3, 1)
            out[f"{key}_kb"] = round(size / 1e3, 1)
    return out


def measure(spans: int, requests: int, big_spans: int, input_bytes: int, browser_runs: int,
            cache: Path = CACHE) -> dict[str, Any]:
    before = machine()
    path, built_s = cached_store(spans, cache)
    shown = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    result: dict[str, Any] = {"machine_before": before, "spans": spans, "store": shown, "store_build_s": built_s,
                              "store_mb": round(path.stat().st_size / 1e6, 1), "requests": requests}
    try:
        result["startup"] = startup_times(path, max(1, min(5, requests)))
    except Exception as exc:
        result["startup"] = {"status": "n/a", "reason": repr(exc)[:500]}
    try:
        result["server"] = server_times(path, requests)
    except Exception as exc:  # the UI may be missing (no [ui] extra): report, do not crash the harness
        result["server"] = {"status": "n/a", "reason": repr(exc)[:500]}
    with tempfile.TemporaryDirectory(prefix="spanmux-ui-bench-") as tmp:
        try:
            result["browser"] = browser_times(Path(tmp), big_spans, input_bytes, browser_runs)
        except Exception as exc:
            result["browser"] = {"status": "n/a", "reason": repr(exc)[:500]}
    return result


def table(result: dict[str, Any]) -> str:
    """The figures as the Markdown table BENCHMARKS.md shows."""
    lines = [f"## web UI, {result['spans']:,}-span store ({result['store_mb']} MB), median of "
             f"{result['requests']} requests (load average before {result['machine_before']['loadavg']})"]
    server = result.get("server", {})
    if "reason" in server:
        lines.append(f"  server: n/a: {server['reason']}")
    else:
        lines.append(f"| {'page':<28} | {'median ms':>9} | {'p90 ms':>7} | {'KB':>6} | url")
        lines.append(f"|{'-' * 30}|{'-' * 11}|{'-' * 9}|{'-' * 8}|-----")
        for label, row in server.items():
            if "median_ms" not in row:
                lines.append(f"| {label:<28} | HTTP {row.get('status')} | {row.get('url')}")
                continue
            lines.append(f"| {label:<28} | {row['median_ms']:>9} | {row['p90_ms']:>7} | "
                         f"{row['bytes'] / 1e3:>6.1f} | {row['url']}")
    startup = result.get("startup", {})
    if "median_ms" in startup:
        lines.append(f"  startup: `spanmux ui` to its first answer {startup['median_ms']} ms median of "
                     f"{startup['runs']} (max {startup['max_ms']})   target < 2000 ms")
    browser = result.get("browser", {})
    if "trace_usable_ms" in browser:
        lines.append(f"  browser: {browser['big_trace_spans']:,}-span trace usable (bars visible, click shows "
                     f"the span) {browser['trace_usable_ms']} ms median of {browser['runs']} "
                     f"(max {browser['trace_usable_ms_max']})   target < 2000 ms")
        lines.append(f"  browser: first bars visible {browser['first_bars_ms']} ms; server: tree.json "
                     f"{browser['tree_json_ms']} ms ({browser['tree_json_kb']} KB)")
        lines.append(f"  browser: {browser['input_bytes'] / 1e6:.1f} MB input's first part shown "
                     f"{browser['big_input_shown_ms']} ms; server: its detail fragment {browser['big_detail_ms']} ms "
                     f"({browser['big_detail_kb']} KB)")
    else:
        lines.append(f"  browser: n/a: {browser.get('reason')}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--big-spans", type=int, default=10_000)
    parser.add_argument("--input-mb", type=float, default=10)
    parser.add_argument("--browser-runs", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, in a temporary cache")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="spanmux-ui-smoke-") as tmp:
            result = measure(2_000, 2, 300, 100_000, 1, cache=Path(tmp))
        result["smoke"] = True
    else:
        result = measure(args.spans, args.requests, args.big_spans, int(args.input_mb * 1e6), args.browser_runs)
    result["machine"] = machine()
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
