"""Backends by name, through the ``spanmux.backends`` entry-point group.

Built-ins are registered the same way in ``pyproject.toml``, so a third-party backend is a
first-class citizen; the table below is only the fallback for running from a source tree that
was never installed.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from spanmux.backend import Backend, BackendSetupError, BaseBackend, as_backend
from spanmux.config import LoadedConfig, format_path, load_config, validate_section
from spanmux.config import _canonical as canonical_backend_name
from spanmux.config import _find_block as find_block
from spanmux.errors import ConfigProblem, ConfigurationError

log = logging.getLogger("spanmux.registry")

GROUP = "spanmux.backends"
_FALLBACK = {
    "local": "spanmux.backends.local:LocalBackend",
    "superoptix": "spanmux.backends.local:LocalBackend",
    "console": "spanmux.backends.console:ConsoleBackend",
    "mlflow": "spanmux.backends.mlflow:MlflowBackend",
    "langfuse": "spanmux.backends.langfuse:LangfuseBackend",
}


@lru_cache(maxsize=1)
def known_backends() -> dict[str, str]:
    """name -> "module:Class" of every backend this environment can build."""
    found = dict(_FALLBACK)
    try:
        for ep in entry_points(group=GROUP):
            found[ep.name] = ep.value
    except Exception as exc:  # broken metadata of an unrelated package
        log.debug("entry points of %s unreadable: %s", GROUP, exc)
    return found


def load_factory(name: str) -> Any:
    module_name, _, attr = known_backends()[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _missing_modules(factory: Any) -> list[str]:
    missing = []
    for module in getattr(factory, "required_modules", ()):
        try:
            if importlib.util.find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    return missing


def build_backends(loaded: LoadedConfig, given: Mapping[str, Backend] | None = None) -> list[tuple[str, Backend]]:
    """Construct every listed backend or raise one ConfigurationError; never half of them.
    ``given`` holds backend objects listed in a dict (by name): used as they are."""
    settings = loaded.settings
    given = given or {}
    problems: list[ConfigProblem] = []
    built: list[tuple[str, Backend]] = []
    for index, name in enumerate(settings.backends):
        key_path = ("backends", index)
        if name in given:  # an object the caller built: no lookup, no section
            built.append((name, given[name]))
            continue
        if name in loaded.deferred:  # a section that was only a warning while its backend was not listed
            problems.extend(loaded.deferred[name])
            continue
        try:
            factory = load_factory(name)
        except Exception as exc:  # a broken plugin: report it like any other problem
            problems.append(loaded.problem(key_path, f"backend {name!r} could not be loaded: {exc}"))
            continue
        missing = _missing_modules(factory)
        if missing:
            extra = getattr(factory, "extra", None)
            hint = f'pip install "spanmux[{extra}]"' if extra else f"pip install {' '.join(missing)}"
            problems.append(loaded.problem(
                key_path, f"backend {name!r} needs {', '.join(missing)}, which is not installed: run {hint}"
            ))
            continue
        section_path: tuple[str | int, ...] = (name,)
        if name in loaded.plugin_sections and getattr(factory, "config_model", None) is None:
            section = None  # a plugin that takes no options
        elif name in loaded.plugin_sections:
            section, section_problems = validate_section(
                factory.config_model, loaded.plugin_sections[name], section_path, loaded
            )
            problems.extend(section_problems)
            if section_problems:
                continue
        else:
            section = getattr(settings, name, None)
        try:
            built.append((name, factory(section, settings)))
        except BackendSetupError as exc:
            path = section_path + ((exc.key,) if exc.key else ())
            # no section in the file: point at the backend's entry in `backends:` instead
            problems.append(loaded.problem(path, str(exc), None if loaded.is_written(section_path) else key_path))
        except Exception as exc:
            problems.append(loaded.problem(section_path, f"backend {name!r} could not start: {exc}", key_path))
    if problems:
        for name, backend in built:
            if name in given:
                continue  # the caller's object: not ours to close
            try:
                backend.shutdown(1.0)
            except Exception:
                pass
        raise ConfigurationError(loaded.source, problems)
    return built


def build_backend(loaded: LoadedConfig, name: str) -> Backend:
    """The backend ``name`` of this configuration, built as ``configure()`` would, listed in
    ``backends:`` or not (``spanmux doctor`` and ``spanmux replay``); raises ConfigurationError."""
    only = dataclasses.replace(loaded, settings=loaded.settings.model_copy(update={"backends": [name]}))
    return build_backends(only)[0][1]


@dataclass
class CheckedConfig:
    """What ``configure()`` starts from: the validated block and its backends, built but not
    connected; plus what these checks cannot tell (for ``spanmux validate``)."""

    loaded: LoadedConfig
    backends: list[tuple[str, Backend]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Release the backends (``spanmux validate`` builds them only to check them)."""
        for _, backend in self.backends:
            try:
                backend.shutdown(1.0)
            except Exception as exc:
                log.debug("backend %s did not close: %s", backend, exc)
        self.backends = []


def check_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None, *, log_findings: bool = True
) -> CheckedConfig:
    """Every check ``configure()`` runs, in one place so ``spanmux validate`` runs exactly these:
    load, substitute, validate, then build each listed backend without connecting. Raises one
    ``ConfigurationError``. With ``log_findings``, warnings and the SuperOptiX info line are logged."""
    source, given = backend_objects(source)
    loaded = load_config(source, {**known_backends(), **dict.fromkeys(given, "<object>")})
    if log_findings:
        for problem in loaded.warnings:
            log.warning("%s: %s", loaded.source, problem)
        info = loaded.ignored_keys_line()
        if info:
            log.info("%s", info)
    settings = loaded.settings
    checked = CheckedConfig(loaded)
    if not settings.enabled:
        checked.unchecked.append("backends: not built, because enabled is false (configure() builds none either)")
    else:
        checked.backends = build_backends(loaded, given)
        for name, backend in checked.backends:
            if as_backend(backend).has_connection_check:
                checked.unchecked.append(
                    f"{name}: not contacted, so whether it is reachable and accepts the credentials "
                    f"(run `spanmux doctor {loaded.source}`)"
                )
    for name in loaded.unlisted_sections:
        checked.unchecked.append(f"{name}: section read, but the backend is not built because it is not in backends")
    if loaded.env_vars:
        checked.unchecked.append(
            f"environment variables ({', '.join(loaded.env_vars)}) were read from this shell; "
            "the traced program's environment may differ"
        )
    return checked


def _is_backend_object(item: Any) -> bool:
    return isinstance(item, BaseBackend) or (not isinstance(item, str) and isinstance(item, Backend))


def backend_objects(
    source: str | os.PathLike[str] | Mapping[str, Any] | None,
) -> tuple[str | os.PathLike[str] | Mapping[str, Any] | None, dict[str, Backend]]:
    """A dict's ``backends:`` may list backend objects beside names (``configure({"backends":
    ["local", InMemoryBackend()]})``): the source with each object replaced by its ``name``, and
    those objects by name. Each gets a lane, a spool and stats like a named backend; only the
    registry lookup and the section are skipped. Files and names are returned unchanged."""
    if not isinstance(source, Mapping):
        return source, {}
    block, block_path, _ = find_block(dict(source), True)
    listed = block.get("backends") if isinstance(block, dict) else None
    items = [listed] if _is_backend_object(listed) else listed
    if not isinstance(items, list) or all(isinstance(item, str) for item in items):
        return source, {}
    given: dict[str, Backend] = {}
    names: list[Any] = []
    problems: list[ConfigProblem] = []
    taken = {canonical_backend_name(item) for item in items if isinstance(item, str)}
    for index, item in enumerate(items):
        if isinstance(item, str):
            names.append(item)
            continue
        name = getattr(item, "name", None)
        where = format_path((*block_path, "backends", index))
        if not _is_backend_object(item):
            problems.append(ConfigProblem(where, f"{type(item).__name__!r} object: neither a backend name nor a "
                                                 "backend (an object with export(), force_flush() and shutdown())"))
        elif not isinstance(name, str) or not name:
            problems.append(ConfigProblem(where, f"backend object {item!r} has no name: set its `name` attribute"))
        elif canonical_backend_name(name) in taken:
            problems.append(ConfigProblem(where, f"two backends are named {name!r}: give each its own name "
                                                 "(it names the backend's lane, spool folder and stats entry)"))
        else:
            taken.add(canonical_backend_name(name))
            given[name] = item
        names.append(name)
    if problems:
        raise ConfigurationError("<dict>", problems)
    return _replace_block(dict(source), block_path, {**block, "backends": names}), given


def _replace_block(data: dict[Any, Any], path: tuple[str | int, ...], block: dict[str, Any]) -> dict[Any, Any]:
    """A copy of ``data`` with the mapping at ``path`` replaced (the caller's dict is not changed)."""
    if not path:
        return block
    return {**data, path[0]: _replace_block(dict(data[path[0]]), path[1:], block)}
