"""What experiments cost: the caller's ``emit`` with and without a running ``spanmux.evaluate``
watching it, and ``evaluate``'s overhead per item over running the same task in a span yourself.

    .venv/bin/python benchmarks/experiments.py [--items 300] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import spanmux
from benchmarks._common import median
from spanmux import runtime
from spanmux.model import Span, new_span_id, new_trace_id


def _span() -> Span:
    return Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="x", kind="chain",
                framework="manual", start_ns=1, end_ns=2)


def emit_cost(number: int = 200_000, repeat: int = 7) -> dict[str, float]:
    """Nanoseconds the observer loop adds to each ``Pipeline.emit`` (what this feature put on the
    caller's path): nothing watching (every program that is not evaluating), and one evaluation
    watching (a span of a trace it does not track: the common case on a busy process)."""
    from spanmux.experiments import ItemCounter

    record = _span()
    counter = ItemCounter()

    def loop(observers: tuple[Any, ...]) -> float:
        def body() -> None:
            for observe in observers:
                observe(record)

        return min(timeit.repeat(body, number=number, repeat=repeat)) / number * 1e9

    baseline = min(timeit.repeat(lambda: None, number=number, repeat=repeat)) / number * 1e9
    return {"observers_none_ns": loop(()) - baseline,
            "observers_one_evaluation_ns": loop((counter._watch,)) - baseline}


def processed_llm_span_us(number: int = 2000) -> dict[str, float]:
    """Microseconds to process one priced llm span with the worker's rules (what each model call
    of an item costs ``evaluate`` a second time, on the caller's side, for its figures)."""
    from spanmux.model import ModelInfo, Usage
    from spanmux.processors import SpanProcessor

    processor = SpanProcessor(runtime.settings())
    span = Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="m", kind="llm",
                framework="manual", start_ns=1, end_ns=2, model=ModelInfo("gpt-4o-mini"), usage=Usage(20, 5, 25))
    return {"process_llm_span_us": timeit.timeit(lambda: processor(span), number=number) / number * 1e6}


def task(input: int) -> int:
    with spanmux.span("model", kind="llm") as call:
        call.set_model("gpt-4o-mini")
        call.set_usage(20, 5)
    return input


def exact(output: int, expected: Any) -> bool:
    return output == expected


def per_item(items: int, rounds: int) -> dict[str, float]:
    """Microseconds per item: ``evaluate`` (root span, task, one scorer with its evaluator span and
    score, the per-item figures, the run record) against the task and a score in a span by hand."""
    data = [{"input": n, "expected": n, "id": f"i{n}"} for n in range(items)]
    by_hand, evaluated = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for item in data:
            with spanmux.span("item", kind="chain") as root:
                output = task(item["input"])
                root.score("exact", exact(output, item["expected"]))
        by_hand.append((time.perf_counter() - start) / items * 1e6)
        spanmux.flush(60)
        start = time.perf_counter()
        spanmux.evaluate(data=data, task=task, scorers=[exact], name="bench", progress=False)
        evaluated.append((time.perf_counter() - start) / items * 1e6)
        spanmux.flush(60)
    return {"by_hand_us": median(by_hand), "evaluate_us": median(evaluated)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        spanmux.configure({"backends": ["local"], "local": {"path": f"{folder}/store.db"},
                           "spool_dir": f"{folder}/spool"})
        figures = {**emit_cost(), **processed_llm_span_us(), **per_item(args.items, args.rounds)}
        spanmux.shutdown()
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for key, value in figures.items():
        print(f"{key:28s} {value:10.2f}")


if __name__ == "__main__":
    main()
