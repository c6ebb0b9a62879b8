"""What the worker thread does to each span before any backend sees it, in this order:
sampling (whole traces), content capture, serialization with size bounds, token estimate, cost.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from spanmux.config_schemas import ObservabilityConfig
from spanmux.model import ModelInfo, Span
from spanmux.serialize import to_jsonable

log = logging.getLogger("spanmux.processors")

_CONTENT_ATTRIBUTES = ("retrieval.documents", "llm.messages", "event")


def trace_is_sampled(trace_id: str, rate: float) -> bool:
    """Deterministic per trace id, so every span (and every process) of a trace agrees."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    try:
        return int(trace_id[:16], 16) / float(1 << 64) < rate
    except ValueError:
        return True


class SpanProcessor:
    """Callable turning a raw span into the span every backend receives (or None: sampled out)."""

    def __init__(self, settings: ObservabilityConfig) -> None:
        from spanmux.cost import CostCalculator  # noqa: PLC0415 - keeps genai-prices off import time

        self.sample_rate = settings.sample_rate
        self.capture_content = settings.capture_content
        self.limit = settings.max_content_bytes
        self.costs = CostCalculator(settings)

    def __call__(self, span: Span) -> Span | None:
        if not trace_is_sampled(span.trace_id, self.sample_rate):
            return None
        changes: dict[str, Any] = {}
        truncated = span.truncated
        if self.capture_content:
            if span.input is not None:
                changes["input"], cut = to_jsonable(span.input, self.limit)
                truncated |= cut
            if span.output is not None:
                changes["output"], cut = to_jsonable(span.output, self.limit)
                truncated |= cut
        else:
            changes["input"] = None
            changes["output"] = None
        if span.attributes:
            attributes = span.attributes
            if not self.capture_content:
                attributes = {k: v for k, v in attributes.items() if k not in _CONTENT_ATTRIBUTES}
            changes["attributes"], cut = to_jsonable(attributes, self.limit)
            truncated |= cut
        if span.model is not None and span.model.parameters:
            params, _ = to_jsonable(span.model.parameters, 4096)
            changes["model"] = ModelInfo(span.model.name, span.model.provider, params)
        if span.trace is not None and span.trace.metadata:
            meta, _ = to_jsonable(span.trace.metadata, 4096)
            changes["trace"] = msgspec.structs.replace(span.trace, metadata=meta)
        if truncated:
            changes["truncated"] = True
        span = msgspec.structs.replace(span, **changes)
        return self.costs.apply(span)
