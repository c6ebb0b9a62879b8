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


class Message:
    """A chat message the way LangChain's look to the serializer: ``type`` and ``content``."""

    def __init__(self, role: str | None, content: Any) -> None:
        self.type, self.content = role, content


def test_messages_of_a_known_class_convert_the_same_the_second_time() -> None:
    # the first instance goes through every test; later ones of the class skip to the message
    first = to_jsonable([Message("human", "hi"), Message("ai", ["a", {"b": 1}])], 1000)
    again = to_jsonable([Message("human", "hi"), Message("ai", ["a", {"b": 1}])], 1000)
    assert first == again == ([{"role": "human", "content": "hi"}, {"role": "ai", "content": ["a", {"b": 1}]}], False)
    # an instance of the class that is no message after all is converted like any object
    odd = Message(None, None)
    assert to_jsonable(odd, 1000)[0] == repr(odd)
    looped = Message("ai", None)
    looped.content = [looped]
    assert to_jsonable(looped, 1000)[0] == {"role": "ai", "content": ["<cycle>"]}


def test_plain_values_keep_the_bounds_at_the_edges() -> None:
    # strings inline in dicts and lists share the one budget: the one that does not fit is cut
    out, cut = to_jsonable({"a": "x" * 60, "b": ["y" * 30, "z" * 30]}, 100)
    assert cut and out["a"] == "x" * 60 and out["b"][0] == "y" * 30 and "truncated" in out["b"][1]
    assert to_jsonable(("t", 1, None, True), 100) == (["t", 1, None, True], False)
    assert to_jsonable({"k": "v" * 99}, 100) == ({"k": "v" * 99}, False)
    many, cut = to_jsonable([{"i": i} for i in range(1500)], 100_000)
    assert cut and len(many) == 1001 and many[-1] == "...500 more items"
    source = {"inner": {"list": [1, 2]}}
    copy, _ = to_jsonable(source, 100)
    assert copy == source and copy is not source and copy["inner"] is not source["inner"]


def _fresh(value: Any, limit: int) -> tuple[Any, bool]:
    return to_jsonable(value, limit)


def test_a_memo_gives_what_a_fresh_conversion_gives() -> None:
    # the objects the spans of one trace share are converted once; every answer is still the one
    # a fresh conversion makes, whatever the budget left, the depth or a cycle
    from spanmux.serialize import MAX_DEPTH, Memo

    memo = Memo()
    memo.scope("trace-1")
    hi, tool = Message("human", "hi there"), Message("ai", [{"name": "add", "args": {"a": 1}}])
    looped = Message("ai", None)
    looped.content = [looped]
    deep: Any = tool
    for _ in range(MAX_DEPTH - 3):
        deep = [deep]
    cases = [
        ([hi, tool], 1000), ([hi, tool], 1000), ({"messages": [hi, tool]}, 1000), (tool, 1000),
        (["x" * 990, hi], 1000), ([hi, "y" * 20, tool], 40), ([looped, looped], 1000), (deep, 1000), ([tool], 1000),
        ({"a": [hi]}, 12), ([hi, hi, hi], 20),
    ]
    for value, limit in cases:
        assert to_jsonable(value, limit, memo) == _fresh(value, limit), (value, limit)
    # a shared message is converted once: its dict is the same object in both answers
    first, _ = to_jsonable([hi], 1000, memo)
    second, _ = to_jsonable({"m": [hi]}, 1000, memo)
    assert first[0] is second["m"][0]


def test_a_memo_forgets_at_the_next_trace() -> None:
    # a program that reuses and changes one input dict between invokes gets each invoke's value
    from spanmux.serialize import Memo

    memo = Memo()
    inputs: dict[str, Any] = {"q": ["first"]}
    message = Message("human", "one")
    memo.scope("trace-1")
    assert to_jsonable(inputs, 1000, memo)[0] == {"q": ["first"]}
    assert to_jsonable([message], 1000, memo)[0] == [{"role": "human", "content": "one"}]
    inputs["q"] = ["second"]
    message.content = "two"
    memo.scope("trace-2")
    assert to_jsonable(inputs, 1000, memo)[0] == {"q": ["second"]}
    assert to_jsonable([message], 1000, memo)[0] == [{"role": "human", "content": "two"}]
