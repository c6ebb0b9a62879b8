"""Test what your agent traces, without a server or a store.

``capture()`` configures spanmux with an ``InMemoryBackend`` for the length of a ``with`` block and
hands back what reached it: the same finished, processed spans and scores every backend receives
(sampling, ``capture_content``, token estimates and costs applied), and the experiment runs of
``spanmux.evaluate``. ``render_tree`` turns a trace
into lines to assert on; ``reset()`` returns spanmux to its unconfigured state between tests.

    from spanmux.testing import capture, render_tree

    def test_agent_traces_its_tool_call():
        with capture() as captured:
            run_my_agent("2 + 3?")
        (trace,) = captured.traces()
        assert render_tree(trace) == ["agent: my-agent", "  tool: add", "  llm: gpt-4o-mini"]

Framework-free: importing this module imports no test runner. ``InMemoryBackend`` also works
alone, listed in ``spanmux.configure({"backends": ["local", InMemoryBackend()]})``; told to
``fail()``, it answers like a server that is down, to test your own failure handling.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spanmux import runtime
from spanmux.backend import BaseBackend, ExportError
from spanmux.model import ExperimentRun, Score, Span
from spanmux.open_spans import forget_failures
from spanmux.pipeline import Pipeline
from spanmux.store import order_tree

if TYPE_CHECKING:
    from spanmux.config_schemas import ObservabilityConfig

__all__ = ["Captured", "InMemoryBackend", "capture", "render_tree", "reset"]


@dataclass
class _Failure:
    """How an InMemoryBackend fails: ``remaining`` calls (None: until ``recover()``), or only every
    ``every``-th call; ``calls`` counts the calls since ``fail()``."""

    error: ExportError
    remaining: int | None
    every: int
    calls: int = 0

    def next_error(self) -> ExportError | None:
        self.calls += 1
        if self.every and self.calls % self.every:
            return None
        if self.remaining is not None:
            self.remaining -= 1
        # a fresh exception per call: one raised object would pile up tracebacks
        template = self.error
        return ExportError(str(template), retryable=template.retryable, retry_after=template.retry_after)

    @property
    def over(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


class InMemoryBackend(BaseBackend):
    """A backend that keeps every span, score and experiment run it receives, in arrival order
    (redelivered records twice: it does not upsert as real backends do). Thread-safe: its lane
    appends while the test reads. ``fail()`` makes it refuse batches like a server that is down (a
    retryable ``ExportError``), so the lane retries and spools them as it would for a real
    backend; ``recover()`` brings it back."""

    def __init__(self, name: str = "memory") -> None:
        super().__init__()
        self.name = name
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._scores: list[Score] = []
        self._experiments: list[ExperimentRun] = []
        self._failure: _Failure | None = None
        self.export_calls = 0
        """Every ``export`` call, failed ones included."""
        self.experiment_calls = 0
        """Every ``export_experiments`` call, failed ones included."""
        self.failed_calls = 0
        """Refused calls, of either kind."""
        self.closed = False

    def __repr__(self) -> str:
        return f"InMemoryBackend({self.name!r})"

    @property
    def spans(self) -> list[Span]:
        """What was delivered so far (a copy; no flush: ``Captured.spans`` flushes first)."""
        with self._lock:
            return list(self._spans)

    @property
    def scores(self) -> list[Score]:
        with self._lock:
            return list(self._scores)

    @property
    def experiments(self) -> list[ExperimentRun]:
        """The experiment runs delivered so far (a copy), each after the spans of its items."""
        with self._lock:
            return list(self._experiments)

    @property
    def failing(self) -> bool:
        """Whether it was told to fail and still is."""
        with self._lock:
            return self._failure is not None

    def fail(self, times: int | None = None, *, every: int = 0, error: ExportError | None = None) -> None:
        """Refuse the next ``times`` calls (None: every call until ``recover()``), or with
        ``every=n`` only each n-th call (an intermittent server). ``export_experiments`` is a call
        too: a batch that carries an experiment run takes two (spans, then the run), so with
        ``every=2`` it never gets through, as with a real server refusing every other request.
        ``error`` is what to raise; by default a retryable "connection refused". Pass
        ``ExportError(..., retryable=False)`` for a refusal that retrying cannot fix, or
        ``retry_after=`` for a 429."""
        if times is not None and times < 1:
            raise ValueError("times must be at least 1 (or None: until recover())")
        if every < 0:
            raise ValueError("every must be 0 (every call) or a positive n")
        refusal = error or ExportError(f"{self.name} backend is down (connection refused)", retryable=True)
        with self._lock:
            self._failure = _Failure(refusal, times, every)

    def recover(self) -> None:
        """Accept batches again (the spooled ones arrive at the lane's next retry or flush)."""
        with self._lock:
            self._failure = None

    def clear(self) -> None:
        """Forget what was received (the counters stay)."""
        with self._lock:
            self._spans.clear()
            self._scores.clear()
            self._experiments.clear()

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        with self._lock:
            self.export_calls += 1
            error = self._refusal()
            if error is None:
                self._spans.extend(spans)
                self._scores.extend(scores)
        if error is not None:
            raise error

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        with self._lock:
            self.experiment_calls += 1
            error = self._refusal()
            if error is None:
                self._experiments.extend(runs)
        if error is not None:
            raise error

    def _refusal(self) -> ExportError | None:
        """What this call raises under ``fail()`` (None: accepted). Called with the lock held."""
        failure = self._failure
        error = failure.next_error() if failure is not None else None
        if failure is not None and failure.over:
            self._failure = None
        if error is not None:
            self.failed_calls += 1
        return error

    def shutdown(self, timeout: float) -> None:
        self.closed = True  # what it received stays readable


def render_tree(spans: Iterable[Span]) -> list[str]:
    """One line per span, ``"<kind>: <name>"`` indented two spaces per level, parents before
    their children and siblings by start time (the order ``spanmux show`` prints). Spans of
    several traces come trace by trace, earliest first; a span whose parent is not among them
    starts a tree of its own."""
    lines: list[str] = []
    for trace in _by_trace(spans):
        depth: dict[str, int] = {}
        for span in trace:
            level = depth[span.parent_id] + 1 if span.parent_id in depth else 0
            depth[span.span_id] = level
            lines.append(f"{'  ' * level}{span.kind}: {span.name}")
    return lines


def _by_trace(spans: Iterable[Span]) -> list[list[Span]]:
    """Each trace's spans in tree order, traces by their earliest start (then by arrival)."""
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    ordered = sorted(traces.values(), key=lambda trace: min(s.start_ns for s in trace))
    return [order_tree(trace) for trace in ordered]


class Captured:
    """What a ``capture()`` block emitted. Every read flushes first and fails (AssertionError)
    when the backend did not get everything in time; ``backend`` reads without flushing."""

    def __init__(self, backend: InMemoryBackend, pipeline: Pipeline | None, settings: ObservabilityConfig,
                 flush_timeout: float) -> None:
        self.backend = backend
        self.settings = settings
        self._pipeline = pipeline
        self._flush_timeout = flush_timeout

    def flush(self) -> None:
        """Wait until the backend received everything emitted so far; AssertionError if not."""
        if self._pipeline is None or self._pipeline.flush(self._flush_timeout):
            return
        hint = " (it was told to fail(): read captured.backend.spans instead)" if self.backend.failing else ""
        raise AssertionError(f"spanmux.flush did not deliver everything to {self.backend!r} within "
                             f"{self._flush_timeout:g}s{hint}")

    @property
    def spans(self) -> list[Span]:
        """Every finished span, in the order the backend received them."""
        self.flush()
        return self.backend.spans

    @property
    def scores(self) -> list[Score]:
        self.flush()
        return self.backend.scores

    @property
    def experiments(self) -> list[ExperimentRun]:
        """Every experiment run (``spanmux.evaluate``) the block finished, in delivery order."""
        self.flush()
        return self.backend.experiments

    def traces(self) -> list[list[Span]]:
        """The spans of each trace in tree order (as ``render_tree`` lists them), earliest trace
        first: ``(trace,) = captured.traces()`` when one trace is expected."""
        return _by_trace(self.spans)

    def trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace in tree order (empty when none arrived)."""
        found = [span for span in self.spans if span.trace_id == trace_id]
        return order_tree(found)


@contextmanager
def capture(*, flush_timeout: float = 10.0, **options: Any) -> Iterator[Captured]:
    """Configure spanmux with an ``InMemoryBackend`` for the block; yield what it receives.

    ``options`` are the usual configuration keys (``capture_content=False``, ``sample_rate=0.5``,
    ``pricing={...}``...). Undelivered batches wait in a temporary spool removed afterwards, unless
    ``spool_dir`` is given. At the end of the block spanmux is flushed (AssertionError when the
    backend did not get everything, unless it was left failing or the block raised) and the
    previous configuration is active again, as it was."""
    if "backends" in options:
        raise TypeError("capture() traces into its own InMemoryBackend; to add it beside other backends, "
                        "call spanmux.configure({'backends': [..., InMemoryBackend()]})")
    backend = InMemoryBackend()
    own_spool = None if "spool_dir" in options else tempfile.mkdtemp(prefix="spanmux-capture-")
    config = {"spool_dir": own_spool, **options, "backends": [backend]}
    try:
        state = runtime.prepare(config)
    except BaseException:
        if own_spool is not None:
            shutil.rmtree(own_spool, ignore_errors=True)
        raise
    assert state.settings is not None
    previous = runtime.install(state)
    captured = Captured(backend, state.pipeline, state.settings, flush_timeout)
    raised = False
    try:
        yield captured
    except BaseException:
        raised = True
        raise
    finally:
        try:
            if not raised and not backend.failing:
                captured.flush()
        finally:
            _restore(previous, state, short=raised or backend.failing)
            if own_spool is not None:
                shutil.rmtree(own_spool, ignore_errors=True)


def _restore(previous: runtime.State, ours: runtime.State, *, short: bool) -> None:
    """Put the configuration from before ``capture()`` back, unless the block configured spanmux
    itself (that one then stays, and the one displaced is shut down); stop the capture's pipeline."""
    if not runtime.reinstate(previous, ours) and previous.pipeline is not None:
        previous.pipeline.shutdown(1.0)
    if ours.pipeline is not None:
        ours.pipeline.shutdown(0.5 if short else 5.0)


def reset(timeout: float = 1.0) -> None:
    """Back to the state of a fresh process: every framework uninstrumented, the pipeline shut down
    (waiting at most ``timeout`` for its backends) and the configuration forgotten, so the next
    span configures from the environment again. Call it between tests."""
    runtime.uninstrument()
    for name in runtime._INTEGRATIONS:  # also an integration's own instrument(), which runtime does not track
        module = sys.modules.get(f"spanmux.integrations.{name}")
        if module is not None:
            module.uninstrument()
    runtime.reset(timeout)
    forget_failures()
