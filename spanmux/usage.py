"""One function that turns any provider's or framework's token usage into ``Usage``.

Accepted shapes (dicts, pydantic models, SDK objects with attributes, or a whole response that
holds one of them under ``usage`` / ``usage_metadata`` / ``token_usage`` / ``usageMetadata`` /
``meta.billed_units``, a LangChain ``AIMessage``/``LLMResult.llm_output``, a LlamaIndex
``ChatResponse`` (``raw``, then ``additional_kwargs``) or a DSPy LM history entry):

- LangChain ``usage_metadata``: input_tokens, output_tokens, total_tokens,
  input_token_details.{cache_read, cache_creation}, output_token_details.reasoning
- OpenAI chat (and litellm/DSPy, DeepSeek, Mistral, Groq...): prompt_tokens, completion_tokens,
  total_tokens, prompt_tokens_details.cached_tokens, completion_tokens_details.reasoning_tokens
- OpenAI Responses API: input_tokens, output_tokens, input_tokens_details.cached_tokens,
  output_tokens_details.reasoning_tokens
- Anthropic: input_tokens (cache excluded), output_tokens, cache_read_input_tokens,
  cache_creation_input_tokens
- Gemini (REST camelCase and google-genai snake_case): promptTokenCount, candidatesTokenCount
  (thoughts excluded), totalTokenCount, cachedContentTokenCount, thoughtsTokenCount,
  toolUsePromptTokenCount
- Bedrock Converse: inputTokens, outputTokens, totalTokens, cacheReadInputTokens,
  cacheWriteInputTokens
- Ollama: prompt_eval_count, eval_count; Cohere: meta.billed_units.{input,output}_tokens

``langchain_usage`` reads LangChain's own ``usage_metadata`` standard directly first (the common
case, without the search); ``reported_cost`` finds a cost the provider reported itself.

The result follows OpenAI semantics: ``input_tokens`` includes cached tokens (read and written),
``output_tokens`` includes reasoning tokens. Shapes that report them apart (Anthropic, Bedrock,
Gemini thoughts) are folded in, so the price library and every backend see one convention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spanmux.attributes import DELEGATES
from spanmux.model import Cost, Span, Usage

_WRAPPERS = ("usage", "usage_metadata", "token_usage", "usageMetadata", "meta", "billed_units", "llm_output",
             "response_metadata", "raw", "additional_kwargs")
_INPUT = ("prompt_tokens", "input_tokens", "promptTokenCount", "prompt_token_count", "inputTokens",
          "prompt_eval_count", "input_token_count")
_OUTPUT = ("completion_tokens", "output_tokens", "candidatesTokenCount", "candidates_token_count",
           "outputTokens", "eval_count", "output_token_count")
_TOTAL = ("total_tokens", "totalTokenCount", "total_token_count", "totalTokens")
_CACHE_READ = ("cache_read_input_tokens", "cachedContentTokenCount", "cached_content_token_count",
               "cacheReadInputTokens", "cacheReadInputTokenCount", "cache_read_tokens", "prompt_cache_hit_tokens")
_CACHE_WRITE = ("cache_creation_input_tokens", "cacheWriteInputTokens", "cacheWriteInputTokenCount",
                "cache_write_tokens")
_REASONING = ("thoughtsTokenCount", "thoughts_token_count", "reasoning_tokens")
_TOOL_PROMPT = ("toolUsePromptTokenCount", "tool_use_prompt_token_count")
_INPUT_DETAILS = ("input_token_details", "prompt_tokens_details", "input_tokens_details")
_OUTPUT_DETAILS = ("output_token_details", "completion_tokens_details", "output_tokens_details")
_DETAIL_CACHE_READ = ("cache_read", "cached_tokens")
_DETAIL_CACHE_WRITE = ("cache_creation", "cache_write", "cache_write_tokens", "cache_creation_tokens")
_DETAIL_REASONING = ("reasoning", "reasoning_tokens")
# Shapes whose input count leaves the cache out (Anthropic, Bedrock): input key -> cache keys.
_EXCLUSIVE_CACHE = {
    "input_tokens": ("cache_read_input_tokens", "cache_creation_input_tokens"),
    "inputTokens": ("cacheReadInputTokens", "cacheWriteInputTokens"),
}
_THOUGHTS_APART = frozenset({"thoughtsTokenCount", "thoughts_token_count"})
_MAX_DEPTH = 3
_MAX_VISITED = 12


def _get(source: Any, key: str) -> Any:
    """``source[key]`` for mappings, ``source.key`` for objects; None when absent or failing."""
    if source is None:
        return None
    try:
        if isinstance(source, Mapping):
            return source.get(key)
        if isinstance(source, (str, bytes, int, float, list, tuple)):
            return None
        return getattr(source, key, None)
    except Exception:  # a hostile __getattr__ must not lose the span
        return None


def _int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _first(source: Any, keys: tuple[str, ...]) -> tuple[str | None, int | None]:
    """(key, value) of the first key holding a token count."""
    for key in keys:
        found = _int(_get(source, key))
        if found is not None:
            return key, found
    return None, None


def _has_counts(source: Any) -> bool:
    return any(_int(_get(source, key)) is not None for key in _INPUT + _OUTPUT + _TOTAL)


def _locate(raw: Any) -> Any:
    """The object that holds the counts: ``raw`` itself or a usage object nested inside it
    (breadth first, a bounded number of objects visited, so odd objects stay cheap)."""
    frontier = [raw]
    visited = 0
    for _ in range(_MAX_DEPTH):
        following = []
        for candidate in frontier:
            visited += 1
            if visited > _MAX_VISITED:
                return None
            if _has_counts(candidate):
                return candidate
            for wrapper in _WRAPPERS:
                inner = _get(candidate, wrapper)
                if inner is not None and inner is not candidate:
                    following.append(inner)
        frontier = following
        if not frontier:
            break
    return None


def _detail(source: Any, containers: tuple[str, ...], keys: tuple[str, ...]) -> int:
    for container in containers:
        details = _get(source, container)
        if details is not None:
            _, value = _first(details, keys)
            if value:
                return value
    return 0


def normalize_usage(raw: Any, *, estimated: bool = False) -> Usage | None:
    """``Usage`` from any known shape, or None when it holds no token count. Never raises."""
    try:
        return _normalize(raw, estimated)
    except Exception:  # malformed provider objects must never break a span
        return None


def _normalize(raw: Any, estimated: bool) -> Usage | None:
    if isinstance(raw, Usage):
        return raw
    data = _locate(raw)
    if data is None:
        return None
    input_key, input_tokens = _first(data, _INPUT)
    _, output_tokens = _first(data, _OUTPUT)
    _, total = _first(data, _TOTAL)
    _, cache_read = _first(data, _CACHE_READ)
    _, cache_write = _first(data, _CACHE_WRITE)
    reasoning_key, reasoning = _first(data, _REASONING)
    cache_read = cache_read or _detail(data, _INPUT_DETAILS, _DETAIL_CACHE_READ)
    cache_write = cache_write or _detail(data, _INPUT_DETAILS, _DETAIL_CACHE_WRITE)
    reasoning = reasoning or _detail(data, _OUTPUT_DETAILS, _DETAIL_REASONING)
    input_tokens = input_tokens or 0
    output_tokens = output_tokens or 0

    # Anthropic/Bedrock leave cache reads and writes out of the input count; fold them back in
    # unless a total shows the input already held them.
    exclusive_keys = _EXCLUSIVE_CACHE.get(input_key or "", ())
    if any(_int(_get(data, k)) for k in exclusive_keys) and total != input_tokens + output_tokens:
        input_tokens += cache_read + cache_write
    if reasoning_key in _THOUGHTS_APART:
        output_tokens += reasoning  # Gemini counts thoughts apart from candidates
    _, tool_prompt = _first(data, _TOOL_PROMPT)
    input_tokens += tool_prompt or 0  # Gemini: tool-use prompt tokens are billed input
    if total is None or total < input_tokens + output_tokens:
        total = input_tokens + output_tokens
    return Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total,
        cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning,
        estimated=estimated,
    )


def _exact_int(value: Any) -> int:
    return value if type(value) is int else 0


def langchain_usage(message: Any, response: Any) -> Usage | None:
    """Usage of a LangChain model call: the message's ``usage_metadata`` (LangChain's standard,
    read directly when it holds plain ints: the common case), else any provider shape in it or in
    the ``LLMResult``'s ``llm_output``."""
    raw = getattr(message, "usage_metadata", None)
    if raw:
        try:
            inp, out = raw["input_tokens"], raw["output_tokens"]
            if type(inp) is int and type(out) is int:
                total = raw.get("total_tokens")
                in_details = raw.get("input_token_details") or {}
                out_details = raw.get("output_token_details") or {}
                return Usage(  # positional (input, output, total, cache read, cache write, reasoning): cheaper
                    inp, out, total if type(total) is int else inp + out,
                    _exact_int(in_details.get("cache_read")), _exact_int(in_details.get("cache_creation")),
                    _exact_int(out_details.get("reasoning")),
                )
        except Exception:  # not the standard shape after all: the general search decides
            pass
        usage = normalize_usage(raw)
        if usage is not None:
            return usage
    llm_output = getattr(response, "llm_output", None)
    return normalize_usage(llm_output) if llm_output else None


def _amount(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def reported_cost(*holders: Any, zero_is_a_cost: bool = True) -> Cost | None:
    """A cost the provider reported itself (OpenRouter, litellm): ``cost`` or ``total_cost`` in a
    holder dict or in its ``token_usage`` / ``usage``, split by ``cost_details`` when given. It
    wins over the price table (source ``provider``). ``zero_is_a_cost=False`` reads 0 as "not
    reported" (DSPy's figure is 0 for cache hits and models litellm does not price)."""
    for holder in holders:
        if not isinstance(holder, dict):
            continue
        for source in (holder, holder.get("token_usage"), holder.get("usage")):
            if not isinstance(source, dict):
                continue
            total = _amount(source.get("cost"))
            if total is None or (not total and not zero_is_a_cost):
                total = _amount(source.get("total_cost"))
            if total is None or (not total and not zero_is_a_cost):
                continue
            details = source.get("cost_details")
            details = details if isinstance(details, dict) else {}
            inp = _amount(details.get("upstream_inference_prompt_cost")) or 0.0
            out = _amount(details.get("upstream_inference_completions_cost")) or 0.0
            return Cost(input=inp, output=out, total=total, source="provider")
    return None


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    """Sum of two usages (either may be None), e.g. the chunks of a stream."""
    if a is None:
        return b
    if b is None:
        return a
    return Usage(
        input_tokens=a.input_tokens + b.input_tokens, output_tokens=a.output_tokens + b.output_tokens,
        total_tokens=a.total_tokens + b.total_tokens, cache_read_tokens=a.cache_read_tokens + b.cache_read_tokens,
        cache_write_tokens=a.cache_write_tokens + b.cache_write_tokens,
        reasoning_tokens=a.reasoning_tokens + b.reasoning_tokens, estimated=a.estimated or b.estimated,
    )


def is_delegating(span: Span) -> bool:
    """Whether a span is marked as a delegating wrapper (``spanmux.delegates``: set by the
    integrations, and by the worker, which then drops its usage and cost)."""
    return span.attributes is not None and span.attributes.get(DELEGATES) is True


def is_model_call(span: Span) -> bool:
    """Whether a span is one call to a model, the unit of every ``llm_calls`` count (store,
    ``spanmux.stats()``, MLflow, Langfuse): an ``llm`` span that is not a delegating wrapper."""
    return span.kind == "llm" and not is_delegating(span)
