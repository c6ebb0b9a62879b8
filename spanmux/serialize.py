"""Turn whatever a framework hands us into bounded, JSON-able values (on the worker thread).

Never raises: cyclic structures, bytes, objects whose ``__repr__`` fails and 10 MB strings all
become something a backend can store, and size limits are marked rather than silent.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import uuid
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 12
MAX_ITEMS = 1000
TRUNCATION_MARK = "...[truncated {} chars]"


class Memo:
    """Conversions of the objects the spans of one trace share, reused within that trace.

    LangChain hands the same objects to several runs: a prompt's messages are the model's input,
    the model's message the parser's input, a chain's input its first step's. The worker converts
    them once per trace instead of once per span. Exact: an entry keeps its object (so its ``id``
    is not reused) and is only taken for that very object, with the same size limit (a whole
    value), or, for a chat message of plain leaves, when the budget left holds all of it (then a
    fresh conversion would copy the same strings whole). Entries live until a span of another
    trace comes (``scope``). One thread uses a memo (the pipeline's worker); callers on other
    threads convert without one."""

    __slots__ = ("trace", "values", "messages", "owner")

    def __init__(self) -> None:
        self.trace: str | None = None
        self.values: dict[int, tuple[Any, int, Any, bool]] = {}
        """id -> (object, limit, converted, cut) of whole values."""
        self.messages: dict[int, tuple[Any, int, int, dict[str, Any]]] = {}
        """id -> (message, characters it consumed, height, converted) of messages converted whole
        (nothing cut: no truncation, cycle or depth bound); height: how many levels of containers
        its conversion went down, so an entry serves any depth that keeps them above the bound."""
        self.owner: int | None = None

    def scope(self, trace: str) -> None:
        """The next conversions belong to ``trace``: forget another trace's entries."""
        if trace != self.trace:
            self.trace = trace
            if self.values:
                self.values.clear()
            if self.messages:
                self.messages.clear()


class _Budget:
    __slots__ = ("left", "truncated", "partial", "deepest", "memo")

    def __init__(self, limit: int, memo: Memo | None = None) -> None:
        self.left = limit
        self.truncated = False
        self.partial = False
        """A cycle or the depth bound cut something short (not marked as truncated)."""
        self.deepest = 0
        """The greatest depth a container was converted at (a memo entry's height comes from it)."""
        self.memo = memo


def _short_str(text: str, budget: _Budget) -> str:
    if len(text) <= budget.left:
        budget.left -= len(text)
        return text
    keep = max(budget.left // 2, 64)  # leave room for the siblings that follow
    budget.left -= min(keep, budget.left)
    budget.truncated = True
    return text[:keep] + TRUNCATION_MARK.format(len(text) - keep)


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__qualname__} object>"


_MESSAGE_EXTRAS = ("tool_calls", "tool_call_id", "name")
_extras_by_type: dict[type, tuple[str, ...]] = {}
_message_classes: set[type] = set()
"""Classes whose instances reached ``_message`` past every other test in ``_convert``."""


def _message(value: Any) -> dict[str, Any] | None:
    """LangChain/LlamaIndex chat messages as {role, content, ...}: what every backend renders."""
    content = getattr(value, "content", None)
    role = getattr(value, "type", None) or getattr(value, "role", None)
    if role is None or content is None and not hasattr(value, "tool_calls"):
        return None
    # a plain str role is the common case: getattr(str, "value", ...) raises inside, which is slow
    out: dict[str, Any] = {"role": role if type(role) is str else str(getattr(role, "value", role)),
                           "content": content}
    kind = type(value)
    extras = _extras_by_type.get(kind)
    if extras is None:  # missing attributes are slow on pydantic models: look once per class
        extras = tuple(attr for attr in _MESSAGE_EXTRAS if hasattr(value, attr))
        if len(_extras_by_type) < 1024:
            _extras_by_type[kind] = extras
    for attr in extras:
        extra = getattr(value, attr, None)
        if extra:
            out[attr] = extra
    return out


def _convert(value: Any, budget: _Budget, depth: int, seen: set[int]) -> Any:
    kind = type(value)
    if kind is str:  # the common cases first, by exact type
        return _short_str(value, budget)
    if value is None or kind is int or kind is bool:
        return value
    if kind is dict and depth < MAX_DEPTH and budget.left > 0 and len(value) <= MAX_ITEMS:
        marker = id(value)
        if marker in seen:
            budget.partial = True
            return "<cycle>"
        seen.add(marker)
        if depth > budget.deepest:
            budget.deepest = depth
        try:
            copy: dict[str, Any] = {}
            for key, item in value.items():
                # leaves inline (most values are short strings and ints): one call less per value
                leaf = type(item)
                if leaf is str and len(item) <= budget.left:
                    budget.left -= len(item)
                elif not (item is None or leaf is int or leaf is bool):
                    item = _convert(item, budget, depth + 1, seen)
                copy[key if type(key) is str else _safe_repr(key)] = item
            return copy
        finally:
            seen.discard(marker)
    if (kind is list or kind is tuple) and depth < MAX_DEPTH and budget.left > 0:
        marker = id(value)
        if marker in seen:
            budget.partial = True
            return "<cycle>"
        seen.add(marker)
        if depth > budget.deepest:
            budget.deepest = depth
        try:
            items: list[Any] = []
            for index, item in enumerate(value):
                if index >= MAX_ITEMS or budget.left <= 0:
                    budget.truncated = True
                    items.append(f"...{len(value) - index} more items")
                    break
                leaf = type(item)
                if leaf is str and len(item) <= budget.left:
                    budget.left -= len(item)
                elif not (item is None or leaf is int or leaf is bool):
                    item = _convert(item, budget, depth + 1, seen)
                items.append(item)
            return items
        finally:
            seen.discard(marker)
    if kind in _message_classes and depth < MAX_DEPTH and budget.left > 0 and id(value) not in seen:
        # a class already converted as a message below: skip the isinstance chain (an ABC check
        # on Mapping is slow), same result
        marker = id(value)
        memo = budget.memo
        if memo is not None:
            known = memo.messages.get(marker)
            if known is not None and known[0] is value and known[1] < budget.left and depth + known[2] < MAX_DEPTH:
                # nothing was cut, all of it fits and its deepest part stays above the depth bound:
                # what a fresh conversion makes
                budget.left -= known[1]
                if depth + known[2] > budget.deepest:
                    budget.deepest = depth + known[2]
                return known[3]
        try:
            message = _message(value)
        except Exception:
            message = None
        if message is not None:
            if depth + 1 >= MAX_DEPTH:
                seen.add(marker)
                try:
                    return _convert(message, budget, depth + 1, seen)
                finally:
                    seen.discard(marker)
            # what _convert(message, ...) does with this fresh dict of str keys, without the second
            # copy: role and a str content are leaves, kept inline
            left, truncated, partial, deepest = budget.left, budget.truncated, budget.partial, budget.deepest
            budget.truncated = budget.partial = False
            budget.deepest = depth + 1  # the message's dict
            seen.add(marker)
            try:
                for key, item in message.items():
                    leaf = type(item)
                    if leaf is str and len(item) <= budget.left:
                        budget.left -= len(item)
                    elif not (item is None or leaf is int or leaf is bool):
                        message[key] = _convert(item, budget, depth + 2, seen)
            finally:
                seen.discard(marker)
                whole = not (budget.truncated or budget.partial)
                height = budget.deepest - depth
                budget.truncated |= truncated
                budget.partial |= partial
                if deepest > budget.deepest:
                    budget.deepest = deepest
            if whole and memo is not None:
                memo.messages[marker] = (value, left - budget.left, height, message)
            return message
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, str):  # a subclass (LangChain's TextAccessor) becomes a plain str
        return _short_str(value if type(value) is str else str.__str__(value), budget)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, enum.Enum):
        return _convert(value.value, budget, depth, seen)
    if isinstance(value, (uuid.UUID, datetime.datetime, datetime.date)):
        return str(value)
    if budget.left <= 0:
        budget.truncated = True
        return "...[truncated]"
    if depth >= MAX_DEPTH:
        budget.partial = True
        return _short_str(_safe_repr(value), budget)
    marker = id(value)
    if marker in seen:
        budget.partial = True
        return "<cycle>"
    seen.add(marker)
    if depth > budget.deepest:
        budget.deepest = depth
    try:
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for index, (key, item) in enumerate(value.items()):
                if index >= MAX_ITEMS or budget.left <= 0:
                    budget.truncated = True
                    out["..."] = f"{len(value) - index} more items"
                    break
                out[key if isinstance(key, str) else _safe_repr(key)] = _convert(item, budget, depth + 1, seen)
            return out
        if isinstance(value, (list, tuple, set, frozenset)):
            items = []
            for index, item in enumerate(value):
                if index >= MAX_ITEMS or budget.left <= 0:
                    budget.truncated = True
                    items.append(f"...{len(value) - index} more items")
                    break
                items.append(_convert(item, budget, depth + 1, seen))
            return items
        try:
            message = _message(value)
        except Exception:  # an object whose attribute reads raise is not a message
            message = None
        if message is not None:
            if len(_message_classes) < 1024:
                _message_classes.add(kind)
            return _convert(message, budget, depth + 1, seen)
        dumped = _structured(value)
        if dumped is not None:
            return _convert(dumped, budget, depth + 1, seen)
        return _short_str(_safe_repr(value), budget)
    finally:
        seen.discard(marker)


def _structured(value: Any) -> Any:
    """pydantic models, dataclasses and msgspec structs as plain dicts; None when not one."""
    try:
        if hasattr(value, "model_dump") and callable(value.model_dump):
            return value.model_dump(mode="python", exclude_none=True)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name, None) for f in dataclasses.fields(value)}
        fields = getattr(type(value), "__struct_fields__", None)
        if fields is not None:
            return {name: getattr(value, name, None) for name in fields}
    except Exception:
        return None
    return None


def _flat(value: dict[Any, Any], limit: int) -> dict[str, Any] | None:
    """A copy of a dict of str keys and leaf values (str, int, bool, None) whose strings fit in
    ``limit`` (what ``_convert`` makes of it, without its set-up); None for any other dict."""
    left = limit
    copy: dict[str, Any] = {}
    for key, item in value.items():
        leaf = type(item)
        if type(key) is not str:
            return None
        if leaf is str:
            left -= len(item)
            if left < 0:
                return None
        elif not (item is None or leaf is int or leaf is bool):
            return None
        copy[key] = item
    return copy


def to_jsonable(value: Any, limit: int, memo: Memo | None = None) -> tuple[Any, bool]:
    """(JSON-able copy of ``value`` within about ``limit`` characters, whether it was cut).
    ``memo``: conversions shared by the spans of one trace (see ``Memo``)."""
    kind = type(value)
    if kind is str:
        if len(value) < limit:
            return value, False
    elif value is None or kind is int or kind is bool:
        return value, False
    elif kind is dict:
        if limit > 0 and len(value) <= MAX_ITEMS:
            flat = _flat(value, limit)
            if flat is not None:
                return flat, False
    elif isinstance(value, str) and len(value) <= limit:  # a subclass (LangChain's TextAccessor)
        return str.__str__(value), False
    if memo is not None and kind is not str:  # a long string is cut in one step: not worth holding
        known = memo.values.get(id(value))
        if known is not None and known[0] is value and known[1] == limit:
            return known[2], known[3]
    budget = _Budget(limit, memo)
    try:
        converted = _convert(value, budget, 0, set())
    except Exception:  # a hostile object: keep a marker rather than lose the span
        return f"<unserializable {type(value).__qualname__}>", True
    if memo is not None and kind is not str:
        memo.values[id(value)] = (value, limit, converted, budget.truncated)
    return converted, budget.truncated


def dumps(value: Any) -> str:
    """Compact JSON of an already JSON-able value."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_safe_repr)
