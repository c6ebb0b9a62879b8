"""Backend ``mlflow``: MLflow 3 tracing, without touching global MLflow state.

Each spanmux trace becomes one MLflow trace ``tr-<our 32 hex>``. Spans are written as finished
``mlflow.entities.Span`` objects (around the OpenTelemetry spans of
``spanmux.backends.otel_spans``) through ``TracingClient(uri).log_spans`` (an upsert keyed by trace
and span id), so any arrival order, any batching and re-sent batches give the same trace. Scores
become feedback assessments, written once per score id (deterministic assessment id, looked up
before it is created). The process-wide tracking URI, experiment and active run of the user's own
MLflow code are never read or changed: every call goes to a client bound to our URI.

Experiment tracking (the session's run: parameters, metrics, the summary table, which run a
spooled batch belongs to) is ``spanmux.backends.mlflow_runs``; the backend asks it where each batch
lands and tells it what was delivered.

mlflow is imported on the delivery thread at the first export, never at ``import spanmux`` nor in
the caller's thread (its import and a sqlite schema migration take seconds).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Final

from spanmux import attributes as attr
from spanmux.backend import BackendSetupError, BaseBackend, ExportError
from spanmux.backends.mlflow_runs import ExperimentRunWriter, RecentIds, RunSpec, RunTracker
from spanmux.backends.otel_spans import OtelSpanBuilder
from spanmux.config_schemas.observability import MlflowConfig
from spanmux.model import SPAN_KINDS, ExperimentRun, Score, Span, time_to_first_token_ns

log = logging.getLogger("spanmux.backends.mlflow")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""MLflow's own default when neither the section nor $MLFLOW_TRACKING_URI names one."""

SPAN_TYPES: dict[str, str] = {**{kind: kind.upper() for kind in SPAN_KINDS}, "span": "UNKNOWN"}
"""spanmux kind -> MLflow ``SpanType``: MLflow names every kind of ours in capitals (AGENT, CHAIN,
LLM, EMBEDDING, RETRIEVER, RERANKER, TOOL, PARSER, EVALUATOR, GUARDRAIL) except a plain ``span``,
its UNKNOWN; ``llm`` becomes ``CHAT_MODEL`` when its input is messages."""

ASSESSMENT_SOURCES = {"human": "HUMAN", "llm_judge": "LLM_JUDGE", "code": "CODE"}


class MlflowKeys:
    """The span attributes MLflow reads (``mlflow.tracing.constant.SpanAttributeKey``, spelled here
    because mlflow is not imported before the first export) and the ``spanmux.*`` ones we add."""

    PREFIX: Final = "mlflow."
    REQUEST_ID: Final = "mlflow.traceRequestId"
    SPAN_TYPE: Final = "mlflow.spanType"
    INPUTS: Final = "mlflow.spanInputs"
    OUTPUTS: Final = "mlflow.spanOutputs"
    MODEL: Final = "mlflow.llm.model"
    PROVIDER: Final = "mlflow.llm.provider"
    TOKEN_USAGE: Final = "mlflow.chat.tokenUsage"
    COST: Final = "mlflow.llm.cost"
    TRACE_TAG_PREFIX: Final = "mlflow.traceTag."
    TRACE_NAME_TAG: Final = "mlflow.traceName"
    USER_ID: Final = attr.USER_ID
    SESSION_ID: Final = attr.SESSION_ID
    TIME_TO_FIRST_TOKEN_MS: Final = attr.TIME_TO_FIRST_TOKEN_MS

    KIND: Final = "spanmux.kind"
    FRAMEWORK: Final = "spanmux.framework"
    TRUNCATED: Final = "spanmux.truncated"
    USAGE_ESTIMATED: Final = "spanmux.usage_estimated"
    COST_SOURCE: Final = "spanmux.cost_source"
    MODEL_PARAMETERS: Final = "model.parameters"
    SCORE_ID: Final = "spanmux.score_id"
    """Assessment metadata: the spanmux score an assessment was written for."""
    SCORE_DATA_TYPE: Final = "spanmux.data_type"


K = MlflowKeys

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_HEX32 = re.compile(r"[0-9a-f]{32}")
# Seconds without a successful call before the next export probes /health. Zero: probe before
# every batch. A loopback /health costs about a millisecond per batch of up to 512 spans, while
# skipping it lets a batch sent to a server that just died sit in MLflow's own client retries
# (process-wide settings, about a minute) instead of going to the spool at once.
_PROBE_EVERY = 0.0
_CLIENT_ERRORS = {
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "MALFORMED_REQUEST", "ENDPOINT_NOT_FOUND",
    "FEATURE_DISABLED",
}


def resolve_tracking_uri(config: MlflowConfig) -> str:
    """The section's URI, else ``$MLFLOW_TRACKING_URI``, else MLflow's default sqlite file."""
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class MlflowConnection:
    """One tracking URI: MLflow's clients bound to it (opened on the delivery thread), the
    ``/health`` probe, the experiments by name, and every MLflow call turned into an ``ExportError``
    the lane can classify. The trace exporter and the run tracker share it."""

    def __init__(self, config: MlflowConfig) -> None:
        self.config = config
        self.tracking_uri = resolve_tracking_uri(config)
        scheme = self.tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
        self.is_http = scheme in ("http", "https")
        if not self.is_http and scheme not in _SQL_SCHEMES:
            raise BackendSetupError(
                f"tracking_uri {self.tracking_uri!r} is not supported: use an http(s):// tracking server "
                "or a database URI such as sqlite:///mlflow.db (MLflow's file store cannot hold traces)",
                key="tracking_uri",
            )
        self.tracing: Any = None
        self.client: Any = None
        self.experiments: dict[str, str] = {}
        self._last_ok = 0.0

    def open(self) -> None:
        """Probe the server when it was quiet, and open the clients at the first call."""
        if self.is_http and time.monotonic() - self._last_ok > _PROBE_EVERY:
            self.check(self.config.timeout)
        if self.tracing is None:
            try:
                from mlflow.tracing.client import TracingClient
                from mlflow.tracking import MlflowClient

                self._prepare_sqlite_folder()
                self.tracing = TracingClient(self.tracking_uri)
                self.client = MlflowClient(self.tracking_uri)
            except Exception as exc:
                raise self.error("cannot open the MLflow tracking store", exc) from None

    def check(self, timeout: float = 5.0) -> str:
        """Raise ``ExportError`` unless the tracking server answers ``/health`` within ``timeout``
        (used by ``spanmux doctor`` and before exports). MLflow's own client would retry a dead
        server for minutes with its process-wide retry settings; this probe fails in one try.
        For a database URI, open (and if needed create) the store."""
        if not self.is_http:
            try:
                from mlflow.tracing.client import TracingClient

                self._prepare_sqlite_folder()
                TracingClient(self.tracking_uri)
            except Exception as exc:
                raise self.error("cannot open the MLflow store", exc) from None
            return f"MLflow store {self.tracking_uri} is ready"
        import urllib.error
        import urllib.request

        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # the user's URI
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise ExportError(
                f"MLflow tracking server {self.tracking_uri} is unreachable: {reason}", retryable=True
            ) from None
        if status >= 400:
            raise ExportError(
                f"MLflow tracking server {self.tracking_uri} answered /health with HTTP {status}",
                retryable=status >= 500 or status == 429,
            )
        self.answered()
        return f"MLflow tracking server {self.tracking_uri} is up"

    def answered(self) -> None:
        """MLflow just answered: the next export needs no probe."""
        self._last_ok = time.monotonic()

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ExportError:
            raise
        except Exception as exc:
            raise self.error(f"MLflow could not {what}", exc) from None
        self.answered()
        return result

    def error(self, what: str, exc: BaseException) -> ExportError:
        code = str(getattr(exc, "error_code", "") or "")
        retryable = code not in _CLIENT_ERRORS
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        return ExportError(f"{what} at {self.tracking_uri}: {message}", retryable=retryable)

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (cached)."""
        found = self.experiments.get(name)
        if found is None:
            found = self.experiments[name] = self.call("find or create the experiment", self._experiment, name)
        return found

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ExportError(
                    f"MLflow experiment {name!r} is deleted: restore it or choose another experiment_name",
                    retryable=False,
                )
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=self._artifact_location()))
        except MlflowException:  # created meanwhile by another process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _prepare_sqlite_folder(self) -> None:
        path = self._sqlite_path()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def _sqlite_path(self) -> Path | None:
        if not self.tracking_uri.startswith("sqlite:///"):
            return None
        raw = self.tracking_uri[len("sqlite:///"):]
        return None if not raw or raw == ":memory:" else Path(raw)

    def _artifact_location(self) -> str | None:
        """Where a new experiment keeps artifacts. For a database URI MLflow would default to
        ``./mlruns`` in the current folder; we keep them beside the database file instead."""
        if self.config.artifact_location:
            return str(self.config.artifact_location)
        if self.is_http:
            return None  # the server decides (--artifacts-destination)
        path = self._sqlite_path()
        base = path.resolve().parent if path is not None else Path.cwd()
        return (base / "mlartifacts").as_uri()


class MlflowBackend(BaseBackend):
    """Backend ``mlflow`` (see the module docstring)."""

    name = "mlflow"
    config_model: ClassVar[Any] = MlflowConfig
    required_modules: ClassVar[tuple[str, ...]] = ("mlflow",)
    extra: ClassVar[str | None] = "mlflow"

    def __init__(self, config: MlflowConfig | None, settings: Any = None) -> None:
        section = config if config is not None else MlflowConfig()
        super().__init__(section, settings)
        self.config: MlflowConfig = section
        self.mlflow = MlflowConnection(section)
        self.tracking_uri = self.mlflow.tracking_uri
        self.is_http = self.mlflow.is_http
        self.runs = RunTracker(section, settings, self.mlflow)
        self.experiment_runs = ExperimentRunWriter(section, self.mlflow, assessment_id_of)
        self._delivered_scores = RecentIds()
        self._waiting_scores: OrderedDict[str, tuple[Score, int]] = OrderedDict()
        self._closed = False

    @property
    def session(self) -> str:
        """This session's identity (its run's ``spanmux.origin`` tag)."""
        session: str = self.runs.session
        return session

    @property
    def experiment_id(self) -> str | None:
        """The experiment of this session's traces (None before the first export)."""
        return self.mlflow.experiments.get(self.config.experiment_name)

    @property
    def run_id(self) -> str | None:
        """This session's run (None before the first export, or when tracking is off)."""
        run_id: str | None = self.runs.run_id
        return run_id

    # ---- the backend contract
    def origin(self) -> dict[str, str]:
        """This session's identity, stored with every batch spooled for MLflow: whoever delivers
        the batch later, in whatever process, finds or creates this session's run from it."""
        origin: dict[str, str] = self.runs.origin()
        return origin

    def check_connection(self, timeout: float = 5.0) -> str:
        return self.mlflow.check(timeout)

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        """A fresh batch of this session: into this session's run."""
        self._export(spans, scores, self.runs.own_spec)

    def export_spooled(self, spans: Sequence[Span], scores: Sequence[Score],
                       origin: Mapping[str, str] | None) -> None:
        """A batch delivered later (from a spool, by ``spanmux replay``): into the run of the
        session that produced it, never this process's own run unless it is that session."""
        self._export(spans, scores, self.runs.spec_of(origin))

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        """Each experiment run as an MLflow evaluation run (``ExperimentRunWriter``); its traces,
        delivered before it by the same lane, are linked to it."""
        if self._closed:
            raise ExportError("the MLflow backend is shut down", retryable=False)
        self.mlflow.open()
        for run in runs:
            self.experiment_runs.write(run)

    def force_flush(self, timeout: float) -> bool:
        if not self._closed:
            self.runs.flush()
        return True

    def shutdown(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiting_scores:
            log.warning("spanmux: %d scores for MLflow never found their trace and were not sent",
                        len(self._waiting_scores))
        if self.mlflow.client is not None:
            self.runs.close()

    # ---- export
    def _export(self, spans: Sequence[Span], scores: Sequence[Score], spec: RunSpec) -> None:
        if self._closed:
            raise ExportError("the MLflow backend is shut down", retryable=False)
        self.mlflow.open()
        run = self.runs.run_for(spec)
        converted = self._convert_all(spans)
        if converted:
            self.mlflow.call("log spans", self.mlflow.tracing.log_spans, run.experiment_id, converted)
        finished = self.runs.account(run, spans)
        if run.run_id is not None:
            self.runs.link(run, spans)
        self._deliver_scores(scores)
        if run.run_id is not None:
            self.runs.log(run, finished, scores)

    def _convert_all(self, spans: Sequence[Span]) -> list[Any]:
        out = []
        for span in spans:
            try:
                out.append(to_mlflow_span(span, self.config.tags))
            except (ValueError, TypeError) as exc:  # a malformed id: skip it, keep the batch
                log.warning("spanmux: span %r of trace %s cannot be sent to MLflow: %s",
                            span.name, span.trace_id, exc)
        return out

    # ---- scores -> feedback assessments, one per score id
    def _deliver_scores(self, scores: Sequence[Score]) -> None:
        for score in scores:
            if score.id not in self._delivered_scores:
                self._waiting_scores[score.id] = (score, 0)
        by_trace: dict[str, list[tuple[Score, int]]] = {}
        for score, attempts in self._waiting_scores.values():
            by_trace.setdefault(score.trace_id, []).append((score, attempts))
        for trace_id, waiting in by_trace.items():
            try:
                existing = self._existing_feedback(trace_id)
            except Exception as exc:
                self._feedback_failed(exc, waiting)
                continue
            for score, attempts in waiting:
                try:
                    self._upsert_feedback(score, existing.get(score.id))
                except Exception as exc:
                    self._feedback_failed(exc, [(score, attempts)])
                    continue
                del self._waiting_scores[score.id]
                self._delivered_scores.add(score.id)

    def _feedback_failed(self, exc: Exception, waiting: Sequence[tuple[Score, int]]) -> None:
        """Keep scores whose trace is not there yet, drop what MLflow refuses for good, and raise
        for the rest (the batch is then retried or spooled)."""
        if isinstance(exc, ExportError):
            raise exc
        code = str(getattr(exc, "error_code", "") or "")
        if code not in _CLIENT_ERRORS and code != "RESOURCE_DOES_NOT_EXIST":
            raise self.mlflow.error("log feedback", exc) from None
        for score, attempts in waiting:
            if code == "RESOURCE_DOES_NOT_EXIST" and attempts < 20:
                # its trace is not exported yet (a score given inside an open span): keep it
                self._waiting_scores[score.id] = (score, attempts + 1)
                continue
            log.warning("spanmux: score %r of trace %s rejected by MLflow: %s",
                        score.name, score.trace_id, str(exc).splitlines()[0] if str(exc) else exc)
            self._waiting_scores.pop(score.id, None)

    def _existing_feedback(self, trace_id: str) -> dict[str, Any]:
        """The trace's assessments by spanmux score id (raises RESOURCE_DOES_NOT_EXIST before the
        trace exists). spanmux 0.1 gave them MLflow's random ids, one more at each delivery of a
        score: the metadata finds those, the one with the score's own id (else the first) is kept
        and the copies are deleted, so the trace shows each score once."""
        info = self.mlflow.tracing.get_trace_info(f"tr-{trace_id}")
        self.mlflow.answered()
        found: dict[str, list[Any]] = {}
        for assessment in info.assessments or []:
            score_id = (assessment.metadata or {}).get(K.SCORE_ID)
            if score_id and getattr(assessment, "valid", True) is not False:
                found.setdefault(score_id, []).append(assessment)
        out: dict[str, Any] = {}
        for score_id, copies in found.items():
            own_id = assessment_id_of(score_id)
            kept = next((a for a in copies if a.assessment_id == own_id), copies[0])
            out[score_id] = kept
            for extra in copies:
                if extra is not kept:
                    self.mlflow.tracing.delete_assessment(f"tr-{trace_id}", extra.assessment_id)
        return out

    def _upsert_feedback(self, score: Score, existing: Any) -> None:
        from mlflow.entities import AssessmentSource, Feedback

        feedback = Feedback(
            name=score.name,
            value=score.value,
            source=AssessmentSource(
                source_type=ASSESSMENT_SOURCES.get(score.source, "CODE"), source_id=f"spanmux:{score.source}"
            ),
            rationale=score.comment,
            span_id=score.span_id,
            metadata={K.SCORE_ID: score.id, K.SCORE_DATA_TYPE: score.data_type},
            create_time_ms=score.timestamp_ns // 1_000_000 if score.timestamp_ns else None,
        )
        tracing = self.mlflow.tracing
        if existing is None:
            feedback.assessment_id = assessment_id_of(score.id)
            tracing.log_assessment(f"tr-{score.trace_id}", feedback)
        elif (existing.name, existing.value, existing.rationale) != (score.name, score.value, score.comment):
            tracing.update_assessment(f"tr-{score.trace_id}", existing.assessment_id, feedback)
        self.mlflow.answered()


def assessment_id_of(score_id: str) -> str:
    """The MLflow assessment id of a spanmux score: the same on every delivery."""
    if _HEX32.fullmatch(score_id):
        return f"a-{score_id}"
    return "a-" + hashlib.sha256(score_id.encode()).hexdigest()[:32]


# ---------------------------------------------------------------- spans as MLflow spans (pure)

def _dump(value: Any) -> str:
    """MLflow stores every span attribute as a JSON string."""
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return json.dumps(repr(value), ensure_ascii=False)


def _is_chat_input(value: Any) -> bool:
    if isinstance(value, dict):
        value = value.get("messages")
    if isinstance(value, list) and value:
        first = value[0]
        if isinstance(first, list) and first:  # LangChain batches: [[messages]]
            first = first[0]
        return isinstance(first, dict) and ("role" in first or "type" in first)
    return False


def span_type_of(span: Span) -> str:
    if span.kind == "llm" and _is_chat_input(span.input):
        return "CHAT_MODEL"
    return SPAN_TYPES.get(span.kind, "UNKNOWN")


@lru_cache(maxsize=1)
def _builder() -> OtelSpanBuilder:
    """MLflow's spans: the empty resource (MLflow copies resource attributes into trace tags, one
    database write each, and the SDK's default one says nothing useful), OK for a successful span
    (MLflow's trace state), and the exception event its UI shows for a failed one."""
    return OtelSpanBuilder(ok_status=True, exception_events=True)


def to_mlflow_span(span: Span, extra_tags: dict[str, str] | None = None) -> Any:
    """One finished spanmux span as an ``mlflow.entities.Span`` with our ids and times."""
    from mlflow.entities import Span as MlflowSpan

    return MlflowSpan(_builder().build(span, span_attributes(span, extra_tags)))


def span_attributes(span: Span, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """The MLflow attribute map of one span, every value JSON-encoded as MLflow expects."""
    attrs: dict[str, Any] = {}
    for key, value in (span.attributes or {}).items():
        if not key.startswith(K.PREFIX):
            attrs[key] = value
    attrs[K.KIND] = span.kind
    attrs[K.FRAMEWORK] = span.framework
    if span.truncated:
        attrs[K.TRUNCATED] = True
    attrs[K.REQUEST_ID] = f"tr-{span.trace_id}"
    attrs[K.SPAN_TYPE] = span_type_of(span)
    if span.input is not None:
        attrs[K.INPUTS] = span.input
    if span.output is not None:
        attrs[K.OUTPUTS] = span.output
    elif span.kind == "retriever" and (span.attributes or {}).get(attr.RETRIEVAL_DOCUMENTS):
        attrs[K.OUTPUTS] = _documents(span.attributes[attr.RETRIEVAL_DOCUMENTS])  # type: ignore[index]
    model, usage, cost = span.model, span.usage, span.cost
    if model is not None:
        if model.name:
            attrs[K.MODEL] = model.name
        if model.provider:
            attrs[K.PROVIDER] = model.provider
        if model.parameters:
            attrs[K.MODEL_PARAMETERS] = model.parameters
    # MLflow totals a trace over its span tree, skipping the descendants of a span that carries
    # usage (or cost); the store sums every span's own figures. The two agree when a span carries
    # only figures of its own: a wrapper's "0 tokens, $0" would hide the call inside it. A span
    # without tokens gets an explicit null usage, so MLflow neither derives usage from other
    # attributes nor prices it; a span with tokens always gets a cost, zero when unpriced, else
    # MLflow's writer imports litellm and tries to download its price map. (A null cost breaks
    # MLflow's span writer, so there is none.)
    has_tokens = usage is not None and bool(usage.input_tokens or usage.output_tokens or usage.total_tokens)
    if usage is not None and has_tokens:
        tokens = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
        }
        if usage.cache_read_tokens:
            tokens["cache_read_input_tokens"] = usage.cache_read_tokens
        if usage.cache_write_tokens:
            tokens["cache_creation_input_tokens"] = usage.cache_write_tokens
        attrs[K.TOKEN_USAGE] = tokens
        if usage.estimated:
            attrs[K.USAGE_ESTIMATED] = True
    elif usage is not None or model is not None or span.kind in ("llm", "embedding") or _usage_like(attrs):
        attrs[K.TOKEN_USAGE] = None
    if has_tokens or (cost is not None and (cost.total or cost.input or cost.output)):
        attrs[K.COST] = {
            "input_cost": cost.input if cost else 0.0,
            "output_cost": cost.output if cost else 0.0,
            "total_cost": cost.total if cost else 0.0,
        }
    if cost is not None:
        attrs[K.COST_SOURCE] = cost.source
    first_token_ns = time_to_first_token_ns(span)
    if first_token_ns is not None:
        attrs[K.TIME_TO_FIRST_TOKEN_MS] = first_token_ns / 1e6
    trace = span.trace
    if trace is not None:
        if trace.user_id:
            attrs[K.USER_ID] = trace.user_id
        if trace.session_id:
            attrs[K.SESSION_ID] = trace.session_id
    if span.parent_id is None:
        attrs.update(_trace_tags(span, extra_tags))
    return {key: _dump(value) for key, value in attrs.items()}


def _usage_like(attrs: Mapping[str, Any]) -> bool:
    """Whether MLflow could read token counts out of these attributes (OTel GenAI, OpenInference,
    Vercel AI and other conventions all name them ``...token...``)."""
    return any("token" in key.lower() for key in attrs if not key.startswith(K.PREFIX))


def _trace_tags(root: Span, extra_tags: dict[str, str] | None) -> dict[str, str]:
    """Trace-level tags carried on the root span (``mlflow.traceTag.<key>``): MLflow turns them
    into trace tags when it stores the root. Trace metadata proper can only be written by
    ``start_trace``, which would freeze the trace's token totals, so user-visible metadata
    (variant, ...) travels as tags; user and session use MLflow's own ``user.id``/``session.id``."""
    prefix = K.TRACE_TAG_PREFIX
    trace = root.trace
    name = trace.name if trace is not None and trace.name else root.name
    tags: dict[str, str] = {prefix + K.TRACE_NAME_TAG: name[:250]}
    for key, value in (extra_tags or {}).items():
        tags[prefix + key] = value
    if trace is not None:
        for tag in trace.tags:
            tags[prefix + tag] = "true"
        for key, value in (trace.metadata or {}).items():
            tags[prefix + str(key)] = value if isinstance(value, str) else json.dumps(value, default=repr)
    return tags


def _documents(documents: Any) -> Any:
    """spanmux's ``retrieval.documents`` in the shape MLflow's UI renders as documents."""
    if not isinstance(documents, list):
        return documents
    out: list[dict[str, Any]] = []
    for doc in documents:
        if not isinstance(doc, dict):
            out.append({"page_content": str(doc), "metadata": {}})
            continue
        metadata = dict(doc.get("metadata") or {})
        if doc.get("score") is not None:
            metadata["score"] = doc["score"]
        out.append({"page_content": doc.get("content"), "metadata": metadata, "id": doc.get("id")})
    return out
