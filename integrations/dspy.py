"""DSPy integration: one ``BaseCallback`` that turns DSPy's callback hooks into spans.

    dspy.configure(callbacks=[Callback()])      # or spanmux.instrument("dspy")

Modules become ``chain`` spans (``ReAct`` an ``agent``, ``Retrieve`` a ``retriever``), LM calls
``llm``, tools ``tool``, adapter format/parse ``parser`` and ``Evaluate`` ``evaluator``.

Parents come from DSPy's own call ids: inside ``on_*_start`` the context variable
``ACTIVE_CALL_ID`` still holds the caller's call id (DSPy sets the new id only after the start
hooks ran), and DSPy carries it into ``dspy.Parallel`` threads, ``asyncify`` workers and ``acall``
tasks. Open spans live in one ``spanmux.open_spans.OpenSpans`` keyed by call id, shared by every
``Callback`` instance so that a call seen by two instances is recorded once. Every hook runs under
the integration's failure guard.

Token usage, model and cost are not handed to ``on_lm_end``; DSPy writes them into the LM's
history entry just before the call returns. That entry holds the very list object the call
returns (``entry["outputs"] is outputs``), so ``on_lm_end`` finds its own entry by identity: exact
even when threads share one LM and append to its history concurrently.

``dspy.Evaluate`` becomes an experiment run (``spanmux.evaluate``'s record): each example's
program call starts a trace of its own (tagged like an experiment item), the metric's value is
its item score (``spanmux.score`` on that trace, named after the metric), and at the end one
``ExperimentRun`` with every example goes to every backend. Examples are matched to their trace
by the prediction object the program returned; an example whose program raised keeps the
``Evaluate`` span's trace.

Not traced: optimizer ``compile`` and code-interpreter hooks (module calls inside a compile become
traces of their own). ``dspy.Parallel`` called outside any DSPy module starts one trace per item:
its worker threads inherit DSPy's call id, not spanmux's manual-span context.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from typing import Any

from dspy.clients import base_lm
from dspy.primitives.example import Example
from dspy.utils import callback_context
from dspy.utils.callback import BaseCallback

from spanmux import attributes as attr
from spanmux import runtime
from spanmux.context import SpanContext, register_provider
from spanmux.model import Cost, ExperimentItem, ExperimentRun, ModelInfo, SpanKind, TraceAttributes, Usage
from spanmux.model import new_trace_id as _new_trace_id
from spanmux.open_spans import OpenSpan, OpenSpans, hook_guard
from spanmux.usage import normalize_usage, reported_cost

log = logging.getLogger("spanmux.integrations.dspy")

__all__ = ["Callback", "instrument", "uninstrument"]

_HISTORY_SCAN = 256
"""How many recent history entries ``on_lm_end`` searches for its own (concurrent calls append)."""


class _Call(OpenSpan):
    """An open DSPy call: the open span, the ``Callback`` that opened it and the LM it called."""

    __slots__ = ("owner", "lm")
    framework = "dspy"
    owner: Callback
    lm: Any


_spans: OpenSpans[_Call] = OpenSpans("DSPy")
_open = _spans.by_id  # the open calls by call id (read-only view for tests and debugging)


def _active_context() -> SpanContext | None:
    """Context provider: the span of the DSPy call running right now (a tool body, a module's
    forward), so manual spans and ``spanmux.current_trace_id()`` see it."""
    call_id = callback_context.ACTIVE_CALL_ID.get()
    return _spans.get(call_id) if call_id is not None else None


register_provider(_active_context)


_guard = hook_guard("dspy", log)


def failure_count() -> int:
    """How many hook calls failed in this process (also in ``spanmux.stats()``)."""
    return _guard.total


# -- naming and shaping (cheap: attribute reads, shallow copies) ------------------------------

_labels: dict[Any, str | None] = {}
_kinds: dict[type, SpanKind] = {}
_CACHE_LIMIT = 10_000


def _signature_label(signature: Any) -> str | None:
    """``QA`` for a named signature, ``question -> answer`` for an inline one (cached: building
    the field string costs more than the rest of a start hook)."""
    if signature is None:
        return None
    try:
        return _labels[signature]
    except (KeyError, TypeError):
        pass
    name = getattr(signature, "__name__", None)
    if name and name != "StringSignature":
        label: str | None = str(name)
    else:
        fields = getattr(signature, "signature", None)  # "question -> answer"
        label = str(fields) if fields else (str(name) if name else None)
    try:
        if len(_labels) >= _CACHE_LIMIT:
            _labels.clear()
        _labels[signature] = label
    except TypeError:  # unhashable: not a signature class
        pass
    return label


def _module_signature(instance: Any) -> Any:
    signature = getattr(instance, "signature", None)
    if signature is None:  # ChainOfThought keeps it on its inner Predict
        signature = getattr(getattr(instance, "predict", None), "signature", None)
    return signature


def _module_kind(instance: Any) -> SpanKind:
    cls = type(instance)
    kind = _kinds.get(cls)
    if kind is None:
        import dspy

        retrieve = getattr(dspy, "Retrieve", None)
        if issubclass(cls, dspy.ReAct):
            kind = "agent"
        elif retrieve is not None and issubclass(cls, retrieve):
            kind = "retriever"
        else:
            kind = "chain"
        _kinds[cls] = kind
    return kind


def _module_name(instance: Any) -> str:
    kind_name = type(instance).__name__
    try:
        label = _signature_label(_module_signature(instance))
    except Exception:  # a module whose attributes misbehave still gets a span
        label = None
    return f"{kind_name}({label})" if label else kind_name


def _call_input(inputs: dict[str, Any]) -> Any:
    """``{"args": (...), "kwargs": {...}}`` from DSPy -> the keyword fields, positional args kept."""
    args = inputs.get("args") or ()
    kwargs = inputs.get("kwargs") or {}
    if not args:
        return dict(kwargs)
    return {"args": list(args), **kwargs}


def _fields(value: Any) -> Any:
    """A ``Prediction``/``Example`` as a dict of its fields; anything else unchanged."""
    if isinstance(value, Example):
        try:
            return dict(value.items())
        except Exception:
            return value
    return value


def _split_model(model: str) -> tuple[str, str | None]:
    """``openai/gpt-4o-mini`` -> (``gpt-4o-mini``, ``openai``); a bare name has no provider."""
    provider, sep, name = model.partition("/")
    return (name, provider) if sep and provider and name else (model, None)


def _lm_parameters(lm: Any, call_kwargs: Any) -> dict[str, Any] | None:
    """The LM's settings and the call's keyword arguments; credentials among them (``api_key``)
    are dropped on the worker by the one secret filter (``spanmux.processors.without_secrets``)."""
    merged: dict[str, Any] = {}
    for source in (getattr(lm, "kwargs", None), call_kwargs):
        if isinstance(source, dict):
            merged.update(source)
    params = {k: v for k, v in merged.items() if v is not None and isinstance(k, str)}
    return params or None


def _lm_input(inputs: dict[str, Any]) -> Any:
    messages = inputs.get("messages")
    if messages is not None:
        return messages
    prompt = inputs.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return prompt if prompt is not None else {k: v for k, v in inputs.items() if k != "kwargs"}


def _lm_output(outputs: Any) -> Any:
    if isinstance(outputs, list) and len(outputs) == 1:
        return outputs[0]
    return outputs


def _history_entry(lm: Any, outputs: Any) -> dict[str, Any] | None:
    """The history entry this LM call wrote: it holds the returned object itself."""
    if outputs is None:
        return None
    # the LM's own history, then the process-wide one (kept even when max_history_size is 0)
    for history in (getattr(lm, "history", None), getattr(base_lm, "GLOBAL_HISTORY", None)):
        if not isinstance(history, list) or not history:
            continue
        recent = history[-_HISTORY_SCAN:]  # a slice is an atomic copy under concurrent appends
        for entry in reversed(recent):
            if isinstance(entry, dict) and (entry.get("outputs") is outputs or entry.get("response") is outputs):
                return entry
    return None


def _usage_and_cost(entry: dict[str, Any]) -> tuple[Usage | None, Cost | None]:
    usage = normalize_usage(entry.get("usage"))
    if usage is None or not (usage.input_tokens or usage.output_tokens or usage.total_tokens):
        return None, None  # DummyLM and cache hits report zeros: nothing was billed
    return usage, reported_cost(entry, zero_is_a_cost=False)


# -- the callback --------------------------------------------------------------------------------

class _Evaluation:
    """One running ``dspy.Evaluate`` call seen as an experiment run: its name, run id and, per
    example's program call (the item's root), the trace it started."""

    def __init__(self, name: str, metric: str, call: _Call) -> None:
        self.name = name
        self.metric = metric
        self.run_id = _new_trace_id()
        self.call = call
        self.start_ns = call.start_ns
        self.by_prediction: dict[int, tuple[_Call, int]] = {}  # id(prediction) -> (its program call, end)
        self.roots: dict[str, _Call] = {}  # call id -> program call, while it runs
        from spanmux.experiments import ItemCounter

        self.counter = ItemCounter()
        self.counter.start()

    def item_trace(self, call: _Call) -> None:
        """Make a program call under this Evaluate the root of a trace of its own."""
        from spanmux.experiments import item_trace_fields

        tags, metadata = item_trace_fields(self.name, self.run_id, None, {"dspy.metric": self.metric}, "", None)
        metadata.pop(attr.EXPERIMENT_ITEM_ID, None)  # known once the example is matched, at the end
        call.trace_id, call.parent_id = _new_trace_id(), None
        call.trace = TraceAttributes(name=self.name, tags=tuple(tags), metadata=metadata)
        self.counter.track(call.trace_id)


_evaluations: dict[str, _Evaluation] = {}  # Evaluate call id -> its run


def _score_value(value: Any) -> float | bool | str | None:
    value = getattr(value, "score", value)  # a metric may return a Prediction with a score
    if isinstance(value, bool | str):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _example_input(example: Any) -> Any:
    try:
        return dict(example.inputs())
    except Exception:
        return _fields(example)


def _example_expected(example: Any) -> Any:
    try:
        return dict(example.labels()) or None
    except Exception:
        return None


class Callback(BaseCallback):  # type: ignore[misc]
    """spanmux's DSPy callback: ``dspy.configure(callbacks=[Callback()])``. Never raises."""

    def __init__(self) -> None:
        super().__init__()
        register_provider(_active_context)

    # start/end plumbing
    def _start(
        self, call_id: str, name: str, kind: SpanKind, input: Any, *, lm: Any = None,
        model: ModelInfo | None = None, attributes: dict[str, Any] | None = None,
    ) -> None:
        if runtime.active() is None or _spans.get(call_id) is not None:
            return
        call = _Call(name, kind, input)  # under the caller's call (ACTIVE_CALL_ID, see the provider)
        call.owner, call.lm, call.model, call.attributes = self, lm, model, attributes
        _spans.add(call_id, call)

    def _take(self, call_id: str) -> _Call | None:
        """The call this callback opened (another instance's calls are its own to end)."""
        call = _spans.get(call_id)
        if call is None or call.owner is not self:
            return None
        return _spans.pop(call_id, None)

    def _end(self, call_id: str, output: Any, exception: BaseException | None) -> None:
        call = self._take(call_id)
        if call is not None:
            call.output = _fields(output)
            call.finish(exception=exception)

    # modules
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            caller = callback_context.ACTIVE_CALL_ID.get()
            self._start(call_id, _module_name(instance), _module_kind(instance), _call_input(inputs))
            evaluation = _evaluations.get(caller) if caller is not None else None
            call = _spans.get(call_id)
            if evaluation is not None and call is not None and call.owner is self:
                evaluation.item_trace(call)  # an example's program call: a trace of its own
                evaluation.roots[call_id] = call

    def on_module_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            for evaluation in list(_evaluations.values()):
                root = evaluation.roots.pop(call_id, None)
                if root is not None and outputs is not None and exception is None:
                    evaluation.by_prediction[id(outputs)] = (root, time.time_ns())
            self._end(call_id, outputs, exception)

    # language models
    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            requested = str(getattr(instance, "model", None) or type(instance).__name__)
            name, provider = _split_model(requested)
            model = ModelInfo(name, provider, _lm_parameters(instance, inputs.get("kwargs")))
            operation = "text_completion" if getattr(instance, "model_type", "chat") == "text" else "chat"
            span_attributes: dict[str, Any] = {attr.GEN_AI_OPERATION_NAME: operation,
                                               attr.GEN_AI_REQUEST_MODEL: requested}
            if provider:
                span_attributes[attr.GEN_AI_PROVIDER_NAME] = provider
            self._start(call_id, requested, "llm", _lm_input(inputs), lm=instance, model=model,
                        attributes=span_attributes)

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            call = self._take(call_id)
            if call is None:
                return
            entry = _history_entry(call.lm, outputs) if exception is None else None
            if entry is not None:
                call.usage, call.cost = _usage_and_cost(entry)
                response_model = entry.get("response_model")
                if response_model:
                    call.set_attribute(attr.GEN_AI_RESPONSE_MODEL, str(response_model))
            call.output = _lm_output(outputs)
            call.finish(exception=exception)

    # adapters
    def on_adapter_format_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            data: dict[str, Any] = {"signature": _signature_label(inputs.get("signature")),
                                    "inputs": inputs.get("inputs")}
            if inputs.get("demos"):
                data["demos"] = inputs["demos"]
            self._start(call_id, f"{type(instance).__name__}.format", "parser", data)

    def on_adapter_format_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            self._end(call_id, outputs, exception)

    def on_adapter_parse_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            data = {"signature": _signature_label(inputs.get("signature")), "completion": inputs.get("completion")}
            self._start(call_id, f"{type(instance).__name__}.parse", "parser", data)

    def on_adapter_parse_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            self._end(call_id, outputs, exception)

    # tools
    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            name = str(getattr(instance, "name", None) or type(instance).__name__)
            arguments = inputs.get("kwargs", inputs)
            self._start(call_id, name, "tool", dict(arguments) if isinstance(arguments, dict) else arguments,
                        attributes={attr.GEN_AI_OPERATION_NAME: "execute_tool", attr.GEN_AI_TOOL_NAME: name})

    def on_tool_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            self._end(call_id, outputs, exception)

    # evaluation
    def on_evaluate_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        with _guard:
            program = inputs.get("program")
            metric = inputs.get("metric") or getattr(instance, "metric", None)
            devset = inputs.get("devset") or getattr(instance, "devset", None) or ()
            data = {
                "program": _module_name(program) if program is not None else None,
                "metric": getattr(metric, "__name__", None) or (type(metric).__name__ if metric else None),
                "num_examples": len(devset) if hasattr(devset, "__len__") else None,
            }
            self._start(call_id, type(instance).__name__, "evaluator", data)
            call = _spans.get(call_id)
            if call is not None and call.owner is self:
                name = str(data["program"] or type(instance).__name__)
                _evaluations[call_id] = _Evaluation(name, str(data["metric"] or "metric"), call)

    def on_evaluate_end(self, call_id: str, outputs: Any | None, exception: BaseException | None = None) -> None:
        with _guard:
            call = self._take(call_id)
            if call is None:
                return
            output: Any = outputs
            score = getattr(outputs, "score", None)
            if score is not None:
                results = getattr(outputs, "results", None)
                output = {"score": score, "num_results": len(results) if isinstance(results, list) else None}
            call.output = output
            call.finish(exception=exception)
            evaluation = _evaluations.pop(call_id, None)
            if evaluation is not None:
                evaluation.counter.stop()
                if exception is None:
                    _record_run(evaluation, getattr(outputs, "results", None))


def _record_run(evaluation: _Evaluation, results: Any) -> None:
    """Every example of a finished ``dspy.Evaluate`` as an experiment item, its metric value as the
    item's score, and the run as one ``ExperimentRun`` record for every backend."""
    from spanmux.experiments import Content, content_id, emit_run
    from spanmux.serialize import to_jsonable
    from spanmux.tracer import score

    content = Content()

    if not isinstance(results, list):
        return
    items: list[ExperimentItem] = []
    seen: set[str] = set()
    fallback = evaluation.call
    for index, entry in enumerate(results):
        try:
            example, prediction, value = entry
        except (TypeError, ValueError):
            continue
        input_value = to_jsonable(_example_input(example), 64 * 1024)[0]
        base = content_id(input_value)
        item_id, n = base, 1
        while item_id in seen:
            n += 1
            item_id = f"{base}-{n}"
        seen.add(item_id)
        found_root = evaluation.by_prediction.get(id(prediction))
        root, end_ns = found_root if found_root is not None else (None, fallback.start_ns)
        where = root if root is not None else fallback
        value = _score_value(value)
        scores: dict[str, float | bool | str] = {}
        score_ids: dict[str, str] = {}
        if value is not None and root is not None:
            scores[evaluation.metric] = value
            found = score(root.trace_id, evaluation.metric, value, span_id=root.span_id)
            if found is not None:
                score_ids[evaluation.metric] = found
        figures = evaluation.counter.figures(root.trace_id, set()) if root is not None else {}
        items.append(ExperimentItem(
            item_id=item_id, index=index, trace_id=where.trace_id, span_id=where.span_id, start_ns=where.start_ns,
            end_ns=end_ns, root_end_ns=end_ns, input=content.value(input_value), **figures,
            expected=content.value(_example_expected(example)), output=content.value(_fields(prediction)),
            scores=scores, score_ids=score_ids,
            error=None if root is not None else "the program raised (see the Evaluate trace)",
        ))
    emit_run(ExperimentRun(run_id=evaluation.run_id, name=evaluation.name, start_ns=evaluation.start_ns,
                           end_ns=time.time_ns(), scorers=[evaluation.metric], items=items, source="dspy",
                           metadata={"dspy.metric": evaluation.metric}))


# -- process-wide attachment -----------------------------------------------------------------------

_instrument_lock = threading.Lock()
_installed: Callback | None = None


def _main_config() -> dict[str, Any]:
    """DSPy's process-wide settings dict. Edited directly: ``dspy.configure`` may only be called
    from the thread that configured DSPy first, and instrumenting must not claim that thread."""
    # the module, not the ``settings`` object that ``dspy.dsp.utils`` re-exports under its name
    settings_module = importlib.import_module("dspy.dsp.utils.settings")
    config: dict[str, Any] = settings_module.main_thread_config
    return config


def instrument() -> Callback:
    """Add spanmux's callback to DSPy's global callbacks (idempotent); returns it. Contexts opened
    with ``dspy.context(...)`` before this call keep the callbacks they started with, and a later
    ``dspy.configure(callbacks=[...])`` replaces the list: pass ``Callback()`` there instead."""
    global _installed
    with _instrument_lock:
        if _installed is None:
            _installed = Callback()
        callback = _installed
        config = _main_config()
        current = list(config.get("callbacks") or [])
        if not any(existing is callback for existing in current):
            config["callbacks"] = [*current, callback]
    return callback


def uninstrument() -> None:
    """Remove the callback ``instrument()`` added (idempotent). Calls already running still end
    their spans: DSPy hands them the callback list it read when they started."""
    global _installed
    with _instrument_lock:
        callback, _installed = _installed, None
        if callback is None:
            return
        config = _main_config()
        current = list(config.get("callbacks") or [])
        config["callbacks"] = [existing for existing in current if existing is not callback]
