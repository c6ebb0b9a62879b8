"""LlamaIndex integration: one span handler and one event handler on the root instrumentation
dispatcher, so every query engine, retriever, LLM, embedding, tool, agent and workflow of the
process is traced without touching user code::

    from spanmux.integrations.llamaindex import instrument
    instrument()

Why it is built this way:

- LlamaIndex gives every decorated call a span id and its parent's id; we keep our records keyed
  by those ids (``spanmux.open_spans.OpenSpans``, never a stack), so threads and asyncio tasks
  nest right.
- The span handler opens and closes records; the event handler enriches the open record named by
  ``event.span_id`` (model from ``model_dict``, token usage from the response, time to first token,
  reranker model).
- Streaming calls return a generator and LlamaIndex exits the span at once; the end event comes
  later with the same span id. LLM spans therefore stay open until that end event. Spans started
  lazily while such a generator runs (the LLM call behind a streaming query, ``stream_chat`` behind
  ``astream_chat``) are parented to the span that returned the generator, found by looking for the
  generator's frame on the current stack.
- Usage is counted once: an LLM span with a nested LLM span (``predict`` over ``complete``,
  ``achat`` over ``chat``) only delegates. It is marked ``spanmux.delegates`` and the worker gives
  it no usage and no cost and does not count it as an LLM call; the same holds for embedding
  wrappers (``get_query_embedding`` over ``_get_query_embedding``), whose inner spans inherit the
  model of the event fired on the outer one.
- Models: ``gen_ai.request.model`` from the event's ``model_dict``, ``gen_ai.response.model`` from
  the response's ``raw``; the worker picks ``model.name`` from them (README, "Models").
- LlamaIndex swallows handler exceptions silently, so every hook runs under the integration's
  failure guard, which counts and logs them (once per hook and error type, see
  ``spanmux.open_spans.HookGuard``).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from spanmux import runtime
from spanmux.attributes import (
    DELEGATES,
    GEN_AI_OPERATION_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOOL_NAME,
    METADATA,
    RETRIEVAL_DOCUMENTS,
)
from spanmux.context import SpanContext, register_provider
from spanmux.model import ModelInfo, SpanKind, TraceAttributes, Usage
from spanmux.open_spans import OpenSpan, OpenSpans, error_info, hook_guard
from spanmux.usage import normalize_usage

__all__ = ["instrument", "is_instrumented", "uninstrument"]

log = logging.getLogger("spanmux.integrations.llamaindex")

_LLM_METHODS = frozenset({
    "chat", "achat", "stream_chat", "astream_chat", "complete", "acomplete", "stream_complete",
    "astream_complete", "predict", "apredict", "stream", "astream", "structured_predict",
    "astructured_predict", "stream_structured_predict", "astream_structured_predict", "chat_with_tools",
    "achat_with_tools", "stream_chat_with_tools", "astream_chat_with_tools",
})
_TOOL_METHODS = frozenset({"call", "acall", "__call__"})
_MODEL_PARAMETERS = ("temperature", "max_tokens", "top_p", "top_k", "frequency_penalty", "presence_penalty",
                     "seed", "stop", "num_output", "reasoning_effort")
_PROVIDERS = (("azure", "azure"), ("openai", "openai"), ("anthropic", "anthropic"), ("gemini", "google"),
              ("google", "google"), ("vertex", "google"), ("bedrock", "aws"), ("mistral", "mistral"),
              ("groq", "groq"), ("cohere", "cohere"), ("deepseek", "deepseek"), ("ollama", "ollama"),
              ("together", "together"), ("fireworks", "fireworks"), ("xai", "x-ai"))
_UNKNOWN_MODEL = ("", "unknown", None)
_CONTENT_TAGS = frozenset({"llamaindex.step.input_summary"})
"""Instrument tags that hold content: a workflow step's input event, repeated on every span the
step starts. The step's span has that event as its input already (dropped with the input when
``capture_content`` is false); as metadata it would survive on every span below it."""
_CLOSED_MEMORY = 4096
_STREAM_MEMORY = 1024

_guard = hook_guard("llamaindex", log, names={
    "enter": "new_span", "exit": "prepare_to_exit_span", "drop": "prepare_to_drop_span"})


class _Record(OpenSpan):
    """One open LlamaIndex span: the open span plus the state of its stream and of the LLM spans
    wrapped around it."""

    __slots__ = ("li_id", "parent", "end_ns", "exited", "awaiting_end", "pending_children", "holds_parent",
                 "usage_below", "stream_key")
    framework = "llamaindex"
    li_id: str
    parent: _Record | None  # the enclosing LlamaIndex record, when it is the span's parent
    end_ns: int
    exited: bool            # LlamaIndex left the call (a stream may still be running)
    awaiting_end: bool      # an LLM start event was seen, its end event not yet
    pending_children: int   # nested LLM spans still streaming
    holds_parent: bool      # this streaming span keeps its parent LLM span open
    usage_below: bool       # a nested LLM span already reported this call's usage
    stream_key: int | None

    def mark_delegating(self) -> None:
        """This span wraps a call of its own kind: it is not a model call itself."""
        if self.attributes is None or self.attributes.get(DELEGATES) is not True:
            self.set_attribute(DELEGATES, True)

    def wrapping_llms(self) -> list[_Record]:
        """Every open LLM span above this one, also across chains between them
        (``structured_predict`` > program > ``chat``): all of them only delegate to this call."""
        out = []
        parent = self.parent
        while parent is not None:
            if parent.kind == "llm":
                out.append(parent)
            parent = parent.parent
        return out

    def llm_ancestors(self) -> list[_Record]:
        """Enclosing LLM spans (``predict`` over ``complete``, ``achat`` over ``chat``)."""
        out = []
        parent = self.parent
        while parent is not None and parent.kind == "llm":
            out.append(parent)
            parent = parent.parent
        return out


class _Stream(SpanContext):
    """A generator returned by a span: lazily started calls inside it belong to that span."""

    __slots__ = ("generator", "li_id")

    def __init__(self, generator: weakref.ref[Any], li_id: str, record: _Record) -> None:
        super().__init__(record.trace_id, record.span_id, record.start_ns, record.trace)
        self.generator = generator  # weak: a generator's frame (and locals) must not outlive it
        self.li_id = li_id


def _span_name(li_id: str) -> str:
    """LlamaIndex ids are ``Class.method-<uuid4>``: the readable part is the name."""
    if len(li_id) > 37 and li_id[-37] == "-":
        return li_id[:-37]
    return li_id.rsplit("-", 5)[0]


def _inputs(arguments: Mapping[str, Any]) -> Any:
    extra = arguments.get("kwargs")
    if extra or "kwargs" not in arguments:
        return arguments
    return {k: v for k, v in arguments.items() if k != "kwargs"}


def _generator_frame(value: Any) -> Any:
    if isinstance(value, types.GeneratorType):
        return value.gi_frame
    if isinstance(value, types.AsyncGeneratorType):
        return value.ag_frame
    return None


def _streamed_generator(result: Any) -> Any:
    """The generator behind a streaming result (itself, or a StreamingResponse's ``response_gen``)."""
    if isinstance(result, (types.GeneratorType, types.AsyncGeneratorType)):
        return result
    inner = getattr(result, "response_gen", None) if hasattr(result, "source_nodes") else None
    if isinstance(inner, (types.GeneratorType, types.AsyncGeneratorType)):
        return inner
    return None


def _provider(class_name: Any) -> str | None:
    lowered = str(class_name or "").lower()
    for needle, provider in _PROVIDERS:
        if needle in lowered:
            return provider
    return None


def _model_info(model_dict: Any, call_kwargs: Any) -> ModelInfo | None:
    if not isinstance(model_dict, Mapping):
        return None
    name = model_dict.get("model_name")
    if name in _UNKNOWN_MODEL:
        name = model_dict.get("model")
    parameters = {k: model_dict[k] for k in _MODEL_PARAMETERS if model_dict.get(k) not in (None, -1)}
    if isinstance(call_kwargs, Mapping):
        parameters.update({k: call_kwargs[k] for k in _MODEL_PARAMETERS if call_kwargs.get(k) is not None})
    if name in _UNKNOWN_MODEL and not parameters:
        return None
    return ModelInfo(
        name=None if name in _UNKNOWN_MODEL else str(name),
        provider=_provider(model_dict.get("class_name")),
        parameters=parameters or None,
    )


def _response_usage(response: Any) -> Usage | None:
    """Token usage of a ChatResponse/CompletionResponse: ``raw`` (a provider object or dict with
    OpenAI, Anthropic, Gemini, Bedrock... names) first, then ``additional_kwargs``."""
    raw = getattr(response, "raw", None)
    usage = None
    if raw is not None:
        if not isinstance(raw, Mapping):
            nested = getattr(raw, "usage", None) or getattr(raw, "usage_metadata", None)
            raw = nested if nested is not None else raw
        usage = normalize_usage(raw)
    if usage is None:
        usage = normalize_usage(getattr(response, "additional_kwargs", None))
    if usage is None:
        message = getattr(response, "message", None)
        usage = normalize_usage(getattr(message, "additional_kwargs", None)) if message is not None else None
    return usage


def _response_model(response: Any) -> str | None:
    raw = getattr(response, "raw", None)
    model = raw.get("model") if isinstance(raw, Mapping) else getattr(raw, "model", None)
    return model if isinstance(model, str) and model else None


def _documents(nodes: Any) -> list[dict[str, Any]] | None:
    """NodeWithScore list -> [{id, score, content, metadata}] (the worker bounds the size)."""
    if not isinstance(nodes, list) or not nodes or not hasattr(nodes[0], "node"):
        return None
    docs = []
    for item in nodes:
        node = getattr(item, "node", None)
        if node is None:
            continue
        try:
            content = node.get_content()
        except Exception:
            content = getattr(node, "text", None)
        docs.append({"id": getattr(node, "node_id", None), "score": getattr(item, "score", None),
                     "content": content, "metadata": getattr(node, "metadata", None)})
    return docs


def _output(result: Any) -> Any:
    """The readable part of common LlamaIndex results; anything else is kept as is."""
    kind = type(result).__name__
    if kind == "ChatResponse":
        return getattr(result, "message", result)
    if kind == "CompletionResponse":
        return getattr(result, "text", result)
    if kind in ("Response", "PydanticResponse") and hasattr(result, "source_nodes"):
        text = getattr(result, "response", None)
        return text if text is not None else result
    if kind == "ToolOutput":
        return getattr(result, "content", result)
    if isinstance(result, list) and result and isinstance(result[0], float):
        return {"embedding_dimensions": len(result)}
    if isinstance(result, list) and result and isinstance(result[0], list) and result[0] \
            and isinstance(result[0][0], float):
        return {"embeddings": len(result), "embedding_dimensions": len(result[0])}
    return result


class _Classifier:
    """Span kind per (class, method), decided once from LlamaIndex's base classes."""

    def __init__(self) -> None:
        self.cache: dict[tuple[type, str], SpanKind] = {}
        self.agents = self._load(("llama_index.core.agent.workflow", "BaseWorkflowAgent"),
                                 ("llama_index.core.agent.workflow", "AgentWorkflow"),
                                 ("llama_index.core.base.agent.types", "BaseAgent"))
        self.llms = self._load(("llama_index.core.base.llms.base", "BaseLLM"))
        self.embeddings = self._load(("llama_index.core.base.embeddings.base", "BaseEmbedding"),
                                     ("llama_index.core.base.embeddings.base_sparse", "BaseSparseEmbedding"))
        self.retrievers = self._load(("llama_index.core.base.base_retriever", "BaseRetriever"))
        self.postprocessors = self._load(("llama_index.core.postprocessor.types", "BaseNodePostprocessor"))
        self.tools = self._load(("llama_index.core.tools.types", "BaseTool"))

    @staticmethod
    def _load(*paths: tuple[str, str]) -> tuple[type, ...]:
        import importlib

        found = []
        for module, name in paths:
            try:
                found.append(getattr(importlib.import_module(module), name))
            except Exception:  # an optional class missing in this LlamaIndex version
                continue
        return tuple(found)

    def kind(self, instance: Any, method: str) -> SpanKind:
        if instance is None:
            return "chain"  # workflow steps and plain functions
        key = (type(instance), method)
        found = self.cache.get(key)
        if found is None:
            found = self.cache[key] = self._classify(key[0], method)
        return found

    def _classify(self, cls: type, method: str) -> SpanKind:
        if self.agents and issubclass(cls, self.agents):
            return "agent"
        if self.llms and issubclass(cls, self.llms):
            return "llm" if method in _LLM_METHODS else "chain"
        if self.embeddings and issubclass(cls, self.embeddings):
            return "embedding"
        if self.retrievers and issubclass(cls, self.retrievers):
            return "retriever"
        if self.postprocessors and issubclass(cls, self.postprocessors):
            return "reranker" if "rerank" in cls.__name__.lower() else "chain"
        if self.tools and issubclass(cls, self.tools):
            return "tool" if method in _TOOL_METHODS else "chain"
        return "chain"  # query engines, synthesizers, workflows, node parsers, programs


class LlamaIndexTracer:
    """State shared by the span handler and the event handler."""

    def __init__(self) -> None:
        from llama_index.core.instrumentation.span import active_span_id

        self.active_span_id = active_span_id
        self.spans: OpenSpans[_Record] = OpenSpans("LlamaIndex")
        self.lock = self.spans.lock  # also guards closed, streams and pending_children
        self.closed: OrderedDict[str, tuple[str, str, int, TraceAttributes | None]] = OrderedDict()
        self.streams: dict[int, _Stream] = {}
        self.classifier = _Classifier()
        self.enabled = True
        self.events: dict[str, Callable[[_Record, Any], None]] = {
            "LLMChatStartEvent": self._on_llm_start,
            "LLMCompletionStartEvent": self._on_llm_start,
            "LLMChatInProgressEvent": self._on_llm_progress,
            "LLMCompletionInProgressEvent": self._on_llm_progress,
            "LLMChatEndEvent": self._on_llm_end,
            "LLMCompletionEndEvent": self._on_llm_end,
            "EmbeddingStartEvent": self._on_embedding_start,
            "SparseEmbeddingStartEvent": self._on_embedding_start,
            "ReRankStartEvent": self._on_rerank_start,
            "ExceptionEvent": self._on_exception,
        }

    @property
    def open(self) -> dict[str, _Record]:
        """The open records by LlamaIndex span id (read-only view for tests and debugging)."""
        return self.spans.by_id

    @property
    def failures(self) -> int:
        """Hook failures of this process (also in ``spanmux.stats()["integration_failures"]``)."""
        return _guard.total

    # -- span handler
    def enter(self, li_id: str, bound_args: Any, instance: Any, parent_li_id: str | None,
              tags: Mapping[str, Any] | None) -> None:
        with _guard:
            if not self.enabled or runtime.active() is None:
                return
            name = _span_name(li_id)
            kind = self.classifier.kind(instance, name.rpartition(".")[2])
            if kind == "tool":
                tool_name = getattr(getattr(instance, "metadata", None), "name", None)
                if isinstance(tool_name, str) and tool_name:
                    name = tool_name
            arguments = getattr(bound_args, "arguments", None)
            inputs = _inputs(arguments) if arguments is not None else None
            record = self._new_record(li_id, parent_li_id, name, kind, inputs)
            if kind == "tool":
                record.set_attribute(GEN_AI_TOOL_NAME, name)
            if kind == "llm" or kind == "embedding":
                self._nest_in_wrapper(record)
            if tags:
                kept = {k: v for k, v in tags.items() if k not in _CONTENT_TAGS}
                if kept:
                    record.set_attribute(METADATA, kept)
            self.spans.add(li_id, record)

    @staticmethod
    def _nest_in_wrapper(record: _Record) -> None:
        """An LLM or embedding span inside one of its kind: the outer one only delegates. An inner
        embedding span (``_get_query_embedding``) fires no event of its own: it takes the model
        the outer one's event named."""
        parent = record.parent
        if record.kind == "llm":
            for ancestor in record.wrapping_llms():
                ancestor.mark_delegating()
            return
        if parent is None or parent.kind != record.kind or record.kind != "embedding":
            return
        parent.mark_delegating()
        if parent.model is not None:
            record.model = parent.model
            requested = (parent.attributes or {}).get(GEN_AI_REQUEST_MODEL)
            if requested:
                record.set_attribute(GEN_AI_REQUEST_MODEL, requested)
            record.set_attribute(GEN_AI_OPERATION_NAME, "embeddings")

    def _new_record(self, li_id: str, parent_li_id: str | None, name: str, kind: SpanKind, inputs: Any) -> _Record:
        parent = self.spans.get(parent_li_id) if parent_li_id else None
        stream = self._running_stream() if self.streams else None
        context: SpanContext | None = parent
        exact = False
        if stream is not None and (parent is None or parent.start_ns <= stream.start_ns):
            # Started lazily inside a generator returned earlier: it belongs to that generator's span.
            context, exact, parent = stream, True, self.spans.get(stream.li_id)
        elif parent is None and parent_li_id:
            closed = self.closed.get(parent_li_id)  # a parent that has ended already
            if closed is not None:
                context, exact = SpanContext(*closed), True
        record = _Record(name, kind, inputs, context, None, exact)
        # the enclosing record is the parent, unless a manual span opened inside it is closer
        record.parent = parent if parent is not None and record.parent_id is parent.span_id else None
        record.li_id = li_id
        record.end_ns = 0
        record.exited = record.awaiting_end = record.holds_parent = record.usage_below = False
        record.pending_children = 0
        record.stream_key = None
        return record

    def _running_stream(self) -> _Stream | None:
        """The innermost registered generator whose frame is executing on this thread's stack."""
        frame: Any = sys._getframe(2)
        streams = self.streams
        while frame is not None:
            stream = streams.get(id(frame))
            if stream is not None:
                generator = stream.generator()
                if generator is not None and _generator_frame(generator) is frame:
                    return stream
            frame = frame.f_back
        return None

    def exit(self, li_id: str, result: Any) -> None:
        with _guard:
            record = self._left(li_id)
            if record is None:
                return
            generator = _streamed_generator(result)
            if generator is not None:
                self._remember_stream(li_id, record, generator)
                if record.kind == "llm" and (record.awaiting_end or record.pending_children):
                    parent = record.parent
                    if parent is not None and parent.kind == "llm" and not parent.exited:
                        with self.lock:
                            parent.pending_children += 1
                        record.holds_parent = True
                    return  # closed by the end event (or when the generator is garbage collected)
            if record.output is None:
                record.output = _output(result) if generator is None else None
            if record.kind in ("retriever", "reranker"):
                docs = _documents(result)
                if docs is not None:
                    record.set_attribute(RETRIEVAL_DOCUMENTS, docs)
                    record.output = docs
            self._finish(record)

    def drop(self, li_id: str, err: BaseException | None) -> None:
        with _guard:
            record = self._left(li_id)
            if record is not None:
                if err is not None:
                    record.error = error_info(err)
                self._finish(record)

    def _left(self, li_id: str) -> _Record | None:
        """The open record of the call LlamaIndex has just left, its end time taken (a stream it
        returned may still be running)."""
        record = self.spans.get(li_id)
        if record is not None:
            record.end_ns = time.time_ns()
            record.exited = True
        return record

    def _remember_stream(self, li_id: str, record: _Record, generator: Any) -> None:
        frame = _generator_frame(generator)
        if frame is None:
            return
        key = id(frame)
        with self.lock:
            if key in self.streams:  # the same generator passed up: the innermost span keeps it
                return
            if len(self.streams) >= _STREAM_MEMORY:
                self._prune_streams()
            try:
                ref = weakref.ref(generator, self._stream_collected(key, li_id))
            except TypeError:
                return
            self.streams[key] = _Stream(ref, li_id, record)
            record.stream_key = key

    def _prune_streams(self) -> None:
        for key in [k for k, s in self.streams.items() if _generator_frame(s.generator()) is None]:
            del self.streams[key]
        if len(self.streams) >= _STREAM_MEMORY:
            self.streams = dict(list(self.streams.items())[_STREAM_MEMORY // 2:])

    def _stream_collected(self, key: int, li_id: str) -> Callable[[Any], None]:
        """A stream dropped unconsumed never sends its end event: close its span then."""

        def collected(_ref: Any) -> None:
            try:
                with self.lock:
                    stream = self.streams.get(key)
                    if stream is not None and stream.li_id == li_id:
                        del self.streams[key]
                record = self.spans.get(li_id)
                if record is not None and record.exited:
                    self._finish(record)
            except Exception:  # a weakref callback: nobody above it to guard it
                _guard.record("stream cleanup")

        return collected

    def _finish(self, record: _Record) -> None:
        li_id = record.li_id
        if self.spans.pop(li_id, None) is None:  # one step: of two racing ends, one emits
            return
        closed = self.closed
        closed[li_id] = (record.trace_id, record.span_id, record.start_ns, record.trace)
        if len(closed) > _CLOSED_MEMORY:
            try:
                closed.popitem(last=False)
            except KeyError:  # emptied meanwhile (reset)
                pass
        if record.stream_key is not None and record.kind == "llm":
            # an LLM stream that ended starts nothing more; other spans' generators stay
            # registered until collected, for calls they start lazily
            with self.lock:
                stream = self.streams.get(record.stream_key)
                if stream is not None and stream.li_id == li_id:
                    del self.streams[record.stream_key]
        record.finish(max(record.end_ns, record.start_ns))
        parent = record.parent
        record.parent = None
        if parent is not None and record.holds_parent:
            with self.lock:
                parent.pending_children -= 1
                done = parent.exited and not parent.pending_children and not parent.awaiting_end
            if done:  # e.g. ``stream`` over ``stream_complete``: the wrapper ends with its stream
                parent.end_ns = max(parent.end_ns, record.end_ns)
                if parent.error is None:
                    parent.error = record.error
                self._finish(parent)

    def current(self) -> SpanContext | None:
        """Context provider: the open LlamaIndex span of this task/thread, for manual spans."""
        if not self.enabled or not self.spans.by_id:
            return None
        li_id = self.active_span_id.get()
        return self.spans.get(li_id) if li_id else None

    # -- event handler
    def handle(self, event: Any) -> None:
        try:
            hook = self.events.get(type(event).__name__)
            if hook is None:
                return
            record = self.spans.get(event.span_id) if event.span_id else None
            if record is not None:
                hook(record, event)
        except Exception:  # one guard for every event, counted under the event's name
            _guard.record(f"event {type(event).__name__}")

    def _on_llm_start(self, record: _Record, event: Any) -> None:
        record.kind = "llm"
        record.awaiting_end = True
        operation = "chat" if type(event).__name__ == "LLMChatStartEvent" else "text_completion"
        record.set_attribute(GEN_AI_OPERATION_NAME, operation)
        model = _model_info(event.model_dict, getattr(event, "additional_kwargs", None))
        for wrapper in record.wrapping_llms():
            wrapper.mark_delegating()
        ancestors = record.llm_ancestors()
        if model is not None:
            record.model = model
            if model.name:
                record.set_attribute(GEN_AI_REQUEST_MODEL, model.name)
            for ancestor in ancestors:
                if ancestor.model is None:
                    ancestor.model = model
                    if model.name:
                        ancestor.set_attribute(GEN_AI_REQUEST_MODEL, model.name)

    def _on_llm_progress(self, record: _Record, event: Any) -> None:
        if record.completion_start_ns is None:
            record.first_token()
            for ancestor in record.llm_ancestors():  # the wrappers' first token is the same one
                if ancestor.completion_start_ns is None:
                    ancestor.completion_start_ns = record.completion_start_ns

    def _on_llm_end(self, record: _Record, event: Any) -> None:
        record.awaiting_end = False
        response = event.response
        if response is not None:
            record.output = _output(response)
            if not record.usage_below:
                usage = _response_usage(response)
                if usage is not None:
                    record.usage = usage
                    for ancestor in record.llm_ancestors():
                        ancestor.usage_below = True
            response_model = _response_model(response)
            if response_model:
                # model.name follows from request and response on the worker (one rule for all)
                record.set_attribute(GEN_AI_RESPONSE_MODEL, response_model)
                for ancestor in record.llm_ancestors():
                    ancestor.set_attribute(GEN_AI_RESPONSE_MODEL, response_model)
        if record.exited and not record.pending_children:  # a stream that has just ended
            record.end_ns = time.time_ns()
            self._finish(record)

    def _on_embedding_start(self, record: _Record, event: Any) -> None:
        model = _model_info(event.model_dict, None)
        if model is not None:
            record.model = model
            if model.name:
                record.set_attribute(GEN_AI_REQUEST_MODEL, model.name)
        record.set_attribute(GEN_AI_OPERATION_NAME, "embeddings")

    def _on_rerank_start(self, record: _Record, event: Any) -> None:
        record.kind = "reranker"
        name = getattr(event, "model_name", None)
        if isinstance(name, str) and name and name not in _UNKNOWN_MODEL:
            record.model = ModelInfo(name=name, parameters={"top_n": getattr(event, "top_n", None)})

    def _on_exception(self, record: _Record, event: Any) -> None:
        exception = getattr(event, "exception", None)
        if isinstance(exception, BaseException) and not isinstance(exception, GeneratorExit):
            record.error = error_info(exception)
        record.awaiting_end = False
        if record.exited:  # a stream that failed (or was closed early) after the call returned
            record.end_ns = time.time_ns()
            self._finish(record)

    def reset(self) -> None:
        with self.lock:
            self.spans.by_id.clear()
            self.closed.clear()
            self.streams.clear()


def _handlers(tracer: LlamaIndexTracer) -> tuple[Any, Any]:
    """Build the LlamaIndex handler objects (the framework is imported here, not at import time)."""
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler
    from llama_index.core.instrumentation.span import BaseSpan
    from llama_index.core.instrumentation.span_handlers import BaseSpanHandler

    class SpanmuxSpanHandler(BaseSpanHandler[BaseSpan]):
        """Opens/closes spanmux records; returns None so LlamaIndex keeps no span objects itself."""

        @classmethod
        def class_name(cls) -> str:
            return "SpanmuxSpanHandler"

        def new_span(self, id_: str, bound_args: Any, instance: Any = None, parent_span_id: str | None = None,
                     tags: dict[str, Any] | None = None, **kwargs: Any) -> None:
            tracer.enter(id_, bound_args, instance, parent_span_id, tags)

        def prepare_to_exit_span(self, id_: str, bound_args: Any, instance: Any = None, result: Any = None,
                                 **kwargs: Any) -> None:
            tracer.exit(id_, result)

        def prepare_to_drop_span(self, id_: str, bound_args: Any, instance: Any = None,
                                 err: BaseException | None = None, **kwargs: Any) -> None:
            tracer.drop(id_, err)

    class SpanmuxEventHandler(BaseEventHandler):
        """Adds model, usage, streaming timing and errors to the open record of ``event.span_id``."""

        @classmethod
        def class_name(cls) -> str:
            return "SpanmuxEventHandler"

        def handle(self, event: Any, **kwargs: Any) -> None:
            tracer.handle(event)

    span_handler = SpanmuxSpanHandler(open_spans={}, completed_spans=[], dropped_spans=[], current_span_ids={})
    return span_handler, SpanmuxEventHandler()


_lock = threading.Lock()
_tracer: LlamaIndexTracer | None = None
_attached: tuple[Any, Any] | None = None


def _provider_hook() -> SpanContext | None:
    tracer = _tracer
    return tracer.current() if tracer is not None and _attached is not None else None


def instrument() -> LlamaIndexTracer:
    """Trace every LlamaIndex call of this process (idempotent). Returns the shared tracer."""
    from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]

    global _tracer, _attached
    with _lock:
        if _tracer is None:
            _tracer = LlamaIndexTracer()
        _tracer.enabled = True
        if _attached is None:
            span_handler, event_handler = _handlers(_tracer)
            dispatcher = get_dispatcher()
            dispatcher.add_span_handler(span_handler)
            dispatcher.add_event_handler(event_handler)
            _attached = (span_handler, event_handler)
            register_provider(_provider_hook)
        return _tracer


def uninstrument() -> None:
    """Detach both handlers from the root dispatcher; spans still open are forgotten."""
    global _attached
    with _lock:
        if _attached is None:
            return
        from llama_index.core.instrumentation import get_dispatcher  # type: ignore[attr-defined]

        span_handler, event_handler = _attached
        dispatcher = get_dispatcher()
        dispatcher.span_handlers = [h for h in dispatcher.span_handlers if h is not span_handler]
        dispatcher.event_handlers = [h for h in dispatcher.event_handlers if h is not event_handler]
        _attached = None
        if _tracer is not None:
            _tracer.enabled = False
            _tracer.reset()


def is_instrumented() -> bool:
    return _attached is not None
