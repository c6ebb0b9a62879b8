"""Whatever a framework hands us becomes bounded JSON without raising."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pydantic
from conftest import TracedStore

import spanmux
from spanmux.serialize import to_jsonable


class NoRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Model(pydantic.BaseModel):
    name: str
    tags: list[str] = []


def test_hostile_values_become_json() -> None:
    cyclic: dict[str, Any] = {"a": 1}
    cyclic["self"] = cyclic
    values = [None, cyclic, b"\x00\xff", NoRepr(), Point(1, 2), Model(name="m"), {1: "int key"},
              {"nan": float("nan")}, (1, {2, 3})]
    for value in values:
        out, _ = to_jsonable(value, 10_000)
        json.dumps(out)  # must not raise
    assert to_jsonable(cyclic, 1000)[0] == {"a": 1, "self": "<cycle>"}
    assert to_jsonable(Point(1, 2), 1000)[0] == {"x": 1, "y": 2}
    assert to_jsonable(Model(name="m"), 1000)[0] == {"name": "m", "tags": []}
    assert to_jsonable(b"abc", 1000)[0] == "<3 bytes>"
    assert "NoRepr" in to_jsonable(NoRepr(), 1000)[0]


def test_big_values_are_truncated_and_marked() -> None:
    out, truncated = to_jsonable("x" * 10_000_000, 1000)
    assert truncated and len(out) < 1200 and "truncated" in out
    out, truncated = to_jsonable(list(range(100_000)), 1000)
    assert truncated and len(out) <= 1001
    deep: Any = []
    for _ in range(100):
        deep = [deep]
    out, _ = to_jsonable(deep, 1000)
    json.dumps(out)


def test_spans_with_hostile_inputs_are_still_recorded(traced: TracedStore) -> None:
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with spanmux.span("hostile", input={"big": "y" * 10_000_000, "cyc": cyclic, "b": b"1", "r": NoRepr()}) as s:
        s.set_output(NoRepr())
    (span,) = traced.only_trace()
    assert span.truncated
    assert len(json.dumps(span.input)) < 70_000
    assert span.input["cyc"] == ["<cycle>"]  # type: ignore[index]
