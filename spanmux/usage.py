"""One function that turns any provider's or framework's token usage into ``Usage``.

Accepted shapes (dicts, pydantic models, or objects with attributes), first match wins per
field:
- LangChain ``usage_metadata``: input_tokens, output_tokens, total_tokens,
  input_token_details.{cache_read, cache_creation}, output_token_details.reasoning
- OpenAI: prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details.cached_tokens,
  completion_tokens_details.reasoning_tokens (and the Responses API's input/output names)
- Anthropic: input_tokens (excludes cache), output_tokens, cache_read_input_tokens,
  cache_creation_input_tokens
- Gemini: promptTokenCount/prompt_token_count, candidatesTokenCount, totalTokenCount,
  cachedContentTokenCount, thoughtsTokenCount
- Bedrock: inputTokens, outputTokens, totalTokens, cacheReadInputTokens, cacheWriteInputTokens
- Ollama: prompt_eval_count, eval_count
The result follows OpenAI semantics: input includes cached tokens, output includes reasoning.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spanmux.model import Usage

_INPUT = ("input_tokens", "prompt_tokens", "promptTokenCount", "prompt_token_count", "inputTokens",
          "prompt_eval_count", "input_token_count")
_OUTPUT = ("output_tokens", "completion_tokens", "candidatesTokenCount", "candidates_token_count",
           "outputTokens", "eval_count", "output_token_count")
_TOTAL = ("total_tokens", "totalTokenCount", "total_token_count", "totalTokens")
_CACHE_READ = ("cache_read_input_tokens", "cachedContentTokenCount", "cached_content_token_count",
               "cacheReadInputTokens", "cacheReadInputTokenCount", "cache_read_tokens")
_CACHE_WRITE = ("cache_creation_input_tokens", "cacheWriteInputTokens", "cacheWriteInputTokenCount",
                "cache_write_tokens")
_REASONING = ("thoughtsTokenCount", "thoughts_token_count", "reasoning_tokens")
_NESTED_INPUT_DETAILS = ("input_token_details", "prompt_tokens_details", "input_tokens_details")
_NESTED_OUTPUT_DETAILS = ("output_token_details", "completion_tokens_details", "output_tokens_details")


def _as_mapping(value: Any) -> Mapping[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        try:
            dumped = dump()
            return dumped if isinstance(dumped, Mapping) else None
        except Exception:
            return None
    try:
        attrs = vars(value)
    except TypeError:
        return None
    return attrs if isinstance(attrs, Mapping) else None


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _first(data: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        found = _int(data.get(key))
        if found is not None:
            return found
    return None


def normalize_usage(raw: Any, *, estimated: bool = False) -> Usage | None:
    """``Usage`` from any known shape, or None when it holds no token count."""
    data = _as_mapping(raw)
    if not data:
        return None
    for wrapper in ("usage", "usage_metadata", "token_usage", "usageMetadata"):
        inner = _as_mapping(data.get(wrapper))
        if inner and _first(inner, _INPUT + _OUTPUT + _TOTAL) is not None:
            data = inner
            break
    input_tokens = _first(data, _INPUT)
    output_tokens = _first(data, _OUTPUT)
    total = _first(data, _TOTAL)
    if input_tokens is None and output_tokens is None and total is None:
        return None
    cache_read = _first(data, _CACHE_READ) or 0
    cache_write = _first(data, _CACHE_WRITE) or 0
    reasoning = _first(data, _REASONING) or 0
    for key in _NESTED_INPUT_DETAILS:
        details = _as_mapping(data.get(key))
        if details:
            cache_read = cache_read or _first(details, ("cache_read", "cached_tokens")) or 0
            cache_write = cache_write or _first(details, ("cache_creation", "cache_write")) or 0
    for key in _NESTED_OUTPUT_DETAILS:
        details = _as_mapping(data.get(key))
        if details:
            reasoning = reasoning or _first(details, ("reasoning", "reasoning_tokens")) or 0
    input_tokens = input_tokens or 0
    output_tokens = output_tokens or 0
    if "cache_read_input_tokens" in data or "cache_creation_input_tokens" in data:
        # Anthropic reports input without the cached part: fold it back in (OpenAI semantics).
        input_tokens += cache_read + cache_write
    if "thoughtsTokenCount" in data or "thoughts_token_count" in data:
        output_tokens += reasoning  # Gemini reports thoughts apart from candidates
    if total is None:
        total = input_tokens + output_tokens
    return Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=total,
        cache_read_tokens=cache_read, cache_write_tokens=cache_write, reasoning_tokens=reasoning,
        estimated=estimated,
    )


def add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
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
