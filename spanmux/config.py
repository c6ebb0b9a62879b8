"""Load the ``observability:`` block from a YAML file, a dict or the environment.

Every problem is collected first and raised once as a ``ConfigurationError`` naming the file,
the YAML path and the line, so nothing starts half-configured. Values are never quoted back in
messages: a misplaced secret must not end up in a log.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from spanmux.config_schemas import ObservabilityConfig
from spanmux.errors import ConfigProblem, ConfigurationError

ENV_CONFIG = "SPANMUX_CONFIG"
DEFAULT_FILE = "spanmux.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class LoadedConfig:
    """A validated block plus where it came from and the sections of plugin backends."""

    settings: ObservabilityConfig
    source: str
    plugin_sections: dict[str, Any] = field(default_factory=dict)
    block_path: Path_ = ()
    lines: dict[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        return _nearest_line(self.lines, self.block_path + path)

    def is_written(self, path: Path_) -> bool:
        """Whether the file itself has this key (as opposed to a default filled in for it)."""
        return self.block_path + path in self.lines

    def problem(self, path: Path_, message: str, line_path: Path_ | None = None) -> ConfigProblem:
        """A problem at ``path`` inside the block, pointing at the line of ``line_path`` (default:
        the same path, or its nearest written ancestor)."""
        where = path if line_path is None else line_path
        return ConfigProblem(format_path(self.block_path + path), message, self.line_of(where))


def format_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _nearest_line(lines: Mapping[Path_, int], path: Path_) -> int | None:
    while True:
        if path in lines:
            return lines[path]
        if not path:
            return None
        path = path[:-1]


def _line_map(node: yaml.Node | None, path: Path_ = (), out: dict[Path_, int] | None = None) -> dict[Path_, int]:
    out = {} if out is None else out
    if node is None:
        return out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            _line_map(value_node, path + (key,), out)
            out[path + (key,)] = key_node.start_mark.line + 1  # the key's line, not its value's
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _line_map(item, path + (index,), out)
    return out


def _substitute(value: Any, path: Path_, problems: list[tuple[Path_, str]]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the block."""
    if isinstance(value, dict):
        return {k: _substitute(v, path + (k,), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path + (i,), problems) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        found = os.environ.get(name)
        if found is not None and (found != "" or default is None):
            return found
        if default is not None:
            return default
        problems.append((path, f"environment variable ${{{name}}} is not set and has no default"))
        return ""

    # Strings stay strings: pydantic's lax mode turns "0.5" or "true" into the field's type.
    return _VAR.sub(replace, value)


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any] | None) -> tuple[Any, str, dict[Path_, int]]:
    if isinstance(source, Mapping):
        return dict(source), "<dict>", {}
    if source is None:
        env_path = os.environ.get(ENV_CONFIG)
        if env_path:
            source = env_path
        elif Path(DEFAULT_FILE).is_file():
            source = DEFAULT_FILE
        else:
            return {}, "<defaults>", {}
    path = Path(source)
    name = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(name, [ConfigProblem("", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or "unreadable YAML"
        raise ConfigurationError(name, [ConfigProblem("", f"unreadable YAML: {reason}", line)]) from None
    return data, name, _line_map(node)


def _find_block(data: Any, from_mapping: bool) -> tuple[Any, Path_]:
    """The block sits under ``observability:``, under ``spec.observability`` (SuperOptiX), or is
    the document itself (a dict handed to ``configure``, or a file of bare settings)."""
    if not isinstance(data, dict):
        return data, ()
    if "observability" in data:
        return data["observability"], ("observability",)
    spec = data.get("spec")
    if isinstance(spec, dict) and "observability" in spec:
        return spec["observability"], ("spec", "observability")
    if from_mapping or any(key in ObservabilityConfig.model_fields for key in data):
        return data, ()
    return {}, ("observability",)


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    known_backends: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Read, substitute and validate; raise one ``ConfigurationError`` listing every problem."""
    data, name, lines = _read_source(source)
    block, block_path = _find_block(data, isinstance(source, Mapping))
    problems: list[ConfigProblem] = []

    def problem(path: Path_, message: str) -> None:
        full = block_path + path
        problems.append(ConfigProblem(format_path(full), message, _nearest_line(lines, full)))

    if block is None:
        block = {}
    if not isinstance(block, dict):
        problem((), "must be a mapping of observability settings")
        raise ConfigurationError(name, problems)

    env_problems: list[tuple[Path_, str]] = []
    block = _substitute(block, (), env_problems)
    for path, message in env_problems:
        problem(path, message)

    plugin_sections: dict[str, Any] = {}
    backends = block.get("backends", ["local"])
    if isinstance(backends, str):
        backends = [backends]
        block["backends"] = backends
    if isinstance(backends, list) and known_backends is not None:
        valid = sorted(known_backends)
        for index, backend in enumerate(backends):
            if not isinstance(backend, str):
                continue
            if backend not in known_backends:
                problem(("backends", index), f"unknown backend {backend!r}; valid names: {', '.join(valid)}")
            elif backend not in ObservabilityConfig.model_fields and backend != "superoptix":
                plugin_sections[backend] = block.pop(backend, None)

    try:
        settings = ObservabilityConfig.model_validate(block)
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            loc = tuple(error["loc"])
            problem(loc, _describe(error))
        raise ConfigurationError(name, problems) from None
    if problems:
        raise ConfigurationError(name, problems)
    return LoadedConfig(settings, name, plugin_sections, block_path, lines)


def _describe(error: Any) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return str(error.get("msg", "invalid value"))


def validate_section(
    model: type[BaseModel], section: Any, path: Path_, loaded: LoadedConfig
) -> tuple[Any, list[ConfigProblem]]:
    """Validate a plugin backend's section with its own model, mapping errors to lines."""
    problems: list[ConfigProblem] = []
    try:
        return model.model_validate(section or {}), problems
    except ValidationError as exc:
        for error in exc.errors(include_input=False, include_url=False):
            problems.append(loaded.problem(path + tuple(error["loc"]), _describe(error)))
        return None, problems
