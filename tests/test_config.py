"""The observability block: where it is found, what it accepts, and one clear error for the rest."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
from conftest import TracedStore
from typer.testing import CliRunner

import spanmux
from spanmux import runtime, tracer
from spanmux.cli import app
from spanmux.config import load_config
from spanmux.config_schemas import ObservabilityConfig
from spanmux.config_schemas.observability import SCHEMA_FILE, json_schema
from spanmux.errors import ConfigurationError
from spanmux.registry import build_backends, known_backends

CONFIGS = Path(__file__).parent / "configs"
runner = CliRunner()


def load(name: str) -> ObservabilityConfig:
    return load_config(CONFIGS / name, known_backends()).settings


def config_error(source: object) -> ConfigurationError:
    with pytest.raises(ConfigurationError) as caught:
        spanmux.configure(source)  # type: ignore[arg-type]
    return caught.value


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "good").iterdir()))
def test_every_good_file_validates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    settings = load(f"good/{name}")
    assert settings.backends


def test_superoptix_playbook_block_under_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    settings = load("good/superoptix_playbook.yaml")
    assert settings.backends == ["local", "mlflow"]  # 'superoptix' is the local store
    assert settings.mlflow is not None
    assert settings.mlflow.experiment_name == "developer_agent"
    assert settings.mlflow.tracking_uri == "sqlite:///mlflow.db"  # ${VAR:-default}
    assert settings.mlflow.log_params and settings.mlflow.log_metrics and settings.mlflow.log_artifacts


def test_environment_variables_are_substituted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert load("good/superoptix_playbook.yaml").mlflow.tracking_uri == "http://127.0.0.1:5999"  # type: ignore[union-attr]


def test_top_level_block_and_pricing() -> None:
    settings = load("good/top_level.yaml")
    assert settings.sample_rate == 0.5
    assert settings.capture_content is False
    assert settings.local.path == "traces/agent.db"
    assert settings.pricing["my-local-llama"].output == 0.2


def test_file_without_block_means_defaults() -> None:
    settings = load("good/no_block.yaml")
    assert settings == ObservabilityConfig()
    assert settings.backends == ["local"]


def test_discovery_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config(None).source == "<defaults>"
    (tmp_path / "spanmux.yaml").write_text("observability:\n  sample_rate: 0.25\n")
    assert load_config(None).settings.sample_rate == 0.25
    other = tmp_path / "other.yaml"
    other.write_text("observability:\n  sample_rate: 0.75\n")
    monkeypatch.setenv("SPANMUX_CONFIG", str(other))
    assert load_config(None).settings.sample_rate == 0.75


def test_dict_source_may_be_the_block_itself() -> None:
    assert load_config({"sample_rate": 0.1}).settings.sample_rate == 0.1
    assert load_config({"observability": {"sample_rate": 0.2}}).settings.sample_rate == 0.2


def test_unreadable_yaml_names_file_and_line() -> None:
    error = config_error(CONFIGS / "bad" / "unreadable.yaml")
    assert "unreadable.yaml" in str(error)
    assert error.problems[0].line == 2  # where the '[' opens, not line 3 where the parser gave up
    assert "unreadable YAML" in str(error) and "'['" in str(error)


@pytest.mark.parametrize(("name", "line", "words"), [
    ("unclosed_quote.yaml", 4, "quote"),  # the parser notices at line 7, where the next quote is
    ("bad_indent.yaml", 4, "indentation"),
    ("missing_colon.yaml", 3, "':'"),  # the parser notices at line 4
])
def test_yaml_syntax_errors_point_at_the_offending_line(name: str, line: int, words: str) -> None:
    (problem,) = config_error(CONFIGS / "bad" / name).problems
    assert problem.line == line, problem
    assert words in problem.message and "unreadable YAML" in problem.message


@pytest.mark.parametrize(("text", "line", "words"), [
    ('observability:\n  mlflow:\n    experiment_name: "dev\n    tracking_uri: x\n', 3, "quote"),
    ("observability:\n  pricing: {a: {input: 1, output: 2}\n  sample_rate: 1\n", 2, "'{'"),
    ("observability:\n  mlflow:\n    experiment_name: x\n      tracking_uri: y\n", 4, "indentation"),
    ("observability:\n  backends:\n    - local\n  - mlflow\n", 4, "indentation"),
    ("observability:\n\tbackends: [local]\n", 2, "tab"),
])
def test_yaml_syntax_error_lines_more_shapes(text: str, line: int, words: str) -> None:
    (problem,) = config_error_from_text(text).problems
    assert problem.line == line, problem
    assert words in problem.message


def test_problems_are_listed_in_line_order() -> None:
    error = config_error(CONFIGS / "bad" / "problems_in_line_order.yaml")
    assert [p.line for p in error.problems] == [2, 3, 4, 5]
    assert str(error).index("line 2") < str(error).index("line 3") < str(error).index("line 5")


def test_unknown_backend_lists_valid_names() -> None:
    error = config_error(CONFIGS / "bad" / "unknown_backend.yaml")
    (problem,) = error.problems
    assert problem.path == "observability.backends[1]"
    assert problem.line == 5
    for valid in ("local", "mlflow", "langfuse"):
        assert valid in problem.message


def test_wrong_types_are_all_reported_with_lines() -> None:
    error = config_error(CONFIGS / "bad" / "wrong_types.yaml")
    found = {p.path: p.line for p in error.problems}
    assert found == {
        "observability.enabled": 2,
        "observability.sample_rate": 3,
        "observability.max_content_bytes": 4,
    }


def test_unknown_keys_are_errors() -> None:
    error = config_error(CONFIGS / "bad" / "unknown_key.yaml")
    found = {p.path: (p.line, p.message) for p in error.problems}
    assert found["observability.local.compress"] == (5, "unknown key")
    assert found["observability.colour"] == (6, "unknown key")


def test_listed_backend_without_required_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    error = config_error(CONFIGS / "bad" / "langfuse_missing_keys.yaml")
    text = str(error)
    assert "langfuse_missing_keys.yaml" in text
    assert "public_key" in text
    assert all(p.line is not None for p in error.problems)


def test_unset_variable_without_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPANMUX_TEST_UNSET_EXPERIMENT", raising=False)
    error = config_error(CONFIGS / "bad" / "unset_var.yaml")
    (problem,) = error.problems
    assert problem.path == "spec.observability.mlflow.experiment_name"
    assert problem.line == 5
    assert "SPANMUX_TEST_UNSET_EXPERIMENT" in problem.message


def test_block_must_be_a_mapping() -> None:
    error = config_error(CONFIGS / "bad" / "not_a_mapping.yaml")
    assert error.problems[0].path == "observability"
    assert error.problems[0].line == 1


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    error = config_error(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(error) and "cannot read" in str(error)


def test_secrets_never_appear_in_errors_or_reprs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "sk-lf-VERY-SECRET-123"
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", secret)
    bad = tmp_path / "leak.yaml"
    bad.write_text(
        "observability:\n  backends: [langfuse]\n  langfuse:\n    secret_key: ${LANGFUSE_SECRET_KEY}\n"
        "    public_key: 42\n    host: [not, a, string]\n"
    )
    error = config_error(bad)
    assert secret not in str(error) and secret not in repr(error)
    settings = load_config({"backends": ["langfuse"], "langfuse": {"secret_key": secret, "public_key": "pk"}})
    assert secret not in repr(settings.settings) and secret not in str(settings.settings.model_dump())


def test_a_bad_configuration_leaves_the_previous_one_running(traced: object) -> None:
    before = runtime.active()
    assert before is not None
    config_error({"backends": ["nope"]})
    assert runtime.active() is before


def test_missing_sdk_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object) -> object:
        return None if name.split(".")[0] == "mlflow" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    error = config_error({"backends": ["mlflow"]})
    assert 'pip install "spanmux[mlflow]"' in str(error)


def test_unwritable_store_fails_at_configure(tmp_path: Path) -> None:
    readonly = tmp_path / "ro.db"
    spanmux.configure({"local": {"path": str(readonly)}, "spool_dir": str(tmp_path / "spool")})
    spanmux.shutdown()
    readonly.chmod(0o444)
    (tmp_path / "ro.db-wal").unlink(missing_ok=True)
    (tmp_path / "ro.db-shm").unlink(missing_ok=True)
    import os

    if os.geteuid() == 0:  # root writes through file modes: use a path under a regular file instead
        error = config_error({"local": {"path": str(readonly / "sub" / "x.db")}})
    else:
        error = config_error({"local": {"path": str(readonly)}})
    assert "cannot open the store" in str(error)
    assert error.problems[0].path == "local.path"


def test_json_schema_is_committed_and_fresh() -> None:
    assert SCHEMA_FILE.read_text(encoding="utf-8") == json_schema(), "run `make schema` and commit the result"
    schema = json.loads(json_schema())
    block = schema["$defs"]["ObservabilityConfig"]["properties"]
    assert {"enabled", "backends", "capture_content", "sample_rate", "mlflow", "langfuse"} <= set(block)


# -- sections of backends that are not listed (issue 11, 4a)

def test_unlisted_backend_section_with_unset_variable_only_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.delenv("SPANMUX_TEST_UNSET_TRACKING_URI", raising=False)
    path = CONFIGS / "good" / "unlisted_backend_unset_var.yaml"
    with caplog.at_level(logging.WARNING, logger="spanmux"):
        settings = spanmux.configure(path)
    assert settings.enabled and settings.backends == ["langfuse"]
    assert runtime.active() is not None
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "SPANMUX_TEST_UNSET_TRACKING_URI" in warning.getMessage()
    assert "line 10" in warning.getMessage() and "not in backends" in warning.getMessage()
    assert settings.mlflow is not None and settings.mlflow.experiment_name == "old_experiment"  # kept
    # building that backend anyway (doctor, replay --to mlflow) reports the variable as an error
    loaded = load_config(path, known_backends())
    only_mlflow = dataclasses.replace(loaded, settings=loaded.settings.model_copy(update={"backends": ["mlflow"]}))
    with pytest.raises(ConfigurationError, match="SPANMUX_TEST_UNSET_TRACKING_URI"):
        build_backends(only_mlflow)


def test_unlisted_backend_section_with_wrong_types_only_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="spanmux"):
        settings = spanmux.configure({"backends": ["local"], "local": {"path": "s.db"},
                                      "mlflow": {"timeout": "slow"}, "langfuse": {"hots": "x"}})
    assert settings.backends == ["local"] and settings.mlflow is None and settings.langfuse is None
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "mlflow.timeout" in text and "langfuse.hots" in text and "did you mean 'host'" in text
    # a listed backend's section stays strict
    error = config_error({"backends": ["mlflow"], "mlflow": {"timeout": "slow"}})
    assert error.problems[0].path == "mlflow.timeout"


# -- SuperOptiX's other observability keys (issue 11, item 9)

SUPEROPTIX_IGNORED = (
    "tracing.level", "tracing.include_tools", "tracing.include_memory", "tracing.include_rag", "logging",
    "metrics", "monitoring", "dashboard.enabled", "dashboard.auto_open", "debugging",
)


def test_superoptix_tracing_dashboard_and_monitoring_keys(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="spanmux"):
        settings = spanmux.configure(CONFIGS / "good" / "superoptix_tracing_dict.yaml")
    assert settings.enabled and runtime.active() is not None
    assert settings.ui_port == 8501  # dashboard.port, kept for the UI
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO and "SuperOptiX" in r.getMessage()]
    assert len(infos) == 1, infos
    for key in SUPEROPTIX_IGNORED:
        assert f"spec.observability.{key}" in infos[0], key
    assert "dashboard.port" not in infos[0] and "tracing.enabled" not in infos[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("name", ["superoptix_tracing_off.yaml", "superoptix_tracing_enabled_false.yaml"])
def test_superoptix_tracing_false_disables(name: str) -> None:
    settings = spanmux.configure(CONFIGS / "good" / name)
    assert settings.enabled is False
    assert runtime.active() is None and not runtime.is_enabled()


def test_superoptix_tracing_true_and_unknown_subkeys_warn(caplog: pytest.LogCaptureFixture) -> None:
    assert load("good/superoptix_tracing_true.yaml").enabled is True
    assert load_config({"dashboard": True}).settings.ui_port is None
    assert load_config({"tracing": "false"}).settings.enabled is False  # as a substituted ${VAR} gives it
    with caplog.at_level(logging.WARNING, logger="spanmux"):
        settings = spanmux.configure({"tracing": {"enabeld": False}, "local": {"path": "s.db"}})
    assert settings.enabled  # the misspelled key does not disable, but says so
    assert any("did you mean 'enabled'" in r.getMessage() for r in caplog.records)


# -- validate runs configure()'s checks (issue 11, item 10)

def test_validate_builds_the_backends_like_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    bad_scheme = runner.invoke(app, ["validate", str(CONFIGS / "bad" / "mlflow_bad_scheme.yaml")])
    assert bad_scheme.exit_code == 1 and "tracking_uri" in bad_scheme.output and "line 5" in bad_scheme.output
    proc = runner.invoke(app, ["validate", str(CONFIGS / "bad" / "local_under_proc.yaml")])
    assert proc.exit_code == 1 and "cannot open the store" in proc.output and "line 4" in proc.output

    import importlib.util

    real = importlib.util.find_spec

    def fake_find_spec(name: str, *args: object) -> object:
        return None if name.split(".")[0] == "mlflow" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec)
    no_sdk = runner.invoke(app, ["validate", str(CONFIGS / "good" / "superoptix_playbook.yaml")])
    assert no_sdk.exit_code == 1 and 'pip install "spanmux[mlflow]"' in no_sdk.output


def test_validate_says_what_it_could_not_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-test")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-test")
    monkeypatch.delenv("SPANMUX_TEST_UNSET_TRACKING_URI", raising=False)
    result = runner.invoke(app, ["validate", str(CONFIGS / "good" / "unlisted_backend_unset_var.yaml")])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "ok" in out and "not checked" in out
    assert "langfuse" in out and "spanmux doctor" in out  # reachability and keys need a connection
    assert "SPANMUX_TEST_UNSET_TRACKING_URI" in out  # the warning for the unlisted section
    assert "environment" in out  # variables came from this shell
    disabled = runner.invoke(app, ["validate", str(CONFIGS / "good" / "disabled.yaml")])
    assert disabled.exit_code == 0 and "enabled is false" in " ".join(disabled.output.split())


@pytest.mark.parametrize("name", sorted(p.name for p in (CONFIGS / "bad").iterdir()))
def test_validate_and_configure_agree_on_every_bad_file(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "SPANMUX_TEST_UNSET_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    error = config_error(CONFIGS / "bad" / name)
    result = runner.invoke(app, ["validate", str(CONFIGS / "bad" / name)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    for problem in error.problems:
        assert " ".join(str(problem).split()) in out


# -- mistakes that were accepted silently (issue 11, item 11)

def test_misspelled_block_name_is_an_error_with_a_suggestion() -> None:
    (problem,) = config_error(CONFIGS / "bad" / "misspelled_block.yaml").problems
    assert problem.path == "spec.observabilty" and problem.line == 9
    assert "did you mean 'observability'" in problem.message
    (top,) = config_error_from_text("observabilty:\n  backends: [local]\n").problems
    assert top.line == 1 and "did you mean 'observability'" in top.message


def config_error_from_text(text: str) -> ConfigurationError:
    path = Path("spanmux-test.yaml")
    path.write_text(text, encoding="utf-8")
    return config_error(path)


def test_empty_backends_is_a_clear_error() -> None:
    (problem,) = config_error(CONFIGS / "bad" / "empty_backends.yaml").problems
    assert problem.path == "observability.backends" and problem.line == 2
    assert "no backend" in problem.message and "enabled: false" in problem.message


def test_misspelled_names_get_did_you_mean() -> None:
    found = {p.path: p for p in config_error(CONFIGS / "bad" / "misspelled_names.yaml").problems}
    assert "did you mean 'mlflow'" in found["observability.backends[1]"].message
    assert "did you mean 'experiment_name'" in found["observability.mlflow.experiment"].message
    assert "did you mean 'tracking_uri'" in found["observability.mlflow.tracking_url"].message
    assert "did you mean 'mlflow'" in found["observability.mlfow"].message
    assert found["observability.mlfow"].line == 6


def test_unknown_span_kind_warns_once_with_the_valid_kinds(
    traced: TracedStore, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tracer, "_WARNED_KINDS", set())
    with caplog.at_level(logging.WARNING, logger="spanmux"):
        for _ in range(3):
            with spanmux.span("lookup", kind="retreiver"):
                pass

        @spanmux.observe(kind="tool")
        def fine() -> int:
            return 1

        fine()
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "'retreiver'" in warning and "did you mean 'retriever'" in warning
    assert "agent" in warning and "guardrail" in warning  # the valid kinds are listed
    kinds = sorted(s.kind for t in traced.traces() for s in traced.trace(t.trace_id))
    assert kinds == ["span", "span", "span", "tool"]
