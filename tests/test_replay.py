"""`spanmux replay --to BACKEND`: the built-in store's history sent to another backend, twice
without duplicates (backends upsert by span and score id)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TracedStore
from typer.testing import CliRunner

import spanmux
from spanmux.backend import BaseBackend, ExportError
from spanmux.backoff import Backoff
from spanmux.cli import app
from spanmux.model import Span, make_score
from spanmux.replay import ATTEMPTS, ReplayResult, copy_store, send_retrying
from spanmux.store import LocalStore

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
    block = {"backends": ["local"], "spool_dir": str(tmp_path / "sp"), **sections}
    path.write_text(yaml.safe_dump({"observability": block}))
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


def langfuse_section(server: Any, secret_key: str | None = None) -> dict[str, Any]:
    return {"public_key": server.public_key, "secret_key": secret_key or server.secret_key, "host": server.url}


def strand_in_langfuse_spool(server: Any, tmp_path: Path, count: int = 4) -> tuple[list[str], list[str]]:
    """A program ran with Langfuse refusing its key: (span ids, trace ids) wait in sp/langfuse."""
    config = write_config(tmp_path, backends=["langfuse"], langfuse=langfuse_section(server, "sk-lf-BAD"),
                          flush_interval=0.05)
    spanmux.configure(config)
    span_ids, trace_ids = [], []
    for n in range(count):
        with spanmux.span(f"agent-{n}", kind="agent") as root, spanmux.span("llm", kind="llm",
                                                                            model="gpt-4o-mini") as llm:
            llm.set_usage(input_tokens=10, output_tokens=n)
        root.score("quality", n / 10)
        span_ids += [root.span_id, llm.span_id]
        trace_ids.append(root.trace_id)
    spanmux.flush(5)
    spanmux.shutdown(5)
    return span_ids, trace_ids


def spool_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_replay_from_the_spool_of_a_removed_backend_to_another(langfuse_server: Any, tmp_path: Path) -> None:
    span_ids, trace_ids = strand_in_langfuse_spool(langfuse_server, tmp_path)
    folder = tmp_path / "sp" / "langfuse"
    assert any(name.endswith(".batch") for name in spool_files(folder))
    target = tmp_path / "elsewhere.db"
    config = write_config(tmp_path, local={"path": str(target)})  # langfuse is gone from the file
    result = replay("--from-spool", "langfuse", "--to", "local", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert "sent 8 spans and 4 scores" in result.output
    assert spool_files(folder) == []  # each file deleted once the target took it
    with LocalStore(target) as db:
        assert sorted(t.trace_id for t in db.list_traces(limit=100)) == sorted(trace_ids)
        assert db.count_spans() == len(span_ids) and len(db.get_scores()) == 4
    again = replay("--from-spool", "langfuse", "--to", "local", "--config", str(config))
    assert again.exit_code == 0 and "sent 0 spans and 0 scores" in again.output


def test_replay_from_spool_to_mlflow(langfuse_server: Any, mlflow_server: str, tmp_path: Path) -> None:
    from mlflow.tracing.client import TracingClient

    span_ids, trace_ids = strand_in_langfuse_spool(langfuse_server, tmp_path, count=2)
    config = write_config(tmp_path, backends=["mlflow"],
                          mlflow={"tracking_uri": mlflow_server, "experiment_name": f"from-spool-{tmp_path.name}"})
    result = replay("--from-spool", "langfuse", "--to", "mlflow", "-c", str(config))
    assert result.exit_code == 0, result.output
    assert spool_files(tmp_path / "sp" / "langfuse") == []
    for trace_id in trace_ids:
        trace = TracingClient(mlflow_server).get_trace(f"tr-{trace_id}")
        assert len(trace.data.spans) == 2
        assert [a.name for a in trace.info.assessments] == ["quality"]


def test_replay_from_spool_keeps_every_file_the_target_refuses(langfuse_server: Any, tmp_path: Path) -> None:
    span_ids, _ = strand_in_langfuse_spool(langfuse_server, tmp_path)
    folder = tmp_path / "sp" / "langfuse"
    waiting = spool_files(folder)
    still_bad = write_config(tmp_path, backends=["local"], langfuse=langfuse_section(langfuse_server, "sk-lf-BAD"))
    failed = replay("--from-spool", "langfuse", "--to", "langfuse", "-c", str(still_bad))
    assert failed.exit_code == 1 and "HTTP 401" in failed.output and "stays in the spool" in failed.output
    assert spool_files(folder) == waiting  # released under their own names, nothing deleted or left claimed
    fixed = write_config(tmp_path, backends=["local"], langfuse=langfuse_section(langfuse_server))
    ok = replay("--from-spool", "langfuse", "--to", "langfuse", "-c", str(fixed))
    assert ok.exit_code == 0, ok.output
    assert sorted(o.span_id for o in langfuse_server.all_observations()) == sorted(span_ids)
    assert spool_files(folder) == []


def test_concurrent_replays_of_one_spool_send_each_batch_once(langfuse_server: Any, tmp_path: Path) -> None:
    from spanmux.model import new_span_id, new_trace_id
    from spanmux.spool import Spool

    folder = tmp_path / "sp" / "langfuse"
    spool = Spool(folder, 1 << 30)
    for n in range(60):
        trace_id = new_trace_id()
        spans = [Span(trace_id=trace_id, span_id=new_span_id(), parent_id=None, name=f"job-{n}", kind="chain",
                      framework="manual", start_ns=1_700_000_000_000_000_000 + n, end_ns=1_700_000_000_100_000_000)]
        assert spool.append(spans, [make_score(trace_id, "ok", True)])
    config = write_config(tmp_path, backends=["local"], langfuse=langfuse_section(langfuse_server))
    command = [sys.executable, "-m", "spanmux.cli", "replay", "--from-spool", "langfuse", "--to", "langfuse",
               "-c", str(config)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    sent = sum(int(re.search(r"sent (\d+) spans", out).group(1)) for out, _ in outputs)  # type: ignore[union-attr]
    assert sent == 60 and langfuse_server.spans_received == 60  # no batch sent twice, none lost
    assert len(langfuse_server.all_scores()) == 60
    assert spool_files(folder) == []


def test_replay_from_spool_names_the_folders_that_exist(langfuse_server: Any, tmp_path: Path) -> None:
    strand_in_langfuse_spool(langfuse_server, tmp_path, count=1)
    config = write_config(tmp_path)
    result = replay("--from-spool", "langfus", "--to", "local", "-c", str(config))
    assert result.exit_code == 2
    text = " ".join(re.sub("[│╭╮╰╯─]", " ", result.output).split())
    assert "no spool folder 'langfus'" in text and "langfuse" in text and "did you mean 'langfuse'" in text


def test_replay_to_mlflow_without_a_tracking_uri_refuses(traced: TracedStore, tmp_path: Path,
                                                         monkeypatch: Any) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    seed(traced, count=1)
    config = write_config(tmp_path)
    result = replay("--to", "mlflow", "--config", str(config), "--store", str(traced.path))
    assert result.exit_code == 1
    assert "no tracking URI" in result.output and "MLFLOW_TRACKING_URI" in result.output
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


class Flaky(BaseBackend):
    """Fails with the given exceptions first, then takes every batch (and records how it came)."""

    def __init__(self, *failures: BaseException) -> None:
        super().__init__()
        self.failures = list(failures)
        self.calls: list[tuple[str, int, int, Any]] = []

    def _take(self, how: str, spans: Any, scores: Any, origin: Any = None) -> None:
        self.calls.append((how, len(spans), len(scores), origin))
        if self.failures:
            raise self.failures.pop(0)

    def export(self, spans: Any, scores: Any) -> None:
        self._take("export", spans, scores)

    def export_spooled(self, spans: Any, scores: Any, origin: Any) -> None:
        self._take("export_spooled", spans, scores, origin)


def test_backoff_doubles_honours_retry_after_and_gives_up_on_a_refusal() -> None:
    backoff = Backoff(0.25, 2.0)
    waits = [backoff.failed(ExportError("503"), now=100.0) for _ in range(5)]
    assert waits == [0.25, 0.5, 1.0, 2.0, 2.0] and backoff.retry_at == 102.0 and not backoff.gave_up
    assert backoff.failed(ExportError("429", retry_after=7.0), now=100.0) == 7.0 and backoff.retry_at == 107.0
    backoff.succeeded()
    assert backoff.failed(OSError("refused"), now=0.0) == 0.25  # a fresh series; any error counts as retryable
    assert backoff.failed(ExportError("401", retryable=False), now=0.0) == 2.0 and backoff.gave_up
    backoff.restart()
    assert backoff.failed(ExportError("503"), now=0.0) == 0.25


def test_replay_retries_each_batch_with_the_lanes_backoff() -> None:
    waits: list[float] = []
    one = [make_score("t" * 32, "q", 1.0)]
    flaky = Flaky(ExportError("503"), ExportError("429", retry_after=3.0))
    send_retrying(flaky, [], [make_score("t" * 32, "q", 1.0)], origin={"replay": "x"}, spooled=True, sleep=waits.append)
    assert waits == [0.5, 3.0] and [c[0] for c in flaky.calls] == ["export_spooled"] * 3
    assert flaky.calls[-1][3] == {"replay": "x"}

    refusing = Flaky(ExportError("401", retryable=False))
    with pytest.raises(ExportError, match="401"):
        send_retrying(refusing, [], one, sleep=waits.append)
    assert len(refusing.calls) == 1 and waits == [0.5, 3.0]  # a refusal is not retried

    down = Flaky(*[ExportError("503")] * 9)
    waits.clear()
    with pytest.raises(ExportError, match="503"):
        send_retrying(down, [], one, sleep=waits.append)
    assert len(down.calls) == ATTEMPTS and waits == [0.5, 1.0, 2.0, 4.0]

    with pytest.raises(ExportError, match="ZeroDivisionError") as raised:
        send_retrying(Flaky(ZeroDivisionError("bug")), [], one, sleep=waits.append)
    assert raised.value.retryable is False


def test_copy_store_sends_through_export_spooled_with_one_origin_per_store(traced: TracedStore) -> None:
    span_ids, _ = seed(traced, count=3)
    target = Flaky()
    result = ReplayResult(source=str(traced.path), to="flaky")
    with LocalStore(traced.path) as db:
        copy_store(target, db, result, batch_size=5)
    origin = {"replay": str(traced.path.resolve())}
    assert all(how == "export_spooled" and sent_with == origin for how, _, _, sent_with in target.calls)
    assert (result.spans, result.scores) == (len(span_ids), 3) and result.batches == len(target.calls) == 4
