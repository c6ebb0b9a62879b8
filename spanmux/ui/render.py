"""What the pages show of a span's values: chat messages per role, retriever documents, JSON, big
values cut with a way to see more, and the short text of a turn's input and answer.

Pure functions over the JSON-able values the store holds (no Starlette, no SQL), so the route tests
and the templates share them. Nothing here marks text safe: templates autoescape everything.
"""

from __future__ import annotations

import datetime
import json
import re
from typing import Any

import msgspec

from spanmux.attributes import RETRIEVAL_DOCUMENTS
from spanmux.serialize import TRUNCATION_MARK

PREVIEW_CHARS = 20_000
"""A value whose JSON is longer is shown as its first part with a "show more" link (a 10 MB input
must not become a 10 MB page)."""
MORE_CHARS = 200_000
"""Each "show more" brings this many more characters."""

_ROLES = {
    "human": "user", "user": "user", "ai": "assistant", "assistant": "assistant", "system": "system",
    "developer": "system", "tool": "tool", "function": "tool", "chatbot": "assistant", "model": "assistant",
}
_TRUNCATED = TRUNCATION_MARK.split("{}")[0]


class Message(msgspec.Struct, frozen=True):
    """One chat message as the page shows it."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]]
    name: str | None = None
    tool_call_id: str | None = None


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
            else:
                parts.append(to_json(part))
        return "\n".join(parts)
    return to_json(content)


def _message(value: Any) -> Message | None:
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str) and value[0] in _ROLES:
        return Message(_ROLES[value[0]], _text_of(value[1]), [])
    if not isinstance(value, dict):
        return None
    role = value.get("role") or value.get("type")
    if not isinstance(role, str) or role.lower() not in _ROLES or not ("content" in value or "tool_calls" in value):
        return None
    calls = value.get("tool_calls") or []
    tool_calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    name = value.get("name")
    call_id = value.get("tool_call_id")
    return Message(_ROLES[role.lower()], _text_of(value.get("content")), tool_calls,
                   name if isinstance(name, str) else None, call_id if isinstance(call_id, str) else None)


def messages_of(value: Any) -> list[Message] | None:
    """The chat messages a value holds (a message, a list of them, ``{"messages": [...]}``), or None
    when it is not chat-shaped."""
    if isinstance(value, dict) and isinstance(value.get("messages"), list) and len(value) <= 3:
        value = value["messages"]
    items = value if isinstance(value, list) and value and not isinstance(value[0], str) else [value]
    out = []
    for item in items:
        message = _message(item)
        if message is None:
            return None
        out.append(message)
    return out or None


def call_arguments(call: dict[str, Any]) -> str:
    """A tool call's arguments as text (LangChain ``args``, OpenAI ``function.arguments``)."""
    args = call.get("args", call.get("arguments"))
    function = call.get("function")
    if args is None and isinstance(function, dict):
        args = function.get("arguments")
    return args if isinstance(args, str) else to_json(args)


def call_name(call: dict[str, Any]) -> str:
    function = call.get("function")
    name = call.get("name") or (function.get("name") if isinstance(function, dict) else None)
    return str(name or "tool")


def documents_of(attributes: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Retriever documents ({id, score, content, metadata}) recorded on a span."""
    documents = (attributes or {}).get(RETRIEVAL_DOCUMENTS)
    if isinstance(documents, list) and all(isinstance(d, dict) for d in documents):
        return documents
    return None


_NUMBER_LIST = re.compile(r"\[\s*\n\s*(-?[0-9][0-9.eE+-]*(?:,\s*\n\s*-?[0-9][0-9.eE+-]*)*)\s*\n\s*\]")


def to_json(value: Any) -> str:
    """Pretty JSON for the page (a string stays itself); a list of numbers (an embedding) on one line."""
    if isinstance(value, str):
        return value
    try:
        text = json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)
    return _NUMBER_LIST.sub(lambda m: "[" + ", ".join(n.strip() for n in m.group(1).split(",")) + "]", text)


def is_truncated(text: str) -> bool:
    """Whether serialization cut this value (its mark ``...[truncated N chars]`` is in it)."""
    return _TRUNCATED in text


class Shown(msgspec.Struct, frozen=True):
    """A value as the page shows it: structured (messages / documents / JSON) when small, else its
    first ``PREVIEW_CHARS`` with ``more_at`` set to where "show more" continues."""

    text: str
    messages: list[Message] | None
    more_at: int | None
    total_chars: int
    truncated: bool


def show(value: Any) -> Shown | None:
    if value is None:
        return None
    text = to_json(value)
    if len(text) > PREVIEW_CHARS:
        return Shown(text[:PREVIEW_CHARS], None, PREVIEW_CHARS, len(text), is_truncated(text))
    return Shown(text, messages_of(value), None, len(text), is_truncated(text))


def part(value: Any, offset: int) -> tuple[str, int | None, int]:
    """The next part of a big value from ``offset``, where the one after starts (None at the end)
    and the value's length."""
    text = to_json(value)
    end = offset + MORE_CHARS
    return text[offset:end], (end if end < len(text) else None), len(text)


_ANSWER_KEYS = ("answer", "output", "response", "result", "text", "content", "final_answer")
_QUESTION_KEYS = ("question", "input", "query", "q", "prompt", "text", "message")


def turn_text(value: Any, *, answer: bool, limit: int = 2_000) -> str:
    """The short text of a conversation turn: the last user message of an input, the last assistant
    message of an output, a question/answer field, else compact JSON; cut at ``limit``."""
    text: str | None = None
    messages = messages_of(value)
    if messages:
        wanted = "assistant" if answer else "user"
        chosen = [m for m in messages if m.role == wanted and m.content]
        text = chosen[-1].content if chosen else messages[-1].content
    elif isinstance(value, str):
        text = value
    elif isinstance(value, dict):
        for key in _ANSWER_KEYS if answer else _QUESTION_KEYS:
            if isinstance(value.get(key), str):
                text = value[key]
                break
        if text is None and len(value) == 1:
            only = next(iter(value.values()))
            text = only if isinstance(only, str) else None
    if text is None:
        text = "" if value is None else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "…"


def brief(value: Any, limit: int = 1_000) -> str:
    """A value in one table cell (an experiment item's input, output, expected): a string as itself,
    else compact JSON; cut at ``limit`` (the item's trace has the whole value)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= limit else text[:limit] + "…"


def fmt_time(ns: int | None) -> str:
    if not ns:
        return ""
    return datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_ms(ms: float | None) -> str:
    if ms is None:
        return ""
    if ms >= 60_000:
        return f"{ms / 60_000:.1f} min"
    if ms >= 1_000:
        return f"{ms / 1_000:.2f} s"
    return f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def fmt_cost(cost: float | None) -> str:
    if cost is None:
        return ""
    return f"${cost:.4f}" if cost >= 0.01 else f"${cost:.6f}"


def fmt_score(value: Any) -> str:
    if value is True:
        return "▲ up"
    if value is False:
        return "▼ down"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
