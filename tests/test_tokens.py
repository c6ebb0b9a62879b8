"""Client-side token estimates: a real tokenizer, offline, on the worker thread, marked estimated."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
from conftest import TracedStore

import spanmux
from spanmux import tokens
from spanmux.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, TokenCounter, count_value, estimate_usage

MESSAGES = [
    {"role": "system", "content": "You are a concise geography assistant."},
    {"role": "user", "content": "What is the capital of France? Answer in one word."},
]
ANSWER = {"role": "assistant", "content": "Paris."}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every attempt to open a connection fails loudly and is recorded."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


def test_real_tokenizer_loads_offline_without_touching_tiktoken_settings(
    no_network: list[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import tiktoken.registry

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty"))  # a user's empty cache must not matter
    for name in ("o200k_base", "cl100k_base"):
        monkeypatch.delitem(tiktoken.registry.ENCODINGS, name, raising=False)
    counter = TokenCounter()
    assert counter.count("Hello world") == 2  # o200k: "Hello", " world"
    assert counter.name == "tiktoken:o200k_base"
    assert no_network == []
    assert not (tmp_path / "empty").exists()  # nothing written into tiktoken's cache either


def test_counts_agree_with_the_tokenizer_llamaindex_uses(no_network: list[Any]) -> None:
    """The cl100k encoding spanmux builds offline counts exactly like LlamaIndex's own one."""
    pytest.importorskip("llama_index.core")
    from llama_index.core.utils import get_tokenizer

    text = "The quick brown fox jumps over the lazy dog. Ünïcödé, numbers 12345 and code: def f(x): return x**2"
    ours = tokens._load_encoding("cl100k_base")
    assert ours is not None
    assert len(ours.encode_ordinary(text)) == len(get_tokenizer()(text))
    assert no_network == []


def test_estimate_counts_messages_with_chat_overhead() -> None:
    usage = estimate_usage(MESSAGES, ANSWER)
    content = sum(tokens.count_tokens(m["content"]) for m in MESSAGES)
    assert usage is not None and usage.estimated
    assert usage.input_tokens == content + MESSAGE_OVERHEAD * len(MESSAGES) + REPLY_PRIMING
    assert usage.output_tokens == tokens.count_tokens("Paris.")
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_text_extraction_skips_ids_and_settings_and_dedupes_generations() -> None:
    # a LangChain LLMResult: the text is in the generation and again in its message
    result = {"generations": [[{"text": "Paris.", "message": {"role": "ai", "content": "Paris.", "id": "run-1"},
                                "generation_info": {"finish_reason": "stop"}}]],
              "llm_output": {"model_name": "x"}}
    assert count_value(result) == tokens.count_tokens("Paris.")
    assert count_value({"prompt": "Say hi", "kwargs": {"temperature": 0.1}}) == tokens.count_tokens("Say hi")
    assert count_value({"id": "abc", "type": "x", "role": "user"}) == 0
    assert estimate_usage(None, None) is None and estimate_usage("", {}) is None


def test_truncated_text_still_counts_its_cut_part() -> None:
    cut = "word " * 10 + "...[truncated 4000 chars]"
    assert count_value(cut) == tokens.count_tokens("word " * 10) + 1000


def _spans_by_name(traced: TracedStore, trace_id: str) -> dict[str, Any]:
    return {s.name: s for s in traced.trace(trace_id)}


def test_local_model_without_usage_gets_an_estimate(traced: TracedStore) -> None:
    with spanmux.span("agent", kind="agent") as root:
        with spanmux.span("ChatOllama", kind="llm", input=MESSAGES) as llm:
            llm.set_model("llama3.1:8b", "ollama")
            llm.set_output(ANSWER)
        with spanmux.span("ChatOpenAI", kind="llm", input=MESSAGES) as reported:
            reported.set_model("gpt-4o-mini", "openai")
            reported.set_usage(40, 3)
            reported.set_output(ANSWER)
    spans = _spans_by_name(traced, root.trace_id)
    expected = estimate_usage(MESSAGES, ANSWER)
    assert spans["ChatOllama"].usage == expected and expected is not None and expected.estimated
    assert spans["ChatOllama"].cost is None  # a local model has no table price
    assert spans["ChatOpenAI"].usage.estimated is False and spans["ChatOpenAI"].usage.input_tokens == 40
    assert spans["agent"].usage is None
    [summary] = traced.traces()
    assert summary.input_tokens == expected.input_tokens + 40
    assert summary.output_tokens == expected.output_tokens + 3
    assert spanmux.stats()["estimated_usage_spans"] == 1


def test_estimated_usage_of_a_known_model_is_priced(traced: TracedStore) -> None:
    with spanmux.span("call", kind="llm", input="Translate 'bonjour' to English.") as llm:
        llm.set_model("gpt-4o-mini", "openai")
        llm.set_output("Hello.")
    [span] = traced.only_trace()
    assert span.usage is not None and span.usage.estimated
    assert span.cost is not None and span.cost.source == "price-table" and span.cost.total > 0


def test_wrapper_llm_span_that_delegates_is_not_estimated_twice(traced: TracedStore) -> None:
    """LlamaIndex's default ``achat`` wraps ``chat``: two nested llm spans, one model call."""
    with spanmux.span("achat", kind="llm", input=MESSAGES) as outer:
        outer.set_model("mock")
        with spanmux.span("chat", kind="llm", input=MESSAGES) as inner:
            inner.set_model("mock")
            inner.set_output(ANSWER)
        outer.set_output(ANSWER)
    spans = _spans_by_name(traced, outer.trace_id)
    assert spans["achat"].usage is None
    assert spans["chat"].usage == estimate_usage(MESSAGES, ANSWER)
    [summary] = traced.traces()
    assert summary.total_tokens == spans["chat"].usage.total_tokens


def test_failed_call_without_output_is_not_estimated(traced: TracedStore) -> None:
    with pytest.raises(TimeoutError), spanmux.span("call", kind="llm", input=MESSAGES) as llm:
        llm.set_model("llama3.1", "ollama")
        raise TimeoutError("model did not answer")
    [span] = traced.only_trace()
    assert span.status == "error" and span.usage is None


def local_llm_call(traced: TracedStore, **settings: Any) -> Any:
    """Reconfigure the fixture's store with ``settings``, record one local-model call, read it back."""
    spanmux.configure({"local": {"path": str(traced.path)}, "spool_dir": "spool", **settings})
    with spanmux.span("call", kind="llm", input=MESSAGES) as llm:
        llm.set_model("llama3.1", "ollama")
        llm.set_output(ANSWER)
    [span] = traced.only_trace()
    return span


def test_estimate_tokens_false_turns_it_off(traced: TracedStore) -> None:
    span = local_llm_call(traced, estimate_tokens=False)
    assert span.usage is None
    assert spanmux.stats()["estimated_usage_spans"] == 0


def test_estimate_without_captured_content(traced: TracedStore) -> None:
    """capture_content: false drops the text but still counts it (then forgets it)."""
    span = local_llm_call(traced, capture_content=False)
    assert span.input is None and span.output is None
    assert span.usage == estimate_usage(MESSAGES, ANSWER)


def test_without_tiktoken_the_estimate_falls_back_to_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "_load_encoding", lambda name: None)
    counter = TokenCounter()
    assert counter.count("x" * 10) == 3  # ceil(10 / 4)
    assert counter.name == "chars/4"
