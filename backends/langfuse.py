"""Backend ``langfuse``: Langfuse's OpenTelemetry ingestion plus its scores API.

Spans travel as OTLP/HTTP protobuf (gzip) to ``{host}/api/public/otel/v1/traces`` with the
``langfuse.*`` attributes the Langfuse SDK itself writes, so an llm span becomes a generation with
model, exclusive usage buckets and cost, and every observation carries the trace-level fields
(name, user, session, tags, metadata) that Langfuse's aggregations filter on.

The OpenTelemetry spans come from ``spanmux.backends.otel_spans`` (our ids, nanosecond times and
parents; no tracer provider, so the user's own OpenTelemetry setup, or a Langfuse SDK client in the
same process, is neither captured nor disturbed); this module adds only Langfuse's attribute
table. The HTTP call is ours, so each answer can be classified for the pipeline's Lane, which owns
retries, backoff and the spool.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Final

from spanmux import attributes as attr
from spanmux.backend import BackendSetupError, BaseBackend, ExportError, RefusedContent, halves
from spanmux.backends.otel_spans import (
    SERVICE_NAME,
    TELEMETRY_SDK_NAME,
    OtlpEncoder,
    error_description,
    json_text,
)
from spanmux.backoff import retry_after_seconds
from spanmux.config_schemas import LangfuseConfig
from spanmux.model import Cost, ExperimentItem, ExperimentRun, Score, Span, TraceAttributes, Usage
from spanmux.usage import is_model_call

log = logging.getLogger("spanmux.backends.langfuse")

DEFAULT_HOST = "https://cloud.langfuse.com"
TRACES_PATH = "/api/public/otel/v1/traces"
SCORES_PATH = "/api/public/scores"
PROJECTS_PATH = "/api/public/projects"
DATASETS_PATH = "/api/public/datasets"
DATASET_ITEMS_PATH = "/api/public/dataset-items"
INGESTION_VERSION = "4"
"""``x-langfuse-ingestion-version``: 4 tells the server every span carries its trace fields."""
MAX_TRACE_REQUEST_BYTES = 4 * 1024 * 1024
"""Serialized OTLP size above which a batch is split (before gzip)."""
MAX_SCORE_REQUEST_BYTES = 900_000
"""POST /api/public/scores takes at most 1 MiB (Next.js default body limit)."""



class LangfuseKeys:
    """Langfuse's attribute names, as its SDK writes them (``langfuse/_client/attributes.py``), and
    the metadata keys spanmux adds: the one place they are spelled."""

    OBSERVATION_TYPE: Final = "langfuse.observation.type"
    INPUT: Final = "langfuse.observation.input"
    OUTPUT: Final = "langfuse.observation.output"
    LEVEL: Final = "langfuse.observation.level"
    STATUS_MESSAGE: Final = "langfuse.observation.status_message"
    MODEL: Final = "langfuse.observation.model.name"
    MODEL_PARAMETERS: Final = "langfuse.observation.model.parameters"
    USAGE_DETAILS: Final = "langfuse.observation.usage_details"
    COST_DETAILS: Final = "langfuse.observation.cost_details"
    COMPLETION_START_TIME: Final = "langfuse.observation.completion_start_time"
    PROMPT_NAME: Final = "langfuse.observation.prompt.name"
    PROMPT_VERSION: Final = "langfuse.observation.prompt.version"
    METADATA_PREFIX: Final = "langfuse.observation.metadata."
    TRACE_NAME: Final = "langfuse.trace.name"
    TRACE_TAGS: Final = "langfuse.trace.tags"
    TRACE_METADATA_PREFIX: Final = "langfuse.trace.metadata."
    ENVIRONMENT: Final = "langfuse.environment"
    RELEASE: Final = "langfuse.release"
    USER_ID: Final = attr.USER_ID
    SESSION_ID: Final = attr.SESSION_ID

    # observation metadata: spanmux's own fields where Langfuse has none
    META_FRAMEWORK: Final = "framework"
    META_KIND: Final = "kind"
    META_PROVIDER: Final = "provider"
    META_MODEL: Final = "model"
    META_TRACEBACK: Final = "error.traceback"
    META_TRUNCATED: Final = "truncated"
    META_USAGE_ESTIMATED: Final = "usage.estimated"
    META_COST_SOURCE: Final = "cost.source"

    # experiments, as the SDK's run_experiment marks an item's observations (langfuse >= 5)
    EXPERIMENT_ID: Final = "langfuse.experiment.id"
    EXPERIMENT_NAME: Final = "langfuse.experiment.name"
    EXPERIMENT_METADATA: Final = "langfuse.experiment.metadata"
    EXPERIMENT_DATASET_ID: Final = "langfuse.experiment.dataset.id"
    EXPERIMENT_ITEM_ID: Final = "langfuse.experiment.item.id"
    EXPERIMENT_ITEM_METADATA: Final = "langfuse.experiment.item.metadata"
    EXPERIMENT_ITEM_EXPECTED_OUTPUT: Final = "langfuse.experiment.item.expected_output"
    EXPERIMENT_ITEM_ROOT_OBSERVATION_ID: Final = "langfuse.experiment.item.root_observation_id"


K = LangfuseKeys

OBSERVATION_TYPE_BY_KIND: dict[str, str] = {
    "llm": "generation",
    "embedding": "embedding",
    "agent": "agent",
    "chain": "chain",
    "tool": "tool",
    "retriever": "retriever",
    "evaluator": "evaluator",
    "guardrail": "guardrail",
    "reranker": "span",
    "parser": "span",
    "span": "span",
}
"""spanmux kind -> Langfuse observation type. Langfuse has no reranker or parser type: those
become plain spans and keep their spanmux kind in the observation metadata."""
GENERATION_LIKE = frozenset({"generation", "embedding"})
"""Only these observation types carry model, usage and cost in Langfuse."""

_ENVIRONMENT = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
_TRACE_LEVEL_KEYS = frozenset({attr.USER_ID, attr.SESSION_ID})


# ---------------------------------------------------------------- attribute mapping (pure)

def _text(value: Any) -> str:
    """Input/output as the SDK sends them, and metadata values (so filters like
    ``metadata.variant = B`` match): strings verbatim, anything else as compact JSON."""
    return value if isinstance(value, str) else json_text(value)


def iso_from_ns(ns: int) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``, the form Langfuse parses."""
    seconds, rest = divmod(ns, 1_000_000_000)
    stamp = datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{rest // 1000:06d}Z"


def usage_details(usage: Usage) -> dict[str, int] | None:
    """Exclusive buckets: cached and cache-write tokens leave ``input``, reasoning tokens leave
    ``output``, so the buckets add up to ``total`` and Langfuse never counts a token twice."""
    cache_read = max(0, usage.cache_read_tokens)
    cache_write = max(0, usage.cache_write_tokens)
    reasoning = max(0, usage.reasoning_tokens)
    details = {
        "input": max(0, usage.input_tokens - cache_read - cache_write),
        "output": max(0, usage.output_tokens - reasoning),
    }
    if cache_read:
        details["input_cache_read"] = cache_read
    if cache_write:
        details["input_cache_creation"] = cache_write
    if reasoning:
        details["output_reasoning"] = reasoning
    bucket_sum = sum(details.values())
    if bucket_sum == 0 and usage.total_tokens <= 0:
        return None
    details["total"] = max(usage.total_tokens, bucket_sum)
    return details


def cost_details(cost: Cost) -> dict[str, float]:
    return {"input": cost.input, "output": cost.output, "total": cost.total}


def observation_type(kind: str) -> str:
    return OBSERVATION_TYPE_BY_KIND.get(kind, "span")


def observation_attributes(
    span: Span,
    *,
    trace_name: str | None = None,
    environment: str | None = None,
    release: str | None = None,
) -> dict[str, Any]:
    """The OTel attributes of one observation, named as the Langfuse SDK names them
    (``langfuse/_client/attributes.py``)."""
    otype = observation_type(span.kind)
    if span.kind == "llm" and not is_model_call(span):
        otype = "span"  # a delegating wrapper: Langfuse counts generations as model calls
    attrs: dict[str, Any] = {K.OBSERVATION_TYPE: otype}
    if span.input is not None:
        attrs[K.INPUT] = _text(span.input)
    if span.output is not None:
        attrs[K.OUTPUT] = _text(span.output)
    if span.status == "error":
        attrs[K.LEVEL] = "ERROR"
        if span.error is not None:
            attrs[K.STATUS_MESSAGE] = error_description(span)[:4000]

    metadata: dict[str, Any] = {K.META_FRAMEWORK: span.framework}
    if otype != span.kind and not (otype == "generation" and span.kind == "llm"):
        metadata[K.META_KIND] = span.kind
    extra = span.attributes or {}
    for key, value in extra.items():
        if key in (attr.PROMPT_NAME, attr.PROMPT_VERSION) or key in _TRACE_LEVEL_KEYS or value is None:
            continue
        metadata[key] = value
    if span.error is not None and span.error.traceback:
        metadata[K.META_TRACEBACK] = span.error.traceback
    if span.truncated:
        metadata[K.META_TRUNCATED] = True

    if otype in GENERATION_LIKE:
        model = span.model
        if model is not None and model.name:
            attrs[K.MODEL] = model.name
        if model is not None and model.parameters:
            attrs[K.MODEL_PARAMETERS] = json_text(model.parameters)
        if model is not None and model.provider:
            metadata[K.META_PROVIDER] = model.provider
        if span.usage is not None:
            details = usage_details(span.usage)
            if details is not None:
                attrs[K.USAGE_DETAILS] = json_text(details)
            if span.usage.estimated:
                metadata[K.META_USAGE_ESTIMATED] = True
        if span.cost is not None:
            attrs[K.COST_DETAILS] = json_text(cost_details(span.cost))
            metadata[K.META_COST_SOURCE] = span.cost.source
        if span.completion_start_ns:
            attrs[K.COMPLETION_START_TIME] = iso_from_ns(span.completion_start_ns)
        if otype == "generation" and extra.get(attr.PROMPT_NAME):
            attrs[K.PROMPT_NAME] = str(extra[attr.PROMPT_NAME])
            version = extra.get(attr.PROMPT_VERSION)
            if version is not None:
                try:
                    attrs[K.PROMPT_VERSION] = int(version)
                except (TypeError, ValueError):
                    metadata[attr.PROMPT_VERSION] = version
    elif span.model is not None and span.model.name:
        metadata[K.META_MODEL] = span.model.name

    for key, value in metadata.items():
        attrs[K.METADATA_PREFIX + key] = _text(value)
    attrs.update(trace_attributes(span, trace_name=trace_name, environment=environment, release=release))
    return attrs


def trace_attributes(
    span: Span, *, trace_name: str | None, environment: str | None, release: str | None
) -> dict[str, Any]:
    """Trace-level fields, written on every observation as the SDK's propagation does, so
    Langfuse's per-user, per-session and per-tag aggregations include every observation."""
    attrs: dict[str, Any] = {}
    trace = span.trace
    extra = span.attributes or {}
    name = (trace.name if trace is not None else None) or trace_name
    if name:
        attrs[K.TRACE_NAME] = name
    user_id = (trace.user_id if trace is not None else None) or extra.get(attr.USER_ID)
    if user_id:
        attrs[K.USER_ID] = str(user_id)
    session_id = (trace.session_id if trace is not None else None) or extra.get(attr.SESSION_ID)
    if session_id:
        attrs[K.SESSION_ID] = str(session_id)
    if trace is not None and trace.tags:
        attrs[K.TRACE_TAGS] = tuple(str(tag) for tag in trace.tags)
    if trace is not None and trace.metadata:
        for key, value in trace.metadata.items():
            if value is not None:
                attrs[f"{K.TRACE_METADATA_PREFIX}{key}"] = _text(value)
    if environment:
        attrs[K.ENVIRONMENT] = environment
    if release:
        attrs[K.RELEASE] = release
    return attrs


def score_body(score: Score, environment: str | None = None) -> dict[str, Any]:
    """One item of POST /api/public/scores, shaped like the SDK's ``create_score`` body. The
    score id and timestamp are fixed by the record, so a re-sent score updates, never doubles."""
    value: float | str
    if score.data_type == "boolean":
        raw = score.value
        truthy = raw.strip().lower() in ("true", "1", "yes") if isinstance(raw, str) else bool(raw)
        value = 1.0 if truthy else 0.0
    elif score.data_type == "numeric":
        value = float(score.value)
    else:
        value = str(score.value)
    body: dict[str, Any] = {
        "id": score.id,
        "traceId": score.trace_id,
        "name": score.name,
        "value": value,
        "dataType": score.data_type.upper(),
        "timestamp": iso_from_ns(score.timestamp_ns or time.time_ns()),
        "metadata": {"source": score.source},
    }
    if score.span_id:
        body["observationId"] = score.span_id
    if score.comment:
        body["comment"] = score.comment
    if environment:
        body["environment"] = environment
    return body


# ---------------------------------------------------------------- the backend

def dataset_item_id(dataset: str, item_id: str) -> str:
    """A Langfuse dataset item id (project-wide, at most 255 characters) for an item of a dataset:
    the same in every run, so upserting again adds nothing."""
    digest = hashlib.sha256(f"{dataset}\x00{item_id}".encode()).hexdigest()[:32]
    return f"spanmux-{digest}"


def dataset_item_body(dataset: str, item: ExperimentItem) -> dict[str, Any]:
    """``CreateDatasetItemRequest`` of one item (its first trace as the source)."""
    body: dict[str, Any] = {"datasetName": dataset, "id": dataset_item_id(dataset, item.item_id),
                            "metadata": {**(item.metadata or {}), "spanmux.item_id": item.item_id}}
    if item.input is not None:
        body["input"] = item.input
    if item.expected is not None:
        body["expectedOutput"] = item.expected
    return body


def experiment_run_name(run: ExperimentRun) -> str:
    """The dataset run's name: the experiment's name and its run id (a rerun is a new run)."""
    return f"{run.name} {run.run_id[:8]}"


def experiment_id_of(project_id: str, dataset_id: str, run_name: str) -> str:
    """The experiment (dataset run) id as the Langfuse server derives it (and the SDK mirrors):
    SHA-256 of the JSON array, first 16 hex digits."""
    payload = json.dumps(["langfuse-experiment-v1", project_id, dataset_id, run_name], separators=(",", ":"),
                         ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def experiment_root_span(run: ExperimentRun, item: ExperimentItem) -> Span:
    """The item's root span again, as the runner made it (same ids, times, input, output, trace fields)."""
    from spanmux.experiments import item_trace_fields

    tags, metadata = item_trace_fields(run.name, run.run_id, run.dataset, run.metadata, item.item_id, item.metadata)
    return Span(
        trace_id=item.trace_id, span_id=item.span_id, parent_id=None, name=run.name, kind="chain", framework="manual",
        start_ns=item.start_ns, end_ns=item.root_end_ns or item.end_ns, status="error" if item.error else "ok",
        input=item.input, output=item.output, attributes={"experiment.item_id": item.item_id},
        trace=TraceAttributes(name=run.name, tags=tuple(tags), metadata=metadata),
    )


def experiment_attributes(run: ExperimentRun, item: ExperimentItem, experiment_id: str, run_name: str,
                          dataset: str, dataset_id: str) -> dict[str, Any]:
    """The ``langfuse.experiment.*`` attributes ``run_experiment`` puts on an item's observations."""
    out: dict[str, Any] = {
        K.EXPERIMENT_ID: experiment_id,
        K.EXPERIMENT_NAME: run_name,
        K.EXPERIMENT_DATASET_ID: dataset_id,
        K.EXPERIMENT_ITEM_ID: dataset_item_id(dataset, item.item_id),
        K.EXPERIMENT_ITEM_ROOT_OBSERVATION_ID: item.span_id,
    }
    if run.metadata:
        out[K.EXPERIMENT_METADATA] = json_text(run.metadata)
    if item.metadata:
        out[K.EXPERIMENT_ITEM_METADATA] = json_text(item.metadata)
    if item.expected is not None:
        out[K.EXPERIMENT_ITEM_EXPECTED_OUTPUT] = json_text(item.expected)
    return out


def _first(*values: str | None) -> str | None:
    for value in values:
        if value is not None and value.strip():
            return value.strip()
    return None


class LangfuseBackend(BaseBackend):
    """Sends spans as Langfuse observations and scores as Langfuse scores."""

    name = "langfuse"
    config_model: ClassVar[Any] = LangfuseConfig
    required_modules: ClassVar[tuple[str, ...]] = (
        "opentelemetry.sdk.trace",
        "opentelemetry.exporter.otlp.proto.common",
        "opentelemetry.proto",
        "requests",
    )
    extra: ClassVar[str | None] = "langfuse"

    def __init__(self, config: LangfuseConfig | None, settings: Any = None) -> None:
        section = config if config is not None else LangfuseConfig()
        super().__init__(section, settings)
        public_key = _first(section.public_key, os.environ.get("LANGFUSE_PUBLIC_KEY"))
        secret_key = _first(
            section.secret_key.get_secret_value() if section.secret_key is not None else None,
            os.environ.get("LANGFUSE_SECRET_KEY"),
        )
        if public_key is None:
            raise BackendSetupError(
                "langfuse public_key is missing (set it or LANGFUSE_PUBLIC_KEY)", key="public_key"
            )
        if secret_key is None:
            raise BackendSetupError(
                "langfuse secret_key is missing (set it or LANGFUSE_SECRET_KEY)", key="secret_key"
            )
        if public_key.startswith("sk-lf-"):
            raise BackendSetupError(
                "langfuse public_key holds a secret key (sk-lf-...): swap public_key and secret_key",
                key="public_key",
            )
        host = _first(section.host, os.environ.get("LANGFUSE_HOST"), os.environ.get("LANGFUSE_BASE_URL"))
        host = (host or DEFAULT_HOST).rstrip("/")
        if not re.match(r"^https?://[^/\s]+", host):
            raise BackendSetupError("langfuse host must be an http:// or https:// URL", key="host")
        environment = _first(section.environment, os.environ.get("LANGFUSE_TRACING_ENVIRONMENT"))
        if environment is not None and not _ENVIRONMENT.match(environment):
            raise BackendSetupError(
                "langfuse environment must be lowercase letters, digits, '-' or '_' (at most 40), "
                "not starting with 'langfuse'",
                key="environment",
            )
        self.public_key = public_key
        self.host = host
        self.project = section.project
        self.environment = environment
        self.release = _first(section.release, os.environ.get("LANGFUSE_RELEASE"))
        self.timeout = section.timeout
        self.rejected_spans = 0
        self.rejected_scores = 0
        token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
        self._auth = f"Basic {token}"
        self._session: Any = None
        self._encoder: OtlpEncoder | None = None
        self._datasets: dict[str, str] = {}  # dataset name -> Langfuse dataset id
        self._project_id: str | None = None

    def __repr__(self) -> str:
        return f"LangfuseBackend(host={self.host!r}, public_key={self.public_key!r})"

    # -- the backend contract
    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        if spans:
            request, messages = self._request_of(spans)
            if messages:
                self._send_spans(messages, request)
        if scores:
            self._send_scores([score_body(score, self.environment) for score in scores])

    # force_flush: the default; nothing is buffered here, export() returns once the server answered

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        """What Langfuse's own ``run_experiment`` leaves: the dataset and its items upserted through
        the public API (ids derived from dataset and item id: a rerun adds no item), then each item's
        root observation sent again with the ``langfuse.experiment.*`` attributes that make it a run
        item of the dataset run (one per trace); the scores reached the traces already."""
        for run in runs:
            dataset = run.dataset or run.name
            dataset_id = self._dataset_id(dataset, run)
            for item in run.items:
                self._post_json(DATASET_ITEMS_PATH, dataset_item_body(dataset, item))
            run_name = experiment_run_name(run)
            experiment_id = experiment_id_of(self._project(), dataset_id, run_name)
            roots = [experiment_root_span(run, item) for item in run.items if item.trace_id]
            messages = []
            encode = self._encoder_made().span
            for root, item in zip(roots, (i for i in run.items if i.trace_id), strict=True):
                attributes = observation_attributes(root, trace_name=run.name, environment=self.environment,
                                                    release=self.release)
                attributes.update(experiment_attributes(run, item, experiment_id, run_name, dataset, dataset_id))
                messages.append(encode(root, attributes))
            if messages:
                self._send_spans(messages)

    def _encoder_made(self) -> OtlpEncoder:
        if self._encoder is None:
            self._encoder = OtlpEncoder({SERVICE_NAME: self.project or "spanmux", TELEMETRY_SDK_NAME: "spanmux"})
        return self._encoder

    def _project(self) -> str:
        if self._project_id is None:
            response = self._request("GET", PROJECTS_PATH, None, {})
            self._raise_for_status(response)
            try:
                self._project_id = str(response.json()["data"][0]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                raise ExportError(f"Langfuse at {self.host}: {PROJECTS_PATH} named no project",
                                  retryable=False) from None
        return self._project_id

    def _dataset_id(self, name: str, run: ExperimentRun) -> str:
        found = self._datasets.get(name)
        if found is None:
            body = {"name": name, "metadata": {"source": "spanmux", "experiment": run.name}}
            response = self._post_json(DATASETS_PATH, body)
            try:
                found = self._datasets[name] = str(response.json()["id"])
            except (ValueError, KeyError, TypeError):
                raise ExportError(f"Langfuse at {self.host} answered no dataset id for {name!r}",
                                  retryable=True) from None
        return found

    def _post_json(self, path: str, body: Any) -> Any:
        try:
            return self._post(path, json_text(body).encode(), {"Content-Type": "application/json"})
        except RefusedContent as exc:
            raise ExportError(f"Langfuse at {self.host} refused {path}: {exc}", retryable=False) from None

    def shutdown(self, timeout: float) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()

    def check_connection(self, timeout: float = 5.0) -> str:
        """Reach the host with the keys in one try (for ``spanmux doctor``); raise ``ExportError``
        when it does not answer or refuses them."""
        response = self._request("GET", PROJECTS_PATH, None, {}, timeout)
        try:
            self._raise_for_status(response)
        except RefusedContent as exc:
            raise ExportError(f"Langfuse at {self.host} refused {PROJECTS_PATH}: {exc}", retryable=False) from None
        try:
            names = [p.get("name") for p in response.json().get("data", [])]
        except (ValueError, AttributeError):
            names = []
        project = f" (project {', '.join(str(n) for n in names)})" if names else ""
        return f"Langfuse at {self.host} accepts public key {self.public_key}{project}"

    # -- spans
    def _request_of(self, spans: Sequence[Span]) -> tuple[Any, Any]:
        """One OTLP request of ``spans`` and its ``spans`` field (the messages, built in place); a span
        that cannot be encoded is skipped and counted."""
        encoder = self._encoder_made()
        encode = encoder.span
        request = encoder.request()
        into = encoder.spans_of(request)
        root_names = {s.trace_id: s.name for s in spans if s.parent_id is None}
        for span in spans:
            try:
                attributes = observation_attributes(
                    span,
                    trace_name=root_names.get(span.trace_id),
                    environment=self.environment,
                    release=self.release,
                )
                encode(span, attributes, into=into)
            except (ValueError, TypeError) as exc:
                self.rejected_spans += 1
                self.warn_once(f"span-invalid:{type(exc).__name__}",
                               "langfuse: span %r skipped, it cannot be encoded: %s", span.name, exc)
        return request, into

    def _send_spans(self, messages: Sequence[Any], request: Any = None) -> None:
        """POST ``messages`` (in ``request`` when they were built in one; else a new one holds copies)."""
        if request is None:
            request = self._encoder_made().request(messages)
        payload = request.SerializeToString()
        if len(payload) > MAX_TRACE_REQUEST_BYTES and len(messages) > 1:
            first, second = halves(messages)
            self._send_spans(first)
            self._send_spans(second)
            return
        headers = {
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "x-langfuse-ingestion-version": INGESTION_VERSION,
            "x-langfuse-public-key": self.public_key,
        }
        try:
            self._post(TRACES_PATH, gzip.compress(payload, compresslevel=5), headers)
        except RefusedContent as exc:
            self.isolate_refused(messages, exc, self._send_spans, "span")

    # -- scores
    def _send_scores(self, bodies: Sequence[dict[str, Any]]) -> None:
        for chunk in self._score_chunks(bodies):
            data = json_text(list(chunk)).encode()
            try:
                response = self._post(SCORES_PATH, data, {"Content-Type": "application/json"})
            except RefusedContent as exc:
                self.isolate_refused(chunk, exc, self._send_scores, "score")
                continue
            if response.status_code == 207:
                self._partial_scores(response, len(chunk))

    @staticmethod
    def _score_chunks(bodies: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
        chunk: list[dict[str, Any]] = []
        size = 2
        for body in bodies:
            item = len(json_text(body).encode()) + 1
            if chunk and size + item > MAX_SCORE_REQUEST_BYTES:
                yield chunk
                chunk, size = [], 2
            chunk.append(body)
            size += item
        if chunk:
            yield chunk

    def _partial_scores(self, response: Any, sent: int) -> None:
        try:
            result = response.json()
            rejected = int(result.get("rejected", 0))
            errors = "; ".join(str(e.get("message")) for e in result.get("errors", [])[:3])
        except (ValueError, AttributeError, TypeError):
            rejected, errors = 0, ""
        if rejected:
            self.rejected_scores += rejected
            self.warn_once("scores-207", "langfuse at %s rejected %d of %d scores (not retried): %s",
                           self.host, rejected, sent, errors)

    # -- HTTP
    def _request(self, method: str, path: str, data: bytes | None, headers: dict[str, str],
                 timeout: float | None = None) -> Any:
        import requests

        if self._session is None:
            self._session = requests.Session()
            self._session.headers.update({"User-Agent": "spanmux"})
        all_headers = {"Authorization": self._auth, **headers}
        seconds = timeout or self.timeout
        try:
            return self._session.request(method, self.host + path, data=data, headers=all_headers,
                                         timeout=seconds)
        except requests.Timeout:
            raise ExportError(f"Langfuse at {self.host} did not answer within {seconds:g}s",
                              retryable=True) from None
        except requests.RequestException as exc:
            raise ExportError(f"Langfuse at {self.host} is unreachable ({type(exc).__name__})",
                              retryable=True) from None

    def _post(self, path: str, data: bytes, headers: dict[str, str]) -> Any:
        response = self._request("POST", path, data, headers)
        self._raise_for_status(response)
        return response

    def _raise_for_status(self, response: Any) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in (401, 403):
            raise ExportError(
                f"Langfuse at {self.host} rejected public key {self.public_key} (HTTP {status}): check "
                "public_key/secret_key (LANGFUSE_PUBLIC_KEY/LANGFUSE_SECRET_KEY) and that they belong "
                "to a project on this host",
                retryable=False,
            )
        if status in _RETRYABLE_STATUS or status >= 500:
            raise ExportError(
                f"Langfuse at {self.host} answered HTTP {status}",
                retryable=True,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        if status in (400, 413, 422):
            raise RefusedContent(f"HTTP {status}", _short_detail(response), f"Langfuse at {self.host}")
        raise ExportError(f"Langfuse at {self.host} answered HTTP {status} for {response.request.path_url}",
                          retryable=False)



def _short_detail(response: Any) -> str:
    try:
        text = str(response.text)
    except Exception:
        return "rejected"
    return text[:300] or "rejected"
