"""Token estimates and USD cost of LLM spans, computed on the worker thread.

Order of precedence for cost: a cost the provider reported (already on the span, source
``provider``), then a ``pricing:`` override from the YAML (source ``config``), then the
genai-prices table (source ``price-table``). Unknown models get no cost and are counted.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from spanmux.config_schemas import ObservabilityConfig
from spanmux.model import Cost, Span, Usage

log = logging.getLogger("spanmux.cost")

_PRICED_KINDS = frozenset({"llm", "embedding"})


class CostCalculator:
    def __init__(self, settings: ObservabilityConfig) -> None:
        self.overrides = dict(settings.pricing)
        self.unknown_models: dict[str, int] = {}
        self._cache: dict[tuple[str, str | None], Any] = {}

    def apply(self, span: Span) -> Span:
        if span.kind not in _PRICED_KINDS or span.usage is None or span.model is None or not span.model.name:
            return span
        if span.cost is not None:
            return span
        cost = self.price(span.model.name, span.model.provider, span.usage)
        if cost is None:
            return span
        return msgspec.structs.replace(span, cost=cost)

    def price(self, model: str, provider: str | None, usage: Usage) -> Cost | None:
        override = self.overrides.get(model)
        if override is not None:
            cached = usage.cache_read_tokens if override.cache_read is not None else 0
            input_cost = ((usage.input_tokens - cached) * override.input + cached * (override.cache_read or 0)) / 1e6
            output_cost = usage.output_tokens * override.output / 1e6
            return Cost(input_cost, output_cost, input_cost + output_cost, "config")
        return self._from_table(model, provider, usage)

    def _from_table(self, model: str, provider: str | None, usage: Usage) -> Cost | None:
        try:
            from genai_prices import Usage as PriceUsage  # noqa: PLC0415
            from genai_prices import calc_price  # noqa: PLC0415
        except ImportError:  # pragma: no cover - a core dependency
            return None
        price_usage = PriceUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens or None,
            cache_write_tokens=usage.cache_write_tokens or None,
        )
        for provider_id in ((provider, None) if provider else (None,)):
            try:
                result = calc_price(price_usage, model, provider_id=provider_id)
            except LookupError:
                continue
            except Exception as exc:  # a price library bug must not lose the span
                log.debug("genai-prices failed for %s: %s", model, exc)
                break
            return Cost(
                float(result.input_price), float(result.output_price), float(result.total_price), "price-table"
            )
        self.unknown_models[model] = self.unknown_models.get(model, 0) + 1
        return None
