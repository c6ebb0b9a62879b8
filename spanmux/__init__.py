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
