"""Per-invoke added cost of tracing a LangChain chain and a LangGraph agent, against peers.

    .venv/bin/python benchmarks/overhead.py [--rounds 15] [--calls 40] [--json]
    .venv/bin/python benchmarks/overhead.py --cpu chain --rounds 21 --calls 40   (one process, CPU time)

Every configuration runs in its own long-lived worker process (MLflow's autolog and the Langfuse
SDK patch or hold process-wide state, and each process stays warm). The driver alternates the
configurations round by round (rotating the order each round) so that load changes on a shared
machine hit all of them alike. Per round a worker runs N invokes, timing each one (``latency``:
what the caller waits; the handler runs on the caller's thread), then flushes its exporter
(``total`` = wall time of N invokes + flush, / N). Reported figures are medians over rounds of
the per-round medians (latency) and of the per-round totals. Added cost = figure - ``none``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import child_env, machine, median, python

CONFIGS = ("none", "noop_handler", "spanmux_local", "spanmux_local_priced", "spanmux_mlflow", "spanmux_langfuse",
           "langfuse_handler", "mlflow_autolog", "spanmux_otlp", "openinference_otel")
"""``spanmux_otlp`` and ``openinference_otel`` (OpenInference's LangChain instrumentor + the OTel SDK's
BatchSpanProcessor + OTLP/HTTP exporter) both export OTLP to the same local sink."""
WORKLOADS = ("chain", "agent")
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench"


# ---- worker side ----------------------------------------------------------------------------------

def _workloads() -> dict[str, Any]:
    """Factories of the two offline workloads (fake models: no network, deterministic)."""
    from langchain.agents import create_agent
    from langchain_core.language_models.fake_chat_models import FakeMessagesListChatModel
    from langchain_core.messages import AIMessage
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.tools import tool

    usage = {"input_tokens": 12, "output_tokens": 5, "total_tokens": 17}

    def answer(text: str, **extra: Any) -> AIMessage:
        return AIMessage(text, usage_metadata=dict(usage), response_metadata={"model_name": "gpt-4o-mini"},
                         **extra)

    class FakeChat(FakeMessagesListChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> FakeChat:  # type: ignore[override]
            return self

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool
    def multiply(a: int, b: int) -> int:
        """Multiply two integers."""
        return a * b

    prompt = ChatPromptTemplate.from_messages([("system", "Answer briefly."), ("human", "{q}")])
    chain = prompt | FakeChat(responses=[answer("Paris")]) | StrOutputParser()
    calls = [{"name": "add", "args": {"a": 2, "b": 3}, "id": "c1", "type": "tool_call"},
             {"name": "multiply", "args": {"a": 4, "b": 5}, "id": "c2", "type": "tool_call"}]
    # FakeMessagesListChatModel cycles through its responses, so one agent serves every invoke.
    agent = create_agent(FakeChat(responses=[answer("", tool_calls=calls), answer("5 and 20")]),
                         tools=[add, multiply])
    return {
        "chain": (chain, {"q": "capital of France?"}),
        "agent": (agent, {"messages": [{"role": "user", "content": "2+3 and 4*5?"}]}),
    }


def _setup(config: str, folder: Path, sink: str) -> tuple[list[Any], Any]:
    """Return (callbacks, flush) for one configuration."""
    if config == "none":
        return [], lambda: None
    if config == "noop_handler":
        from langchain_core.callbacks import BaseCallbackHandler

        return [BaseCallbackHandler()], lambda: None
    if config.startswith("spanmux_"):
        import spanmux
        from spanmux.integrations.langchain import CallbackHandler

        backend = config.removeprefix("spanmux_").removesuffix("_priced")
        block: dict[str, Any] = {"backends": [backend], "spool_dir": str(folder / "spool"),
                                 "local": {"path": str(folder / "spanmux.db")}}
        if config.endswith("_priced"):  # a `pricing:` override: isolates the price-table lookup's cost
            block["pricing"] = {"gpt-4o-mini": {"input": 0.15, "output": 0.6}}
        if backend == "mlflow":
            block["mlflow"] = {"tracking_uri": f"sqlite:///{folder / 'mlflow-spanmux.db'}",
                               "experiment_name": "bench"}
        if backend == "langfuse":
            block["langfuse"] = {"host": sink, "public_key": PUBLIC_KEY, "secret_key": SECRET_KEY}
        if backend == "otlp":
            block["otlp"] = {"endpoint": f"{sink}/v1/traces"}
        spanmux.configure(block)

        def flush() -> None:
            if not spanmux.flush(120):
                raise RuntimeError("spanmux.flush timed out")
        return [CallbackHandler()], flush
    if config == "langfuse_handler":
        from langfuse import Langfuse
        from langfuse.langchain import CallbackHandler as LangfuseHandler

        client = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, host=sink, tracing_enabled=True)
        return [LangfuseHandler(public_key=PUBLIC_KEY)], client.flush
    if config == "openinference_otel":
        from openinference.instrumentation.langchain import LangChainInstrumentor
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()  # its own provider, as spanmux uses none: no global state either
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{sink}/v1/traces")))
        LangChainInstrumentor().instrument(tracer_provider=provider)

        def otel_flush() -> None:
            if not provider.force_flush(120_000):
                raise RuntimeError("TracerProvider.force_flush timed out")
        return [], otel_flush
    if config == "mlflow_autolog":
        import mlflow

        mlflow.set_tracking_uri(f"sqlite:///{folder / 'mlflow-autolog.db'}")
        mlflow.set_experiment("bench-autolog")
        mlflow.langchain.autolog()
        return [], mlflow.flush_trace_async_logging
    raise ValueError(config)


def worker(config: str, folder: Path, sink: str) -> None:
    """Serve rounds on stdin ("<workload> <calls>") with one JSON line each on stdout."""
    out = sys.stdout
    sys.stdout = sys.stderr  # keep stray prints of SDKs off the protocol channel
    workloads = _workloads()
    callbacks, flush = _setup(config, folder, sink)
    run_config = {"callbacks": callbacks} if callbacks else {}
    for runnable, inputs in workloads.values():  # warm up: imports, first-call caches, DB creation
        for _ in range(3):
            runnable.invoke(inputs, config=run_config)
    flush()
    print(json.dumps({"ready": config}), file=out, flush=True)
    for line in sys.stdin:
        name, calls = line.split()
        runnable, inputs = workloads[name]
        each: list[int] = []
        started = time.perf_counter_ns()
        for _ in range(int(calls)):
            t0 = time.perf_counter_ns()
            runnable.invoke(inputs, config=run_config)
            each.append(time.perf_counter_ns() - t0)
        flush()
        total = time.perf_counter_ns() - started
        print(json.dumps({"latency_us": median(each) / 1e3, "total_us": total / int(calls) / 1e3}),
              file=out, flush=True)


def keeps_up(invokes: int, repeats: int = 3) -> dict[str, Any]:
    """Does the worker keep up with one thread? ``invokes`` calls of the 4-span chain traced to
    the local store, then ``flush()``: the flush's time as a fraction of the loop's (the backlog the
    worker and its lane still had). Median of ``repeats`` runs in this process."""
    import spanmux
    from spanmux.integrations.langchain import CallbackHandler

    chain, inputs = _workloads()["chain"]
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="spanmux-keepsup-") as tmp:
        spanmux.configure({"backends": ["local"], "spool_dir": f"{tmp}/spool", "local": {"path": f"{tmp}/s.db"}})
        config = {"callbacks": [CallbackHandler()]}
        for _ in range(20):
            chain.invoke(inputs, config=config)
        spanmux.flush(60)
        for _ in range(repeats):
            started = time.perf_counter()
            for _ in range(invokes):
                chain.invoke(inputs, config=config)
            looped = time.perf_counter()
            if not spanmux.flush(120):
                raise RuntimeError("spanmux.flush timed out")
            flushed = time.perf_counter()
            runs.append({"loop_s": looped - started, "flush_s": flushed - looped})
        spanmux.shutdown()
    ratios = sorted(r["flush_s"] / r["loop_s"] for r in runs)
    return {"invokes": invokes, "repeats": repeats, "loop_s": round(median([r["loop_s"] for r in runs]), 4),
            "flush_s": round(median([r["flush_s"] for r in runs]), 4),
            "flush_vs_loop": round(median(ratios), 4), "flush_vs_loop_runs": [round(r, 4) for r in ratios]}


def cpu_rounds(workload: str, calls: int, rounds: int, langfuse: bool = True) -> dict[str, Any]:
    """In this one process: no handler, LangChain's do-nothing handler, spanmux (local store) and,
    with ``langfuse``, Langfuse's handler (to the local sink), rounds of ``calls`` invokes each
    followed by its flush, the order rotated every round. Per invoke: process CPU time (every
    thread: the caller, spanmux's worker and lane, the SDK's exporter) and wall time; medians over
    rounds. On a shared, loaded machine CPU time moves far less than wall time (a thread that waits
    for a core costs none), so ratios inside one run stay comparable across runs."""
    from langchain_core.callbacks import BaseCallbackHandler

    import spanmux
    from spanmux.integrations.langchain import CallbackHandler

    runnable, inputs = _workloads()[workload]
    sink: subprocess.Popen[str] | None = None
    with tempfile.TemporaryDirectory(prefix="spanmux-cpu-") as tmp:
        spanmux.configure({"backends": ["local"], "spool_dir": f"{tmp}/spool", "local": {"path": f"{tmp}/s.db"}})
        configs: dict[str, tuple[dict[str, Any], Any]] = {
            "none": ({}, lambda: None),
            "noop_handler": ({"callbacks": [BaseCallbackHandler()]}, lambda: None),
            "spanmux_local": ({"callbacks": [CallbackHandler()]}, lambda: spanmux.flush(120)),
        }
        if langfuse:
            from langfuse import Langfuse
            from langfuse.langchain import CallbackHandler as LangfuseHandler

            sink, url = start_sink()
            client = Langfuse(public_key=PUBLIC_KEY, secret_key=SECRET_KEY, host=url, tracing_enabled=True)
            configs["langfuse_handler"] = ({"callbacks": [LangfuseHandler(public_key=PUBLIC_KEY)]}, client.flush)
        for config, flush in configs.values():  # warm up
            for _ in range(5):
                runnable.invoke(inputs, config=config)
            flush()
        samples: dict[str, dict[str, list[float]]] = {k: {"cpu_us": [], "wall_us": []} for k in configs}
        names = list(configs)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                config, flush = configs[name]
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(calls):
                    runnable.invoke(inputs, config=config)
                flush()
                samples[name]["cpu_us"].append((time.process_time() - cpu) / calls * 1e6)
                samples[name]["wall_us"].append((time.perf_counter() - wall) / calls * 1e6)
        spanmux.shutdown()
    if sink is not None and sink.stdin:
        sink.stdin.close()
        sink.wait(10)
    table = {k: {m: round(median(v), 1) for m, v in figures.items()} for k, figures in samples.items()}
    bare = table["none"]["cpu_us"]
    added = {k: round(v["cpu_us"] - bare, 1) for k, v in table.items() if k != "none"}
    ours = added["spanmux_local"]
    ratios = {"spanmux_vs_bare": round(ours / bare, 3),
              "spanmux_vs_noop": round(ours / added["noop_handler"], 2) if added["noop_handler"] > 0 else None}
    if "langfuse_handler" in added and ours > 0:
        ratios["langfuse_handler_vs_spanmux"] = round(added["langfuse_handler"] / ours, 2)
    return {"workload": workload, "calls_per_round": calls, "rounds": rounds, "configs": table,
            "added_cpu_us": added, "ratios": ratios}


# ---- driver side ----------------------------------------------------------------------------------

class _Worker:
    def __init__(self, config: str, folder: Path, sink: str) -> None:
        self.config = config
        self.error: str | None = None
        self.proc = subprocess.Popen(
            [python(), __file__, "--worker", config, "--dir", str(folder), "--sink", sink],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())

    def wait_ready(self) -> None:
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if not line:
            self.error = (self.proc.stderr.read() if self.proc.stderr else "")[-1500:] or "worker died"

    def round(self, workload: str, calls: int) -> dict[str, float] | None:
        if self.error:
            return None
        assert self.proc.stdin and self.proc.stdout
        try:
            self.proc.stdin.write(f"{workload} {calls}\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError as exc:
            self.error = repr(exc)
            return None
        if not line:
            self.error = (self.proc.stderr.read() if self.proc.stderr else "")[-1500:] or "worker died"
            return None
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_sink() -> tuple[subprocess.Popen[str], str]:
    sink = subprocess.Popen([python(), str(Path(__file__).with_name("sink.py"))], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=child_env())
    port = sink.stdout.readline().strip() if sink.stdout else ""
    return sink, f"http://127.0.0.1:{port}"


def measure(rounds: int, calls: int, configs: tuple[str, ...] = CONFIGS) -> dict[str, Any]:
    sink, url = start_sink()
    samples: dict[str, dict[str, dict[str, list[float]]]] = {
        w: {c: {"latency_us": [], "total_us": []} for c in configs} for w in WORKLOADS}
    with tempfile.TemporaryDirectory(prefix="spanmux-bench-") as tmp:
        workers = []
        for config in configs:
            folder = Path(tmp) / config
            folder.mkdir()
            workers.append(_Worker(config, folder, url))
        for w in workers:
            w.wait_ready()
        try:
            for r in range(rounds):
                order = workers[r % len(workers):] + workers[:r % len(workers)]
                for workload in WORKLOADS:
                    for w in order:
                        got = w.round(workload, calls)
                        if got:
                            for key, value in got.items():
                                samples[workload][w.config][key].append(value)
        finally:
            for w in workers:
                w.close()
            if sink.stdin:
                sink.stdin.close()
            sink.wait(10)
    errors = {w.config: w.error for w in workers if w.error}
    return summarize(samples, errors, rounds, calls)


def summarize(samples: dict[str, Any], errors: dict[str, str], rounds: int, calls: int) -> dict[str, Any]:
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "errors": errors, "workloads": {}}
    for workload, per_config in samples.items():
        table: dict[str, Any] = {}
        base = {k: median(per_config["none"][k]) for k in ("latency_us", "total_us")}
        for config, figures in per_config.items():
            if config in errors or not figures["latency_us"]:
                table[config] = {"status": "n/a", "reason": (errors.get(config) or "no data").strip()[-300:]}
                continue
            row: dict[str, Any] = {k: round(median(v), 1) for k, v in figures.items()}
            row["added_latency_us"] = round(row["latency_us"] - base["latency_us"], 1)
            row["added_total_us"] = round(row["total_us"] - base["total_us"], 1)
            table[config] = row
        ours = table.get("spanmux_local", {})
        ratios: dict[str, float | None] = {}

        def ratio(a: dict[str, Any], b: dict[str, Any], key: str) -> float | None:
            if key not in a or key not in b or a[key] <= 0:
                return None
            return round(b[key] / a[key], 2)
        noop = table.get("noop_handler", {})
        for key in ("added_latency_us", "added_total_us"):
            ratios[f"spanmux_vs_noop_{key}"] = ratio(noop, ours, key)
            for peer in ("langfuse_handler", "mlflow_autolog"):
                ratios[f"{peer}_vs_spanmux_{key}"] = ratio(ours, table.get(peer, {}), key)
        for key in ("added_latency_us", "added_total_us"):  # the same OTLP sink, both sides
            ratios[f"openinference_otel_vs_spanmux_otlp_{key}"] = ratio(
                table.get("spanmux_otlp", {}), table.get("openinference_otel", {}), key)
            ratios[f"langfuse_handler_vs_spanmux_langfuse_{key}"] = ratio(  # the same Langfuse sink
                table.get("spanmux_langfuse", {}), table.get("langfuse_handler", {}), key)
        result["workloads"][workload] = {"configs": table, "ratios": ratios}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset (keep none)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--worker")
    parser.add_argument("--dir")
    parser.add_argument("--sink")
    parser.add_argument("--keeps-up", type=int, metavar="INVOKES",
                        help="only measure flush() after INVOKES chain calls against the loop's time")
    parser.add_argument("--cpu", choices=WORKLOADS, metavar="WORKLOAD",
                        help="in this process: process CPU time per invoke (caller + worker + lane + flush) of "
                             "none, noop_handler, spanmux_local and langfuse_handler, --rounds of --calls")
    parser.add_argument("--no-langfuse", action="store_true", help="with --cpu: leave Langfuse's handler out")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, Path(args.dir), args.sink)
        return
    if args.cpu:
        found = cpu_rounds(args.cpu, args.calls, args.rounds, langfuse=not args.no_langfuse)
        found["machine"] = machine()
        print(json.dumps(found, indent=None if args.json else 2))
        return
    if args.keeps_up:
        found = keeps_up(args.keeps_up)
        found["machine"] = machine()
        print(json.dumps(found, indent=None if args.json else 2))
        return
    result = measure(args.rounds, args.calls, tuple(args.configs.split(",")))
    result["machine"] = machine()
    print(json.dumps(result, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
