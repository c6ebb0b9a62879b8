"""The manual API: ``span``, ``observe``, ``trace_context``, ``current_trace_id``, ``score``."""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from spanmux import runtime
from spanmux.context import CURRENT_SPAN, TRACE_ATTRIBUTES, SpanContext, current_context
from spanmux.model import (
    SPAN_KINDS,
    ModelInfo,
    ScoreDataType,
    ScoreSource,
    SpanKind,
    TraceAttributes,
    Usage,
    make_score,
    new_span_id,
)
from spanmux.open_spans import OpenSpan, error_info
from spanmux.open_spans import integration_failures as integration_failures  # runtime.stats() reads it here

log = logging.getLogger("spanmux")
P = ParamSpec("P")
R = TypeVar("R")
_WARNED_KINDS: set[str] = set()


def _unknown_kind(kind: str) -> SpanKind:
    """Record an unknown kind as ``span``, warning once per kind; only unknown kinds get here."""
    key = kind if isinstance(kind, str) else repr(kind)
    if key not in _WARNED_KINDS and len(_WARNED_KINDS) < 100:
        from spanmux.errors import did_you_mean

        _WARNED_KINDS.add(key)
        log.warning("unknown span kind %r, recorded as 'span'%s valid kinds: %s",
                    kind, did_you_mean(key, SPAN_KINDS) or ";", ", ".join(SPAN_KINDS))
    return "span"

MAX_YIELDED_ITEMS = 1000
"""Items of a traced generator kept as the span's output (the worker also bounds their size)."""


def _consumer_stopped(thrown: BaseException) -> bool:
    """An exception thrown into an async generator at ``yield`` that only means its consumer
    stopped (closed it, or was cancelled): not an error of the generator."""
    if isinstance(thrown, GeneratorExit):
        return True
    asyncio = sys.modules.get("asyncio")  # never imported here: an async generator runs under it
    return asyncio is not None and isinstance(thrown, asyncio.CancelledError)


class _Iteration:
    """What a traced generator (sync or async) yielded, bounded, and how its iteration ended: the
    one place both generator wrappers keep items and close the span."""

    __slots__ = ("capture", "items", "span", "stopped")

    def __init__(self, span: ManualSpan, capture: bool) -> None:
        self.span = span
        self.capture = capture
        self.items: list[Any] = []
        self.stopped = False  # the consumer stopped early: not an error of the generator

    def keep(self, item: Any) -> None:
        if self.capture and len(self.items) < MAX_YIELDED_ITEMS:
            self.items.append(item)

    def end(self, exc: BaseException | None) -> None:
        self.span.output = self.items if self.capture else None
        self.span.end(None if self.stopped else exc)


class ManualSpan(OpenSpan):
    """A span you open yourself; a context manager (sync and async). Exceptions pass through and
    are recorded on the span. Placed in its trace when it starts, by the same rule as every
    framework span (``spanmux.open_spans``)."""

    __slots__ = ("_token", "_ended")
    framework = "manual"

    def __init__(
        self,
        name: str,
        kind: str = "span",
        input: Any = None,
        attributes: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        # not OpenSpan.__init__: a manual span is placed and timed when it starts, not when made
        self.name = name
        self.kind = kind if kind in SPAN_KINDS else _unknown_kind(kind)
        self.input = input
        self.output = None
        self.attributes = dict(attributes) if attributes else None
        self.model = ModelInfo(name=model) if model else None
        self.usage = None
        self.cost = None
        self.error = None
        self.completion_start_ns = None
        self.trace_id = ""
        self.span_id = ""
        self.parent_id = None
        self.start_ns = 0
        self.trace = None
        self._token: Any = None
        self._ended = False

    # -- recording
    def set_input(self, value: Any) -> None:
        self.input = value

    def set_output(self, value: Any) -> None:
        self.output = value

    def set_model(self, name: str, provider: str | None = None, **parameters: Any) -> None:
        self.model = ModelInfo(name, provider, parameters or None)

    def set_usage(self, input_tokens: int = 0, output_tokens: int = 0, **details: int) -> None:
        self.usage = Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=details.get("total_tokens", input_tokens + output_tokens),
            cache_read_tokens=details.get("cache_read_tokens", 0),
            cache_write_tokens=details.get("cache_write_tokens", 0),
            reasoning_tokens=details.get("reasoning_tokens", 0),
        )

    def record_error(self, exc: BaseException) -> None:
        self.error = error_info(exc)

    def score(self, name: str, value: float | bool | str, comment: str | None = None) -> None:
        score(self.trace_id, name, value, comment=comment, span_id=self.span_id)

    # -- lifecycle
    def start(self) -> ManualSpan:
        self.place(None)
        self.span_id = new_span_id()
        self.start_ns = time.time_ns()
        # a small context of its own, not the span: a task started inside keeps only the ids
        self._token = CURRENT_SPAN.set(SpanContext(self.trace_id, self.span_id, self.start_ns, self.trace))
        return self

    def end(self, exc: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        if self._token is not None:
            try:
                CURRENT_SPAN.reset(self._token)
            except ValueError:  # ended in another context (async generator, callback)
                pass
        self.finish(exception=exc)

    def __enter__(self) -> ManualSpan:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.end(exc)

    async def __aenter__(self) -> ManualSpan:
        return self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.end(exc)


def span(
    name: str, kind: str = "span", input: Any = None, attributes: dict[str, Any] | None = None,
    model: str | None = None,
) -> ManualSpan:
    """Open a span around a block: ``with spanmux.span("retrieve", kind="retriever") as s:``."""
    return ManualSpan(name, kind, input, attributes, model)


def _bound_input(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if signature is None:
        return {"args": args, "kwargs": kwargs}
    try:
        bound = signature.bind_partial(*args, **kwargs)
    except TypeError:
        return {"args": args, "kwargs": kwargs}
    return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}


@overload
def observe(func: Callable[P, R]) -> Callable[P, R]: ...
@overload
def observe(
    func: None = None, *, name: str | None = None, kind: str = "span", capture_input: bool = True,
    capture_output: bool = True,
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...
def observe(
    func: Callable[P, R] | None = None, *, name: str | None = None, kind: str = "span",
    capture_input: bool = True, capture_output: bool = True,
) -> Any:
    """Trace every call of a function (sync, async, generator, async generator):
    ``@spanmux.observe(kind="tool")``. A generator's span lasts until it is exhausted or closed
    and records the first ``MAX_YIELDED_ITEMS`` items it yielded."""

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
        span_name = name or qualname.rsplit("<locals>.", 1)[-1]
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            signature = None

        def open_span(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ManualSpan:
            data = _bound_input(signature, args, kwargs) if capture_input else None
            return ManualSpan(span_name, kind, data).start()

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def async_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                s = open_span(args, kwargs)
                try:
                    result = await fn(*args, **kwargs)  # type: ignore[misc]
                except BaseException as exc:
                    s.end(exc)
                    raise
                if capture_output:
                    s.output = result
                s.end()
                return result
            return async_wrapper  # type: ignore[return-value]

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def gen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                iteration = _Iteration(open_span(args, kwargs), capture_output)
                try:
                    for item in fn(*args, **kwargs):  # type: ignore[attr-defined]
                        iteration.keep(item)
                        try:
                            yield item
                        except GeneratorExit:  # the consumer stopped early: not an error of the function
                            iteration.stopped = True
                            raise
                except BaseException as exc:
                    iteration.end(exc)
                    raise
                iteration.end(None)
            return gen_wrapper  # type: ignore[return-value]

        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def async_gen_wrapper(*args: P.args, **kwargs: P.kwargs) -> Any:
                # the span covers the iteration, not the call that only builds the generator
                iteration = _Iteration(open_span(args, kwargs), capture_output)
                try:
                    async for item in fn(*args, **kwargs):  # type: ignore[attr-defined]
                        iteration.keep(item)
                        try:
                            yield item
                        except BaseException as thrown:
                            # aclose(), a consumer that broke out of ``async for`` (closed later by
                            # the event loop, cancelled if the loop is shutting down)
                            iteration.stopped = _consumer_stopped(thrown)
                            raise
                except BaseException as exc:
                    iteration.end(exc)
                    raise
                iteration.end(None)
            return async_gen_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            s = open_span(args, kwargs)
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                s.end(exc)
                raise
            if capture_output:
                s.output = result
            s.end()
            return result

        return wrapper

    return decorate(func) if func is not None else decorate


@contextmanager
def trace_context(
    *, user_id: str | None = None, session_id: str | None = None, tags: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None, name: str | None = None,
) -> Iterator[TraceAttributes]:
    """Trace-level attributes for every trace started (or continued) inside the block. Nested
    contexts merge: inner values win, tags and metadata accumulate."""
    outer = TRACE_ATTRIBUTES.get()
    merged = TraceAttributes(
        name=name if name is not None else (outer.name if outer else None),
        user_id=user_id if user_id is not None else (outer.user_id if outer else None),
        session_id=session_id if session_id is not None else (outer.session_id if outer else None),
        tags=tuple(dict.fromkeys((*(outer.tags if outer else ()), *(tags or ())))),
        metadata={**((outer.metadata or {}) if outer else {}), **(metadata or {})} or None,
    )
    token = TRACE_ATTRIBUTES.set(merged)
    try:
        yield merged
    finally:
        TRACE_ATTRIBUTES.reset(token)


def current_trace_id() -> str | None:
    """The trace id of the innermost open span (manual or framework), else None."""
    ctx = current_context()
    return ctx.trace_id if ctx is not None else None


def current_span_id() -> str | None:
    ctx = current_context()
    return ctx.span_id if ctx is not None else None


def score(
    trace_id: str | None, name: str, value: float | bool | str, *, comment: str | None = None,
    span_id: str | None = None, source: ScoreSource = "code", data_type: ScoreDataType | None = None,
) -> str | None:
    """Attach a score to a trace (and optionally a span); returns the score id. Never raises:
    a bad call is logged and returns None."""
    if trace_id is None:
        trace_id = current_trace_id()
    if not trace_id or not isinstance(name, str) or not isinstance(value, (int, float, bool, str)):
        log.warning("spanmux.score ignored: needs a trace id, a name and a number, bool or str value")
        return None
    record = make_score(str(trace_id).removeprefix("tr-"), name, value, span_id=span_id, comment=comment,
                        source=source, data_type=data_type)
    runtime.emit(record)
    return record.id
