"""USD cost of LLM and embedding spans, computed on the worker thread.

Order of precedence: a cost the provider reported (already on the span, source ``provider``,
found by ``spanmux.usage.reported_cost``), then a ``pricing:`` override from the YAML (source
``config``), then the genai-prices table (source ``price-table``), which knows cached-input,
cache-write and reasoning prices where the provider has them. A model nobody prices gets no cost,
raises nothing, and is counted in ``spanmux.stats()["costs"]``.

Model names arrive in many spellings: ``gpt-4o-mini``, ``models/gemini-1.5-flash``, litellm/DSPy
style ``openai/gpt-4o-mini``, OpenRouter style ``openrouter/anthropic/claude-3.5-sonnet``. A
leading ``provider/`` is tried as the provider id; the name alone is tried last. Models served
by a local runtime (``ollama/...``, provider ``ollama``) are never priced from the table, since a
cloud price for the same weights would be wrong; give them a ``pricing:`` entry instead.

The name priced is ``model.name``, which is the model the response names when it names one
(``gen_ai.response.model``, e.g. ``gpt-4o-mini-2024-07-18``), else the requested one; when the
table does not know that name, the requested model (``gen_ai.request.model``) is tried next.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import msgspec

from spanmux.attributes import GEN_AI_REQUEST_MODEL
from spanmux.config_schemas import ObservabilityConfig
from spanmux.model import Cost, Span, Usage

log = logging.getLogger("spanmux.cost")

PRICED_KINDS = frozenset({"llm", "embedding"})
LOCAL_PROVIDERS = frozenset({
    "ollama", "ollama_chat", "llamacpp", "llama_cpp", "llama-cpp", "lmstudio", "lm_studio", "vllm",
    "localai", "mlx", "gpt4all", "llamafile", "huggingface_local", "transformers", "local",
})
"""Providers that run models on the user's own hardware: no table price applies."""
_CACHE_LIMIT = 4096
_UNKNOWN_NAMES_LIMIT = 200

Resolution = tuple[str, str | None]


def _candidates(model: str, provider: str | None) -> list[Resolution]:
    """(model_ref, provider_id) pairs to try in order; empty for local runtimes."""
    provider = provider.strip().lower() if provider else None
    if provider in LOCAL_PROVIDERS:
        return []
    pairs: list[Resolution] = []
    if provider:
        pairs.append((model, provider))
    name = model
    while "/" in name:
        prefix, rest = name.split("/", 1)
        prefix = prefix.lower()
        if prefix in LOCAL_PROVIDERS:
            return []
        if prefix != "models":  # Gemini's "models/<name>" is not a provider
            pairs.append((rest, prefix))
        if provider:
            pairs.append((rest, provider))
        pairs.append((rest, None))
        name = rest
    pairs.append((model, None))
    return list(dict.fromkeys(pairs))


def _price_usage(usage: Usage) -> Any:
    from genai_prices import Usage as PriceUsage

    values: dict[str, int] = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        values["cache_read_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        values["cache_write_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        values["output_reasoning_tokens"] = min(usage.reasoning_tokens, usage.output_tokens)
    try:
        return PriceUsage(**values)
    except TypeError:  # genai-prices before 0.1 has no reasoning bucket: output price for all
        values.pop("output_reasoning_tokens", None)
        return PriceUsage(**values)


_PROBE = 1_000_000


class LinearPrice:
    """USD per token of one model at one provider, split into input and output direction.

    genai-prices' general calculation costs ~150 us per call (unit registry, Decimal); with
    one LLM span per call that dominated the worker. For the common case (flat per-token prices)
    the price is linear in the token counts, so we probe the library once per model and day and
    then price a span with five multiplications. Tiered or otherwise non-linear prices fail the
    self-check in ``probe`` and keep using the library for every span.
    """

    __slots__ = ("_rows", "coefficients")

    def __init__(self, coefficients: dict[str, tuple[float, float]]) -> None:
        self.coefficients = coefficients
        # (per-token input cost, per-token output cost) of each of _BUCKETS, unpacked once per span
        self._rows = tuple(coefficients[bucket] for bucket in _BUCKETS)

    def cost(self, usage: Usage) -> Cost:
        (ii, io), (oi, oo), (ri, ro), (wi, wo), (si, so) = self._rows
        inp, out = usage.input_tokens, usage.output_tokens
        read, write, reasoning = usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens
        input_cost = ii * inp + oi * out
        output_cost = io * inp + oo * out
        if read or write or reasoning:  # most calls have none: skip three products of zeros
            reasoning = min(reasoning, out)
            input_cost += ri * read + wi * write + si * reasoning
            output_cost += ro * read + wo * write + so * reasoning
        return Cost(input_cost, output_cost, input_cost + output_cost, "price-table")

    @classmethod
    def probe(cls, model_ref: str, provider_id: str | None) -> LinearPrice | None:
        from genai_prices import calc_price

        def price(input_tokens: int = 0, output_tokens: int = 0, cache_read_tokens: int = 0,
                  cache_write_tokens: int = 0, reasoning_tokens: int = 0) -> tuple[float, float]:
            usage = Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                          cache_read_tokens=cache_read_tokens, cache_write_tokens=cache_write_tokens,
                          reasoning_tokens=reasoning_tokens)
            result = calc_price(_price_usage(usage), model_ref, provider_id=provider_id)
            return float(result.input_price), float(result.output_price)

        base_in = price(input_tokens=_PROBE)
        base_out = price(output_tokens=_PROBE)
        coefficients = {
            "input_tokens": (base_in[0] / _PROBE, base_in[1] / _PROBE),
            "output_tokens": (base_out[0] / _PROBE, base_out[1] / _PROBE),
        }
        for bucket, base, with_input in (
            ("cache_read_tokens", base_in, "input_tokens"),
            ("cache_write_tokens", base_in, "input_tokens"),
            ("reasoning_tokens", base_out, "output_tokens"),
        ):
            both = price(**{with_input: _PROBE, bucket: _PROBE})
            coefficients[bucket] = ((both[0] - base[0]) / _PROBE, (both[1] - base[1]) / _PROBE)
        linear = cls(coefficients)
        check = Usage(input_tokens=345_678, output_tokens=23_456, cache_read_tokens=123_456,
                      cache_write_tokens=7_890, reasoning_tokens=3_456)
        expected = price(input_tokens=345_678, output_tokens=23_456, cache_read_tokens=123_456,
                         cache_write_tokens=7_890, reasoning_tokens=3_456)
        got = linear.cost(check)
        for want, have in ((expected[0], got.input), (expected[1], got.output)):
            if abs(want - have) > 1e-9 * max(1.0, abs(want)):
                return None  # tiers or a non-linear rule: price each span with the library
        return linear


_BUCKETS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def _utc_day() -> int:
    """Days since the epoch in UTC: the key prices are probed again by (a date string cost ~1 us)."""
    return int(time.time() // 86_400)


_UNPROBED = object()


class CostCalculator:
    """Prices spans; remembers how each (model, provider) resolved so lookups stay cheap."""

    def __init__(self, settings: ObservabilityConfig) -> None:
        self.overrides = {name.lower(): price for name, price in settings.pricing.items()}
        self._resolved: dict[tuple[str, str | None], Resolution | None] = {}
        self._linear_prices: dict[tuple[str, str | None, int], LinearPrice | None] = {}
        # (model name, provider) -> (day, linear price) of names the table priced directly today
        self._table_prices: dict[tuple[str, str | None], tuple[int, LinearPrice]] = {}
        self._lock = threading.Lock()
        self.priced: dict[str, int] = {"provider": 0, "config": 0, "price-table": 0}
        self.unknown_models: dict[str, int] = {}
        self.unpriced = 0
        self.no_model = 0

    def apply(self, span: Span) -> Span:
        """The span with its cost filled in when it can be priced (else unchanged). The name
        priced is ``model.name`` (the response model when the response names one); when the
        table does not know it, the requested model (``gen_ai.request.model``) is tried."""
        if span.kind not in PRICED_KINDS or span.usage is None:
            return span
        if span.cost is not None:
            self._count_priced(span.cost.source)
            return span
        requested = (span.attributes or {}).get(GEN_AI_REQUEST_MODEL)
        requested = requested if isinstance(requested, str) and requested else None
        name = span.model.name if span.model is not None and span.model.name else requested
        if not name:
            with self._lock:
                self.no_model += 1
            return span
        provider = span.model.provider if span.model is not None else None
        known = self._table_prices.get((name, provider))
        if known is not None and known[0] == _utc_day():  # what price() finds first, without its steps
            cost: Cost | None = known[1].cost(span.usage)
        else:
            alternatives = (requested,) if requested and requested != name else ()
            cost = self.price(name, provider, span.usage, alternatives=alternatives)
        if cost is None:
            return span
        self._count_priced(cost.source)
        return msgspec.structs.replace(span, cost=cost)

    def price(
        self, model: str, provider: str | None, usage: Usage, *, alternatives: tuple[str, ...] = (),
    ) -> Cost | None:
        """Cost of ``usage`` on ``model`` (else on the first alternative name that resolves):
        config override, else price table, else None (counted once, under ``model``)."""
        for candidate in (model, *alternatives):
            cost = self._price_once(candidate, provider, usage)
            if cost is not None:
                return cost
        with self._lock:
            self.unpriced += 1
            if model in self.unknown_models or len(self.unknown_models) < _UNKNOWN_NAMES_LIMIT:
                self.unknown_models[model] = self.unknown_models.get(model, 0) + 1
        return None

    def _price_once(self, model: str, provider: str | None, usage: Usage) -> Cost | None:
        override = self._override(model)
        if override is not None:
            cached = min(usage.cache_read_tokens, usage.input_tokens) if override.cache_read is not None else 0
            input_cost = ((usage.input_tokens - cached) * override.input + cached * (override.cache_read or 0.0)) / 1e6
            output_cost = usage.output_tokens * override.output / 1e6
            return Cost(input_cost, output_cost, input_cost + output_cost, "config")
        return self._from_table(model, provider, usage)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "priced": dict(self.priced),
                "unpriced": self.unpriced,
                "unknown_models": dict(self.unknown_models),
                "without_model": self.no_model,
            }

    def _count_priced(self, source: str) -> None:
        with self._lock:
            self.priced[source] = self.priced.get(source, 0) + 1

    def _override(self, model: str) -> Any:
        if not self.overrides:
            return None
        name = model.lower()
        found = self.overrides.get(name)
        while found is None and "/" in name:
            name = name.split("/", 1)[1]
            found = self.overrides.get(name)
        return found

    def _from_table(self, model: str, provider: str | None, usage: Usage) -> Cost | None:
        key = (model, provider)
        if key in self._resolved:
            resolution = self._resolved[key]
            candidates = [resolution] if resolution is not None else []
        else:
            candidates = _candidates(model, provider)
        for model_ref, provider_id in candidates:
            linear = self._linear(model_ref, provider_id)
            if linear is not None:
                self._remember(key, (model_ref, provider_id))
                if not self.overrides:  # no override can come first: apply() may go straight here
                    if len(self._table_prices) >= _CACHE_LIMIT:
                        self._table_prices.clear()
                    self._table_prices[key] = (_utc_day(), linear)
                return linear.cost(usage)
            try:
                from genai_prices import calc_price

                result = calc_price(_price_usage(usage), model_ref, provider_id=provider_id)
            except LookupError:
                continue
            except Exception as exc:  # a price library bug must not lose the span
                log.debug("genai-prices failed for %s: %s", model, exc)
                return None
            self._remember(key, (model_ref, provider_id))
            return Cost(float(result.input_price), float(result.output_price), float(result.total_price),
                        "price-table")
        self._remember(key, None)
        return None

    def _linear(self, model_ref: str, provider_id: str | None) -> LinearPrice | None:
        """The probed linear price of a model, per UTC day (prices change by date)."""
        key = (model_ref, provider_id, _utc_day())
        found = self._linear_prices.get(key, _UNPROBED)
        if found is not _UNPROBED:
            return found  # type: ignore[return-value]
        try:
            found = LinearPrice.probe(model_ref, provider_id)
        except Exception:  # unknown model or a library error: the slow path decides
            found = None
        if len(self._linear_prices) >= _CACHE_LIMIT:
            self._linear_prices.clear()
        self._linear_prices[key] = found
        return found

    def _remember(self, key: tuple[str, str | None], value: Resolution | None) -> None:
        if len(self._resolved) >= _CACHE_LIMIT:
            self._resolved.clear()
        self._resolved[key] = value
