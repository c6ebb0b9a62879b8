"""Backend ``otlp``: the same spans in any OpenTelemetry tool (a Collector, Jaeger, Tempo, a vendor).

Spans are built by ``spanmux.backends.otel_spans`` (our trace and span ids, parents and nanosecond
times unchanged; no tracer provider, so a user's own OpenTelemetry setup is untouched) with two
attribute tables, OpenTelemetry GenAI (``gen_ai.*``) and OpenInference (what Phoenix and Arize
render), filled straight into OpenTelemetry's generated OTLP messages by ``OtlpEncoder`` (tested
equal to what OpenTelemetry's own ``encode_spans`` makes of the same spans). The transport is ours (``requests`` for
OTLP/HTTP protobuf, ``grpcio`` with opentelemetry-proto's ``TraceService`` stub for gRPC) because
OpenTelemetry's exporters retry and sleep inside ``export`` and answer only success or failure:
here every answer is classified for the pipeline's Lane, which owns retries, backoff and the spool.

Scores travel as ``gen_ai.evaluation.result`` span events on the span they judge (the trace's root
for a trace score) when that span is in the same batch. A score arriving after its span was exported
is sent as its own small record: a zero-length ``evaluator`` span named ``evaluation <name>`` under
the judged span (a trace score: a root of the trace), carrying the same event; its span id comes
from the score id, so a re-sent score is the same record. ``backends/phoenix.py`` sends scores as
Phoenix annotations instead.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, NamedTuple

from spanmux import attributes as attr
from spanmux.backend import BackendSetupError, BaseBackend, ExportError, RefusedContent, halves
from spanmux.backends.otel_spans import (
    SERVICE_NAME,
    TELEMETRY_SDK_NAME,
    AttributeTable,
    OtelEvent,
    OtlpEncoder,
    json_text,
)
from spanmux.backoff import retry_after_seconds
from spanmux.config_schemas.observability import OtlpConfig
from spanmux.model import Score, Span, SpanKind, TraceAttributes
from spanmux.usage import is_model_call

log = logging.getLogger("spanmux.backends.otlp")

HTTP_DEFAULT: Final = "http://localhost:4318/v1/traces"
GRPC_DEFAULT: Final = "http://localhost:4317"
TRACES_SUFFIX: Final = "v1/traces"
MAX_REQUEST_BYTES: Final = 3 * 1024 * 1024
"""Encoded size above which a batch is split: gRPC servers refuse messages over 4 MiB by default."""
TIMEOUT_DEFAULT: Final = 10.0

# ---------------------------------------------------------------- kind tables (every SpanKind, explicitly)

OPERATION_BY_KIND: Final[dict[SpanKind, str | None]] = {
    "llm": "chat",
    "embedding": "embeddings",
    "retriever": "retrieval",
    "tool": "execute_tool",
    "agent": "invoke_agent",
    "chain": None,
    "reranker": None,
    "parser": None,
    "evaluator": None,
    "guardrail": None,
    "span": None,
}
"""spanmux kind -> ``gen_ai.operation.name``. GenAI has no operation for the others (None: not
sent); an integration's own ``gen_ai.operation.name`` (``text_completion``...) wins."""

OPENINFERENCE_KIND_BY_KIND: Final[dict[SpanKind, str]] = {
    "llm": "LLM",
    "embedding": "EMBEDDING",
    "retriever": "RETRIEVER",
    "reranker": "RERANKER",
    "tool": "TOOL",
    "agent": "AGENT",
    "chain": "CHAIN",
    "parser": "CHAIN",
    "evaluator": "EVALUATOR",
    "guardrail": "GUARDRAIL",
    "span": "CHAIN",
}
"""spanmux kind -> ``openinference.span.kind``, sent on every span (GenAI has no CHAIN). OpenInference
has no parser or plain span: CHAIN, and ``spanmux.kind`` says which it was."""

SPANMUX_KIND: Final = "spanmux.kind"
SPANMUX_FRAMEWORK: Final = "spanmux.framework"
SCORE_ID: Final = "spanmux.score.id"
EVENT_DATA: Final = "spanmux.event.data"
"""spanmux's own keys on OTLP spans (the same ``spanmux.kind`` MLflow carries)."""

_ROLES: Final = {"human": "user", "ai": "assistant", "chat": "user", "function": "tool", "developer": "system"}
_PASSED_OVER: Final = frozenset({
    attr.RETRIEVAL_DOCUMENTS, attr.FRAMEWORK_EVENT, attr.METADATA, attr.TAGS, attr.SESSION_ID, attr.USER_ID,
})
"""Span attributes a table maps into its own form instead of passing them through."""
_SCALARS = (str, bool, int, float)


# ---------------------------------------------------------------- values and messages (pure)

def otel_value(value: Any) -> Any:
    """A value OpenTelemetry can carry: scalars and homogeneous scalar lists as they are, the rest JSON."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    return json_text(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json_text(value)


JSON_MIME: Final = "application/json"


class Message(NamedTuple):
    """One chat message as both conventions need it."""

    role: str
    content: str | None
    tool_calls: tuple[tuple[str | None, str, Any], ...] = ()
    """(id, name, arguments) of each tool call the message asks for."""
    tool_call_id: str | None = None


def _message(raw: Any, default_role: str) -> Message | None:
    if isinstance(raw, str):
        return Message(default_role, raw)
    if not (type(raw) is dict or isinstance(raw, Mapping)) or ("content" not in raw and "tool_calls" not in raw):
        return None
    role = str(raw.get("role") or raw.get("type") or default_role)
    content = raw.get("content")
    if isinstance(content, list):  # content blocks: their text, else the blocks as JSON
        texts = [b.get("text") for b in content if isinstance(b, Mapping) and isinstance(b.get("text"), str)]
        content = "".join(str(t) for t in texts) if texts else json_text(content)
    calls = []
    for call in raw.get("tool_calls") or ():
        if isinstance(call, Mapping):
            inner = call.get("function")
            function: Mapping[str, Any] = inner if isinstance(inner, Mapping) else call
            calls.append((call.get("id"), str(function.get("name", "")),
                          function.get("args", function.get("arguments"))))
    tool_call_id = raw.get("tool_call_id")
    return Message(_ROLES.get(role, role), None if content is None else _text(content), tuple(calls),
                   None if tool_call_id is None else str(tool_call_id))


_last_span_messages: tuple[Span | None, list[Message], list[Message]] = (None, [], [])
"""The last ``span_messages`` answer: both tables ask for the same span's messages in a row. The span
itself is held (not its id), so a hit can never be another object at a reused address."""


def span_messages(span: Span) -> tuple[list[Message], list[Message]]:
    """An llm span's input and output messages (``messages_of``), parsed once for both tables."""
    global _last_span_messages
    last = _last_span_messages  # one read: another lane may swap it meanwhile, never half of it
    if last[0] is span:
        return last[1], last[2]
    inputs, outputs = messages_of(span.input, "user"), messages_of(span.output, "assistant")
    _last_span_messages = (span, inputs, outputs)
    return inputs, outputs


def messages_of(value: Any, default_role: str) -> list[Message]:
    """Chat messages in a span's input or output: a message list, one message, ``{"messages": [...]}``
    or a plain string. Anything else has none (it still travels as ``input.value``)."""
    if isinstance(value, Mapping) and isinstance(value.get("messages"), list):
        value = value["messages"]
    if isinstance(value, (Mapping, str)):
        one = _message(value, default_role)
        return [one] if one is not None else []
    if isinstance(value, list) and value:
        found = [_message(item, default_role) for item in value]
        if all(m is not None for m in found):
            return [m for m in found if m is not None]
    return []


def genai_messages(messages: Sequence[Message], output: bool) -> str:
    """``gen_ai.input.messages`` / ``gen_ai.output.messages``: JSON of role and typed parts."""
    out = []
    for m in messages:
        parts: list[dict[str, Any]] = []
        if m.role == "tool" and m.tool_call_id is not None:
            parts.append({"type": "tool_call_response", "id": m.tool_call_id, "response": m.content})
        elif m.content:
            parts.append({"type": "text", "content": m.content})
        for call_id, name, arguments in m.tool_calls:
            parts.append({"type": "tool_call", "id": call_id, "name": name, "arguments": arguments})
        item: dict[str, Any] = {"role": m.role, "parts": parts}
        if output:
            item["finish_reason"] = "tool_call" if m.tool_calls else "stop"
        out.append(item)
    return str(json_text(out))


def openinference_messages(prefix: str, messages: Sequence[Message]) -> dict[str, Any]:
    """``llm.input_messages.{i}.message.*`` (and their tool calls), flattened as OpenInference does."""
    out: dict[str, Any] = {}
    for i, m in enumerate(messages):
        head = f"{prefix}.{i}."
        out[head + attr.MESSAGE_ROLE] = m.role
        if m.content is not None:
            out[head + attr.MESSAGE_CONTENT] = m.content
        if m.tool_call_id is not None:
            out[head + attr.MESSAGE_TOOL_CALL_ID] = m.tool_call_id
        for j, (call_id, name, arguments) in enumerate(m.tool_calls):
            call = f"{head}{attr.MESSAGE_TOOL_CALLS}.{j}."
            if call_id is not None:
                out[call + attr.TOOL_CALL_ID] = str(call_id)
            out[call + attr.TOOL_CALL_FUNCTION_NAME] = name
            if arguments is not None:
                out[call + attr.TOOL_CALL_FUNCTION_ARGUMENTS] = _text(arguments)
    return out


def _trace_field(span: Span, field: str, key: str) -> str | None:
    trace = span.trace
    value = getattr(trace, field) if trace is not None else None
    value = value or (span.attributes or {}).get(key)
    return None if value is None else str(value)


# ---------------------------------------------------------------- the two attribute tables (pure)

def spanmux_attributes(span: Span) -> dict[str, Any]:
    """spanmux's own facts and the span's attributes passed through (the conventions' tables win)."""
    out: dict[str, Any] = {SPANMUX_KIND: span.kind, SPANMUX_FRAMEWORK: span.framework}
    for key, value in (span.attributes or {}).items():
        if value is not None and key not in _PASSED_OVER:
            out[key] = otel_value(value)
    return out


def genai_attributes(span: Span) -> dict[str, Any]:
    """OpenTelemetry GenAI semantic conventions."""
    extra = span.attributes or {}
    out: dict[str, Any] = {}
    operation = extra.get(attr.GEN_AI_OPERATION_NAME) or OPERATION_BY_KIND[span.kind]
    if operation:
        out[attr.GEN_AI_OPERATION_NAME] = operation
    model = span.model
    if model is not None:
        if model.provider:
            out[attr.GEN_AI_PROVIDER_NAME] = model.provider
        requested = extra.get(attr.GEN_AI_REQUEST_MODEL) or model.name
        if requested:
            out[attr.GEN_AI_REQUEST_MODEL] = str(requested)
        for name, value in (model.parameters or {}).items():
            key = attr.GEN_AI_REQUEST_PARAMETERS.get(name)
            if key is not None and value is not None:
                out[key] = (value,) if name == "stop" and isinstance(value, str) else otel_value(value)
    if span.usage is not None and (is_model_call(span) or span.kind == "embedding"):
        usage = span.usage
        out[attr.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
        out[attr.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.output_tokens
        for key, count in ((attr.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, usage.cache_read_tokens),
                           (attr.GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS, usage.cache_write_tokens),
                           (attr.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS, usage.reasoning_tokens)):
            if count:
                out[key] = count
    session = _trace_field(span, "session_id", attr.SESSION_ID)
    if session:
        out[attr.GEN_AI_CONVERSATION_ID] = session
    if span.kind == "tool":
        out[attr.GEN_AI_TOOL_NAME] = str(extra.get(attr.GEN_AI_TOOL_NAME) or span.name)
        if span.input is not None:
            out[attr.GEN_AI_TOOL_CALL_ARGUMENTS] = _text(span.input)
        if span.output is not None:
            out[attr.GEN_AI_TOOL_CALL_RESULT] = _text(span.output)
    elif span.kind == "agent":
        out[attr.GEN_AI_AGENT_NAME] = span.name
    elif span.kind == "llm":
        inputs, outputs = span_messages(span)
        if inputs:
            out[attr.GEN_AI_INPUT_MESSAGES] = genai_messages(inputs, output=False)
        if outputs:
            out[attr.GEN_AI_OUTPUT_MESSAGES] = genai_messages(outputs, output=True)
    if span.status == "error":
        out[attr.ERROR_TYPE] = span.error.type if span.error is not None else "_OTHER"
    return out


def openinference_attributes(span: Span) -> dict[str, Any]:
    """OpenInference semantic conventions (Phoenix, Arize)."""
    extra = span.attributes or {}
    out: dict[str, Any] = {attr.OPENINFERENCE_SPAN_KIND: OPENINFERENCE_KIND_BY_KIND[span.kind]}
    if span.input is not None:  # a mime type only for JSON: text/plain is OpenInference's default
        if isinstance(span.input, str):
            out[attr.INPUT_VALUE] = span.input
        else:
            out[attr.INPUT_VALUE] = json_text(span.input)
            out[attr.INPUT_MIME_TYPE] = JSON_MIME
    if span.output is not None:
        if isinstance(span.output, str):
            out[attr.OUTPUT_VALUE] = span.output
        else:
            out[attr.OUTPUT_VALUE] = json_text(span.output)
            out[attr.OUTPUT_MIME_TYPE] = JSON_MIME
    model = span.model
    if span.kind == "llm":
        if model is not None and model.name:
            out[attr.LLM_MODEL_NAME] = model.name
        if model is not None and model.provider:
            out[attr.LLM_PROVIDER] = model.provider
        if model is not None and model.parameters:
            out[attr.LLM_INVOCATION_PARAMETERS] = json_text(model.parameters)
        inputs, outputs = span_messages(span)
        out.update(openinference_messages(attr.LLM_INPUT_MESSAGES, inputs))
        out.update(openinference_messages(attr.LLM_OUTPUT_MESSAGES, outputs))
        if span.usage is not None and is_model_call(span):
            usage = span.usage
            out[attr.LLM_TOKEN_COUNT_PROMPT] = usage.input_tokens
            out[attr.LLM_TOKEN_COUNT_COMPLETION] = usage.output_tokens
            out[attr.LLM_TOKEN_COUNT_TOTAL] = usage.total_tokens or usage.input_tokens + usage.output_tokens
            for key, count in ((attr.LLM_TOKEN_COUNT_CACHE_READ, usage.cache_read_tokens),
                               (attr.LLM_TOKEN_COUNT_CACHE_WRITE, usage.cache_write_tokens),
                               (attr.LLM_TOKEN_COUNT_REASONING, usage.reasoning_tokens)):
                if count:
                    out[key] = count
        if span.cost is not None and is_model_call(span):
            out[attr.LLM_COST_PROMPT] = span.cost.input
            out[attr.LLM_COST_COMPLETION] = span.cost.output
            out[attr.LLM_COST_TOTAL] = span.cost.total
    elif span.kind == "embedding" and model is not None and model.name:
        out[attr.EMBEDDING_MODEL_NAME] = model.name
    elif span.kind == "tool":
        out[attr.TOOL_NAME] = str(extra.get(attr.GEN_AI_TOOL_NAME) or span.name)
        call_id = extra.get(attr.GEN_AI_TOOL_CALL_ID)
        if call_id is not None:
            out[attr.TOOL_ID] = str(call_id)
    documents = extra.get(attr.RETRIEVAL_DOCUMENTS)
    if isinstance(documents, list):
        for i, doc in enumerate(documents):
            if not isinstance(doc, Mapping):
                continue
            head = f"{attr.RETRIEVAL_DOCUMENTS}.{i}."
            for key, field in ((attr.DOCUMENT_ID, "id"), (attr.DOCUMENT_CONTENT, "content"),
                               (attr.DOCUMENT_SCORE, "score"), (attr.DOCUMENT_METADATA, "metadata")):
                value = doc.get(field)
                if value is not None:
                    out[head + key] = json_text(value) if field == "metadata" else (
                        float(value) if field == "score" else str(value))
    session = _trace_field(span, "session_id", attr.SESSION_ID)
    if session:
        out[attr.SESSION_ID] = session
    user = _trace_field(span, "user_id", attr.USER_ID)
    if user:
        out[attr.USER_ID] = user
    metadata = _metadata(span.trace, extra.get(attr.METADATA))
    if metadata:
        out[attr.METADATA] = json_text(metadata)
    tags = list(span.trace.tags) if span.trace is not None else []
    own_tags = extra.get(attr.TAGS)
    if isinstance(own_tags, (list, tuple)):
        tags.extend(str(t) for t in own_tags if str(t) not in tags)
    if tags:
        out[attr.TAG_TAGS] = tuple(tags)
    node = extra.get(attr.LANGGRAPH_NODE)
    if node is not None:
        out[attr.GRAPH_NODE_ID] = str(node)
    return out


def _metadata(trace: TraceAttributes | None, own: Any) -> dict[str, Any]:
    merged: dict[str, Any] = dict(trace.metadata or {}) if trace is not None else {}
    if isinstance(own, Mapping):
        merged.update(own)
    return merged


TABLES: Final[dict[str, AttributeTable]] = {"genai": genai_attributes, "openinference": openinference_attributes}
"""``conventions:`` name -> attribute table."""


def without_content(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The attributes minus every content key (``capture_content: false``): the worker already
    removed inputs and outputs; this is the last guard, for keys a table derived from elsewhere."""
    return {k: v for k, v in attributes.items() if not attr.is_content_key(k)}


def framework_events(span: Span) -> list[OtelEvent]:
    """The span's recorded events (``attributes["event"]``: name, time, data) as OTel span events,
    their data as JSON under ``spanmux.event.data`` (gone with ``capture_content: false``)."""
    raw = (span.attributes or {}).get(attr.FRAMEWORK_EVENT)
    out = []
    for item in raw if isinstance(raw, list) else ():
        if isinstance(item, Mapping) and item.get("name"):
            data = item.get("data")
            attributes = {EVENT_DATA: json_text(data)} if data is not None else {}
            time_ns = item.get("time_ns")
            out.append(OtelEvent(str(item["name"]), attributes,
                                 time_ns if isinstance(time_ns, int) and time_ns > 0 else span.end_ns))
    return out


def score_event(score: Score) -> OtelEvent:
    """A score as OpenTelemetry GenAI's ``gen_ai.evaluation.result`` event."""
    attributes: dict[str, Any] = {attr.GEN_AI_EVALUATION_NAME: score.name, SCORE_ID: score.id}
    value = score.value
    if score.data_type == "numeric" and not isinstance(value, str):
        attributes[attr.GEN_AI_EVALUATION_SCORE_VALUE] = float(value)
    elif score.data_type == "boolean":
        truthy = value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)
        attributes[attr.GEN_AI_EVALUATION_SCORE_VALUE] = 1.0 if truthy else 0.0
        attributes[attr.GEN_AI_EVALUATION_SCORE_LABEL] = "true" if truthy else "false"
    else:
        attributes[attr.GEN_AI_EVALUATION_SCORE_LABEL] = str(value)
    if score.comment:
        attributes[attr.GEN_AI_EVALUATION_EXPLANATION] = score.comment
    return OtelEvent(attr.GEN_AI_EVALUATION_RESULT, attributes, score.timestamp_ns)


def stable_span_id(text: str) -> str:
    """A non-zero 16-hex span id from ``text``, the same in every process (``hash()`` of a str is
    salted per process: a score replayed from the spool by another process would be a new record)."""
    digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
    return digest if int(digest, 16) else "1".zfill(16)


def score_record(score: Score) -> Span:
    """A score whose span was exported before: its own zero-length evaluator span under the judged
    span, id from the score id (a re-sent score is the same record)."""
    span_id = score.id[:16] if re.fullmatch(r"[0-9a-f]{16,}", score.id) and int(score.id[:16], 16) else (
        stable_span_id(score.id))
    return Span(trace_id=score.trace_id, span_id=span_id, parent_id=score.span_id,
                name=f"evaluation {score.name}", kind="evaluator", framework="spanmux",
                start_ns=score.timestamp_ns, end_ns=score.timestamp_ns,
                attributes=dict(score_event(score).attributes))


# ---------------------------------------------------------------- settings from config and environment

class Target(NamedTuple):
    """Where and how to send, resolved once from the section and the environment."""

    endpoint: str
    protocol: str
    headers: dict[str, str]
    compression: str
    timeout: float
    resource: dict[str, str]


def parse_pairs(text: str | None) -> dict[str, str]:
    """``k=v,k2=v2`` with percent-encoded values (OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES)."""
    out: dict[str, str] = {}
    for item in (text or "").split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[urllib.parse.unquote(key.strip())] = urllib.parse.unquote(value.strip())
    return out


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value is not None and value.strip():
            return value.strip()
    return None


def resolve(section: OtlpConfig, environ: Mapping[str, str] = os.environ) -> Target:
    """The section's values over the OpenTelemetry environment variables, with the specification's
    rules: the signal-specific endpoint is used as is; ``/v1/traces`` is appended only to the generic
    ``OTEL_EXPORTER_OTLP_ENDPOINT``, and only for http/protobuf."""
    protocol = section.protocol or _env(environ, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
    protocol = protocol or "http/protobuf"
    if protocol not in ("http/protobuf", "grpc"):
        raise BackendSetupError(f"otlp protocol {protocol!r} is not supported: use http/protobuf or grpc",
                                key="protocol")
    endpoint = section.endpoint or _env(environ, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if endpoint is None:
        generic = _env(environ, "OTEL_EXPORTER_OTLP_ENDPOINT")
        if generic is None:
            endpoint = GRPC_DEFAULT if protocol == "grpc" else HTTP_DEFAULT
        elif protocol == "grpc":
            endpoint = generic
        else:
            endpoint = generic if generic.endswith("/") else generic + "/"
            endpoint += TRACES_SUFFIX
    if not re.match(r"^https?://[^/\s]+", endpoint):
        raise BackendSetupError("otlp endpoint must be an http:// or https:// URL", key="endpoint")
    headers = parse_pairs(_env(environ, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"))
    headers.update({k: v.get_secret_value() for k, v in section.headers.items()})
    compression = section.compression or _env(
        environ, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION") or "gzip"
    if compression not in ("gzip", "none"):
        raise BackendSetupError(f"otlp compression {compression!r} is not supported: use gzip or none",
                                key="compression")
    timeout = section.timeout
    if timeout is None:
        millis = _env(environ, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
        try:
            timeout = float(millis) / 1000 if millis else TIMEOUT_DEFAULT
        except ValueError:
            timeout = TIMEOUT_DEFAULT
    resource = parse_pairs(environ.get("OTEL_RESOURCE_ATTRIBUTES"))
    resource.update(section.resource_attributes)
    resource[SERVICE_NAME] = (section.service_name or _env(environ, "OTEL_SERVICE_NAME")
                              or resource.get(SERVICE_NAME) or "spanmux")
    resource[TELEMETRY_SDK_NAME] = "spanmux"
    return Target(endpoint, protocol, headers, compression, timeout if timeout > 0 else TIMEOUT_DEFAULT, resource)


def shown(endpoint: str) -> str:
    """An endpoint for messages: without user:password and query (they may hold credentials)."""
    parts = urllib.parse.urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


# ---------------------------------------------------------------- transports

class Sent(NamedTuple):
    rejected: int
    message: str


class HttpTransport:
    """OTLP/HTTP protobuf over one ``requests`` session."""

    RETRYABLE: ClassVar[frozenset[int]] = frozenset({408, 429, 500, 502, 503, 504})
    """The specification's 429/502/503/504, plus a timeout and a server error (a restarting receiver)."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.where = shown(target.endpoint)
        self._session: Any = None

    def send(self, request: Any, timeout: float | None = None) -> Sent:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"User-Agent": "spanmux"})
        body = request.SerializeToString()
        headers = {**self.target.headers, "Content-Type": "application/x-protobuf"}
        if self.target.compression == "gzip":
            body = gzip.compress(body, compresslevel=1)  # small requests: speed over ratio
            headers["Content-Encoding"] = "gzip"
        seconds = timeout or self.target.timeout
        try:
            response = self._session.post(self.target.endpoint, data=body, headers=headers, timeout=seconds)
        except requests.Timeout:
            raise ExportError(f"OTLP receiver at {self.where} did not answer within {seconds:g}s",
                              retryable=True) from None
        except requests.RequestException as exc:
            raise ExportError(f"OTLP receiver at {self.where} is unreachable ({type(exc).__name__})",
                              retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return _partial(response.content if "protobuf" in response.headers.get("Content-Type", "") else b"")
        if status in self.RETRYABLE:
            raise ExportError(f"OTLP receiver at {self.where} answered HTTP {status}", retryable=True,
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status in (400, 413, 422):  # 422: MLflow could not convert a span
            raise RefusedContent(f"HTTP {status}", _short(response.text), f"OTLP receiver at {self.where}")
        if status in (401, 403):
            raise ExportError(f"OTLP receiver at {self.where} refused the credentials (HTTP {status}): "
                              "check the headers (OTEL_EXPORTER_OTLP_HEADERS)", retryable=False)
        raise ExportError(f"OTLP receiver at {self.where} answered HTTP {status}", retryable=False)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


class GrpcTransport:
    """OTLP/gRPC with opentelemetry-proto's ``TraceService`` stub over one channel."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.where = shown(target.endpoint)
        self._channel: Any = None
        self._stub: Any = None

    def _connect(self) -> Any:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

        parts = urllib.parse.urlsplit(self.target.endpoint)
        address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 4317)}"
        compression = grpc.Compression.Gzip if self.target.compression == "gzip" else grpc.Compression.NoCompression
        if parts.scheme == "https":
            self._channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(), compression=compression)
        else:
            self._channel = grpc.insecure_channel(address, compression=compression)
        stub_class: Any = trace_service_pb2_grpc.TraceServiceStub  # generated code, untyped
        self._stub = stub_class(self._channel)
        return self._stub

    def send(self, request: Any, timeout: float | None = None) -> Sent:
        import grpc

        stub = self._stub or self._connect()
        metadata = tuple((k.lower(), v) for k, v in self.target.headers.items())
        seconds = timeout or self.target.timeout
        try:
            response = stub.Export(request, metadata=metadata, timeout=seconds)
        except grpc.RpcError as error:
            raise _grpc_error(error, self.where) from None
        partial = response.partial_success
        return Sent(int(partial.rejected_spans), str(partial.error_message))

    def close(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()


_GRPC_RETRYABLE: Final = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED",
                                    "OUT_OF_RANGE", "UNAVAILABLE", "DATA_LOSS"})
"""gRPC codes the OTLP specification lists as retryable."""


def _grpc_error(error: Any, where: str) -> Exception:
    code = error.code() if callable(getattr(error, "code", None)) else None
    name = getattr(code, "name", str(code))
    if name in _GRPC_RETRYABLE:
        return ExportError(f"OTLP receiver at {where} answered gRPC {name}", retryable=True,
                           retry_after=_grpc_retry_delay(error))
    if name == "INVALID_ARGUMENT":
        return RefusedContent(f"gRPC {name}", _short(error.details() or ""), f"OTLP receiver at {where}")
    if name in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
        return ExportError(f"OTLP receiver at {where} refused the credentials (gRPC {name}): check the "
                           "headers (OTEL_EXPORTER_OTLP_HEADERS)", retryable=False)
    return ExportError(f"OTLP receiver at {where} answered gRPC {name}", retryable=False)


def _grpc_retry_delay(error: Any) -> float | None:
    """The server's ``google.rpc.RetryInfo`` delay, OTLP/gRPC's Retry-After."""
    try:
        from google.rpc.error_details_pb2 import RetryInfo

        for key, value in error.trailing_metadata() or ():
            if key == "google.rpc.retryinfo-bin":
                info = RetryInfo.FromString(value)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    except Exception:  # no metadata, or not parseable: the lane's own backoff applies
        return None
    return None


def _partial(body: bytes) -> Sent:
    if not body:
        return Sent(0, "")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    try:
        partial = ExportTraceServiceResponse.FromString(body).partial_success
    except Exception:  # an answer that is no OTLP response: success, nothing rejected
        return Sent(0, "")
    return Sent(int(partial.rejected_spans), str(partial.error_message))


def _short(text: str) -> str:
    return str(text)[:300] or "rejected"


# ---------------------------------------------------------------- the backend

class OtlpBackend(BaseBackend):
    """Sends spans over OTLP (HTTP protobuf or gRPC) with GenAI and OpenInference attributes."""

    name = "otlp"
    config_model: ClassVar[Any] = OtlpConfig
    required_modules: ClassVar[tuple[str, ...]] = (
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.common",
        "opentelemetry.proto",
        "requests",
    )
    extra: ClassVar[str | None] = "otlp"
    scores_as_events: ClassVar[bool] = True
    """False in a subclass that sends scores its own way (Phoenix annotations)."""

    def __init__(self, config: OtlpConfig | None, settings: Any = None) -> None:
        section = config if config is not None else self.config_model()
        super().__init__(section, settings)
        self.target = self.resolve(section)
        unknown = [c for c in section.conventions if c not in TABLES]
        if unknown:
            raise BackendSetupError(f"unknown conventions {unknown}: use genai, openinference", key="conventions")
        self.conventions = tuple(dict.fromkeys(section.conventions))
        self.capture_content = bool(getattr(settings, "capture_content", True))
        self.rejected_spans = 0
        self.rejected_scores = 0
        self.score_records = 0
        self._encoder: OtlpEncoder | None = None
        self._tables: list[AttributeTable] = []
        self._transport: HttpTransport | GrpcTransport | None = None

    def resolve(self, section: Any) -> Target:
        """Where to send: the section over the OpenTelemetry environment variables."""
        return resolve(section)

    def __repr__(self) -> str:
        names = sorted(self.target.headers)
        return (f"{type(self).__name__}(endpoint={shown(self.target.endpoint)!r}, "
                f"protocol={self.target.protocol!r}, headers={names!r})")

    @property
    def transport(self) -> HttpTransport | GrpcTransport:
        if self._transport is None:
            kind = GrpcTransport if self.target.protocol == "grpc" else HttpTransport
            self._transport = kind(self.target)
        return self._transport

    # -- the backend contract
    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        events: dict[str, list[OtelEvent]] = {}
        late: list[Span] = []
        if scores and self.scores_as_events:
            here = {s.span_id for s in spans}
            roots = {s.trace_id: s.span_id for s in spans if s.parent_id is None}
            for score in scores:
                target = score.span_id or roots.get(score.trace_id)
                if target is not None and target in here:
                    events.setdefault(target, []).append(score_event(score))
                else:
                    late.append(score_record(score))
                    events.setdefault(late[-1].span_id, []).append(score_event(score))
        request, messages = self._request_of([*spans, *late], events)
        if messages:
            self._send(messages, request)
        self.score_records += len(late)
        if scores and not self.scores_as_events:
            self.export_scores(scores)

    def export_scores(self, scores: Sequence[Score]) -> None:
        """Scores sent outside OTLP (a subclass's annotations); plain OTLP sends them as events."""

    def shutdown(self, timeout: float) -> None:
        if self._transport is not None:
            self._transport.close()

    def check_connection(self, timeout: float = 5.0) -> str:
        """One empty export (valid OTLP: no spans), for ``spanmux doctor``: raises ``ExportError``
        when nothing answers or the credentials are refused."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        try:
            self.transport.send(ExportTraceServiceRequest(), timeout)
        except RefusedContent as exc:  # it answered, as OTLP (MLflow refuses a request without spans)
            return f"OTLP receiver at {self.transport.where} ({self.target.protocol}) answered ({exc})"
        return f"OTLP receiver at {self.transport.where} ({self.target.protocol}) accepts exports"

    def stats(self) -> dict[str, int]:
        return {**super().stats(), "score_records": self.score_records}

    # -- spans
    def tables(self) -> list[AttributeTable]:
        """The attribute tables, in order (a later one wins on a shared key)."""
        return [spanmux_attributes, *(TABLES[name] for name in self.conventions)]

    def _request_of(self, spans: Sequence[Span], events: Mapping[str, Sequence[OtelEvent]]) -> tuple[Any, Any]:
        """One request of ``spans`` and its ``spans`` field (the messages, built in place); a span
        that cannot be encoded is skipped and counted."""
        encoder = self._encoder_made()
        encode = encoder.span
        request = encoder.request()
        into = encoder.spans_of(request)
        for span in spans:
            try:
                attributes: dict[str, Any] = {}
                for table in self._tables:
                    attributes.update(table(span))
                if not self.capture_content:
                    attributes = without_content(attributes)
                span_events = [*framework_events(span), *events.get(span.span_id, ())]
                encode(span, attributes, span_events, into)
            except (ValueError, TypeError) as exc:
                self.rejected_spans += 1
                self.warn_once(f"span-invalid:{type(exc).__name__}",
                               "otlp: span %r skipped, it cannot be encoded: %s", span.name, exc)
        return request, into

    def _encoder_made(self) -> OtlpEncoder:
        if self._encoder is None:
            self._encoder = OtlpEncoder(self.target.resource, exception_events=True)
            self._tables = self.tables()
        return self._encoder

    def _send(self, messages: Sequence[Any], request: Any = None) -> None:
        """Send ``messages`` (in ``request`` when they were built in one; else a new one holds copies)."""
        if request is None:
            request = self._encoder_made().request(messages)
        if len(messages) > 1 and request.ByteSize() > MAX_REQUEST_BYTES:
            first, second = halves(messages)
            self._send(first)
            self._send(second)
            return
        try:
            sent = self.transport.send(request)
        except RefusedContent as exc:
            self.isolate_refused(messages, exc, self._send)
            return
        if sent.rejected:
            self.rejected_spans += sent.rejected
            self.warn_once("partial", "OTLP receiver at %s rejected %d of %d spans (not retried): %s",
                           self.transport.where, sent.rejected, len(messages), sent.message)
