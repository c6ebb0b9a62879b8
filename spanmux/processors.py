"""What the worker thread does to each span before any backend sees it, in this order:
sampling (whole traces), content capture, serialization with size bounds, token estimate, cost.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from spanmux.config_schemas import ObservabilityConfig
from spanmux.model import ModelInfo, Span, Usage
from spanmux.serialize import to_jsonable

log = logging.getLogger("spanmux.processors")

_CONTENT_ATTRIBUTES = ("retrieval.documents", "llm.messages", "event")
_ESTIMATED_KINDS = frozenset({"llm"})
_LLM_PARENTS_KEPT = 10_000


_SECRET_MARKERS = ("api_key", "apikey", "secret", "password", "authorization", "auth_token", "access_token",
                   "credential", "cookie", "private_key")


def without_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """Model parameters minus anything that looks like a credential: some frameworks hand the
    client's settings (``api_key``, headers) along with temperature and max_tokens."""
    clean: dict[str, Any] = {}
    for key, value in params.items():
        lowered = str(key).lower()
        if any(marker in lowered for marker in _SECRET_MARKERS) or lowered in ("headers", "default_headers"):
            continue
        clean[key] = without_secrets(value) if isinstance(value, dict) else value
    return clean


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
        self.estimate_tokens = settings.estimate_tokens
        self.estimated_spans = 0
        self._llm_parents: dict[str, None] = {}  # recent parents of llm spans (insertion-ordered)
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
            params, _ = to_jsonable(without_secrets(span.model.parameters), 4096)
            changes["model"] = ModelInfo(span.model.name, span.model.provider, params)
        if span.trace is not None and span.trace.metadata:
            meta, _ = to_jsonable(span.trace.metadata, 4096)
            changes["trace"] = msgspec.structs.replace(span.trace, metadata=meta)
        if truncated:
            changes["truncated"] = True
        if self.estimate_tokens and span.kind in _ESTIMATED_KINDS:
            billed = span.status == "ok" or span.output is not None  # a failed call without output
            if span.usage is None and billed and not self._delegates(span):
                changes["usage"] = self._estimate(span, changes)
            if span.parent_id:
                self._remember_llm_parent(span.parent_id)
        span = msgspec.structs.replace(span, **changes)
        return self.costs.apply(span)

    def _delegates(self, span: Span) -> bool:
        """An llm span with an llm child (LlamaIndex ``achat`` over ``chat``) only wraps it: its
        tokens are the child's, so estimating it would count them twice. Children end, and are
        emitted, before their parent."""
        return span.span_id in self._llm_parents

    def _remember_llm_parent(self, parent_id: str) -> None:
        parents = self._llm_parents
        parents[parent_id] = None
        if len(parents) > _LLM_PARENTS_KEPT:
            del parents[next(iter(parents))]

    def _estimate(self, span: Span, changes: dict[str, Any]) -> Usage | None:
        """Token estimate from the serialized input/output (serialized here when content is not
        captured: counted, then dropped)."""
        from spanmux.tokens import estimate_usage  # noqa: PLC0415 - tiktoken loads on first need

        if self.capture_content:
            input_value, output_value = changes.get("input"), changes.get("output")
        else:
            input_value = to_jsonable(span.input, self.limit)[0] if span.input is not None else None
            output_value = to_jsonable(span.output, self.limit)[0] if span.output is not None else None
        usage = estimate_usage(input_value, output_value)
        if usage is not None:
            self.estimated_spans += 1
        return usage

    def stats(self) -> dict[str, Any]:
        """Counters for ``spanmux.stats()``: estimated spans and how costs were found."""
        return {"estimated_usage_spans": self.estimated_spans, "costs": self.costs.stats()}
