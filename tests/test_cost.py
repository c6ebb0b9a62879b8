"""Cost on the worker thread: price table (checked against genai-prices' own figure), YAML
pricing override, provider-reported cost, unknown models counted, trace totals in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import TracedStore
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price

import spanmux
from spanmux import runtime
from spanmux.backends.local import LocalBackend, LocalStore
from spanmux.config_schemas import ObservabilityConfig
from spanmux.cost import CostCalculator
from spanmux.model import Cost, Span, Usage, new_span_id, new_trace_id


def library_figure(model: str, provider: str | None, **usage: int) -> tuple[float, float, float]:
    result = calc_price(PriceUsage(**usage), model, provider_id=provider)
    return float(result.input_price), float(result.output_price), float(result.total_price)


def usage_of(**usage: int) -> Usage:
    values = {"input_tokens": usage.get("input_tokens", 0), "output_tokens": usage.get("output_tokens", 0),
              "cache_read_tokens": usage.get("cache_read_tokens", 0),
              "cache_write_tokens": usage.get("cache_write_tokens", 0),
              "reasoning_tokens": usage.get("output_reasoning_tokens", 0)}
    return Usage(total_tokens=values["input_tokens"] + values["output_tokens"], **values)


# (model name as a framework reports it, provider as reported, library model, library provider, usage)
KNOWN: list[tuple[str, str | None, str, str | None, dict[str, int]]] = [
    ("gpt-4o-mini", "openai", "gpt-4o-mini", "openai",
     {"input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 1024}),
    ("gpt-4o-mini-2024-07-18", None, "gpt-4o-mini-2024-07-18", None, {"input_tokens": 1000, "output_tokens": 500}),
    ("o3-mini", "openai", "o3-mini", "openai",
     {"input_tokens": 2000, "output_tokens": 900, "output_reasoning_tokens": 700}),
    ("claude-3-5-sonnet-latest", "anthropic", "claude-3-5-sonnet-latest", "anthropic",
     {"input_tokens": 1250, "output_tokens": 20, "cache_read_tokens": 1000, "cache_write_tokens": 200}),
    ("gemini-1.5-flash", "google_genai", "gemini-1.5-flash", "google", {"input_tokens": 5000, "output_tokens": 800}),
    ("models/gemini-1.5-flash", None, "gemini-1.5-flash", "google", {"input_tokens": 10, "output_tokens": 10}),
    ("openai/gpt-4o-mini", None, "gpt-4o-mini", "openai", {"input_tokens": 700, "output_tokens": 70}),
    ("anthropic/claude-3-5-sonnet-latest", None, "claude-3-5-sonnet-latest", "anthropic",
     {"input_tokens": 300, "output_tokens": 30}),
    ("anthropic.claude-3-5-sonnet-20240620-v1:0", "bedrock", "anthropic.claude-3-5-sonnet-20240620-v1:0", "aws",
     {"input_tokens": 400, "output_tokens": 40}),
    ("text-embedding-3-small", "openai", "text-embedding-3-small", "openai", {"input_tokens": 8000}),
]


@pytest.mark.parametrize(("model", "provider", "lib_model", "lib_provider", "usage"), KNOWN,
                         ids=[f"{m}@{p}" for m, p, *_ in KNOWN])
def test_price_matches_the_library(model: str, provider: str | None, lib_model: str, lib_provider: str | None,
                                   usage: dict[str, int]) -> None:
    calculator = CostCalculator(ObservabilityConfig())
    cost = calculator.price(model, provider, usage_of(**usage))
    expected = library_figure(lib_model, lib_provider, **usage)
    assert cost is not None and cost.source == "price-table"
    assert (cost.input, cost.output, cost.total) == pytest.approx(expected, rel=1e-12)
    assert cost.total > 0


def test_cached_and_reasoning_tokens_change_the_price() -> None:
    """The cheaper cached-input price applies, and reasoning tokens are priced as output."""
    calculator = CostCalculator(ObservabilityConfig())
    plain = calculator.price("gpt-4o-mini", "openai", usage_of(input_tokens=1000, output_tokens=100))
    cached = calculator.price("gpt-4o-mini", "openai", usage_of(input_tokens=1000, output_tokens=100,
                                                                cache_read_tokens=800))
    assert plain is not None and cached is not None
    assert cached.input < plain.input and cached.output == plain.output
    anthropic_write = calculator.price("claude-3-5-sonnet-latest", "anthropic",
                                       usage_of(input_tokens=1000, output_tokens=0, cache_write_tokens=1000))
    anthropic_plain = calculator.price("claude-3-5-sonnet-latest", "anthropic", usage_of(input_tokens=1000))
    assert anthropic_write is not None and anthropic_plain is not None
    assert anthropic_write.input > anthropic_plain.input  # cache writes cost 1.25x


def _llm_span(model: str | None, provider: str | None = None, usage: Usage | None = None,
              cost: Cost | None = None, kind: str = "llm") -> Span:
    return Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="call", kind=kind,
                framework="manual", start_ns=1, end_ns=2, model=spanmux.ModelInfo(model, provider) if model else None,
                usage=usage, cost=cost)


def test_unknown_and_local_models_get_no_cost_and_are_counted() -> None:
    calculator = CostCalculator(ObservabilityConfig())
    usage = usage_of(input_tokens=10, output_tokens=5)
    for _ in range(2):
        assert calculator.apply(_llm_span("my-private-model", None, usage)).cost is None
    assert calculator.apply(_llm_span("ollama/llama3.1", None, usage)).cost is None
    assert calculator.apply(_llm_span("llama3.1", "ollama", usage)).cost is None
    assert calculator.apply(_llm_span(None, None, usage)).cost is None
    assert calculator.apply(_llm_span("gpt-4o-mini", None, None)).cost is None  # nothing to price
    assert calculator.apply(_llm_span("gpt-4o-mini", None, usage, kind="tool")).cost is None
    stats = calculator.stats()
    assert stats["unknown_models"] == {"my-private-model": 2, "ollama/llama3.1": 1, "llama3.1": 1}
    assert stats["unpriced"] == 4 and stats["without_model"] == 1
    assert stats["priced"] == {"provider": 0, "config": 0, "price-table": 0}


def test_response_model_priced_first_then_the_requested_one(traced: TracedStore) -> None:
    """The worker's one rule: ``model.name`` is the response model; a response name the table does
    not know (an Azure deployment, a router) is priced under the requested model."""
    usage = usage_of(input_tokens=1000, output_tokens=100)
    with spanmux.span("agent", kind="agent") as root:
        for request, response in (("gpt-4o-mini", "gpt-4o-mini-2024-07-18"), ("gpt-4o-mini", "my-azure-deployment"),
                                  ("my-router", "also-unknown")):
            runtime.emit(Span(
                trace_id=root.trace_id, span_id=new_span_id(), parent_id=root.span_id, name=response, kind="llm",
                framework="manual", start_ns=root.start_ns, end_ns=root.start_ns + 1, usage=usage,
                model=spanmux.ModelInfo(request, "openai"),
                attributes={"gen_ai.request.model": request, "gen_ai.response.model": response}))
    spans = {s.name: s for s in traced.only_trace()}
    dated, deployment, unknown = spans["gpt-4o-mini-2024-07-18"], spans["my-azure-deployment"], spans["also-unknown"]
    assert dated.model.name == "gpt-4o-mini-2024-07-18" and deployment.model.name == "my-azure-deployment"
    expected = library_figure("gpt-4o-mini", "openai", input_tokens=1000, output_tokens=100)[2]
    assert dated.cost.total == pytest.approx(expected) and deployment.cost.total == pytest.approx(expected)
    assert unknown.cost is None
    costs = spanmux.stats()["costs"]
    assert costs["unpriced"] == 1 and costs["unknown_models"] == {"also-unknown": 1}


def test_provider_cost_wins() -> None:
    calculator = CostCalculator(ObservabilityConfig(pricing={"gpt-4o-mini": {"input": 100, "output": 100}}))
    reported = Cost(0.1, 0.2, 0.3, "provider")
    span = calculator.apply(_llm_span("gpt-4o-mini", "openai", usage_of(input_tokens=10), cost=reported))
    assert span.cost == reported
    assert calculator.stats()["priced"]["provider"] == 1


def test_pricing_override_exact_figures() -> None:
    settings = ObservabilityConfig(pricing={
        "my-llama": {"input": 0.5, "output": 1.5, "cache_read": 0.1},
        "gpt-4o-mini": {"input": 1.0, "output": 2.0},
    })
    calculator = CostCalculator(settings)
    cost = calculator.price("my-llama", None, usage_of(input_tokens=2_000_000, output_tokens=1_000_000,
                                                        cache_read_tokens=1_000_000))
    # 1M uncached at 0.5 + 1M cached at 0.1; 1M output at 1.5
    assert cost is not None and cost.source == "config"
    assert (cost.input, cost.output, cost.total) == pytest.approx((0.6, 1.5, 2.1))
    # the override wins over the table, also when the framework adds a provider prefix
    cost = calculator.price("openai/gpt-4o-mini", "openai", usage_of(input_tokens=1_000_000, output_tokens=0))
    assert cost is not None and cost.source == "config" and cost.total == pytest.approx(1.0)
    # without cache_read price, cached tokens cost the input price
    cost = calculator.price("gpt-4o-mini", None, usage_of(input_tokens=1_000_000, cache_read_tokens=500_000))
    assert cost is not None and cost.input == pytest.approx(1.0)


def _emit_llm(model: str, provider: str | None, usage: Usage, cost: Cost | None = None) -> None:
    with spanmux.span("agent", kind="agent") as root:
        runtime.emit(Span(trace_id=root.trace_id, span_id=new_span_id(), parent_id=root.span_id, name="llm",
                          kind="llm", framework="manual", start_ns=root.start_ns, end_ns=root.start_ns + 1000,
                          model=spanmux.ModelInfo(model, provider), usage=usage, cost=cost))


def test_pipeline_prices_on_the_worker_and_sums_trace_totals(traced: TracedStore) -> None:
    calls = [(800, 120, 0), (1500, 300, 1024), (60, 10, 0)]
    with spanmux.span("agent", kind="agent") as root:
        for index, (inp, out, cached) in enumerate(calls):
            with spanmux.span(f"step{index}", kind="chain"), spanmux.span("ChatOpenAI", kind="llm") as llm:
                llm.set_model("gpt-4o-mini", "openai")
                llm.set_usage(inp, out, cache_read_tokens=cached)
        with spanmux.span("search", kind="tool"):
            pass
    spans = traced.trace(root.trace_id)
    llm_spans = [s for s in spans if s.kind == "llm"]
    assert len(llm_spans) == 3
    expected_costs = [library_figure("gpt-4o-mini", "openai", input_tokens=i, output_tokens=o, cache_read_tokens=c)
                      for i, o, c in calls]
    for span, (inp, out, cached), figure in zip(llm_spans, calls, expected_costs, strict=True):
        assert span.usage == Usage(input_tokens=inp, output_tokens=out, total_tokens=inp + out,
                                   cache_read_tokens=cached)
        assert span.cost is not None and span.cost.source == "price-table"
        assert span.cost.total == pytest.approx(figure[2], rel=1e-12)
    assert all(s.cost is None and s.usage is None for s in spans if s.kind != "llm")
    [summary] = traced.traces()
    assert summary.llm_calls == 3
    assert summary.input_tokens == sum(c[0] for c in calls)
    assert summary.output_tokens == sum(c[1] for c in calls)
    assert summary.total_tokens == sum(c[0] + c[1] for c in calls)
    assert summary.cost_total == pytest.approx(sum(f[2] for f in expected_costs), rel=1e-9)
    assert summary.models == ["gpt-4o-mini"]


def test_pipeline_pricing_override_provider_cost_and_unknown_counts(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    spanmux.configure({"backends": ["local"], "local": {"path": str(path)}, "spool_dir": str(tmp_path / "spool"),
                       "pricing": {"my-llama": {"input": 2.0, "output": 4.0}}})
    _emit_llm("my-llama", "vllm", Usage(input_tokens=1000, output_tokens=500, total_tokens=1500))
    _emit_llm("gpt-4o-mini", "openai", Usage(input_tokens=10, output_tokens=5, total_tokens=15),
              cost=Cost(0.5, 0.25, 0.75, "provider"))
    _emit_llm("mystery-model", None, Usage(input_tokens=10, output_tokens=5, total_tokens=15))
    assert spanmux.flush(timeout=30)
    numbers = spanmux.stats()
    assert numbers["costs"]["unknown_models"] == {"mystery-model": 1}
    assert numbers["costs"]["priced"] == {"provider": 1, "config": 1, "price-table": 0}
    assert numbers["processor_errors"] == 0
    with LocalStore(path) as db:
        by_model: dict[str, Any] = {}
        for summary in db.list_traces():
            llm = next(s for s in db.get_trace(summary.trace_id) if s.kind == "llm")
            by_model[llm.model.name if llm.model else ""] = (llm.cost, summary.cost_total)
    assert by_model["my-llama"][0] == Cost(2000 / 1e6, 2000 / 1e6, 4000 / 1e6, "config")
    assert by_model["gpt-4o-mini"] == (Cost(0.5, 0.25, 0.75, "provider"), 0.75)
    assert by_model["mystery-model"] == (None, None)


def test_store_totals_do_not_double_count_a_resent_batch(traced: TracedStore) -> None:
    """A batch re-sent after a partial failure (the Lane retries) leaves the totals unchanged."""
    with spanmux.span("agent", kind="agent") as root:
        for _ in range(2):
            with spanmux.span("llm", kind="llm") as llm:
                llm.set_model("gpt-4o-mini", "openai")
                llm.set_usage(100, 10)
    spans = traced.trace(root.trace_id)
    before = traced.traces()[0]
    backend = LocalBackend(type("Section", (), {"path": str(traced.path)})())
    backend.export(spans, [])
    backend.export(spans[1:], [])
    backend.shutdown(1)
    after = traced.traces()[0]
    assert (after.input_tokens, after.output_tokens, after.cost_total) == (
        before.input_tokens, before.output_tokens, before.cost_total)
    assert after.input_tokens == 200 and after.llm_calls == 2


@pytest.mark.parametrize(("model", "provider", "linear"), [
    ("gpt-4o-mini", "openai", True),
    ("claude-3-5-sonnet-latest", None, True),
    ("gemini-2.5-pro", "google", False),  # tiered by prompt length: every span priced by the library
])
def test_linear_fast_path_matches_the_library_or_steps_aside(model: str, provider: str | None, linear: bool) -> None:
    calculator = CostCalculator(ObservabilityConfig())
    for counts in ({"input_tokens": 48, "output_tokens": 12},
                   {"input_tokens": 300_000, "output_tokens": 9_000, "cache_read_tokens": 120_000}):
        cost = calculator.price(model, provider, usage_of(**counts))
        assert cost is not None
        expected = library_figure(model, provider, **counts)
        assert (cost.input, cost.output, cost.total) == pytest.approx(expected, rel=1e-9)
    assert any(v is not None for v in calculator._linear_prices.values()) is linear
