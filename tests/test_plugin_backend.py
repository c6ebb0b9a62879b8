"""A third-party backend written only against the documented base class (``spanmux.backend.BaseBackend``),
installed the way a plugin is (a distribution with a ``spanmux.backends`` entry point), then
configured by name, exported to, flushed, checked by ``spanmux doctor`` and ``validate``, counted
in ``spanmux.stats()`` and shut down."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import spanmux
from spanmux import registry
from spanmux.cli import app

PLUGIN = '''
"""spanmux-notebook: each span and score as one JSON line in a folder (a plugin's whole code)."""

import json
from pathlib import Path

import pydantic

from spanmux.backend import BaseBackend, ExportError


class NotebookConfig(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    folder: str
    fail_first: int = 0


class NotebookBackend(BaseBackend):
    name = "notebook"
    config_model = NotebookConfig
    required_modules = ("pydantic",)

    def __init__(self, config, settings=None):
        super().__init__(config, settings)
        self.folder = Path(config.folder)
        self.failures_left = config.fail_first
        self.lines_written = 0

    def origin(self):
        return {"producer": "notebook-session-1"}

    def export(self, spans, scores):
        self._write(spans, scores, None)

    def export_spooled(self, spans, scores, origin):
        self._write(spans, scores, origin)

    def _write(self, spans, scores, origin):
        if self.failures_left:
            self.failures_left -= 1
            raise ExportError("notebook is busy", retryable=True)
        lines = [{"span": s.name, "kind": s.kind, "origin": origin} for s in spans]
        lines += [{"score": s.name, "value": s.value, "origin": origin} for s in scores]
        with open(self.folder / "notebook.jsonl", "a", encoding="utf-8") as out:
            for line in lines:
                out.write(json.dumps(line) + "\\n")
        self.lines_written += len(lines)

    def check_connection(self, timeout=5.0):
        if not self.folder.is_dir():
            raise ExportError(f"notebook folder {self.folder} does not exist", retryable=False)
        return f"notebook folder {self.folder} is there"

    def stats(self):
        return {**super().stats(), "lines_written": self.lines_written}

    def shutdown(self, timeout):
        (self.folder / "closed").write_text("bye")


class MinimalBackend(BaseBackend):
    """Only what a backend must write: export. Every other part of the contract is a default."""

    received = []

    def export(self, spans, scores):
        type(self).received.extend(s.name for s in spans)
'''

ENTRY_POINTS = """
[spanmux.backends]
notebook = spanmux_notebook:NotebookBackend
minimal = spanmux_notebook:MinimalBackend
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin installed as a distribution on sys.path: its module and its dist-info with the
    entry points, found by importlib.metadata exactly like a pip-installed one."""
    site = tmp_path / "site"
    info = site / "spanmux_notebook-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "spanmux_notebook.py").write_text(textwrap.dedent(PLUGIN))
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: spanmux-notebook\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    for module in ("spanmux_notebook", "spanmux_broken"):  # each test imports its own copy
        monkeypatch.delitem(sys.modules, module, raising=False)
    registry.known_backends.cache_clear()
    folder = tmp_path / "notebook"
    folder.mkdir()
    yield folder
    registry.known_backends.cache_clear()


def settings(tmp_path: Path, folder: Path, **notebook: Any) -> dict[str, Any]:
    return {"backends": ["local", "notebook"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool"),
            "local": {"path": str(tmp_path / "store.db")}, "notebook": {"folder": str(folder), **notebook}}


def lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "notebook.jsonl").read_text().splitlines()]


def agent() -> str:
    with spanmux.span("agent", kind="agent") as root, spanmux.span("search", kind="tool"):
        pass
    root.score("quality", 0.5)
    return root.trace_id


def test_the_plugin_is_found_by_its_entry_point(plugin: Path) -> None:
    assert registry.known_backends()["notebook"] == "spanmux_notebook:NotebookBackend"


def test_configured_by_name_it_receives_spans_and_scores_and_counts(plugin: Path, tmp_path: Path) -> None:
    spanmux.configure(settings(tmp_path, plugin))
    agent()
    assert spanmux.flush(timeout=10)
    assert lines(plugin) == [
        {"span": "search", "kind": "tool", "origin": None},
        {"span": "agent", "kind": "agent", "origin": None},
        {"score": "quality", "value": 0.5, "origin": None},
    ]
    lane = spanmux.stats()["backends"]["notebook"]
    assert lane["exported_spans"] == 2 and lane["exported_scores"] == 1
    assert lane["lines_written"] == 3  # the plugin's own counter, beside the lane's
    assert lane["rejected_spans"] == lane["rejected_scores"] == 0
    spanmux.shutdown()
    assert (plugin / "closed").read_text() == "bye"


def test_a_failed_batch_waits_in_the_spool_and_comes_back_with_its_origin(plugin: Path, tmp_path: Path) -> None:
    spanmux.configure(settings(tmp_path, plugin, fail_first=1))
    agent()
    assert spanmux.flush(timeout=10)  # the flush retries the spool until the plugin takes it
    lane = spanmux.stats()["backends"]["notebook"]
    assert lane["export_errors"] == 1 and lane["replayed_batches"] == 1
    assert {line["origin"]["producer"] for line in lines(plugin)} == {"notebook-session-1"}
    assert len(lines(plugin)) == 3


def test_doctor_and_validate_use_its_connection_check(plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"observability": settings(tmp_path, plugin)}))
    result = CliRunner().invoke(app, ["doctor", str(config), "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["backend"]: row for row in json.loads(result.stdout)["backends"]}
    assert rows["notebook"]["status"] == "ok" and rows["notebook"]["detail"] == f"notebook folder {plugin} is there"
    validated = CliRunner().invoke(app, ["validate", str(config)])
    assert validated.exit_code == 0 and "notebook: not contacted" in validated.output

    config.write_text(yaml.safe_dump({"observability": settings(tmp_path, tmp_path / "gone")}))
    result = CliRunner().invoke(app, ["doctor", str(config), "--json"])
    rows = {row["backend"]: row for row in json.loads(result.stdout)["backends"]}
    assert result.exit_code == 1 and rows["notebook"]["status"] == "refused"
    assert "does not exist" in rows["notebook"]["detail"]


def test_a_plugin_with_only_export_gets_every_default(plugin: Path, tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"observability": {
        "backends": ["minimal"], "flush_interval": 0.05, "spool_dir": str(tmp_path / "spool")}}))
    spanmux.configure(config)
    agent()
    assert spanmux.flush(timeout=10)
    from spanmux_notebook import MinimalBackend  # type: ignore[import-not-found]

    assert MinimalBackend.received == ["search", "agent"]
    lane = spanmux.stats()["backends"]["minimal"]
    assert lane["exported_spans"] == 2 and lane["rejected_spans"] == 0
    spanmux.shutdown()
    result = CliRunner().invoke(app, ["doctor", str(config), "--json"])
    (row,) = json.loads(result.stdout)["backends"]
    assert row["status"] == "ok" and row["detail"] == "configured (this backend has no connection check)"
    validated = CliRunner().invoke(app, ["validate", str(config)])
    assert validated.exit_code == 0 and "minimal: not contacted" not in validated.output


def test_a_plugin_without_export_is_refused_at_configure_time(plugin: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "site" / "spanmux_broken.py").write_text(
        "from spanmux.backend import BaseBackend\n\nclass Broken(BaseBackend):\n    pass\n")
    monkeypatch.setitem(registry.known_backends(), "broken", "spanmux_broken:Broken")
    with pytest.raises(spanmux.ConfigurationError, match="could not start"):
        spanmux.configure({"backends": ["broken"], "spool_dir": str(tmp_path / "spool")})


def test_warn_once_logs_each_key_once_on_the_backends_module_logger(caplog: pytest.LogCaptureFixture) -> None:
    from spanmux.backend import BaseBackend, halves

    class Quiet(BaseBackend):
        name = "quiet"

        def export(self, spans: Any, scores: Any) -> None:
            return None

    backend = Quiet(None)
    with caplog.at_level("WARNING"):
        for _ in range(3):
            backend.warn_once("refused", "refused %d", 1)
        backend.warn_once("partial", "partial")
    assert [(r.name, r.getMessage()) for r in caplog.records] == [(__name__, "refused 1"), (__name__, "partial")]
    assert halves([1, 2, 3]) == ([1], [2, 3]) and halves([1]) == ([], [1])


def test_isolate_refused_delivers_every_record_but_the_refused_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin whose destination refuses one record's content: through the lane, every other span of
    the batch is delivered once, the refused one is dropped, counted and logged once."""
    from spanmux.backend import BaseBackend, RefusedContent

    class Picky(BaseBackend):
        name = "picky"

        def __init__(self) -> None:
            super().__init__(None)
            self.delivered: list[str] = []

        def export(self, spans: Any, scores: Any) -> None:
            self._send(list(spans))

        def _send(self, spans: Any) -> None:
            try:
                if any(s.name == "bad" for s in spans):
                    raise RefusedContent("HTTP 400", "name 'bad' is not allowed", "picky at 127.0.0.1")
                self.delivered.extend(s.name for s in spans)
            except RefusedContent as exc:
                self.isolate_refused(spans, exc, self._send)

    picky = Picky()
    spanmux.configure({"backends": [picky], "spool_dir": str(tmp_path / "spool")})
    names = [f"s{i}" for i in range(7)]
    with caplog.at_level("WARNING"):
        with spanmux.span("batch"):
            for name in names[:3] + ["bad"] + names[3:]:
                with spanmux.span(name):
                    pass
        assert spanmux.flush(10)
    assert sorted(picky.delivered) == sorted([*names, "batch"])
    assert picky.rejected_spans == 1 and spanmux.stats()["backends"]["picky"]["rejected_spans"] == 1
    assert [r.getMessage() for r in caplog.records if "refused" in r.getMessage()] == [
        "picky at 127.0.0.1 refused a span (dropped, not retried): HTTP 400: name 'bad' is not allowed"]
