"""normalize_usage on the real usage shapes of each provider and framework.

Where the provider's SDK is installed the test builds its own typed objects (openai, litellm,
LangChain, LlamaIndex); otherwise the dicts mirror the documented JSON of the API response
(Anthropic Messages, Gemini generateContent, Bedrock Converse, Ollama, Cohere).
"""

from __future__ import annotations

from typing import Any

import pytest

from spanmux.model import Usage
from spanmux.usage import add_usage, normalize_usage


def _u(inp: int, out: int, total: int | None = None, *, read: int = 0, write: int = 0, reasoning: int = 0) -> Usage:
    return Usage(input_tokens=inp, output_tokens=out, total_tokens=inp + out if total is None else total,
                 cache_read_tokens=read, cache_write_tokens=write, reasoning_tokens=reasoning)


def openai_chat_completion() -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1730000000, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "Paris."}}],
        "usage": {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500,
                  "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 128, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    })


def openai_responses_usage() -> Any:
    from openai.types.responses import ResponseUsage

    return ResponseUsage.model_validate({
        "input_tokens": 900, "input_tokens_details": {"cached_tokens": 512, "cache_write_tokens": 0},
        "output_tokens": 400, "output_tokens_details": {"reasoning_tokens": 256}, "total_tokens": 1300,
    })


def langchain_ai_message() -> Any:
    from langchain_core.messages import AIMessage

    return AIMessage(
        content="Paris.",
        usage_metadata={"input_tokens": 350, "output_tokens": 240, "total_tokens": 590,
                        "input_token_details": {"audio": 10, "cache_creation": 200, "cache_read": 100},
                        "output_token_details": {"audio": 10, "reasoning": 200}},
        response_metadata={"model_name": "claude-3-5-sonnet-latest"},
    )


def llamaindex_chat_response_raw() -> Any:
    from llama_index.core.base.llms.types import ChatMessage, ChatResponse

    return ChatResponse(message=ChatMessage(role="assistant", content="Paris."), raw=openai_chat_completion())


def llamaindex_chat_response_kwargs() -> Any:
    from llama_index.core.base.llms.types import ChatMessage, ChatResponse

    return ChatResponse(message=ChatMessage(role="assistant", content="Paris."), raw=None,
                        additional_kwargs={"prompt_tokens": 42, "completion_tokens": 7, "total_tokens": 49})


CASES: list[tuple[str, Any, Usage]] = [
    ("langchain usage_metadata dict",
     {"input_tokens": 350, "output_tokens": 240, "total_tokens": 590,
      "input_token_details": {"audio": 10, "cache_creation": 200, "cache_read": 100},
      "output_token_details": {"audio": 10, "reasoning": 200}},
     _u(350, 240, read=100, write=200, reasoning=200)),
    ("langchain llm_output of ChatOpenAI",
     {"token_usage": {"completion_tokens": 30, "prompt_tokens": 100, "total_tokens": 130,
                      "completion_tokens_details": {"reasoning_tokens": 0},
                      "prompt_tokens_details": {"cached_tokens": 64}},
      "model_name": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_0ba0d124f1"},
     _u(100, 30, read=64)),
    ("openai chat usage dict (DSPy history / litellm dump)",
     {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
      "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
      "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
     _u(19, 10)),
    ("openai responses api dict",
     {"input_tokens": 36, "input_tokens_details": {"cached_tokens": 0},
      "output_tokens": 87, "output_tokens_details": {"reasoning_tokens": 64}, "total_tokens": 123},
     _u(36, 87, reasoning=64)),
    ("anthropic messages usage (cache outside input)",
     {"input_tokens": 50, "output_tokens": 20, "cache_creation_input_tokens": 200,
      "cache_read_input_tokens": 1000, "server_tool_use": None, "service_tier": "standard",
      "cache_creation": {"ephemeral_5m_input_tokens": 200, "ephemeral_1h_input_tokens": 0}},
     _u(1250, 20, read=1000, write=200)),
    ("anthropic message response (no cache, nulls)",
     {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-3-5-sonnet-20241022",
      "content": [{"type": "text", "text": "Paris."}], "stop_reason": "end_turn",
      "usage": {"input_tokens": 25, "output_tokens": 5, "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None}},
     _u(25, 5)),
    ("dspy history entry with litellm usage of an anthropic call",
     {"model": "anthropic/claude-3-5-sonnet-latest", "cost": 0.0042,
      "usage": {"completion_tokens": 20, "prompt_tokens": 1250, "total_tokens": 1270,
                "completion_tokens_details": {"reasoning_tokens": 0, "text_tokens": 20},
                "prompt_tokens_details": {"cache_write_tokens": 200, "cached_tokens": 1000, "text_tokens": 50,
                                          "cache_creation_tokens": 200},
                "cache_creation_input_tokens": 200, "cache_read_input_tokens": 1000}},
     _u(1250, 20, read=1000, write=200)),
    ("gemini REST usageMetadata with thoughts and cache",
     {"candidates": [], "modelVersion": "gemini-2.5-flash",
      "usageMetadata": {"promptTokenCount": 1500, "candidatesTokenCount": 80, "totalTokenCount": 1700,
                        "cachedContentTokenCount": 1024, "thoughtsTokenCount": 120,
                        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 1500}]}},
     _u(1500, 200, 1700, read=1024, reasoning=120)),
    ("google-genai snake_case usage_metadata",
     {"usage_metadata": {"prompt_token_count": 12, "candidates_token_count": 8, "total_token_count": 20}},
     _u(12, 8)),
    ("gemini tool-use prompt tokens are input",
     {"promptTokenCount": 100, "candidatesTokenCount": 10, "toolUsePromptTokenCount": 30, "totalTokenCount": 140},
     _u(130, 10, 140)),
    ("bedrock converse response (cache outside input)",
     {"output": {"message": {"role": "assistant", "content": [{"text": "Paris."}]}}, "stopReason": "end_turn",
      "usage": {"inputTokens": 20, "outputTokens": 10, "totalTokens": 1530, "cacheReadInputTokens": 1000,
                "cacheWriteInputTokens": 500},
      "metrics": {"latencyMs": 500}},
     _u(1520, 10, 1530, read=1000, write=500)),
    ("bedrock converse without cache",
     {"usage": {"inputTokens": 20, "outputTokens": 10, "totalTokens": 30}},
     _u(20, 10)),
    ("ollama generate response",
     {"model": "llama3.2", "done": True, "prompt_eval_count": 26, "eval_count": 290},
     _u(26, 290)),
    ("cohere chat meta.billed_units",
     {"text": "Paris.", "meta": {"api_version": {"version": "1"},
                                 "billed_units": {"input_tokens": 17, "output_tokens": 3}}},
     _u(17, 3)),
    ("string counts and floats are accepted",
     {"prompt_tokens": "12", "completion_tokens": 3.0},
     _u(12, 3)),
]


@pytest.mark.parametrize(("raw", "expected"), [(raw, exp) for _, raw, exp in CASES],
                         ids=[name for name, _, _ in CASES])
def test_documented_shapes(raw: Any, expected: Usage) -> None:
    assert normalize_usage(raw) == expected


SDK_CASES = [
    ("openai ChatCompletion object", openai_chat_completion, _u(1200, 300, read=1024, reasoning=128)),
    ("openai CompletionUsage object", lambda: openai_chat_completion().usage, _u(1200, 300, read=1024, reasoning=128)),
    ("openai ResponseUsage object", openai_responses_usage, _u(900, 400, read=512, reasoning=256)),
    ("langchain AIMessage", langchain_ai_message, _u(350, 240, read=100, write=200, reasoning=200)),
    ("llamaindex ChatResponse.raw", llamaindex_chat_response_raw, _u(1200, 300, read=1024, reasoning=128)),
    ("llamaindex ChatResponse.additional_kwargs", llamaindex_chat_response_kwargs, _u(42, 7)),
]


@pytest.mark.parametrize(("build", "expected"), [(b, e) for _, b, e in SDK_CASES], ids=[n for n, _, _ in SDK_CASES])
def test_sdk_objects(build: Any, expected: Usage) -> None:
    assert normalize_usage(build()) == expected


def test_litellm_usage_object_of_anthropic_call_is_not_double_counted() -> None:
    """litellm (what DSPy calls) folds Anthropic's cache into prompt_tokens and also keeps the
    Anthropic keys as attributes: the cache must count once."""
    pytest.importorskip("litellm")
    from litellm.types.utils import Usage as LitellmUsage

    usage = LitellmUsage(prompt_tokens=1250, completion_tokens=20, total_tokens=1270,
                         cache_read_input_tokens=1000, cache_creation_input_tokens=200)
    assert normalize_usage(usage) == _u(1250, 20, read=1000, write=200)
    assert normalize_usage(dict(usage)) == _u(1250, 20, read=1000, write=200)  # DSPy's history entry


@pytest.mark.parametrize("raw", [None, {}, {"usage": {}}, {"usage": None}, "text", 42, [1, 2], {"foo": "bar"},
                                 {"prompt_tokens": -3}, {"prompt_tokens": True}, object()])
def test_no_usage_gives_none(raw: Any) -> None:
    assert normalize_usage(raw) is None


def test_hostile_objects_never_raise() -> None:
    from unittest.mock import MagicMock

    class Exploding:
        def __getattr__(self, name: str) -> Any:
            raise RuntimeError("boom")

    assert normalize_usage(Exploding()) is None
    assert normalize_usage(MagicMock()) is None


def test_estimated_flag_and_usage_passthrough() -> None:
    usage = normalize_usage({"prompt_tokens": 3, "completion_tokens": 4}, estimated=True)
    assert usage is not None and usage.estimated and usage.total_tokens == 7
    assert normalize_usage(usage) is usage


def test_add_usage_sums_every_bucket() -> None:
    a, b = _u(10, 5, read=2, reasoning=1), _u(1, 1, write=3)
    assert add_usage(a, b) == _u(11, 6, read=2, write=3, reasoning=1)
    assert add_usage(None, b) is b and add_usage(a, None) is a


def test_is_model_call_excludes_delegating_wrappers() -> None:
    from spanmux.attributes import DELEGATES
    from spanmux.model import Span
    from spanmux.usage import is_model_call

    def span(kind: str, attributes: dict[str, Any] | None = None) -> Span:
        return Span(trace_id="0" * 32, span_id="1" * 16, parent_id=None, name="x", kind=kind, framework="manual",
                    start_ns=1, end_ns=2, attributes=attributes)

    assert is_model_call(span("llm")) and is_model_call(span("llm", {DELEGATES: False}))
    assert not is_model_call(span("llm", {DELEGATES: True}))
    assert not is_model_call(span("embedding")) and not is_model_call(span("chain"))


def test_langchain_usage_reads_usage_metadata_directly_and_falls_back() -> None:
    from types import SimpleNamespace

    from spanmux.usage import langchain_usage

    message = SimpleNamespace(usage_metadata={
        "input_tokens": 120, "output_tokens": 30, "total_tokens": 150,
        "input_token_details": {"cache_read": 100, "cache_creation": 4}, "output_token_details": {"reasoning": 8}})
    assert langchain_usage(message, None) == _u(120, 30, read=100, write=4, reasoning=8)
    odd = SimpleNamespace(usage_metadata={"prompt_tokens": 7, "completion_tokens": 2})  # not the standard shape
    assert langchain_usage(odd, None) == _u(7, 2)
    legacy = SimpleNamespace(llm_output={"token_usage": {"prompt_tokens": 5, "completion_tokens": 1}})
    assert langchain_usage(None, legacy) == _u(5, 1)
    assert langchain_usage(None, None) is None


def test_reported_cost_from_the_provider() -> None:
    from spanmux.model import Cost
    from spanmux.usage import reported_cost

    openrouter = {"token_usage": {"prompt_tokens": 10, "cost": 0.0125, "cost_details": {
        "upstream_inference_prompt_cost": 0.01, "upstream_inference_completions_cost": 0.0025}}}
    assert reported_cost(None, openrouter) == Cost(0.01, 0.0025, 0.0125, "provider")
    assert reported_cost({"total_cost": 2}) == Cost(0.0, 0.0, 2.0, "provider")
    assert reported_cost({"cost": 0.0}) == Cost(0.0, 0.0, 0.0, "provider")  # a free model, as reported
    assert reported_cost({"cost": 0.0}, zero_is_a_cost=False) is None  # DSPy: 0 means not priced
    assert reported_cost({"cost": True}, {"cost": -1}, "text", None) is None
