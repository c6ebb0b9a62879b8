"""spanmux: every LLM call, tool call and retrieval of your agents, in the observability tool you
already use. See README.md; the public API is what this module exports."""

from spanmux.errors import ConfigurationError, SpanmuxError
from spanmux.model import ErrorInfo, ModelInfo, Score, Span, TraceAttributes, Usage
from spanmux.runtime import (
    configure,
    flush,
    instrument,
    settings,
    shutdown,
    stats,
    uninstrument,
)
from spanmux.tracer import (
    ManualSpan,
    current_span_id,
    current_trace_id,
    observe,
    score,
    span,
    trace_context,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``spanmux.evaluate`` is imported on first use: ``import spanmux`` stays small."""
    if name == "evaluate":
        from spanmux.experiments import evaluate

        return evaluate
    raise AttributeError(f"module 'spanmux' has no attribute {name!r}")


__all__ = [
    "ConfigurationError",
    "ErrorInfo",
    "ManualSpan",
    "ModelInfo",
    "Score",
    "Span",
    "SpanmuxError",
    "TraceAttributes",
    "Usage",
    "__version__",
    "configure",
    "evaluate",
    "current_span_id",
    "current_trace_id",
    "flush",
    "instrument",
    "observe",
    "score",
    "settings",
    "shutdown",
    "span",
    "stats",
    "trace_context",
    "uninstrument",
]
