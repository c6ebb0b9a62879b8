"""LangChain and LangGraph: one callback handler, or ``instrument()`` for the whole process.

    from spanmux.integrations.langchain import CallbackHandler
    chain.invoke(question, config={"callbacks": [CallbackHandler()]})

Every LangChain run (chain, prompt, chat model, LLM, tool, retriever, parser, LangGraph graph and
node) becomes one ``Span``. The callback thread only records ids, a timestamp and references to the
objects LangChain hands over; the worker thread serializes them later. Parents come from LangChain's
own ``run_id``/``parent_run_id`` kept in a dict behind a lock, so threads, ``batch()``, asyncio and
parallel LangGraph nodes all produce correct trees.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Final, Literal
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.runnables.config import var_child_runnable_config

from spanmux import attributes as attr
from spanmux import runtime
from spanmux.context import CURRENT_SPAN, SpanContext, current_context, current_trace_attributes, register_provider
from spanmux.model import Cost, ErrorInfo, ModelInfo, Span, TraceAttributes, Usage, new_span_id, new_trace_id
from spanmux.tracer import error_info, hook_failures
from spanmux.usage import normalize_usage

__all__ = ["CallbackHandler", "instrument", "uninstrument"]

log = logging.getLogger("spanmux.integrations.langchain")

MAX_OPEN_RUNS: Final = 100_000
"""Open runs kept per handler; beyond it the oldest are dropped (an end that never came)."""
MAX_NAME_CHARS: Final = 256

# LangChain's bookkeeping that says nothing to a reader of the trace.
_NOISY_METADATA: Final = frozenset({
    "lc_versions", "langgraph_step", "langgraph_triggers", "langgraph_path", "langgraph_checkpoint_ns",
    "checkpoint_ns", "langgraph_node", "__pregel_task_id",
})
_NOISY_TAG_PREFIXES: Final = ("seq:step:", "graph:step:", "langsmith:", "map:key:")
_PARAMETER_KEYS: Final = (
    "temperature", "max_tokens", "max_completion_tokens", "max_output_tokens", "max_new_tokens", "top_p",
    "top_k", "frequency_penalty", "presence_penalty", "seed", "n", "stop", "reasoning_effort", "num_predict",
    "response_format", "tool_choice",
)
_RESPONSE_MODEL_KEYS: Final = ("model_name", "model", "model_id")
_REQUEST_MODEL_KEYS: Final = ("model", "model_name", "model_id")
_AGENT_INTEGRATIONS: Final = ("langchain_create_agent", "langgraph_create_react_agent")

_failures = hook_failures("langchain", log)


def _hook_failed(hook: str) -> None:
    """A hook broke on what it was handed: counted, logged once per hook and error type with the
    traceback, never raised."""
    _failures.record(hook)


class _Run:
    """What is known about an open run; becomes a ``Span`` at its end."""

    __slots__ = (
        "trace_id", "span_id", "parent_id", "name", "kind", "start_ns", "input", "attributes", "trace",
        "node", "metadata", "params", "first_token_ns",
    )
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start_ns: int
    input: Any
    trace: TraceAttributes | None
    node: Any

    def __init__(self) -> None:
        self.attributes: dict[str, Any] | None = None
        self.metadata: Any = None
        self.params: Any = None
        self.first_token_ns: int | None = None

    def set(self, key: str, value: Any) -> None:
        if self.attributes is None:
            self.attributes = {}
        self.attributes[key] = value

    def add_event(self, name: str, data: Any) -> None:
        if self.attributes is None:
            self.attributes = {}
        events = self.attributes.get(attr.FRAMEWORK_EVENT)
        if events is None:
            events = self.attributes[attr.FRAMEWORK_EVENT] = []
        events.append({"name": name, "time_ns": time.time_ns(), "data": data})

    def context(self) -> SpanContext:
        return SpanContext(self.trace_id, self.span_id, self.start_ns, self.trace)


def _span_id(run_id: Any) -> str:
    """The low half of the run's UUID: random in uuid4 and uuid7 alike (uuid7's high half is a
    timestamp, shared by runs started in the same millisecond)."""
    try:
        return run_id.hex[16:]  # type: ignore[no-any-return]
    except Exception:
        return new_span_id()


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value if len(value) <= MAX_NAME_CHARS else value[:MAX_NAME_CHARS]
    return None


def _serialized_name(serialized: Any) -> str | None:
    if not isinstance(serialized, dict):
        return None
    name = _text(serialized.get("name"))
    if name is not None:
        return name
    ids = serialized.get("id")
    if isinstance(ids, list) and ids:
        return _text(ids[-1])
    return None


def _start_attributes(tags: Any, metadata: Any) -> dict[str, Any] | None:
    """User tags and metadata, without LangChain's own bookkeeping."""
    out: dict[str, Any] = {}
    try:
        if tags:
            kept = [t for t in tags if not (isinstance(t, str) and t.startswith(_NOISY_TAG_PREFIXES))]
            if kept:
                out[attr.TAGS] = kept
        if metadata:
            meta = {
                k: v for k, v in metadata.items()
                if k not in _NOISY_METADATA and not (isinstance(k, str) and k.startswith("ls_"))
            }
            if meta:
                out[attr.METADATA] = meta
            node = metadata.get("langgraph_node")
            if node is not None:
                out[attr.LANGGRAPH_NODE] = node
    except Exception:  # hostile tags/metadata: keep them raw, the worker serializes safely
        return {attr.TAGS: tags, attr.METADATA: metadata}
    return out or None


def _is_control_flow(error: BaseException) -> bool:
    """LangGraph interrupts and parent commands travel as exceptions; they are not failures."""
    return any(cls.__name__ == "GraphBubbleUp" for cls in type(error).__mro__)


def _int(value: Any) -> int:
    return value if type(value) is int else 0


def _usage(message: Any, response: Any) -> Usage | None:
    """LangChain's standard ``usage_metadata`` (fast path), else any provider shape."""
    raw = getattr(message, "usage_metadata", None)
    if raw:
        try:
            inp, out = raw["input_tokens"], raw["output_tokens"]
            if type(inp) is int and type(out) is int:
                total = raw.get("total_tokens")
                in_details = raw.get("input_token_details") or {}
                out_details = raw.get("output_token_details") or {}
                return Usage(
                    input_tokens=inp, output_tokens=out, total_tokens=total if type(total) is int else inp + out,
                    cache_read_tokens=_int(in_details.get("cache_read")),
                    cache_write_tokens=_int(in_details.get("cache_creation")),
                    reasoning_tokens=_int(out_details.get("reasoning")),
                )
        except Exception:
            pass
        usage = normalize_usage(raw)
        if usage is not None:
            return usage
    llm_output = getattr(response, "llm_output", None)
    return normalize_usage(llm_output) if llm_output else None


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


def _provider_cost(message: Any, response: Any) -> Cost | None:
    """A cost the provider reported itself (OpenRouter and friends): it wins over the price table."""
    response_metadata = getattr(message, "response_metadata", None)
    llm_output = getattr(response, "llm_output", None)
    for holder in (response_metadata, llm_output):
        if not isinstance(holder, dict):
            continue
        for source in (holder, holder.get("token_usage"), holder.get("usage")):
            if not isinstance(source, dict):
                continue
            total = _number(source.get("cost"))
            if total is None:
                total = _number(source.get("total_cost"))
            if total is None:
                continue
            details = source.get("cost_details")
            details = details if isinstance(details, dict) else {}
            inp = _number(details.get("upstream_inference_prompt_cost")) or 0.0
            out = _number(details.get("upstream_inference_completions_cost")) or 0.0
            return Cost(input=inp, output=out, total=total, source="provider")
    return None


def _requested_model(run: _Run) -> str | None:
    """The model the caller asked for: ``ls_model_name``, else the invocation parameters."""
    meta = run.metadata if isinstance(run.metadata, dict) else {}
    name = _text(meta.get("ls_model_name"))
    if name is None and isinstance(run.params, dict):
        for key in _REQUEST_MODEL_KEYS:
            name = _text(run.params.get(key))
            if name:
                break
    return name


def _response_model(message: Any) -> str | None:
    """The model the provider says answered (``response_metadata["model_name"]`` and kin)."""
    response_metadata = getattr(message, "response_metadata", None)
    if isinstance(response_metadata, dict):
        for key in _RESPONSE_MODEL_KEYS:
            name = _text(response_metadata.get(key))
            if name:
                return name
    return None


def _model_info(run: _Run, message: Any) -> ModelInfo | None:
    """Model, provider and parameters; the requested and the response model are recorded side by
    side as ``gen_ai.request.model`` / ``gen_ai.response.model`` and the worker derives
    ``model.name`` from them (one rule for every framework, see ``spanmux.processors``)."""
    meta = run.metadata if isinstance(run.metadata, dict) else {}
    params = run.params if isinstance(run.params, dict) else {}
    requested, response = _requested_model(run), _response_model(message)
    if requested:
        run.set(attr.GEN_AI_REQUEST_MODEL, requested)
    if response:
        run.set(attr.GEN_AI_RESPONSE_MODEL, response)
    name = requested or response
    provider = _text(meta.get("ls_provider"))
    parameters = {key: value for key in _PARAMETER_KEYS if (value := params.get(key)) is not None}
    if "temperature" not in parameters and meta.get("ls_temperature") is not None:
        parameters["temperature"] = meta["ls_temperature"]
    if "max_tokens" not in parameters and meta.get("ls_max_tokens") is not None:
        parameters["max_tokens"] = meta["ls_max_tokens"]
    if name is None and provider is None and not parameters:
        return None
    return ModelInfo(name, provider, parameters or None)


def _llm_output(response: Any) -> tuple[Any, Any]:
    """(first generated message or None, what to record as the span's output)."""
    generations = getattr(response, "generations", None)
    if not generations or not isinstance(generations, list):
        return None, response
    first_list = generations[0]
    if not first_list:
        return None, None
    first = first_list[0]
    message = getattr(first, "message", None)
    if len(generations) == 1 and len(first_list) == 1:
        return message, message if message is not None else getattr(first, "text", first)
    outputs = [getattr(g, "message", None) or getattr(g, "text", g) for gens in generations for g in gens]
    return message, outputs


def _documents(documents: Any) -> Any:
    try:
        return [
            {"id": getattr(d, "id", None), "content": getattr(d, "page_content", None),
             "metadata": getattr(d, "metadata", None)}
            for d in documents
        ]
    except Exception:
        return documents


class CallbackHandler(BaseCallbackHandler):
    """Records every LangChain/LangGraph run as a spanmux span. One instance may serve any number
    of chains, threads and event loops at once."""

    run_inline = True  # keeps start/end ordering in async chains and avoids an executor hop
    raise_error = False

    def __init__(self) -> None:
        super().__init__()
        self._runs: dict[Any, _Run] = {}
        self._lock = threading.Lock()
        self.evicted_runs = 0

    # ---- bookkeeping -------------------------------------------------------------------------
    # Inserts and removals take the lock; single lookups (``dict.get``) are atomic on their own.

    def _start(
        self, run_id: Any, parent_run_id: Any, name: str, kind: str, input: Any, tags: Any, metadata: Any,
    ) -> _Run:
        run = _Run()
        run.start_ns = time.time_ns()
        run.span_id = _span_id(run_id)
        run.name = name
        run.kind = kind
        run.input = input
        node = metadata.get("langgraph_node") if isinstance(metadata, dict) else None
        run.node = node
        parent = self._runs.get(parent_run_id) if parent_run_id is not None else None
        if parent is not None:
            run.trace_id, run.parent_id, run.trace = parent.trace_id, parent.span_id, parent.trace
            if node is not None and node != parent.node and parent.kind == "chain":
                parent.kind = "agent"  # its children are nodes of a graph: the parent is that graph
            manual = CURRENT_SPAN.get()
            if manual is not None and manual.start_ns > parent.start_ns and manual.trace_id == parent.trace_id:
                run.parent_id = manual.span_id  # a manual span opened inside the parent run
        else:
            outer = current_context()
            trace_attrs: TraceAttributes | None = current_trace_attributes()
            if outer is not None:
                run.trace_id, run.parent_id = outer.trace_id, outer.span_id
                run.trace = trace_attrs if trace_attrs is not None else outer.trace
            else:
                run.trace_id, run.parent_id, run.trace = new_trace_id(), None, trace_attrs
        if tags or metadata:
            run.attributes = _start_attributes(tags, metadata)
        if parent is None and isinstance(run_id, UUID):
            run.set(attr.RUN_ID, str(run_id))
        runs = self._runs
        with self._lock:
            runs[run_id] = run
            if len(runs) > MAX_OPEN_RUNS:
                self._evict_oldest()
        return run

    def _evict_oldest(self) -> None:
        """Runs whose end never came (a killed generator, a framework bug) must not pile up."""
        runs, before = self._runs, self.evicted_runs
        while len(runs) > MAX_OPEN_RUNS:
            runs.pop(next(iter(runs)))
            self.evicted_runs += 1
        if before == 0 or before // 10_000 != self.evicted_runs // 10_000:
            log.warning("spanmux: %d LangChain runs never ended and were dropped", self.evicted_runs)

    def _pop(self, run_id: Any) -> _Run | None:
        with self._lock:
            return self._runs.pop(run_id, None)

    def _emit(
        self, run: _Run, output: Any, error: BaseException | None = None, *, model: ModelInfo | None = None,
        usage: Usage | None = None, cost: Cost | None = None,
    ) -> None:
        status: Literal["ok", "error"] = "ok"
        info: ErrorInfo | None = None
        if error is not None:
            if _is_control_flow(error):
                run.set("langgraph.interrupt", type(error).__name__)
            else:
                status, info = "error", error_info(error)
        first_token = run.first_token_ns
        if first_token is not None:
            run.set(attr.STREAMING, True)
            run.set(attr.TIME_TO_FIRST_TOKEN_MS, (first_token - run.start_ns) / 1e6)
        runtime.emit(Span(
            trace_id=run.trace_id, span_id=run.span_id, parent_id=run.parent_id, name=run.name, kind=run.kind,
            framework="langchain", start_ns=run.start_ns, end_ns=time.time_ns(), status=status, error=info,
            input=run.input, output=output, model=model, usage=usage, cost=cost, completion_start_ns=first_token,
            attributes=run.attributes, trace=run.trace,
        ))

    def _end(self, run_id: Any, output: Any, error: BaseException | None = None) -> None:
        run = self._pop(run_id)
        if run is not None:
            self._emit(run, output, error)

    def _event(self, run_id: Any, name: str, data: Any) -> None:
        run = self._runs.get(run_id)
        if run is not None:
            run.add_event(name, data)

    # ---- chains, prompts, parsers, LangGraph graphs and nodes ------------------------------------

    def on_chain_start(
        self, serialized: dict[str, Any] | None, inputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "chain"
            if kwargs.get("run_type") == "parser" or name.endswith("OutputParser"):
                kind = "parser"
            elif name == "LangGraph" or (
                isinstance(metadata, dict) and metadata.get("ls_integration") in _AGENT_INTEGRATIONS
                and "langgraph_node" not in metadata
            ):
                kind = "agent"
            else:
                kind = "chain"
            self._start(run_id, parent_run_id, name, kind, inputs, tags, metadata)
        except Exception:
            _hook_failed("on_chain_start")

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            kind = type(outputs)
            if kind is ChatPromptValue:  # what a prompt produced, as messages: cheaper and clearer than the model
                outputs = outputs.messages
            elif kind is StringPromptValue:
                outputs = outputs.text
            self._end(run_id, outputs)
        except Exception:
            _hook_failed("on_chain_end")

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:
            _hook_failed("on_chain_error")

    # ---- chat models and LLMs ----------------------------------------------------------------

    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "chat_model"
            prompt = messages[0] if isinstance(messages, list) and len(messages) == 1 else messages
            run = self._start(run_id, parent_run_id, name, "llm", prompt, tags, metadata)
            run.metadata = metadata
            run.params = kwargs.get("invocation_params")
        except Exception:
            _hook_failed("on_chat_model_start")

    def on_llm_start(
        self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "llm"
            prompt = prompts[0] if isinstance(prompts, list) and len(prompts) == 1 else prompts
            run = self._start(run_id, parent_run_id, name, "llm", prompt, tags, metadata)
            run.metadata = metadata
            run.params = kwargs.get("invocation_params")
        except Exception:
            _hook_failed("on_llm_start")

    def on_llm_new_token(self, token: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            run = self._runs.get(run_id)
            if run is not None and run.first_token_ns is None:
                run.first_token_ns = time.time_ns()
        except Exception:
            _hook_failed("on_llm_new_token")

    def on_stream_event(self, event: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``stream_events(version="v3")`` reports chunks here instead of ``on_llm_new_token``."""
        try:
            run = self._runs.get(run_id)
            if (run is not None and run.first_token_ns is None and isinstance(event, dict)
                    and event.get("event") == "content-block-delta"):
                run.first_token_ns = time.time_ns()
        except Exception:
            _hook_failed("on_stream_event")

    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            run = self._pop(run_id)
            if run is None:
                return
            try:
                message, output = _llm_output(response)
                model, usage, cost = _model_info(run, message), _usage(message, response), _provider_cost(
                    message, response)
            except Exception:  # a strange response: keep the span, without model details
                _hook_failed("on_llm_end(details)")
                message, output, model, usage, cost = None, response, None, None, None
            self._emit(run, output, model=model, usage=usage, cost=cost)
        except Exception:
            _hook_failed("on_llm_end")

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id)
            if run is not None:
                self._emit(run, None, error, model=_model_info(run, None))
        except Exception:
            _hook_failed("on_llm_error")

    # ---- tools ---------------------------------------------------------------------------------

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, inputs: Any = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "tool"
            run = self._start(run_id, parent_run_id, name, "tool", inputs if inputs is not None else input_str,
                              tags, metadata)
            tool_call_id = kwargs.get("tool_call_id")
            if tool_call_id:
                run.set(attr.GEN_AI_TOOL_CALL_ID, tool_call_id)
        except Exception:
            _hook_failed("on_tool_start")

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._end(run_id, output)
        except Exception:
            _hook_failed("on_tool_end")

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:
            _hook_failed("on_tool_error")

    # ---- retrievers ----------------------------------------------------------------------------

    def on_retriever_start(
        self, serialized: dict[str, Any] | None, query: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "retriever"
            self._start(run_id, parent_run_id, name, "retriever", query, tags, metadata)
        except Exception:
            _hook_failed("on_retriever_start")

    def on_retriever_end(
        self, documents: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            run = self._pop(run_id)
            if run is None:
                return
            docs = _documents(documents)
            run.set(attr.RETRIEVAL_DOCUMENTS, docs)
            self._emit(run, docs)
        except Exception:
            _hook_failed("on_retriever_end")

    def on_retriever_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:
            _hook_failed("on_retriever_error")

    # ---- events on an open run -----------------------------------------------------------------

    def on_agent_action(self, action: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "agent_action", {
                "tool": getattr(action, "tool", None), "tool_input": getattr(action, "tool_input", None),
                "log": getattr(action, "log", None),
            })
        except Exception:
            _hook_failed("on_agent_action")

    def on_agent_finish(self, finish: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "agent_finish", {
                "return_values": getattr(finish, "return_values", None), "log": getattr(finish, "log", None),
            })
        except Exception:
            _hook_failed("on_agent_finish")

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._event(run_id, _text(name) or "custom_event", data)
        except Exception:
            _hook_failed("on_custom_event")

    def on_retry(self, retry_state: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "retry", {"attempt": getattr(retry_state, "attempt_number", None)})
        except Exception:
            _hook_failed("on_retry")

    def on_text(self, text: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """Verbose console text of legacy chains: nothing worth a span."""

    def __repr__(self) -> str:
        return f"<spanmux CallbackHandler open_runs={len(self._runs)}>"

    def __copy__(self) -> CallbackHandler:
        return self  # one handler, one map of open runs: a copied config must keep feeding it

    def __deepcopy__(self, memo: dict[int, Any]) -> CallbackHandler:
        return self


# ---- where we are: manual spans and spanmux.current_trace_id() inside a LangChain run -----------

def _current_run_context() -> SpanContext | None:
    """The LangChain run whose code is executing now (a tool body, a RunnableLambda, a graph node).

    LangChain sets ``var_child_runnable_config`` around that code; its callback manager's
    ``parent_run_id`` is the running run."""
    config = var_child_runnable_config.get()
    if not config:
        return None
    manager = config.get("callbacks")
    parent_run_id = getattr(manager, "parent_run_id", None)
    if parent_run_id is None:
        return None
    for handler in getattr(manager, "handlers", ()):
        if isinstance(handler, CallbackHandler):
            run = handler._runs.get(parent_run_id)
            if run is not None:
                return run.context()
    return None


register_provider(_current_run_context)


# ---- process-wide attachment ----------------------------------------------------------------

class _HookSwitch:
    """Stands where LangChain's configure hook expects a ContextVar: it only ever calls ``get()``.
    Unlike a ContextVar, its answer is the same in every thread and task, and can be switched off."""

    def __init__(self) -> None:
        self.handler: CallbackHandler | None = None
        self.enabled = False

    def get(self, default: Any = None) -> CallbackHandler | None:
        return self.handler if self.enabled else None


_switch = _HookSwitch()
_switch_lock = threading.Lock()
_hook_registered = False


def instrument() -> None:
    """Trace every LangChain/LangGraph run in this process without passing callbacks. Idempotent.
    A chain that already carries a ``CallbackHandler`` is not traced twice."""
    global _hook_registered
    from langchain_core.tracers.context import register_configure_hook  # noqa: PLC0415

    with _switch_lock:
        if _switch.handler is None:
            _switch.handler = CallbackHandler()
        if not _hook_registered:
            register_configure_hook(_switch, inheritable=True, handle_class=CallbackHandler)  # type: ignore[arg-type]
            _hook_registered = True
        _switch.enabled = True


def uninstrument() -> None:
    """Stop process-wide tracing (runs already under way finish their spans)."""
    with _switch_lock:
        _switch.enabled = False
