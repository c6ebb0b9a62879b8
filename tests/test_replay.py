"""`spanmux replay --to BACKEND`: the built-in store's history sent to another backend, twice
without duplicates (backends upsert by span and score id)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from conftest import TracedStore
from typer.testing import CliRunner

import spanmux
from spanmux.backends.local import LocalStore
from spanmux.cli import app

runner = CliRunner()
TRACES = "/api/public/otel/v1/traces"


def seed(traced: TracedStore, count: int = 12) -> tuple[list[str], list[str]]:
    """``count`` traces of four spans (one llm with usage) and one score each: (span ids, trace ids)."""
    span_ids: list[str] = []
    trace_ids: list[str] = []
    for n in range(count):
        with spanmux.trace_context(user_id=f"user-{n % 3}"), spanmux.span(f"agent-{n}", kind="agent") as root:
            with spanmux.span("plan", kind="chain") as plan, spanmux.span("ChatOpenAI", kind="llm",
                                                                          model="gpt-4o-mini") as llm:
                llm.set_usage(input_tokens=10 + n, output_tokens=5)
            with spanmux.span("search", kind="tool") as tool:
                pass
        root.score("quality", n / 10)
        span_ids += [root.span_id, plan.span_id, llm.span_id, tool.span_id]
        trace_ids.append(root.trace_id)
    traced.flush()
    return span_ids, trace_ids


def write_config(tmp_path: Path, **sections: Any) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump({"observability": {"backends": ["local"], "spool_dir": str(tmp_path / "sp"),
                                                      **sections}}))
    return path


def replay(*args: str) -> Any:
    result = runner.invoke(app, ["replay", *args])
    return result


def test_replay_to_langfuse_twice_duplicates_nothing(traced: TracedStore, langfuse_server: Any,
                                                     tmp_path: Path) -> None:
    span_ids, _ = seed(traced)
    config = write_config(tmp_path, langfuse={"public_key": langfuse_server.public_key,
                                              "secret_key": langfuse_server.secret_key, "host": langfuse_server.url})
    args = ["--to", "langfuse", "--config", str(config), "--store", str(traced.path), "--batch-size", "10"]
    first = replay(*args)
    assert first.exit_code == 0, first.output
    assert "sent 48 spans and 12 scores" in first.output
    second = replay(*args)
    assert second.exit_code == 0, second.output

    observations = langfuse_server.all_observations()
    assert sorted(o.span_id for o in observations) == sorted(span_ids)  # distinct: each once
    assert langfuse_server.spans_received == 2 * len(span_ids)  # both runs really delivered everything
    assert len(langfuse_server.all_scores()) == 12
    llm = [o for o in observations if o.name == "ChatOpenAI"]
    assert len(llm) == 12 and all(o.type == "generation" and o.model == "gpt-4o-mini" for o in llm)
    assert {o.usage["input"] for o in llm} == set(range(10, 22))


def test_replay_into_a_second_local_store_is_idempotent(traced: TracedStore, tmp_path: Path) -> None:
    span_ids, trace_ids = seed(traced)
    target = tmp_path / "copy" / "copy.db"
    config = write_config(tmp_path, local={"path": str(target)})
    for _ in range(2):
        result = replay("--to", "local", "--config", str(config), "--store", str(traced.path))
        assert result.exit_code == 0, result.output
    with LocalStore(target) as copy, LocalStore(traced.path) as original:
        assert copy.count_spans() == len(span_ids) == original.count_spans()
        assert sorted(t.trace_id for t in copy.list_traces(limit=100)) == sorted(trace_ids)
        assert len(copy.get_scores()) == 12
        for trace_id in trace_ids:
            assert copy.get_trace(trace_id) == original.get_trace(trace_id)
            assert copy.get_trace_summary(trace_id) == original.get_trace_summary(trace_id)


def test_replay_since_sends_only_newer_traces(traced: TracedStore, tmp_path: Path) -> None:
    seed(traced, count=3)
    target = tmp_path / "copy.db"
    config = write_config(tmp_path, local={"path": str(target)})
    result = replay("--to", "local", "--config", str(config), "--store", str(traced.path), "--since", "2099-01-01")
    assert result.exit_code == 0 and "sent 0 spans and 0 scores" in result.output
    result = replay("--to", "local", "--config", str(config), "--store", str(traced.path), "--since", "1h")
    assert "sent 12 spans and 3 scores" in result.output


def test_replay_refuses_the_store_itself_and_unknown_backends(traced: TracedStore, tmp_path: Path) -> None:
    seed(traced, count=1)
    config = write_config(tmp_path, local={"path": str(traced.path)})
    same = replay("--to", "local", "--config", str(config), "--store", str(traced.path))
    assert same.exit_code != 0 and "being replayed" in same.output
    unknown = replay("--to", "nowhere", "--config", str(config), "--store", str(traced.path))
    assert unknown.exit_code != 0 and "unknown backend" in unknown.output


def test_replay_with_wrong_keys_fails_clearly_then_succeeds(traced: TracedStore, langfuse_server: Any,
                                                           tmp_path: Path) -> None:
    span_ids, _ = seed(traced, count=2)
    section = {"public_key": langfuse_server.public_key, "secret_key": "sk-lf-WRONG", "host": langfuse_server.url}
    config = write_config(tmp_path, langfuse=section)
    failed = replay("--to", "langfuse", "--config", str(config), "--store", str(traced.path))
    assert failed.exit_code == 1 and "HTTP 401" in failed.output and "sk-lf-WRONG" not in failed.output
    config = write_config(tmp_path, langfuse={**section, "secret_key": langfuse_server.secret_key})
    langfuse_server.fail_next(2, status=503)  # retried within the command
    ok = replay("--to", "langfuse", "--config", str(config), "--store", str(traced.path))
    assert ok.exit_code == 0, ok.output
    assert sorted(o.span_id for o in langfuse_server.all_observations()) == sorted(span_ids)
    assert langfuse_server.statuses(TRACES).count(503) == 2
