"""A/B comparison (``spanmux stats``) on a store filled through spanmux's real pipeline: two
variants tagged with ``trace_context(metadata=...)``, two models, errors and three kinds of score."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import TracedStore
from genai_prices import Usage as PriceUsage
from genai_prices import calc_price
from rich.console import Console
from typer.testing import CliRunner

import spanmux
from spanmux import cli
from spanmux.backends.local import LocalStore
from spanmux.comparison import NONE_GROUP, GroupStats, compare, percentile

# variant -> (model, provider, prompt version, [(input, output, correctness, helpful, tone, fails)])
PLAN: dict[str, tuple[str, str, int, list[tuple[int, int, float, bool, str, bool]]]] = {
    "A": ("gpt-4o-mini", "openai", 1, [
        (1000, 100, 0.5, True, "neutral", False),
        (1200, 150, 0.7, False, "neutral", False),
        (900, 80, 0.9, True, "friendly", False),
    ]),
    "B": ("claude-3-5-haiku-latest", "anthropic", 2, [
        (800, 60, 1.0, True, "friendly", False),
        (700, 40, 0.8, True, "friendly", True),
    ]),
}


def price(model: str, provider: str, inp: int, out: int) -> float:
    return float(calc_price(PriceUsage(input_tokens=inp, output_tokens=out), model, provider_id=provider).total_price)


def run_plan() -> None:
    for variant, (model, provider, version, calls) in PLAN.items():
        metadata = {"variant": variant, "prompt.name": "qa", "prompt.version": version}
        with spanmux.trace_context(user_id=f"user-{variant}", tags=["exp-7", f"arm-{variant}"], metadata=metadata):
            for inp, out, correctness, helpful, tone, fails in calls:
                try:
                    with spanmux.span("answer", kind="agent") as root:
                        with spanmux.span("retrieve", kind="retriever"):
                            pass
                        with spanmux.span("chat", kind="llm") as llm:
                            llm.set_model(model, provider)
                            llm.set_usage(inp, out)
                        if fails:
                            raise RuntimeError("tool failed")
                except RuntimeError:
                    pass
                spanmux.score(root.trace_id, "correctness", correctness)
                spanmux.score(root.trace_id, "helpful", helpful)
                spanmux.score(root.trace_id, "tone", tone)
    with spanmux.span("healthcheck", kind="chain"):  # a trace outside the experiment
        pass


@pytest.fixture
def store(traced: TracedStore) -> LocalStore:
    run_plan()
    return traced.store()


def by_group(groups: list[GroupStats]) -> dict[str, GroupStats]:
    return {g.group: g for g in groups}


def test_compare_variants(store: LocalStore) -> None:
    groups = by_group(compare(store, "metadata.variant"))
    assert list(groups) == ["A", "B", NONE_GROUP]
    for variant, (model, provider, _, calls) in PLAN.items():
        g = groups[variant]
        n = len(calls)
        assert g.traces == n
        assert g.errors == sum(c[5] for c in calls) and g.error_rate == pytest.approx(g.errors / n)
        assert g.mean_llm_calls == 1.0
        assert g.mean_input_tokens == pytest.approx(sum(c[0] for c in calls) / n)
        assert g.mean_output_tokens == pytest.approx(sum(c[1] for c in calls) / n)
        assert g.mean_total_tokens == pytest.approx(sum(c[0] + c[1] for c in calls) / n)
        expected_cost = sum(price(model, provider, c[0], c[1]) for c in calls)
        assert g.priced_traces == n
        assert g.total_cost == pytest.approx(expected_cost, rel=1e-9)
        assert g.mean_cost == pytest.approx(expected_cost / n, rel=1e-9)
        assert 0 < g.p50_ms <= g.p95_ms
        assert g.scores["correctness"].mean == pytest.approx(sum(c[2] for c in calls) / n)
        assert g.scores["correctness"].data_type == "numeric" and g.scores["correctness"].traces == n
        assert g.scores["helpful"].mean == pytest.approx(sum(c[3] for c in calls) / n)
        assert g.scores["helpful"].data_type == "boolean"
        tones: dict[str, int] = {}
        for c in calls:
            tones[c[4]] = tones.get(c[4], 0) + 1
        assert g.scores["tone"].counts == tones and g.scores["tone"].mean is None
    other = groups[NONE_GROUP]
    assert other.traces == 1 and other.scores == {} and other.total_cost is None and other.mean_cost is None


def test_variant_alias_prompt_model_tag_user_name_groupings(store: LocalStore) -> None:
    assert [(g.group, g.traces) for g in compare(store, "variant")] == [("A", 3), ("B", 2), (NONE_GROUP, 1)]
    assert [(g.group, g.traces) for g in compare(store, "prompt")] == [("qa@1", 3), ("qa@2", 2), (NONE_GROUP, 1)]
    assert [(g.group, g.traces) for g in compare(store, "model")] == [
        ("claude-3-5-haiku-latest", 2), ("gpt-4o-mini", 3), (NONE_GROUP, 1)]
    # a trace is in the group of each of its tags
    assert [(g.group, g.traces) for g in compare(store, "tag")] == [
        ("arm-A", 3), ("arm-B", 2), ("exp-7", 5), (NONE_GROUP, 1)]
    assert [(g.group, g.traces) for g in compare(store, "user")] == [("user-A", 3), ("user-B", 2), (NONE_GROUP, 1)]
    assert [(g.group, g.traces) for g in compare(store, "name")] == [("answer", 5), ("healthcheck", 1)]
    with pytest.raises(ValueError, match="cannot group by 'colour'"):
        compare(store, "colour")


def test_filters(store: LocalStore) -> None:
    only_a = compare(store, "model", metadata={"variant": "A"})
    assert [(g.group, g.traces) for g in only_a] == [("gpt-4o-mini", 3)]
    assert set(only_a[0].scores) == {"correctness", "helpful", "tone"}
    assert [(g.group, g.traces) for g in compare(store, "variant", tag="arm-B")] == [("B", 2)]
    assert [(g.group, g.traces) for g in compare(store, "variant", name="healthcheck")] == [(NONE_GROUP, 1)]
    assert [(g.group, g.errors) for g in compare(store, "variant", status="error")] == [("B", 1)]
    assert compare(store, "variant", since_ns=2**62) == []


def invoke(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    monkeypatch.setattr(cli, "console", Console(width=250, color_system=None))
    return CliRunner().invoke(cli.app, list(args))


def test_cli_json(store: LocalStore, traced: TracedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, "stats", "--by", "metadata.variant", "--json", "--store", str(traced.path))
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["by"] == "metadata.variant"
    groups = {g["group"]: g for g in data["groups"]}
    assert set(groups) == {"A", "B", NONE_GROUP}
    assert groups["A"]["traces"] == 3 and groups["B"]["errors"] == 1
    assert groups["A"]["scores"]["correctness"]["mean"] == pytest.approx(0.7)
    assert groups["B"]["scores"]["tone"]["counts"] == {"friendly": 2}
    expected_b = sum(price("claude-3-5-haiku-latest", "anthropic", c[0], c[1]) for c in PLAN["B"][3])
    assert groups["B"]["total_cost"] == pytest.approx(expected_b, rel=1e-9)
    assert set(groups["A"]) >= {"p50_ms", "p95_ms", "error_rate", "mean_total_tokens", "mean_cost", "priced_traces"}

    filtered = invoke(monkeypatch, "stats", "--by", "model", "--json", "--store", str(traced.path),
                      "--metadata", "variant=B", "--since", "1h")
    assert [(g["group"], g["traces"]) for g in json.loads(filtered.output)["groups"]] == [
        ("claude-3-5-haiku-latest", 2)]


def test_cli_table(store: LocalStore, traced: TracedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, "stats", "--by", "prompt", "--store", str(traced.path), "--tag", "exp-7")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "5 traces by prompt" in out
    for text in ("qa@1", "qa@2", "correctness", "helpful", "tone", "0.700 (n=3)", "friendly 100% (n=2)",
                 "1 (50%)", "0 (0%)", "p95", "cost mean"):
        assert text in out, text
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if "qa@" in line}
    assert set(rows) == {"qa@1", "qa@2"}


def test_cli_rejects_an_unknown_grouping(store: LocalStore, traced: TracedStore,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(monkeypatch, "stats", "--by", "colour", "--store", str(traced.path))
    assert result.exit_code == 2
    assert "cannot group by 'colour'" in result.output


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([], 50) == 0.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0, 1.0, 5.0], 50) == 5.0
    assert percentile(list(map(float, range(1, 101))), 95) == pytest.approx(95.05)


def test_the_comparison_module_does_not_shadow_spanmux_stats() -> None:
    import spanmux.comparison

    assert callable(spanmux.stats) and isinstance(spanmux.stats(), dict)
