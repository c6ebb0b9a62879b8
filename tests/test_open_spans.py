"""The open-span core (``spanmux.open_spans``) on its own: the failure guard, the parent rule, the
bound on open spans, ending a span, and the derived facts kept in one place (time to first token,
span kinds, ids, the secret filter)."""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from typing import Any, get_args

import msgspec
import pytest

import spanmux
from spanmux import runtime
from spanmux.context import SpanContext
from spanmux.model import SPAN_KINDS, Span, SpanKind, TraceAttributes, new_span_id, new_trace_id, time_to_first_token_ns
from spanmux.open_spans import HookGuard, OpenSpan, OpenSpans, error_info, hook_guard, integration_failures
from spanmux.processors import without_secrets


class Recorded(OpenSpan):
    __slots__ = ()
    framework = "manual"


@pytest.fixture
def emitted(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What ``finish()`` hands to the pipeline, without a pipeline."""
    sink: list[Any] = []
    monkeypatch.setattr(runtime, "emit", sink.append)
    return sink


# ---- the failure guard ----------------------------------------------------------------------

class Hooks:
    def __init__(self, guard: HookGuard) -> None:
        self.guard = guard
        self.after: list[str] = []

    def on_start(self, error: BaseException | None) -> None:
        with self.guard:
            if error is not None:
                raise error
            self.after.append("ran")

    def enter(self, error: BaseException) -> None:
        with self.guard:
            raise error


def test_guard_never_raises_counts_every_failure_and_logs_once_per_hook_and_error_type(
        caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("spanmux.tests.guard")
    guard = HookGuard("demo", logger, names={"enter": "new_span"})
    hooks = Hooks(guard)
    caplog.set_level(logging.DEBUG, logger=logger.name)
    for _ in range(3):
        hooks.on_start(KeyError("k"))
    hooks.on_start(ValueError("v"))
    hooks.enter(KeyError("k"))  # another hook: counted under the framework's name for it
    hooks.on_start(None)

    assert hooks.after == ["ran"]
    assert guard.stats() == {"total": 5, "by_hook": {"on_start": 4, "new_span": 1}}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [(r.args[1], r.args[2]) for r in warnings] == [  # type: ignore[index]
        ("on_start", "KeyError"), ("on_start", "ValueError"), ("new_span", "KeyError")]
    assert all(r.exc_info and r.exc_info[0] is not None for r in warnings), "first failures keep their traceback"
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 2  # the repeats, quietly


def test_guard_lets_interrupts_through() -> None:
    hooks = Hooks(HookGuard("demo", logging.getLogger("spanmux.tests.guard")))
    with pytest.raises(KeyboardInterrupt):
        hooks.on_start(KeyboardInterrupt())
    assert hooks.guard.total == 0


def test_guard_record_inside_an_except_block_and_stats() -> None:
    name = f"demo-{uuid.uuid4().hex[:8]}"
    guard = hook_guard(name, logging.getLogger("spanmux.tests.guard"))
    assert hook_guard(name, logging.getLogger("other")) is guard, "one guard per integration and process"
    assert name not in integration_failures()
    try:
        raise RuntimeError("partial result")
    except RuntimeError:
        guard.record("on_end(details)")
    assert integration_failures()[name] == {"total": 1, "by_hook": {"on_end(details)": 1}}
    assert spanmux.stats()["integration_failures"][name]["total"] == 1


# ---- the parent rule ------------------------------------------------------------------------

def test_under_the_framework_parent_with_its_trace(emitted: list[Any]) -> None:
    attrs = TraceAttributes(user_id="u")
    parent = Recorded("parent", "chain", None, SpanContext("t" * 32, "p" * 16, time.time_ns(), attrs))
    child = Recorded("child", "tool", {"q": 1}, parent)
    assert (child.trace_id, child.parent_id, child.trace) == ("t" * 32, parent.span_id, attrs)


def test_a_manual_span_opened_inside_the_framework_parent_is_closer(emitted: list[Any]) -> None:
    with spanmux.span("root"):
        parent = Recorded("parent", "chain", None)
        with spanmux.span("manual") as manual:  # later, in the same trace: inside the parent (a tool body)
            child = Recorded("child", "llm", None, parent)
            assert child.parent_id == manual.span_id and child.trace_id == parent.trace_id
            lazy = Recorded("lazy", "llm", None, parent, None, True)  # exact_parent: no manual check
            assert lazy.parent_id == parent.span_id
    elsewhere = Recorded("other", "chain", None)
    with spanmux.span("unrelated"):  # a manual span of another trace is never the closer parent
        assert Recorded("child", "llm", None, elsewhere).parent_id == elsewhere.span_id


def test_a_manual_span_around_the_framework_parent_is_not_its_child(emitted: list[Any]) -> None:
    with spanmux.span("manual") as manual:
        parent = Recorded("parent", "chain", None)
        assert parent.parent_id == manual.span_id  # no framework parent: the innermost open span
        child = Recorded("child", "llm", None, parent)
        assert child.parent_id == parent.span_id
        same_tick = SpanContext(manual.trace_id, "f" * 16, manual.start_ns, None)
        tied = Recorded("tied", "llm", None, same_tick)
        assert tied.parent_id == "f" * 16, "on a tie the framework parent wins"


def test_without_any_parent_a_new_trace_with_the_trace_context(emitted: list[Any]) -> None:
    with spanmux.trace_context(session_id="s1"):
        first = Recorded("a", "chain", None)
    second = Recorded("b", "chain", None)
    assert first.parent_id is None and first.trace is not None and first.trace.session_id == "s1"
    assert second.trace is None and len({first.trace_id, second.trace_id}) == 2


# ---- the registry and its bound ---------------------------------------------------------------

def test_open_spans_lookup_and_pop(emitted: list[Any]) -> None:
    spans: OpenSpans[Recorded] = OpenSpans("demo")
    span = Recorded("a", "chain", None)
    spans.add("id-1", span)
    assert spans.get("id-1") is span and spans.get("nope") is None and len(spans) == 1
    assert spans.pop("id-1", None) is span and spans.pop("id-1", None) is None
    assert spans.by_id == {}


def test_open_spans_are_bounded_oldest_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    spans: OpenSpans[Recorded] = OpenSpans("Demo", limit=3)
    caplog.set_level(logging.WARNING, logger="spanmux")
    for n in range(7):
        spans.add(n, Recorded(f"s{n}", "chain", None))
    assert list(spans.by_id) == [4, 5, 6] and spans.evicted == 4
    dropped = [r.getMessage() for r in caplog.records if "never ended" in r.getMessage()]
    assert dropped == ["spanmux: 1 Demo spans never ended and were dropped"], "logged once, then every 10000"


# ---- ending a span ----------------------------------------------------------------------------

def test_finish_builds_one_span_with_time_to_first_token_and_error(emitted: list[Any]) -> None:
    span = Recorded("call", "llm", ["hi"])
    span.first_token()
    first = span.completion_start_ns
    span.first_token()  # only the first token counts
    span.output = "hello"
    span.finish(exception=ValueError("bad answer"))
    (done,) = emitted
    assert isinstance(done, Span) and done.framework == "manual" and done.kind == "llm"
    assert done.completion_start_ns == first and done.start_ns <= first <= done.end_ns
    assert done.attributes is not None and done.attributes["llm.streaming"] is True
    assert done.attributes["llm.time_to_first_token_ms"] == time_to_first_token_ns(done) / 1e6  # type: ignore[operator]
    assert done.status == "error" and done.error is not None and done.error.type == "ValueError"
    assert done.error.message == "bad answer" and "ValueError: bad answer" in (done.error.traceback or "")


def test_a_span_that_did_not_stream_has_no_time_to_first_token(emitted: list[Any]) -> None:
    Recorded("call", "llm", None).finish(end_ns=123)
    (done,) = emitted
    assert done.completion_start_ns is None and time_to_first_token_ns(done) is None
    assert done.attributes is None and done.end_ns == 123 and done.status == "ok"


def test_error_info_of_an_exception_that_cannot_be_shown() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str")

    info = error_info(Unprintable())
    assert (info.type, info.message, info.traceback) == ("Unprintable", "<Unprintable>", None)


# ---- one place for each derived fact -------------------------------------------------------------

def test_span_kinds_are_one_type_and_old_records_still_decode() -> None:
    assert get_args(SpanKind) == SPAN_KINDS and "llm" in SPAN_KINDS
    # a record as 0.1 wrote it to the spool: kind is a plain string
    old = msgspec.msgpack.encode({"trace_id": "t" * 32, "span_id": "s" * 16, "parent_id": None, "name": "n",
                                  "kind": "retriever", "framework": "manual", "start_ns": 1, "end_ns": 2})
    assert msgspec.msgpack.decode(old, type=Span).kind == "retriever"
    bad = old.replace(b"retriever", b"retriever"[:-1] + b"X")
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(bad, type=Span)


def test_ids_are_opentelemetry_hex_and_ignore_the_programs_random_seed() -> None:
    trace_id, span_id = new_trace_id(), new_span_id()
    assert len(trace_id) == 32 and len(span_id) == 16 and int(trace_id, 16) and int(span_id, 16)
    assert trace_id == trace_id.lower()
    random.seed(7)
    first = new_span_id()
    random.seed(7)
    assert new_span_id() != first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_draws_other_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_span_id().encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child = os.read(read, 16).decode()
    assert child != new_span_id() and len(child) == 16


def test_one_secret_filter_for_every_framework() -> None:
    params = {"temperature": 0.2, "max_tokens": 10, "top_k": 3, "api_key": "sk", "openai_api_key": "sk",
              "apikey": "sk", "api_base": "https://x", "Authorization": "Bearer sk", "auth": "x",
              "access_token": "t", "private_key": "k", "client_secret": "s", "password": "p",
              "default_headers": {"a": "b"}, "cookie": "c", "credentials": "c",
              "extra": {"temperature": 1, "secret": "s"}}
    assert without_secrets(params) == {"temperature": 0.2, "max_tokens": 10, "top_k": 3, "extra": {"temperature": 1}}


class _Demo(OpenSpan):
    __slots__ = ()
    framework = "manual"


def test_finish_fills_every_field_of_the_span(emitted: list[Any]) -> None:
    # finish() builds the Span positionally (the cheap call on the framework's thread): each value
    # lands in its own field, and Span's fields keep their order (new ones only at the end)
    assert Span.__struct_fields__ == (
        "trace_id", "span_id", "parent_id", "name", "kind", "framework", "start_ns", "end_ns", "status", "error",
        "input", "output", "model", "usage", "cost", "completion_start_ns", "attributes", "trace", "truncated")
    from spanmux.model import Cost, ModelInfo, Usage

    trace = TraceAttributes(name="t")
    parent = SpanContext("a" * 32, "b" * 16, 1, trace)
    span = _Demo("call", "llm", {"q": 1}, parent, "c" * 16)
    span.output, span.model, span.usage = "out", ModelInfo("m"), Usage(input_tokens=3)
    span.cost, span.completion_start_ns = Cost(total=1.0), span.start_ns + 5
    span.set_attribute("k", "v")
    span.finish(end_ns=span.start_ns + 10, exception=ValueError("boom"))
    (done,) = emitted
    assert isinstance(done, Span)
    assert (done.trace_id, done.span_id, done.parent_id, done.name, done.kind, done.framework) == (
        "a" * 32, "c" * 16, "b" * 16, "call", "llm", "manual")
    assert (done.end_ns - done.start_ns, done.status, done.error and done.error.type) == (10, "error", "ValueError")
    assert (done.input, done.output, done.model, done.usage, done.cost) == (
        {"q": 1}, "out", ModelInfo("m"), Usage(input_tokens=3), Cost(total=1.0))
    assert done.completion_start_ns == done.start_ns + 5 and done.trace is trace and not done.truncated
    assert done.attributes is not None and done.attributes["k"] == "v" and done.attributes["llm.streaming"] is True
