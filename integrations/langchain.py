"""LangChain and LangGraph: one callback handler, or ``instrument()`` for the whole process.

    from spanmux.integrations.langchain import CallbackHandler
    chain.invoke(question, config={"callbacks": [CallbackHandler()]})

Every LangChain run (chain, prompt, chat model, LLM, tool, retriever, parser, LangGraph graph and
node) becomes one ``Span``. The callback thread only records ids, a timestamp and references to the
objects LangChain hands over; the worker thread serializes them later. Parents come from LangChain's
own ``run_id``/``parent_run_id`` (``spanmux.open_spans.OpenSpans``), so threads, ``batch()``,
asyncio and parallel LangGraph nodes all produce correct trees. Every hook runs under the
integration's failure guard: LangChain never sees an exception of ours.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.prompt_values import ChatPromptValue, StringPromptValue
from langchain_core.runnables.config import var_child_runnable_config

from spanmux import attributes as attr
from spanmux import runtime
from spanmux.context import SpanContext, register_provider
from spanmux.model import ModelInfo, SpanKind
from spanmux.open_spans import MAX_OPEN_SPANS, OpenSpan, OpenSpans, error_info, hook_guard
from spanmux.usage import langchain_usage, reported_cost

__all__ = ["CallbackHandler", "instrument", "uninstrument"]

log = logging.getLogger("spanmux.integrations.langchain")

MAX_OPEN_RUNS: Final = MAX_OPEN_SPANS
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
_PARAMETER_SET: Final = frozenset(_PARAMETER_KEYS)
_PARAMETER_ORDER: Final = {key: index for index, key in enumerate(_PARAMETER_KEYS)}
_RESPONSE_MODEL_KEYS: Final = ("model_name", "model", "model_id")
_REQUEST_MODEL_KEYS: Final = ("model", "model_name", "model_id")
_AGENT_INTEGRATIONS: Final = ("langchain_create_agent", "langgraph_create_react_agent")

_guard = hook_guard("langchain", log)


class _Run(OpenSpan):
    """An open LangChain run: the open span plus what its end needs from its start."""

    __slots__ = ("node", "metadata", "params")
    framework = "langchain"
    node: Any
    metadata: Any
    params: Any


_LOW_64_BITS: Final = (1 << 64) - 1


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
    """User tags and metadata, without LangChain's own bookkeeping. Plain loops: on Python 3.11 a
    comprehension is a function call of its own, and every run of a chain comes here."""
    out: dict[str, Any] = {}
    try:
        if tags:
            kept = []
            for tag in tags:
                if not (isinstance(tag, str) and tag.startswith(_NOISY_TAG_PREFIXES)):
                    kept.append(tag)
            if kept:
                out[attr.TAGS] = kept
        if metadata:
            # LangGraph's and LangChain's own keys are most of them, often all: drop those first
            # (a set difference, in C), walk the dict in order only when a key of the user's is left
            users = False
            for key in metadata.keys() - _NOISY_METADATA:
                if not (isinstance(key, str) and key.startswith("ls_")):
                    users = True
                    break
            if users:
                meta = {}
                for key, value in metadata.items():
                    if key not in _NOISY_METADATA and not (isinstance(key, str) and key.startswith("ls_")):
                        meta[key] = value
                if meta:
                    out[attr.METADATA] = meta
            node = metadata.get("langgraph_node")
            if node is not None:
                out[attr.LANGGRAPH_NODE] = node
    except Exception:  # hostile tags/metadata: keep them raw, the worker serializes safely
        return {attr.TAGS: tags, attr.METADATA: metadata}
    return out or None


def _record_error(run: _Run, error: BaseException) -> None:
    """The run's error; LangGraph interrupts and parent commands travel as exceptions but are no
    failures: the run ends ok, marked with the interrupt."""
    if any(cls.__name__ == "GraphBubbleUp" for cls in type(error).__mro__):
        run.set_attribute("langgraph.interrupt", type(error).__name__)
    else:
        run.error = error_info(error)


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
        run.set_attribute(attr.GEN_AI_REQUEST_MODEL, requested)
    if response:
        run.set_attribute(attr.GEN_AI_RESPONSE_MODEL, response)
    name = requested or response
    provider = _text(meta.get("ls_provider"))
    parameters: dict[str, Any] = {}
    if params:  # the few keys given, in _PARAMETER_KEYS order: not a lookup of each of the sixteen
        found = [key for key in params if key in _PARAMETER_SET]
        if len(found) > 1:
            found.sort(key=_PARAMETER_ORDER.__getitem__)
        for key in found:
            value = params[key]
            if value is not None:
                parameters[key] = value
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
    # LangChain reads one of these before every hook: plain class attributes instead of the base
    # class's properties spare a call each time (same answer: nothing is ignored)
    ignore_llm = ignore_retry = ignore_chain = ignore_agent = False
    ignore_retriever = ignore_chat_model = ignore_custom_event = False

    def __init__(self) -> None:
        super().__init__()
        self._spans: OpenSpans[_Run] = OpenSpans("LangChain", MAX_OPEN_RUNS)

    @property
    def _runs(self) -> dict[Any, _Run]:
        """The open runs by run id (read-only view for tests and debugging)."""
        return self._spans.by_id

    @property
    def evicted_runs(self) -> int:
        """Runs dropped because their end never came (beyond ``MAX_OPEN_RUNS`` open at once)."""
        return self._spans.evicted

    # ---- bookkeeping -------------------------------------------------------------------------

    def _start(
        self, run_id: Any, parent_run_id: Any, name: str, kind: SpanKind, input: Any, tags: Any, metadata: Any,
        params: Any = None,
    ) -> _Run:
        spans = self._spans
        parent = spans.get(parent_run_id) if parent_run_id is not None else None
        try:  # the low half of the run's UUID: random in uuid4 and uuid7 alike (uuid7's high half is a
            # timestamp, shared by runs started in the same millisecond); run_id.hex[16:] at half the cost
            span_id: str | None = "%016x" % (run_id.int & _LOW_64_BITS)
        except Exception:
            span_id = None  # a new random one
        run = _Run(name, kind, input, parent, span_id)
        node = metadata.get("langgraph_node") if isinstance(metadata, dict) else None
        run.node, run.metadata, run.params = node, metadata, params
        if tags or metadata:
            run.attributes = _start_attributes(tags, metadata)
        if parent is not None:
            if node is not None and node != parent.node and parent.kind == "chain":
                parent.kind = "agent"  # its children are nodes of a graph: the parent is that graph
        elif isinstance(run_id, UUID):
            run.set_attribute(attr.RUN_ID, str(run_id))
        spans.add(run_id, run)
        return run

    def _end(self, run_id: Any, output: Any, error: BaseException | None = None) -> None:
        run = self._spans.pop(run_id, None)
        if run is not None:
            run.output = output
            if error is not None:
                _record_error(run, error)
            run.finish()

    def _event(self, run_id: Any, name: str, data: Any) -> None:
        run = self._spans.get(run_id)
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
            kind: SpanKind
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
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_chain_start")

    def on_chain_end(self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            kind = type(outputs)
            if kind is ChatPromptValue:  # what a prompt produced, as messages: cheaper and clearer than the model
                outputs = outputs.messages
            elif kind is StringPromptValue:
                outputs = outputs.text
            run = self._spans.pop(run_id, None)  # _end(run_id, outputs), inline: every chain step ends here
            if run is not None:
                run.output = outputs
                run.finish()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_chain_end")

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_chain_error")

    # ---- chat models and LLMs ----------------------------------------------------------------

    def on_chat_model_start(
        self, serialized: dict[str, Any] | None, messages: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._start_model(run_id, parent_run_id, serialized, messages, tags, metadata, kwargs, "chat_model")
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_chat_model_start")

    def on_llm_start(
        self, serialized: dict[str, Any] | None, prompts: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._start_model(run_id, parent_run_id, serialized, prompts, tags, metadata, kwargs, "llm")
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_llm_start")

    def _start_model(
        self, run_id: Any, parent_run_id: Any, serialized: Any, prompts: Any, tags: Any, metadata: Any,
        kwargs: dict[str, Any], default_name: str,
    ) -> None:
        """A chat model's or an LLM's run: one prompt (a list of messages, or a string) is the input."""
        if runtime.active() is None:
            return
        name = _text(kwargs.get("name")) or _serialized_name(serialized) or default_name
        prompt = prompts[0] if isinstance(prompts, list) and len(prompts) == 1 else prompts
        self._start(run_id, parent_run_id, name, "llm", prompt, tags, metadata, kwargs.get("invocation_params"))

    def on_llm_new_token(self, token: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            run = self._spans.get(run_id)
            if run is not None and run.completion_start_ns is None:  # every token comes here: the first counts
                run.first_token()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_llm_new_token")

    def on_stream_event(self, event: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """``stream_events(version="v3")`` reports chunks here instead of ``on_llm_new_token``."""
        try:
            run = self._spans.get(run_id)
            if (run is not None and run.completion_start_ns is None and isinstance(event, dict)
                    and event.get("event") == "content-block-delta"):
                run.first_token()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_stream_event")

    def on_llm_end(self, response: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            run = self._spans.pop(run_id, None)
            if run is None:
                return
            try:
                message, run.output = _llm_output(response)
                run.model = _model_info(run, message)
                run.usage = langchain_usage(message, response)
                run.cost = reported_cost(getattr(message, "response_metadata", None),
                                         getattr(response, "llm_output", None))
            except Exception:  # a strange response: keep the span, without model details
                _guard.record("on_llm_end(details)")
                run.output, run.model, run.usage, run.cost = response, None, None, None
            run.finish()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_llm_end")

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            run = self._spans.pop(run_id, None)
            if run is not None:
                _record_error(run, error)
                run.model = _model_info(run, None)
                run.finish()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_llm_error")

    # ---- tools ---------------------------------------------------------------------------------

    def on_tool_start(
        self, serialized: dict[str, Any] | None, input_str: Any, *, run_id: UUID, parent_run_id: UUID | None = None,
        tags: list[str] | None = None, metadata: dict[str, Any] | None = None, inputs: Any = None, **kwargs: Any,
    ) -> None:
        try:
            if runtime.active() is None:
                return
            name = _text(kwargs.get("name")) or _serialized_name(serialized) or "tool"
            run = self._start(run_id, parent_run_id, name, "tool", inputs if inputs is not None else input_str, tags,
                              metadata)
            tool_call_id = kwargs.get("tool_call_id")
            if tool_call_id:
                run.set_attribute(attr.GEN_AI_TOOL_CALL_ID, tool_call_id)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_tool_start")

    def on_tool_end(self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._end(run_id, output)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_tool_end")

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_tool_error")

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
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_retriever_start")

    def on_retriever_end(
        self, documents: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            run = self._spans.pop(run_id, None)
            if run is not None:
                run.output = _documents(documents)
                run.set_attribute(attr.RETRIEVAL_DOCUMENTS, run.output)
                run.finish()
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_retriever_end")

    def on_retriever_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._end(run_id, None, error)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_retriever_error")

    # ---- events on an open run -----------------------------------------------------------------

    def on_agent_action(self, action: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "agent_action", {
                "tool": getattr(action, "tool", None), "tool_input": getattr(action, "tool_input", None),
                "log": getattr(action, "log", None),
            })
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_agent_action")

    def on_agent_finish(self, finish: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "agent_finish", {
                "return_values": getattr(finish, "return_values", None), "log": getattr(finish, "log", None),
            })
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_agent_finish")

    def on_custom_event(
        self, name: str, data: Any, *, run_id: UUID, tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None, **kwargs: Any,
    ) -> None:
        try:
            self._event(run_id, _text(name) or "custom_event", data)
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_custom_event")

    def on_retry(self, retry_state: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        try:
            self._event(run_id, "retry", {"attempt": getattr(retry_state, "attempt_number", None)})
        except Exception:  # LangChain never sees an exception of ours: counted, logged once
            _guard.record("on_retry")

    def on_text(self, text: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any) -> None:
        """Verbose console text of legacy chains: nothing worth a span."""

    def __repr__(self) -> str:
        return f"<spanmux CallbackHandler open_runs={len(self._spans)}>"

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
            run = handler._spans.get(parent_run_id)
            if run is not None:
                return run
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
    from langchain_core.tracers.context import register_configure_hook

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
