"""The `spanmux` command: listing, tree view, validation, schema."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import TracedStore
from typer.testing import CliRunner

import spanmux
from spanmux.cli import app

runner = CliRunner()
CONFIGS = Path(__file__).parent / "configs"


def seed(traced: TracedStore) -> str:
    with spanmux.trace_context(user_id="alice"), spanmux.span("agent", kind="agent") as root:
        with spanmux.span("ChatOpenAI", kind="llm", model="gpt-4o-mini") as llm:
            llm.set_usage(input_tokens=100, output_tokens=20)
        try:
            with spanmux.span("search", kind="tool"):
                raise TimeoutError("search backend timed out")
        except TimeoutError:
            pass
    spanmux.score(root.trace_id, "correctness", 0.5, comment="partly")
    traced.flush()
    return root.trace_id


def test_traces_lists_newest_first_as_table_and_json(traced: TracedStore) -> None:
    trace_id = seed(traced)
    store = ["--store", str(traced.path)]
    table = runner.invoke(app, ["traces", *store])
    assert table.exit_code == 0, table.output
    assert trace_id[:12] in table.output and "agent" in table.output and "120" in table.output
    as_json = runner.invoke(app, ["traces", *store, "--json"])
    (row,) = json.loads(as_json.stdout)
    assert row["trace_id"] == trace_id and row["total_tokens"] == 120
    assert row["status"] == "ok" and row["error_count"] == 1  # the agent recovered from its tool error
    assert row["user_id"] == "alice" and row["cost_total"] > 0
    filtered = runner.invoke(app, ["traces", *store, "--json", "--user", "bob"])
    assert json.loads(filtered.stdout) == []


def test_show_prints_the_tree_with_model_tokens_cost_and_errors(traced: TracedStore) -> None:
    trace_id = seed(traced)
    result = runner.invoke(app, ["show", trace_id[:10], "--store", str(traced.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("agent", "ChatOpenAI", "gpt-4o-mini", "100→20 tok", "TimeoutError", "correctness"):
        assert expected in out
    as_json = json.loads(runner.invoke(app, ["show", trace_id, "--store", str(traced.path), "--json"]).stdout)
    assert [s["name"] for s in as_json["spans"]] == ["agent", "ChatOpenAI", "search"]
    assert as_json["scores"][0]["value"] == 0.5


def test_show_unknown_trace_fails_cleanly(traced: TracedStore) -> None:
    seed(traced)
    result = runner.invoke(app, ["show", "ffffffff", "--store", str(traced.path)])
    assert result.exit_code == 1 and "no trace" in result.output


def test_missing_store_is_a_clear_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["traces", "--store", str(tmp_path / "none.db")])
    assert result.exit_code == 1 and "no spanmux store" in result.output


def test_validate_good_and_bad_files() -> None:
    good = runner.invoke(app, ["validate", str(CONFIGS / "good" / "top_level.yaml")])
    assert good.exit_code == 0 and "ok" in good.output
    bad = runner.invoke(app, ["validate", str(CONFIGS / "bad" / "unknown_backend.yaml")])
    assert bad.exit_code == 1
    assert "line 5" in bad.output and "datadog" in bad.output


def test_schema_prints_the_committed_json_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["title"] == "spanmux observability block"
