"""The open-span core: what the manual API and every integration share between a span's start and
its end, kept once so the frameworks cannot drift apart.

- ``OpenSpan``: the record of a span still running. It is its own ``SpanContext`` (a context
  provider hands it out as is), it is placed in its trace by the one parent rule when it is made,
  and ``finish()`` is the one place an open span becomes a ``Span``.
- ``OpenSpans``: the framework's own id -> open span. Single dict reads, inserts and removals are
  atomic, so the hot path takes no lock; one lock serializes the rest (dropping the oldest spans
  beyond the bound, counted and logged: spans whose end never comes must not pile up).
- ``HookGuard``: a framework must never see a hook's exception (LangChain and DSPy log it at every
  call, LlamaIndex swallows it). The guard counts every failure per integration and hook for
  ``spanmux.stats()`` and logs the first of each (hook, error type) with its traceback.
- ``error_info``: the ``ErrorInfo`` of an exception.

Integrations keep only the mapping from their framework's hooks to these pieces. The hot path is a
dict insert and a pop, ``time.time_ns()`` and one ``Span(...)``; the guard is one ``with`` around
each hook's body.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, Hashable, Mapping
from types import TracebackType
from typing import Any, ClassVar, Final, Generic, TypeVar

from spanmux import runtime
from spanmux.attributes import FRAMEWORK_EVENT, STREAMING, TIME_TO_FIRST_TOKEN_MS
from spanmux.context import CURRENT_SPAN, TRACE_ATTRIBUTES, SpanContext, current_context
from spanmux.model import (
    Cost,
    ErrorInfo,
    ModelInfo,
    Span,
    SpanKind,
    TraceAttributes,
    Usage,
    new_span_id,
    new_trace_id,
    time_to_first_token_ns,
)

__all__ = ["MAX_OPEN_SPANS", "HookGuard", "OpenSpan", "OpenSpans", "error_info", "hook_guard",
           "integration_failures"]

log = logging.getLogger("spanmux")

MAX_OPEN_SPANS: Final = 100_000
"""Open spans kept per registry; beyond it the oldest are dropped (an end that never came)."""
_TRACEBACK_CHARS: Final = 8000
_EVICTION_LOG_EVERY: Final = 10_000


def error_info(exc: BaseException) -> ErrorInfo:
    """Type, message and (the last 8000 characters of the) traceback of an exception; an exception
    whose ``str`` fails still gives its type."""
    try:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-_TRACEBACK_CHARS:]
        message = str(exc)
    except Exception:
        tb, message = None, f"<{type(exc).__name__}>"
    return ErrorInfo(type(exc).__name__, message, tb)


class OpenSpan(SpanContext):
    """A span that has started and not ended: ids, timing and references to the raw objects the
    framework handed over (the worker serializes them later). Subclasses add their framework's
    own bookkeeping as slots and name the framework."""

    __slots__ = ("parent_id", "name", "kind", "input", "output", "attributes", "model", "usage", "cost",
                 "error", "completion_start_ns")
    framework: ClassVar[str]
    parent_id: str | None
    name: str
    kind: SpanKind
    input: Any
    output: Any
    attributes: dict[str, Any] | None
    model: ModelInfo | None
    usage: Usage | None
    cost: Cost | None
    error: ErrorInfo | None
    completion_start_ns: int | None

    def __init__(
        self, name: str, kind: SpanKind, input: Any, parent: SpanContext | None = None, span_id: str | None = None,
        exact_parent: bool = False,
    ) -> None:
        self.span_id = span_id or new_span_id()
        self.start_ns = time.time_ns()
        self.name = name
        self.kind = kind
        self.input = input
        self.output = None
        self.attributes = None
        self.model = None
        self.usage = None
        self.cost = None
        self.error = None
        self.completion_start_ns = None
        if parent is not None and not exact_parent:  # place()'s first case, inline (every framework span)
            manual = CURRENT_SPAN.get()
            if manual is not None and manual.start_ns > parent.start_ns and manual.trace_id == parent.trace_id:
                parent = manual
            self.trace_id, self.parent_id, self.trace = parent.trace_id, parent.span_id, parent.trace
        else:
            self.place(parent, exact_parent)

    def place(self, parent: SpanContext | None, exact_parent: bool = False) -> None:
        """The one parent rule. Under the framework's own ``parent`` span, unless a manual span
        opened inside it is current (same trace, started strictly later): that one is closer. On
        a tie the clock cannot tell which is inside which; the framework span wins, as in
        ``current_context()`` (``with spanmux.span(...): chain.invoke()`` on a coarse clock).
        ``exact_parent`` skips that check (a span started lazily by a generator belongs to the
        generator's span, whoever iterates it). Without a framework parent: under the innermost
        open span of any kind, else the first span of a new trace. Trace attributes come from the
        parent, or from the ``trace_context`` in effect when there is none."""
        if parent is not None:
            manual = None if exact_parent else CURRENT_SPAN.get()
            if manual is not None and manual.start_ns > parent.start_ns and manual.trace_id == parent.trace_id:
                parent = manual
            self.trace_id, self.parent_id, self.trace = parent.trace_id, parent.span_id, parent.trace
            return
        outer = current_context()
        attributes: TraceAttributes | None = TRACE_ATTRIBUTES.get()
        if outer is not None:
            self.trace_id, self.parent_id = outer.trace_id, outer.span_id
            self.trace = attributes if attributes is not None else outer.trace
        else:
            self.trace_id, self.parent_id, self.trace = new_trace_id(), None, attributes

    def set_attribute(self, key: str, value: Any) -> None:
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def add_event(self, name: str, data: Any) -> None:
        """A custom event on the span (``event`` attribute: name, time and data)."""
        if self.attributes is None:
            self.attributes = {}
        events = self.attributes.get(FRAMEWORK_EVENT)
        if events is None:
            events = self.attributes[FRAMEWORK_EVENT] = []
        events.append({"name": name, "time_ns": time.time_ns(), "data": data})

    def first_token(self) -> None:
        """A streamed token (or chunk) arrived: the first one sets ``completion_start_ns``."""
        if self.completion_start_ns is None:
            self.completion_start_ns = time.time_ns()

    def finish(self, end_ns: int | None = None, exception: BaseException | None = None) -> None:
        """End the span (failed with ``exception`` if given): build its ``Span`` (status from
        ``error``; a streamed call gets ``llm.streaming`` and ``llm.time_to_first_token_ms``) and
        hand it to the pipeline."""
        if exception is not None:
            self.error = error_info(exception)
        if self.completion_start_ns is not None:
            self.set_attribute(STREAMING, True)
            self.set_attribute(TIME_TO_FIRST_TOKEN_MS, (time_to_first_token_ns(self) or 0) / 1e6)
        error = self.error
        runtime.emit(Span(  # positional, in Span's field order: a sixth of the keyword call's cost
            self.trace_id, self.span_id, self.parent_id, self.name, self.kind, self.framework, self.start_ns,
            time.time_ns() if end_ns is None else end_ns, "ok" if error is None else "error", error, self.input,
            self.output, self.model, self.usage, self.cost, self.completion_start_ns, self.attributes, self.trace,
        ))


S = TypeVar("S", bound=OpenSpan)


class OpenSpans(Generic[S]):
    """Open spans of one integration keyed by the framework's own ids (LangChain run ids, DSPy call
    ids, LlamaIndex span ids), so threads, asyncio tasks and parallel branches nest right without
    a stack. ``get`` and ``pop`` are the dict's own methods: one dict read, insert or removal is
    atomic (under the GIL, and per dict on free-threaded builds), so the hot path takes no lock
    and adds no Python layer. ``lock`` serializes what takes more than one step: dropping the
    oldest spans beyond ``limit``, and an integration's own state kept beside its open spans."""

    __slots__ = ("integration", "limit", "by_id", "get", "pop", "lock", "evicted")

    def __init__(self, integration: str, limit: int = MAX_OPEN_SPANS) -> None:
        self.integration = integration
        self.limit = limit
        self.by_id: dict[Any, S] = {}
        self.get: Callable[[Any], S | None] = self.by_id.get
        self.pop: Callable[[Any, None], S | None] = self.by_id.pop
        """``pop(key, None)``: the open span, removed; None when it is not open."""
        self.lock = threading.Lock()
        self.evicted = 0

    def add(self, key: Hashable, span: S) -> None:
        by_id = self.by_id
        by_id[key] = span
        if len(by_id) > self.limit:
            self._evict_oldest()

    def clear(self) -> None:
        self.by_id.clear()

    def _evict_oldest(self) -> None:
        """Spans whose end never came (a killed generator, a framework bug) must not pile up."""
        by_id = self.by_id
        with self.lock:
            before = self.evicted
            while len(by_id) > self.limit:
                try:
                    oldest = next(iter(by_id))
                except (RuntimeError, StopIteration):  # another thread changed the dict meanwhile
                    continue
                if by_id.pop(oldest, None) is not None:
                    self.evicted += 1
            evicted = self.evicted
        if evicted != before and (before == 0 or before // _EVICTION_LOG_EVERY != evicted // _EVICTION_LOG_EVERY):
            log.warning("spanmux: %d %s spans never ended and were dropped", evicted, self.integration)

    def __len__(self) -> int:
        return len(self.by_id)

    def __repr__(self) -> str:
        return f"<OpenSpans {self.integration} open={len(self.by_id)} evicted={self.evicted}>"


class HookGuard:
    """The failure guard of one integration's hooks: ``with guard:`` around a hook's body, or
    ``guard.record(hook)`` in an ``except`` block that keeps a partial result. An exception inside
    the block never leaves it; it is counted under the hook's name (the name of the function the
    block is in, or the framework's name for it given in ``names``) for
    ``spanmux.stats()["integration_failures"]``. The first failure of each (hook, error type) is
    logged as a warning with its traceback, so a second, different bug is not hidden behind the
    first one; the others only at debug level.

    One shared object and no per-call allocation: entering costs two small calls (a decorator
    re-packing a LangChain hook's keyword arguments costs twice that)."""

    def __init__(self, integration: str, logger: logging.Logger, names: Mapping[str, str] | None = None) -> None:
        self.integration = integration
        self.logger = logger
        self.names = dict(names or {})
        self.total = 0
        self.by_hook: dict[str, int] = {}
        self._logged: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, error_type: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None,
    ) -> bool:
        if error_type is None or not issubclass(error_type, Exception):
            return False  # KeyboardInterrupt, SystemExit, GeneratorExit pass
        function = tb.tb_frame.f_code.co_name if tb is not None else "unknown"
        self.record(self.names.get(function, function), error)
        return True

    def record(self, hook: str, error: BaseException | None = None) -> None:
        """Count a failure of ``hook`` (by default the exception being handled) and log it."""
        if error is None:
            error = sys.exc_info()[1]
        error_type = type(error).__name__ if error is not None else "unknown"
        key = (hook, error_type)
        with self._lock:
            self.total += 1
            self.by_hook[hook] = self.by_hook.get(hook, 0) + 1
            first = key not in self._logged and len(self._logged) < 1000
            if first:
                self._logged.add(key)
        exc_info = (type(error), error, error.__traceback__) if error is not None else False
        if first:
            self.logger.warning("spanmux %s hook %s failed with %s; the span may be incomplete (later %s "
                                "failures there are only counted, see spanmux.stats())", self.integration, hook,
                                error_type, error_type, exc_info=exc_info)
        else:
            self.logger.debug("spanmux %s hook %s failed again", self.integration, hook, exc_info=exc_info)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self.total, "by_hook": dict(self.by_hook)}

    def forget(self) -> None:
        """Counts to zero and every (hook, error type) unlogged again, as in a fresh process."""
        with self._lock:
            self.total = 0
            self.by_hook.clear()
            self._logged.clear()


_guards: dict[str, HookGuard] = {}
_guards_lock = threading.Lock()


def hook_guard(integration: str, logger: logging.Logger, names: Mapping[str, str] | None = None) -> HookGuard:
    """The process-wide guard of an integration (created on first use); ``names`` maps our
    function names to the framework's hook names where they differ."""
    with _guards_lock:
        found = _guards.get(integration)
        if found is None:
            found = _guards[integration] = HookGuard(integration, logger, names)
        return found


def forget_failures() -> None:
    """Every integration's failure counts and log-once memory cleared (``spanmux.testing.reset``)."""
    with _guards_lock:
        guards = list(_guards.values())
    for guard in guards:
        guard.forget()


def integration_failures() -> dict[str, dict[str, Any]]:
    """``{integration: {"total": n, "by_hook": {hook: n}}}`` for ``spanmux.stats()``."""
    with _guards_lock:
        guards = list(_guards.values())
    return {g.integration: g.stats() for g in guards if g.total}
