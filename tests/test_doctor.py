"""`spanmux doctor FILE`: each backend configured (nothing sent), reachability and keys checked,
spool contents shown; exit code 1 as soon as one backend is not usable."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path
from typing import Any

import yaml
from typer.testing import CliRunner

import spanmux
from spanmux.cli import app

runner = CliRunner()


def write_config(tmp_path: Path, backends: list[str], **sections: Any) -> Path:
    path = tmp_path / "agent.yaml"
    block = {"backends": backends, "spool_dir": str(tmp_path / "spool"),
             "local": {"path": str(tmp_path / "store.db")}, **sections}
    path.write_text(yaml.safe_dump({"observability": block}))
    return path


def langfuse(server: Any, **extra: Any) -> dict[str, Any]:
    return {"public_key": server.public_key, "secret_key": server.secret_key, "host": server.url, **extra}


def doctor(config: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = runner.invoke(app, ["doctor", str(config), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def test_all_backends_reachable(langfuse_server: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, ["local", "langfuse"], langfuse=langfuse(langfuse_server))
    code, report = doctor(config)
    assert code == 0 and report["ok"] is True
    rows = {r["backend"]: r for r in report["backends"]}
    assert rows["local"]["status"] == rows["langfuse"]["status"] == "ok"
    assert "spanmux-contract" in rows["langfuse"]["detail"]
    assert rows["langfuse"]["spool"] == {"batches": 0, "bytes": 0, "spans": 0, "scores": 0, "experiments": 0,
                                         "claimed": 0, "corrupt": 0}
    assert langfuse_server.statuses("/api/public/otel/v1/traces") == []  # nothing was sent
    table = runner.invoke(app, ["doctor", str(config)])
    assert table.exit_code == 0 and "langfuse" in table.output and "ok" in table.output


def test_wrong_keys_and_spooled_records_are_shown(langfuse_server: Any, tmp_path: Path) -> None:
    config = write_config(tmp_path, ["local", "langfuse"], langfuse=langfuse(langfuse_server, secret_key="sk-lf-BAD"),
                          flush_interval=0.05)
    spanmux.configure(config)
    for n in range(3):
        with spanmux.span(f"job-{n}") as s:
            pass
        s.score("ok", True)
    spanmux.flush(10)  # langfuse refuses the key: flush reports not everything was delivered
    spanmux.shutdown(5)  # the three spans and scores now wait in the langfuse spool

    result = runner.invoke(app, ["doctor", str(config), "--json"])
    assert result.exit_code == 1
    assert "sk-lf-BAD" not in result.output
    report = json.loads(result.stdout)
    rows = {r["backend"]: r for r in report["backends"]}
    assert rows["local"]["status"] == "ok" and rows["local"]["spool"]["spans"] == 0
    assert rows["langfuse"]["status"] == "refused" and "401" in rows["langfuse"]["detail"]
    spool = rows["langfuse"]["spool"]
    assert spool["spans"] == 3 and spool["scores"] == 3 and spool["batches"] >= 1 and spool["bytes"] > 0
    table = runner.invoke(app, ["doctor", str(config)])
    assert table.exit_code == 1 and "refused" in table.output


def test_unreachable_host_fails(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    section = {"public_key": "pk-lf-x", "secret_key": "sk-lf-x", "host": f"http://127.0.0.1:{port}"}
    code, report = doctor(write_config(tmp_path, ["local", "langfuse"], langfuse=section), "--timeout", "1")
    assert code == 1 and report["ok"] is False
    (row,) = [r for r in report["backends"] if r["backend"] == "langfuse"]
    assert row["status"] == "unreachable" and "unreachable" in row["detail"]


def test_misconfigured_backend_and_invalid_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, ["local", "langfuse"], langfuse={"public_key": "pk-lf-x", "host": "ftp://x"})
    code, report = doctor(config)
    assert code == 1
    (row,) = [r for r in report["backends"] if r["backend"] == "langfuse"]
    assert row["status"] == "misconfigured" and row["detail"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("observability:\n  backends: [nowhere]\n")
    result = runner.invoke(app, ["doctor", str(bad)])
    assert result.exit_code == 1 and "nowhere" in result.output


def test_mlflow_server_is_checked(mlflow_server: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, ["mlflow"], mlflow={"tracking_uri": mlflow_server})
    code, report = doctor(config)
    assert code == 0, report
    assert report["backends"][0]["status"] == "ok" and mlflow_server in report["backends"][0]["detail"]


def spool_langfuse_records(langfuse_server: Any, tmp_path: Path, count: int = 3) -> None:
    """Run a program whose Langfuse refuses the key: its records wait in spool/langfuse."""
    config = write_config(tmp_path, ["local", "langfuse"],
                          langfuse=langfuse(langfuse_server, secret_key="sk-lf-BAD"), flush_interval=0.05)
    spanmux.configure(config)
    for n in range(count):
        with spanmux.span(f"job-{n}") as s:
            pass
        s.score("ok", True)
    spanmux.flush(5)
    spanmux.shutdown(5)


def test_spool_of_a_backend_no_longer_configured_is_listed_with_how_to_deliver_it(
        langfuse_server: Any, tmp_path: Path) -> None:
    spool_langfuse_records(langfuse_server, tmp_path)
    # the user switched away from Langfuse: it is gone from backends (and from the file)
    config = write_config(tmp_path, ["local"])
    code, report = doctor(config)
    assert code == 0, report  # every configured backend is fine; the stranded records are reported
    spools = {s["name"]: s for s in report["spools"]}
    stranded = spools["langfuse"]
    assert stranded["configured"] is False
    assert stranded["spans"] == 3 and stranded["scores"] == 3 and stranded["batches"] >= 1
    assert stranded["folder"] == str(tmp_path / "spool" / "langfuse")
    assert "not in backends" in stranded["deliver"]
    assert f"spanmux replay --from-spool langfuse --to local -c {config}" in stranded["deliver"]
    table = runner.invoke(app, ["doctor", str(config)])
    assert table.exit_code == 0
    text = " ".join(table.output.replace("│", " ").split())
    assert "spool folders in" in text and "langfuse" in text and "--from-spool langfuse" in text


def test_doctor_without_a_file_reads_spanmux_yaml(tmp_path: Path) -> None:
    write_config(tmp_path, ["local"]).rename(tmp_path / "spanmux.yaml")  # tests run in tmp_path
    result = runner.invoke(app, ["doctor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "spanmux.yaml" and report["spool_dir"] == str(tmp_path / "spool")


def test_a_missing_sdk_is_reported_with_the_install_command_and_its_extra(
        tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if spanmux was installed without [mlflow]
    config = write_config(tmp_path, ["local", "mlflow"], mlflow={"tracking_uri": "http://127.0.0.1:5001"})
    result = runner.invoke(app, ["doctor", str(config)])
    assert result.exit_code == 1
    assert '"spanmux[mlflow]"' in result.output  # rich markup used to eat "[mlflow]"
    code, report = doctor(config)
    (row,) = [r for r in report["backends"] if r["backend"] == "mlflow"]
    assert row["status"] == "misconfigured" and 'pip install "spanmux[mlflow]"' in row["detail"]


def test_diagnose_reports_the_overflow_spool_and_what_the_cli_prints(tmp_path: Path) -> None:
    from spanmux.config import load_config
    from spanmux.doctor import diagnose
    from spanmux.model import make_score
    from spanmux.spool import OVERFLOW, Spool

    config = write_config(tmp_path, ["local"])
    assert Spool(tmp_path / "spool" / OVERFLOW, 1 << 20).append([], [make_score("a" * 32, "ok", True)])
    found = diagnose(load_config(config))
    assert found.ok and [c.backend for c in found.backends] == ["local"] and found.backends[0].status == "ok"
    (overflow,) = found.spools
    assert overflow.name == OVERFLOW and overflow.scores == 1 and overflow.needs_attention and not overflow.stranded
    assert "the next traced run delivers them to every configured backend" in overflow.deliver
    assert found.overflow_spool == {"batches": 1, "bytes": overflow.bytes, "spans": 0, "scores": 1, "experiments": 0,
                                    "claimed": 0, "corrupt": 0}
    code, report = doctor(config)
    assert code == 0 and report["overflow_spool"] == found.overflow_spool
    assert report["spools"][0]["deliver"] == overflow.deliver


def test_experiment_runs_waiting_in_a_spool_are_counted(tmp_path: Path) -> None:
    from spanmux.testing import InMemoryBackend

    down = InMemoryBackend("evals")
    down.fail()  # its server is down for the whole evaluation: the items and the run wait in its spool
    spanmux.configure({"backends": [down], "spool_dir": str(tmp_path / "spool"), "flush_interval": 0.05})
    spanmux.evaluate(data=["a", "b"], task=lambda input: input, scorers=[lambda output: 1.0], name="offline")
    spanmux.evaluate(data=["c"], task=lambda input: input, name="offline")
    assert not spanmux.flush(0.5)
    spanmux.shutdown(1)
    assert down.spans == [] and down.experiments == []

    config = write_config(tmp_path, ["local"])
    code, report = doctor(config)
    assert code == 0, report
    (folder,) = [s for s in report["spools"] if s["name"] == "evals"]
    # three item spans and an evaluator span per score; two runs
    assert (folder["spans"], folder["scores"], folder["experiments"]) == (5, 2, 2)
    assert folder["configured"] is False and "--from-spool evals" in folder["deliver"]
    table = runner.invoke(app, ["doctor", str(config)], env={"COLUMNS": "200"})
    assert table.exit_code == 0
    header, row = (" ".join(line.replace("│", " ").replace("┃", " ").split()) for line in table.output.splitlines()
                   if "unreadable" in line or line.startswith("│ evals"))
    assert header == "folder configured batches spans scores experiments bytes unreadable"
    assert row.split()[:6] == ["evals", "no", str(folder["batches"]), "5", "2", "2"]
