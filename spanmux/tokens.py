"""Client-side token estimates for model calls whose provider reported no usage (local models).

The tokenizer is tiktoken's ``o200k_base`` (``cl100k_base`` as a second choice), loaded strictly
offline: tiktoken downloads its BPE files on first use, so spanmux reads them from copies already
on disk instead (the ones llama-index-core and litellm ship inside their wheels, or tiktoken's
own cache) and checks each file against the SHA-256 tiktoken expects. Nothing here changes
``TIKTOKEN_CACHE_DIR`` or any other process-wide state, so LlamaIndex and litellm keep working
as before. When neither tiktoken nor a BPE file is available the estimate falls back to about
four characters per token; ``token_estimator()`` says which one is in use.

Only called on the worker thread, on already-serialized (JSON-able) inputs and outputs.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import logging
import os
import re
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from spanmux.model import Usage

log = logging.getLogger("spanmux.tokens")

CHARS_PER_TOKEN = 4
"""Fallback ratio when no tokenizer is available (English prose averages about 4 characters)."""
MESSAGE_OVERHEAD = 3
"""Tokens a chat format adds around each message (role and separators, OpenAI's published rule)."""
REPLY_PRIMING = 3
"""Tokens that prime the assistant's reply in a chat prompt."""

_ENCODINGS = ("o200k_base", "cl100k_base")
_TRUNCATED = re.compile(r"\.\.\.\[truncated (\d+) chars\]$")
_SKIP_KEYS = frozenset({
    "id", "type", "role", "tool_call_id", "model", "model_name", "invocation_params",
    "metadata", "response_metadata", "usage_metadata", "additional_kwargs", "generation_info",
    "llm_output", "usage", "run", "logprobs", "finish_reason", "index", "uuid", "timestamp",
})
_MESSAGE_KEYS = ("content", "text")

Encode = Callable[[str], int]


def _bpe_dirs() -> Iterator[Path]:
    """Folders that may hold tiktoken BPE files, named as tiktoken names its cache entries."""
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        value = os.environ.get(var)
        if value:
            yield Path(value)
    yield Path(tempfile.gettempdir()) / "data-gym-cache"
    for package, relative in (("litellm", "litellm_core_utils/tokenizers"),
                              ("llama_index", "core/_static/tiktoken_cache")):
        try:
            spec = importlib.util.find_spec(package)  # locates without importing the package
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            yield Path(root) / relative


def _offline_bpe(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
    """Stand-in for ``tiktoken.load.load_tiktoken_bpe`` that never touches the network."""
    name = hashlib.sha1(url.encode()).hexdigest()
    for folder in _bpe_dirs():
        candidate = folder / name
        try:
            data = candidate.read_bytes()
        except OSError:
            continue
        if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
            log.debug("ignoring %s: its checksum does not match", candidate)
            continue
        ranks: dict[bytes, int] = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks
    raise FileNotFoundError(f"no local copy of {url}")


def _load_encoding(name: str) -> Any:
    """A tiktoken ``Encoding`` built from a local BPE file, or None."""
    try:
        import tiktoken
        import tiktoken.registry
        from tiktoken_ext import openai_public  # type: ignore[import-untyped]
    except ImportError:
        return None
    loaded = tiktoken.registry.ENCODINGS.get(name)  # already built by LlamaIndex or litellm
    if loaded is not None:
        return loaded
    constructor = getattr(openai_public, name, None)
    if not isinstance(constructor, types.FunctionType):
        return None
    # Run tiktoken's own constructor (pattern, special tokens) with the offline loader bound in
    # place of the downloading one: a private copy of the function, no global is patched.
    offline = types.FunctionType(
        constructor.__code__, {**constructor.__globals__, "load_tiktoken_bpe": _offline_bpe},
        constructor.__name__, constructor.__defaults__, constructor.__closure__,
    )
    try:
        return tiktoken.Encoding(**offline())
    except (OSError, ValueError) as exc:
        log.debug("tiktoken %s unavailable offline: %s", name, exc)
        return None


class TokenCounter:
    """Counts tokens of text with the best tokenizer available offline (built once, lazily)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encode: Encode | None = None
        self.name = "unloaded"

    def _build(self) -> Encode:
        for encoding_name in _ENCODINGS:
            encoding = _load_encoding(encoding_name)
            if encoding is not None:
                self.name = f"tiktoken:{encoding_name}"
                ordinary = encoding.encode_ordinary
                return lambda text: len(ordinary(text))
        self.name = "chars/4"
        log.info("spanmux: no offline tokenizer found; token estimates use %d characters per token", CHARS_PER_TOKEN)
        return _approximate

    def count(self, text: str) -> int:
        encode = self._encode
        if encode is None:
            with self._lock:
                if self._encode is None:
                    self._encode = self._build()
                encode = self._encode
        return encode(text)


def _approximate(text: str) -> int:
    return (len(text) + CHARS_PER_TOKEN - 1) // CHARS_PER_TOKEN


_counter = TokenCounter()


def count_tokens(text: str) -> int:
    """Tokens in ``text`` (an estimate; exact for OpenAI o200k models)."""
    return _count_piece(text)


def token_estimator() -> str:
    """Which tokenizer estimates use: ``tiktoken:o200k_base``, ``tiktoken:cl100k_base`` or ``chars/4``."""
    _counter.count("")
    return _counter.name


def _count_piece(text: str) -> int:
    """Tokens of one string; a truncation mark left by serialization counts the cut part too."""
    match = _TRUNCATED.search(text)
    if match is None:
        return _counter.count(text)
    return _counter.count(text[: match.start()]) + _approximate("x" * int(match.group(1)))


def _texts(value: Any, depth: int = 0) -> Iterator[str]:
    """The strings of a serialized value that a model reads or writes (not ids or settings)."""
    if depth > 20 or value is None or isinstance(value, bool):
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item, depth + 1)
    elif isinstance(value, dict):
        if "generations" in value:  # LangChain LLMResult: the generations are the text
            yield from _texts(value["generations"], depth + 1)
            return
        if "message" in value and "text" in value:  # a ChatGeneration repeats its text
            yield from _texts(value["message"], depth + 1)
            return
        for key, item in value.items():
            if key in _SKIP_KEYS:
                continue
            if key in ("tool_calls", "function_call") and not isinstance(item, str):
                yield json.dumps(item, ensure_ascii=False, separators=(",", ":"), default=str)
                continue
            yield from _texts(item, depth + 1)


def _messages(value: Any) -> list[Any] | None:
    """The chat messages in a serialized input, or None when it is not a chat prompt."""
    if isinstance(value, dict):
        value = value.get("messages")
    if isinstance(value, list) and value and isinstance(value[0], list):
        value = value[0]  # LangChain passes one list of messages per prompt
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return value
    return None


def count_value(value: Any, *, prompt: bool = False) -> int:
    """Tokens of a serialized input or output; ``prompt`` adds a chat format's per-message
    overhead when ``value`` is a list of messages."""
    tokens = sum(_count_piece(text) for text in _texts(value))
    if prompt:
        messages = _messages(value)
        if messages:
            tokens += MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING
    return tokens


def estimate_usage(input_value: Any, output_value: Any) -> Usage | None:
    """An estimated ``Usage`` for a call from its serialized input and output; None when both
    are empty (nothing to count)."""
    if input_value is None and output_value is None:
        return None
    input_tokens = count_value(input_value, prompt=True)
    output_tokens = count_value(output_value)
    if input_tokens == 0 and output_tokens == 0:
        return None
    return Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, total_tokens=input_tokens + output_tokens,
        estimated=True,
    )
