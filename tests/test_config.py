"""The observability block: where it is found, what it accepts, and one clear error for the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import spanmux
from spanmux import runtime
from spanmux.config import load_config
from spanmux.config_schemas import ObservabilityConfig
from spanmux.config_schemas.observability import SCHEMA_FILE, json_schema
from spanmux.errors import ConfigurationError
from spanmux.registry import known_backends

CONFIGS = Path(__file__).parent / "configs"


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
    assert error.problems[0].line == 3
    assert "unreadable YAML" in str(error)


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
