"""The pages' state lives in the URL query: this module reads it into a ``TraceFilter`` (the store's
one filter type) and writes it back into links, so every view is linkable and back/forward safe."""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import msgspec

from spanmux.store import TraceCursor, TraceFilter

FILTER_KEYS = ("range", "since", "until", "name", "errors", "user", "session", "tag", "meta", "model",
               "min_ms", "min_cost", "q")
"""The query parameters of the trace filters, shared by the list, compare and over-time pages."""
RANGES = {"1h": 3600, "24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}


class Query(Mapping[str, Any]):
    """Read access to a request's query (a Starlette ``QueryParams`` or a plain dict of lists)."""

    def __init__(self, params: Any) -> None:
        self._params = params

    def get_list(self, key: str) -> list[str]:
        if hasattr(self._params, "getlist"):
            return [str(v) for v in self._params.getlist(key)]
        value = self._params.get(key)
        return [] if value is None else list(value) if isinstance(value, list) else [str(value)]

    def __getitem__(self, key: str) -> str:
        values = self.get_list(key)
        if not values:
            raise KeyError(key)
        return values[-1]

    def __iter__(self) -> Any:
        return iter(dict.fromkeys(self._params.keys()))

    def __len__(self) -> int:
        return len(set(self._params.keys()))

    def text(self, key: str) -> str | None:
        value = self.get(key)
        value = value.strip() if isinstance(value, str) else None
        return value or None


class Filters(msgspec.Struct, frozen=True):
    """The parsed filters: the store's ``TraceFilter``, the full-text query, the raw values to put
    back into the form, and the problems found (a bad value is ignored and named on the page)."""

    where: TraceFilter
    text: str | None
    form: dict[str, Any]
    problems: list[str]


def _time(value: str, label: str, problems: list[str]) -> int | None:
    """``YYYY-MM-DDTHH:MM[:SS]`` in UTC, or epoch seconds, as epoch nanoseconds."""
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        problems.append(f"{label}: not a time ({value!r}); use YYYY-MM-DDTHH:MM (UTC)")
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return int(parsed.timestamp() * 1e9)


def _number(value: str | None, label: str, problems: list[str]) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        problems.append(f"{label}: not a number ({value!r})")
        return None
    return number


def parse_filters(query: Query, now: float | None = None) -> Filters:
    """The filters of a page's query; unknown or empty parameters are ignored."""
    problems: list[str] = []
    fields: dict[str, Any] = {}
    span = query.text("range")
    if span is not None:
        if span == "all":
            pass
        elif span in RANGES:
            fields["since_ns"] = int(((now if now is not None else time.time()) - RANGES[span]) * 1e9)
        else:
            problems.append(f"range: all or one of {', '.join(RANGES)}")
    for key, field in (("since", "since_ns"), ("until", "until_ns")):
        value = query.text(key)
        if value is not None and (parsed := _time(value, key, problems)) is not None:
            fields[field] = max(parsed, fields.get(field, parsed)) if field == "since_ns" else parsed
    for key, field in (("name", "name"), ("user", "user_id"), ("session", "session_id"), ("tag", "tag"),
                       ("model", "model")):
        value = query.text(key)
        if value is not None:
            fields[field] = value
    if query.text("errors") in ("1", "on", "true", "yes"):
        fields["errors_only"] = True
    metadata: dict[str, Any] = {}
    for item in query.get_list("meta"):
        item = item.strip()
        if not item:
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            problems.append(f"meta: write KEY=VALUE ({item!r})")
            continue
        metadata[key.strip()] = value.strip()
    if metadata:
        fields["metadata"] = metadata
    min_ms = _number(query.text("min_ms"), "min duration", problems)
    if min_ms is not None:
        fields["min_duration_ms"] = min_ms
    min_cost = _number(query.text("min_cost"), "min cost", problems)
    if min_cost is not None:
        fields["min_cost"] = min_cost
    form: dict[str, Any] = {key: query.text(key) or "" for key in FILTER_KEYS if key != "meta"}
    form["meta"] = [m for m in query.get_list("meta") if m.strip()]
    return Filters(TraceFilter(**fields), query.text("q"), form, problems)


def parse_cursor(query: Query, problems: list[str]) -> TraceCursor | None:
    token = query.text("cursor")
    if token is None:
        return None
    try:
        return TraceCursor.parse(token)
    except ValueError:
        problems.append("cursor: not a page position; showing the first page")
        return None


def link(path: str, form: Mapping[str, Any], **extra: Any) -> str:
    """``path`` with the filters of ``form`` (empty ones left out) and ``extra`` parameters."""
    pairs: list[tuple[str, str]] = []
    for key, value in {**form, **extra}.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((key, str(v)) for v in values if v not in (None, "", False))
    return f"{path}?{urlencode(pairs)}" if pairs else path
