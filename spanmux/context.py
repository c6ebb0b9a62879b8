"""Where we are in a trace: the innermost open span and the trace-level attributes.

Manual spans keep their context in a ContextVar. Integrations whose framework keeps its own
notion of "current run" (LangChain's child config) register a provider; the innermost of all
candidates (latest start; a framework span on a tie) wins, so a manual span inside a LangChain
tool nests under the tool, and a LangChain chain inside a manual span nests under the manual span.
The parent rule built on it is ``spanmux.open_spans.OpenSpan.place``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

from spanmux.model import TraceAttributes


class SpanContext:
    """Where a span sits: its ids, start time and trace attributes. Every open span
    (``spanmux.open_spans.OpenSpan``) is one, so a provider returns its open span as is."""

    __slots__ = ("trace_id", "span_id", "start_ns", "trace")

    def __init__(self, trace_id: str, span_id: str, start_ns: int, trace: TraceAttributes | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.start_ns = start_ns
        self.trace = trace


CURRENT_SPAN: ContextVar[SpanContext | None] = ContextVar("spanmux_current_span", default=None)
TRACE_ATTRIBUTES: ContextVar[TraceAttributes | None] = ContextVar("spanmux_trace_attributes", default=None)

ContextProvider = Callable[[], SpanContext | None]
_providers: list[ContextProvider] = []


def register_provider(provider: ContextProvider) -> None:
    if provider not in _providers:
        _providers.append(provider)


def current_context() -> SpanContext | None:
    best = CURRENT_SPAN.get()
    for provider in _providers:
        try:
            found = provider()
        except Exception:
            continue
        if found is not None and (best is None or found.start_ns >= best.start_ns):
            best = found
    return best


def current_trace_attributes() -> TraceAttributes | None:
    return TRACE_ATTRIBUTES.get()
