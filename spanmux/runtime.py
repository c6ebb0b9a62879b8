"""Process-wide state: the active configuration and pipeline.

``configure()`` builds everything first and swaps it in last, so a bad configuration leaves the
previous one running. Without an explicit ``configure()``, the first span configures from
``$SPANMUX_CONFIG`` / ``./spanmux.yaml`` / defaults; a problem there is logged, never raised
into the user's program.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spanmux.errors import ConfigurationError
from spanmux.model import Score, Span
from spanmux.pipeline import Pipeline, register_fork_handler

if TYPE_CHECKING:  # pydantic stays off `import spanmux`
    from spanmux.config_schemas import ObservabilityConfig

log = logging.getLogger("spanmux")

_lock = threading.RLock()
_pipeline: Pipeline | None = None
_settings: ObservabilityConfig | None = None
_configured = False
_source: str | None = None
_atexit_registered = False
_previous_sigterm: Any = None


def configure(source: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> ObservabilityConfig:
    """Load the ``observability:`` block and start its backends. Raises ``ConfigurationError``.

    ``source`` is a YAML file, a dict of the same keys, or None (``$SPANMUX_CONFIG``, then
    ``./spanmux.yaml``, then defaults). In a dict, ``backends`` may list backend objects beside
    names (``{"backends": ["local", my_backend]}``): each is used as it is, under its ``name``,
    with its own lane, spool and stats like a named backend."""
    state = prepare(source)
    old = install(state)
    if old.pipeline is not None:
        old.pipeline.shutdown(timeout=10.0)
    assert state.settings is not None  # prepare() always validates some
    return state.settings


@dataclass(frozen=True)
class State:
    """What ``configure()`` swaps in at once: the pipeline (None: tracing off), its settings and
    where they came from. ``configured=False`` is the state before any configuration (the next
    span configures from the environment)."""

    pipeline: Pipeline | None
    settings: ObservabilityConfig | None
    source: str | None
    configured: bool = True


def prepare(source: str | os.PathLike[str] | Mapping[str, Any] | None = None) -> State:
    """Check ``source`` and start its pipeline, without making it the active one yet."""
    from spanmux.processors import SpanProcessor
    from spanmux.registry import check_config

    checked = check_config(source)  # the same checks `spanmux validate` runs
    loaded = checked.loaded
    settings = loaded.settings
    new_pipeline: Pipeline | None = None
    if settings.enabled:
        new_pipeline = Pipeline(
            checked.backends,
            SpanProcessor(settings),
            queue_size=settings.queue_size,
            batch_size=settings.batch_size,
            flush_interval=settings.flush_interval,
            spool_dir=settings.spool_dir,
            spool_max_bytes=settings.spool_max_bytes,
        )
    log.debug("spanmux configured from %s: backends=%s enabled=%s", loaded.source, settings.backends, settings.enabled)
    return State(new_pipeline, settings, loaded.source)


def install(state: State) -> State:
    """Make ``state`` the active one; return the one it replaces, still running (``configure()``
    shuts it down; ``spanmux.testing.capture()`` puts it back at the end of its block)."""
    global _pipeline, _settings, _configured, _source
    with _lock:
        old = State(_pipeline, _settings, _source, _configured)
        _pipeline, _settings, _source, _configured = state.pipeline, state.settings, state.source, state.configured
        if state.configured:
            _register_exit_hooks()
    return old


def reinstate(previous: State, replaced: State) -> bool:
    """Put ``previous`` back if ``replaced`` is still the active state (True); leave what the
    program configured in the meantime (False)."""
    with _lock:
        if _pipeline is not replaced.pipeline or _settings is not replaced.settings:
            return False
        install(previous)
        return True


def _auto_configure() -> Pipeline | None:
    global _configured
    with _lock:
        if _configured:
            return _pipeline
        try:
            configure(None)
        except ConfigurationError as exc:
            _configured = True
            log.error("spanmux is disabled: %s", exc)
        except Exception:
            _configured = True
            log.exception("spanmux is disabled: configuration failed")
        return _pipeline


def active() -> Pipeline | None:
    """The pipeline to emit into, or None when tracing is disabled. Cheap: called per span."""
    pipeline = _pipeline
    if pipeline is not None:
        return pipeline
    if _configured:
        return None
    return _auto_configure()


def is_enabled() -> bool:
    return _pipeline is not None or not _configured


def emit(record: Span | Score) -> None:
    pipeline = _pipeline if _pipeline is not None else active()
    if pipeline is not None:
        pipeline.emit(record)


def settings() -> ObservabilityConfig | None:
    return _settings


def flush(timeout: float = 10.0) -> bool:
    """Block until everything emitted so far reached every backend (or its spool)."""
    pipeline = _pipeline
    return pipeline.flush(timeout) if pipeline is not None else True


def shutdown(timeout: float = 10.0) -> None:
    """Flush, stop the worker and close every backend. Tracing is off afterwards until the next
    ``configure()``."""
    global _pipeline, _configured
    with _lock:
        pipeline, _pipeline = _pipeline, None
        _configured = True
    if pipeline is not None:
        pipeline.shutdown(timeout)
        _report_losses(pipeline)


def reset(timeout: float = 10.0) -> None:
    """Shut down and forget the configuration (the next span auto-configures again). For tests."""
    global _configured, _settings
    shutdown(timeout)
    with _lock:
        _configured, _settings = False, None


def stats() -> dict[str, Any]:
    pipeline = _pipeline
    from spanmux.tracer import integration_failures

    base: dict[str, Any] = {"enabled": pipeline is not None, "source": _source}
    if pipeline is not None:
        base.update(pipeline.stats())
    base["integration_failures"] = integration_failures()
    return base


def _report_losses(pipeline: Pipeline) -> None:
    numbers = pipeline.stats()
    for name, lane in numbers["backends"].items():
        dropped = lane["dropped_spans"] + lane["dropped_scores"]
        pending = lane["spool_pending_batches"]
        refused = lane.get("rejected_spans", 0) + lane.get("rejected_scores", 0)
        if refused:
            log.warning("spanmux: backend %r refused %d records for good (see the warnings above)", name, refused)
        if dropped:
            log.warning("spanmux: backend %r dropped %d records (spool bound reached)", name, dropped)
        if pending:
            log.warning("spanmux: %d batches for backend %r wait in the spool for the next run", pending, name)
    if numbers["overflow_dropped"]:
        log.warning("spanmux: %d records dropped because the queue overflowed", numbers["overflow_dropped"])


def _at_exit() -> None:
    try:
        shutdown(timeout=float(os.environ.get("SPANMUX_EXIT_TIMEOUT", "5")))
    except Exception:  # never turn exit into a traceback
        log.debug("spanmux shutdown at exit failed", exc_info=True)


def _on_sigterm(signum: int, frame: Any) -> None:
    _at_exit()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _register_exit_hooks() -> None:
    """Flush at interpreter exit and on SIGTERM (only if the program has no SIGTERM handler)."""
    global _atexit_registered, _previous_sigterm
    if _atexit_registered:
        return
    _atexit_registered = True
    atexit.register(_at_exit)
    register_fork_handler(lambda: _pipeline)
    if threading.current_thread() is threading.main_thread():
        try:
            current = signal.getsignal(signal.SIGTERM)
            if current in (signal.SIG_DFL, None):
                _previous_sigterm = current
                signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError):
            pass


_INTEGRATIONS = ("langchain", "llamaindex", "dspy")
_instrumented: set[str] = set()


def instrument(*frameworks: str) -> list[str]:
    """Attach spanmux process-wide to each named framework that is installed (all three when
    none is named). Idempotent. Returns the frameworks now instrumented."""
    import importlib
    import importlib.util

    requested = frameworks or _INTEGRATIONS
    packages = {"langchain": "langchain_core", "llamaindex": "llama_index.core", "dspy": "dspy"}
    for name in requested:
        if name not in _INTEGRATIONS:
            raise ValueError(f"unknown framework {name!r}; valid: {', '.join(_INTEGRATIONS)}")
        try:
            present = importlib.util.find_spec(packages[name].split(".")[0]) is not None
        except (ImportError, ValueError):
            present = False
        if not present:
            if frameworks:
                log.warning("spanmux.instrument(%r): the framework is not installed", name)
            continue
        module = importlib.import_module(f"spanmux.integrations.{name}")
        module.instrument()
        _instrumented.add(name)
    return sorted(_instrumented)


def uninstrument(*frameworks: str) -> None:
    import importlib

    for name in list(frameworks or _instrumented):
        if name in _instrumented:
            importlib.import_module(f"spanmux.integrations.{name}").uninstrument()
            _instrumented.discard(name)
