"""The `spanmux` command: listing, tree view, validation, schema."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from conftest import TracedStore
from typer.testing import CliRunner

import spanmux
from spanmux.cli import app

runner = CliRunner()
CONFIGS = Path(__file__).parent / "configs"


def flat(output: str) -> str:
    """CLI output with rich's panel borders and line wrapping taken out, for substring checks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())


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


def test_status_filter_typo_names_the_valid_statuses(traced: TracedStore) -> None:
    seed(traced)
    store = ["--store", str(traced.path)]
    result = runner.invoke(app, ["traces", *store, "--status", "failed"])
    assert result.exit_code == 2  # a usage error, not an empty listing
    assert "valid statuses: ok, error" in flat(result.output) and "did you mean 'error'" in flat(result.output)
    typo = runner.invoke(app, ["stats", *store, "--status", "eror"])
    assert typo.exit_code == 2 and "did you mean 'error'" in flat(typo.output)
    ok = runner.invoke(app, ["traces", *store, "--status", "ok", "--json"])
    assert ok.exit_code == 0 and len(json.loads(ok.stdout)) == 1


def many_traces(traced: TracedStore, count: int = 17) -> list[str]:
    ids = []
    for n in range(count):
        with spanmux.span(f"job-{n}") as s:
            pass
        ids.append(s.trace_id)
    traced.flush()
    return ids


def test_ambiguous_id_prefix_lists_the_matching_traces(traced: TracedStore) -> None:
    ids = many_traces(traced)  # 17 ids, 16 hex digits: two share their first digit
    first = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) >= 2)
    matching = sorted(i for i in ids if i.startswith(first))
    result = runner.invoke(app, ["show", first, "--store", str(traced.path)])
    assert result.exit_code == 1
    assert "ambiguous" in result.output and "no trace" not in result.output
    for trace_id in matching:
        assert trace_id in result.output
    unique = runner.invoke(app, ["show", f"tr-{matching[0][:20]}", "--store", str(traced.path)])
    assert unique.exit_code == 0 and matching[0] in unique.output


def test_show_prints_user_session_tags_and_metadata(traced: TracedStore) -> None:
    with spanmux.trace_context(user_id="alice", session_id="sess-42", tags=["prod", "beta"],
                               metadata={"variant": "B", "region": "eu"}):
        with spanmux.span("agent[v2]", kind="agent") as root:  # brackets are not rich markup
            pass
    traced.flush()
    result = runner.invoke(app, ["show", root.trace_id, "--store", str(traced.path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "agent[v2]" in out
    assert "user: alice" in out and "session: sess-42" in out and "tags: prod, beta" in out
    assert '"variant": "B"' in out and '"region": "eu"' in out


def test_version_option() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"spanmux {spanmux.__version__}"


def test_listing_titles_agree_in_number(traced: TracedStore) -> None:
    seed(traced)
    store = ["--store", str(traced.path)]
    listing = runner.invoke(app, ["traces", *store])
    assert "newest trace" in listing.output and "1 newest traces" not in listing.output
    stats = runner.invoke(app, ["stats", *store])
    assert "1 trace by model" in stats.output


def test_stats_says_the_mean_cost_is_over_priced_traces_only(traced: TracedStore) -> None:
    for model in ("gpt-4o-mini", "house-model-without-a-price"):
        with spanmux.span("agent", kind="agent"), spanmux.span("llm", kind="llm", model=model) as llm:
            llm.set_usage(input_tokens=1000, output_tokens=100)
    traced.flush()
    result = runner.invoke(app, ["stats", "--by", "name", "--store", str(traced.path)])
    assert result.exit_code == 0, result.output
    assert "cost mean (priced)" in result.output and "1 of 2 priced" in result.output
    assert "divides by the priced traces only" in result.output
    (group,) = json.loads(runner.invoke(app, ["stats", "--by", "name", "--store", str(traced.path),
                                              "--json"]).stdout)["groups"]
    assert group["priced_traces"] == 1 and group["mean_cost"] == group["total_cost"]


def test_example_ends_with_a_spanmux_command_that_works(tmp_path: Path) -> None:
    """The venv is not activated: the path the example prints must run as printed."""
    example = Path(__file__).resolve().parent.parent / "examples" / "quickstart.py"
    env = {**os.environ, "PATH": os.defpath}
    done = subprocess.run([sys.executable, str(example)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert "Explore it with:" in last, last
    command = last.split("Explore it with:", 1)[1].split("|")[0].strip()
    assert command.endswith(" traces"), command
    listed = subprocess.run(shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "newest traces" in listed.stdout
