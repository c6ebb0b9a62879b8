"""What users install: the wheel holds every module and entry point; `import spanmux` stays light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pydantic", "yaml", "langchain_core", "langgraph", "llama_index", "dspy", "mlflow", "langfuse",
         "opentelemetry", "genai_prices", "requests", "typer", "rich")


def test_import_spanmux_loads_no_framework_sdk_or_config_library() -> None:
    code = (
        "import json, sys, time; t = time.perf_counter(); import spanmux; "
        "ms = (time.perf_counter() - t) * 1000; "
        f"print(json.dumps({{'ms': ms, 'heavy': sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))}}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert result["heavy"] == []
    print(f"import spanmux took {result['ms']:.1f} ms")  # noqa: T201 - reported, not asserted (see benchmarks/)


def test_builtin_backends_are_registered_as_entry_points() -> None:
    names = {ep.name: ep.value for ep in entry_points(group="spanmux.backends")}
    assert names["local"] == "spanmux.backends.local:LocalBackend"
    assert {"local", "superoptix", "mlflow", "langfuse", "console"} <= set(names)


@pytest.mark.skipif(os.environ.get("SPANMUX_SKIP_WHEEL") == "1", reason="wheel build disabled")
def test_wheel_contains_every_module_and_imports_them(tmp_path: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp_path), str(ROOT)], check=True, capture_output=True, text=True)
    assert "license" not in (built.stdout + built.stderr).lower()  # SPDX form: no setuptools deprecation warnings
    (wheel,) = tmp_path.glob("spanmux-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: Apache-2.0" in metadata
    expected = {f"spanmux/{p.relative_to(ROOT / 'spanmux')}" for p in (ROOT / "spanmux").glob("*.py")}
    for folder in ("integrations", "backends", "config_schemas"):
        expected |= {f"spanmux/{folder}/{p.name}" for p in (ROOT / folder).glob("*.py")}
    expected |= {"spanmux/py.typed", "spanmux/config_schemas/observability.schema.json"}
    assert expected <= names, sorted(expected - names)
    assert not any(n.startswith(("integrations/", "backends/", "config_schemas/")) for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "[spanmux.backends]" in text and "spanmux = spanmux.cli:main" in text
    # every module imports from the installed wheel, not from the source tree
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    modules = sorted(n[:-3].replace("/", ".") for n in names if n.endswith(".py") and "__init__" not in n)
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('ok')"
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run([sys.executable, "-c", code, *modules], cwd=tmp_path, env=env, capture_output=True,
                            text=True)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
