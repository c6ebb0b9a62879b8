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
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from spanmux.config_schemas import ObservabilityConfig
from spanmux.config_schemas.observability import BUILTIN_BACKENDS, SUPEROPTIX_KEYS
from spanmux.errors import ConfigProblem, ConfigurationError, did_you_mean, in_line_order

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
    warnings: list[ConfigProblem] = field(default_factory=list)
    """Problems that do not stop spanmux (a section of an unlisted backend, a misspelled SuperOptiX key)."""
    deferred: dict[str, list[ConfigProblem]] = field(default_factory=dict)
    """Problems of unlisted backends' sections: errors again if that backend is built (doctor, replay)."""
    unlisted_sections: tuple[str, ...] = ()
    """Sections of backends that are not in ``backends:``: read, but their backend is not built."""
    ignored_keys: tuple[str, ...] = ()
    """SuperOptiX keys written in the file that spanmux accepts but does not act on."""
    env_vars: tuple[str, ...] = ()
    """The ``${VAR}`` names the file uses (resolved from the current environment)."""

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

    def ignored_keys_line(self) -> str | None:
        """The one info line naming the SuperOptiX keys spanmux does not act on, if any."""
        if not self.ignored_keys:
            return None
        return (f"{self.source}: SuperOptiX keys spanmux accepts but does not act on: "
                f"{', '.join(self.ignored_keys)}")


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


def _substitute(value: Any, path: Path_, problems: list[tuple[Path_, str]], used: list[str]) -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` in every string of the block."""
    if isinstance(value, dict):
        return {k: _substitute(v, path + (k,), problems, used) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, path + (i,), problems, used) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        used.append(name)
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
        line, reason = _locate_syntax_error(text, exc)
        raise ConfigurationError(name, [ConfigProblem("", f"unreadable YAML: {reason}", line)]) from None
    return data, name, _line_map(node)


def _locate_syntax_error(text: str, exc: yaml.YAMLError) -> tuple[int | None, str]:
    """The line that is wrong, which is often not where the parser gave up: an unclosed quote or
    bracket is noticed lines later, a key without ':' on the next line."""
    problem_mark = getattr(exc, "problem_mark", None)
    context_mark = getattr(exc, "context_mark", None)
    context = getattr(exc, "context", None) or ""
    problem = getattr(exc, "problem", None) or "unreadable YAML"
    if problem_mark is None:
        return None, problem
    at = problem_mark.line + 1
    if context_mark is not None:
        opened = context_mark.line + 1
        if "quoted scalar" in context:
            return opened, "unclosed quote: the value quoted on this line has no closing quote"
        if context.startswith("while parsing a flow"):
            bracket = "[" if "sequence" in context else "{"
            return opened, f"{bracket!r} opened on this line is never closed"
        if "simple key" in context:
            return opened, "a key without ':' after it"
    scalar = _scalar_before(text, problem_mark.index)
    if scalar is not None and scalar.start_mark.line != scalar.end_mark.line:
        start = scalar.start_mark
        if scalar.style in ("'", '"'):
            return start.line + 1, (f"unclosed quote: the value quoted on this line runs on to line {at}")
        line_text = text.splitlines()[start.line] if start.line < len(text.splitlines()) else ""
        if not line_text[:start.column].strip(" -"):  # the scalar is a key that lacks its ':'
            return start.line + 1, f"a key without ':' after it (the parser noticed on line {at})"
    if "expected <block end>" in problem or "expected <block end>" in context:
        return at, "indentation does not match the lines above"
    if "'\\t'" in problem or "\t" in problem:
        return at, "a tab character: YAML indents with spaces"
    if "mapping values are not allowed" in problem:
        return at, "unexpected ':' (check the indentation, or quote a value that contains ': ')"
    return at, problem


def _scalar_before(text: str, index: int) -> yaml.ScalarToken | None:
    """The last token that ends at or before ``index``, when it is a scalar."""
    loader = yaml.SafeLoader(text)
    tokens: list[yaml.Token] = []
    try:
        while loader.check_token():
            token = loader.get_token()  # type: ignore[no-untyped-call]
            if token.start_mark.index >= index:
                break
            tokens.append(token)
    except yaml.YAMLError:
        tokens.extend(t for t in loader.tokens if t.start_mark.index < index)
    finally:
        loader.dispose()
    ended = [t for t in tokens if t.end_mark.index <= index and not isinstance(t, (yaml.BlockEndToken,))]
    last = ended[-1] if ended else None
    return last if isinstance(last, yaml.ScalarToken) else None


_BLOCK = "observability"


def _find_block(data: Any, from_mapping: bool) -> tuple[Any, Path_, Path_ | None]:
    """The block sits under ``observability:``, under ``spec.observability`` (SuperOptiX), or is
    the document itself (a dict handed to ``configure``, or a file of bare settings). The third
    value is the path of a key that looks like a misspelled block name, if there is no block."""
    if not isinstance(data, dict):
        return data, (), None
    if _BLOCK in data:
        return data[_BLOCK], (_BLOCK,), None
    spec = data.get("spec")
    if isinstance(spec, dict) and _BLOCK in spec:
        return spec[_BLOCK], ("spec", _BLOCK), None
    if from_mapping or any(key in _OWN_KEYS for key in data):
        return data, (), None
    for where, mapping in (((), data), (("spec",), spec if isinstance(spec, dict) else {})):
        for key in mapping:
            if isinstance(key, str) and did_you_mean(key, [_BLOCK], cutoff=0.85, prefixes=False):
                return {}, (_BLOCK,), where + (key,)
    return {}, (_BLOCK,), None


_OWN_KEYS = frozenset(ObservabilityConfig.model_fields) - frozenset(SUPEROPTIX_KEYS)
"""Keys that make a file of bare settings; SuperOptiX's (``logging:``, ``metrics:``) are too common elsewhere."""


def _canonical(name: str) -> str:
    return "local" if name == "superoptix" else name


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any] | None = None,
    known_backends: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Read, substitute and validate; raise one ``ConfigurationError`` listing every problem.

    Sections of backends that are not in ``backends:`` are kept but not required to resolve:
    their problems are warnings (and errors again if that backend is built anyway)."""
    data, name, lines = _read_source(source)
    block, block_path, misspelled = _find_block(data, isinstance(source, Mapping))
    problems: list[ConfigProblem] = []
    warnings: list[ConfigProblem] = []
    deferred: dict[str, list[ConfigProblem]] = {}

    def at(path: Path_, message: str) -> ConfigProblem:
        full = block_path + path
        return ConfigProblem(format_path(full), message, _nearest_line(lines, full))

    def problem(path: Path_, message: str) -> None:
        problems.append(at(path, message))

    if misspelled is not None:
        problems.append(ConfigProblem(
            format_path(misspelled),
            f"not a spanmux block, so spanmux would run with defaults{did_you_mean(str(misspelled[-1]), [_BLOCK])}",
            _nearest_line(lines, misspelled),
        ))
        raise ConfigurationError(name, problems)
    if block is None:
        block = {}
    if not isinstance(block, dict):
        problem((), "must be a mapping of observability settings")
        raise ConfigurationError(name, problems)

    known = dict.fromkeys(BUILTIN_BACKENDS) if known_backends is None else dict(known_backends)
    env_problems: list[tuple[Path_, str]] = []
    used: list[str] = []
    block = _substitute(block, (), env_problems, used)

    backends = block.get("backends", ["local"])
    if isinstance(backends, str):
        backends = [backends]
        block["backends"] = backends
    listed: set[str] | None = None  # None: the list itself is wrong, so every section stays strict
    if isinstance(backends, list):
        listed = set()
        for index, backend in enumerate(backends):
            if not isinstance(backend, str):
                listed = None
                continue
            if backend not in known:
                problem(("backends", index), f"unknown backend {backend!r}{did_you_mean(backend, known)} "
                        f"(valid names: {', '.join(sorted(known))})")
                listed = None
            elif listed is not None:
                listed.add(_canonical(backend))
    if any(path[:1] == ("backends",) for path, _ in env_problems):
        listed = None
    section_names = {_canonical(n) for n in known} & set(block)
    unlisted = sorted(section_names - listed) if listed is not None else []

    def lenient(section: str, path: Path_, message: str) -> None:
        deferred.setdefault(section, []).append(at(path, message))
        warnings.append(at(path, f"{message} (only a warning while {section!r} is not in backends)"))

    for path, message in env_problems:
        if path and path[0] in unlisted:
            lenient(str(path[0]), path, message)
        else:
            problem(path, message)

    plugin_sections = {
        backend: block.pop(backend)
        for backend in list(block)
        if backend in known and backend not in ObservabilityConfig.model_fields and backend != "superoptix"
    }
    for backend in listed or ():
        if backend not in ObservabilityConfig.model_fields:
            plugin_sections.setdefault(backend, None)  # a listed plugin's defaults are validated too
    root_keys = [*ObservabilityConfig.model_fields, *(n for n in known if n != "superoptix")]
    if not block_path:
        root_keys.append(_BLOCK)

    settings: ObservabilityConfig | None = None
    for attempt in range(2):
        try:
            settings = ObservabilityConfig.model_validate(block)
            break
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)
        strict = []
        for error in errors:
            loc = tuple(error["loc"])
            message = _describe(error, ObservabilityConfig, root_keys)
            if attempt == 0 and loc and loc[0] in unlisted:
                lenient(str(loc[0]), loc, message)
                block.pop(loc[0], None)  # the backend's defaults stand in; building it reports the problem
            else:
                strict.append((loc, message))
        for loc, message in strict:
            problem(loc, message)
        if strict:
            raise ConfigurationError(name, problems)
    if problems or settings is None:
        raise ConfigurationError(name, problems)

    ignored = _superoptix_findings(block, settings, at, warnings)
    return LoadedConfig(
        settings, name, plugin_sections, block_path, lines,
        warnings=in_line_order(warnings), deferred=deferred, unlisted_sections=tuple(unlisted),
        ignored_keys=tuple(format_path(block_path + key) for key in ignored), env_vars=tuple(dict.fromkeys(used)),
    )


def _superoptix_findings(
    block: dict[str, Any], settings: ObservabilityConfig, at: Any, warnings: list[ConfigProblem]
) -> list[Path_]:
    """SuperOptiX keys written in the block that spanmux does not act on, and a warning for each
    unknown sub-key that looks like a typo of a known one (``tracing.enabeld``)."""
    ignored: list[Path_] = []
    acted_on = {("tracing", "enabled"), ("dashboard", "port")}
    for key in SUPEROPTIX_KEYS:
        if key not in block:
            continue
        value = getattr(settings, key)
        if isinstance(value, BaseModel):
            written = block[key] if isinstance(block[key], dict) else {}
            known = type(value).model_fields
            for sub in written:
                hint = did_you_mean(str(sub), known) if sub not in known else ""
                if hint:
                    warnings.append(at((key, sub), f"unknown SuperOptiX key, ignored{hint}"))
                elif (key, sub) not in acted_on and key != "monitoring":
                    ignored.append((key, sub))
            if key == "monitoring":
                ignored.append((key,))
        elif key != "tracing":  # tracing: true | false is acted on
            ignored.append((key,))
    return ignored


def _model_in(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """The model inside a field's type (``X | None``, ``dict[str, X]``); True when keyed by a dict."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if get_origin(annotation) is dict:
        inner, _ = _model_in(get_args(annotation)[-1])
        return inner, True
    for arg in get_args(annotation):
        inner, keyed = _model_in(arg)
        if inner is not None:
            return inner, keyed
    return None, False


def _keys_at(model: type[BaseModel], loc: Path_) -> list[str]:
    """The valid keys of the mapping at ``loc`` inside ``model`` (for "did you mean")."""
    current: type[BaseModel] | None = model
    parts = list(loc)
    while parts and current is not None:
        part = parts.pop(0)
        field_info = current.model_fields.get(part) if isinstance(part, str) else None
        if field_info is None:
            return []
        current, keyed = _model_in(field_info.annotation)
        if keyed and parts:
            parts.pop(0)  # the dict's own key, e.g. the model name under pricing:
    return list(current.model_fields) if current is not None else []


def _describe(error: Any, model: type[BaseModel] | None = None, root_keys: list[str] | None = None) -> str:
    kind = error.get("type", "")
    loc = tuple(error.get("loc", ()))
    if kind == "extra_forbidden":
        parent = loc[:-1]
        keys = _keys_at(model, parent) if model is not None else []
        if not parent and root_keys is not None:
            keys = root_keys
        return f"unknown key{did_you_mean(str(loc[-1]), keys) if loc else ''}"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and loc == ("backends",):
        return ("no backend listed, so traces would go nowhere: list at least one (local, mlflow, langfuse, ...) "
                "or set enabled: false to turn tracing off")
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
            problems.append(loaded.problem(path + tuple(error["loc"]), _describe(error, model)))
        return None, problems
