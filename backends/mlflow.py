"""Backend ``mlflow``: MLflow 3 tracing plus experiment tracking, without touching global MLflow state.

Each spanmux trace becomes one MLflow trace ``tr-<our 32 hex>``. Spans are written as finished
``mlflow.entities.Span`` objects through ``TracingClient(uri).log_spans`` (an upsert keyed by trace
and span id), so any arrival order, any batching and re-sent batches give the same trace. The
process-wide tracking URI, experiment and active run of the user's own MLflow code are never read
or changed: every call goes to a client bound to our URI.

Experiment tracking: one run per session (one ``spanmux.configure``) receives the agent's
parameters, the models and their parameters as they are first seen, per-trace stepped metrics,
session totals and a summary table artifact; every trace is linked to that run explicitly
(``link_traces_to_run``), never through MLflow's "active run".

A trace belongs to the run of the session that produced it, whenever and by whichever process it is
delivered: each spooled batch carries ``origin()`` (session id, experiment, run name, start time),
and ``export_spooled`` finds that session's run by its ``spanmux.origin`` tag or creates it. A
replay of a store (``{"replay": <store>}``) always goes to one run per store. A run found again is
read back first (parameters, summary table with each trace's step, session totals), and feedback is
written once per score id (deterministic assessment id, looked up before it is created), so
delivering the same records again changes nothing in MLflow.

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
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from spanmux.backend import BackendSetupError, ExportError
from spanmux.config_schemas.observability import MlflowConfig
from spanmux.model import Score, Span
from spanmux.usage import is_model_call

log = logging.getLogger("spanmux.backends.mlflow")

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""MLflow's own default when neither the section nor $MLFLOW_TRACKING_URI names one."""

SPAN_TYPES: dict[str, str] = {
    "agent": "AGENT",
    "chain": "CHAIN",
    "llm": "LLM",
    "embedding": "EMBEDDING",
    "retriever": "RETRIEVER",
    "reranker": "RERANKER",
    "tool": "TOOL",
    "parser": "PARSER",
    "evaluator": "EVALUATOR",
    "guardrail": "GUARDRAIL",
    "span": "UNKNOWN",
}
"""spanmux kind -> MLflow ``SpanType``; ``llm`` becomes ``CHAT_MODEL`` when its input is messages."""

SUMMARY_TABLE = "spanmux/traces.json"
"""Run artifact: one row per trace (MLflow table format), rewritten whole at each flush."""

ASSESSMENT_SOURCES = {"human": "HUMAN", "llm_judge": "LLM_JUDGE", "code": "CODE"}

ORIGIN_TAG = "spanmux.origin"
"""Run tag naming the session whose traces the run holds (``MlflowBackend.origin()['session']``,
or ``replay-<hash of the store>``): how any process finds that run again."""

_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_LINKS_PER_CALL = 100  # MLflow's MAX_TRACE_LINKS_PER_REQUEST
_METRICS_PER_CALL = 1000  # MLflow's MAX_METRICS_PER_BATCH
_PARAMS_PER_CALL = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
_PARAM_VALUE_LIMIT = 6000
_MAX_TRACKED_TRACES = 20_000  # per-trace aggregates kept in memory (oldest dropped first)
_MAX_SUMMARY_ROWS = 10_000
_MAX_RUNS = 16  # runs of other sessions kept open at once (a spool rarely holds more sessions)
_ORIGIN_PARAMS_LIMIT = 16_000  # session params carried in each spooled batch's origin, at most
_ORIGIN_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
# Seconds without a successful call before the next export probes /health. Zero: probe before
# every batch. A loopback /health costs about a millisecond per batch of up to 512 spans, while
# skipping it lets a batch sent to a server that just died sit in MLflow's own client retries
# (process-wide settings, about a minute) instead of going to the spool at once.
_PROBE_EVERY = 0.0
_KEY_CHARS = re.compile(r"[^\w\-. /]")
_CLIENT_ERRORS = {
    "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "PERMISSION_DENIED", "UNAUTHENTICATED",
    "INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "MALFORMED_REQUEST", "ENDPOINT_NOT_FOUND",
    "FEATURE_DISABLED",
}


def resolve_tracking_uri(config: MlflowConfig) -> str:
    """The section's URI, else ``$MLFLOW_TRACKING_URI``, else MLflow's default sqlite file."""
    return config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _safe_key(text: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / space``; anything else becomes ``_``."""
    return _KEY_CHARS.sub("_", text)[:250] or "_"


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


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
        return
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    out[_safe_key(prefix)] = text[:_PARAM_VALUE_LIMIT]


class _RecentIds:
    """A set of the most recent ids, bounded: what re-sent batches can still mention. Forgetting
    an old id costs at most a repeated idempotent call, never unbounded memory."""

    def __init__(self, limit: int = 200_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, item: str) -> None:
        self._ids[item] = None
        if len(self._ids) > self._limit:
            self._ids.popitem(last=False)


@dataclass
class _TraceStats:
    """What one trace contributed so far; keyed by span id so a re-sent span never counts twice."""

    spans: dict[str, tuple[int, int, int, float, bool]] = field(default_factory=dict)
    root: Span | None = None
    step: int | None = None

    def add(self, span: Span) -> None:
        usage, cost = span.usage, span.cost
        self.spans[span.span_id] = (
            usage.input_tokens if usage else 0,
            usage.output_tokens if usage else 0,
            usage.total_tokens if usage else 0,
            cost.total if cost else 0.0,
            is_model_call(span),
        )
        if span.parent_id is None:
            self.root = span

    def totals(self) -> dict[str, float]:
        rows = self.spans.values()
        return {
            "input_tokens": sum(r[0] for r in rows),
            "output_tokens": sum(r[1] for r in rows),
            "total_tokens": sum(r[2] for r in rows),
            "cost_usd": sum(r[3] for r in rows),
            "llm_calls": sum(1 for r in rows if r[4]),
            "spans": len(rows),
        }


@dataclass(frozen=True)
class _RunSpec:
    """Which run a batch belongs to: the producing session's (``key`` is its ``spanmux.origin``
    tag) and what to create it with when it does not exist yet."""

    key: str
    experiment: str
    run_name: str
    started_ms: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def _new_totals() -> dict[str, float]:
    return {"traces": 0, "errors": 0, "total_tokens": 0, "cost_usd": 0.0, "latency_ms": 0.0}


@dataclass
class _Run:
    """One MLflow run spanmux writes to and what it holds already, so that delivering the same
    records again (a replay, a spool file sent twice) adds nothing to it."""

    key: str
    experiment_id: str
    run_id: str | None = None
    own: bool = False  # created by (or for) this backend's session: marked FINISHED at shutdown
    traces: OrderedDict[str, _TraceStats] = field(default_factory=OrderedDict)
    linked: _RecentIds = field(default_factory=_RecentIds)
    metrics_done: _RecentIds = field(default_factory=_RecentIds)
    score_metrics_done: _RecentIds = field(default_factory=_RecentIds)
    logged_params: dict[str, str] = field(default_factory=dict)
    pending_params: dict[str, str] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    steps: int = 0
    summary: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    summary_dirty: bool = False
    table_tagged: bool = False
    totals: dict[str, float] = field(default_factory=_new_totals)
    last_end_ms: int = 0


class MlflowBackend:
    """Backend ``mlflow`` (see the module docstring)."""

    name = "mlflow"
    config_model: ClassVar[Any] = MlflowConfig
    required_modules: ClassVar[tuple[str, ...]] = ("mlflow",)
    extra: ClassVar[str | None] = "mlflow"

    def __init__(self, config: MlflowConfig | None, settings: Any = None) -> None:
        self.config = config if config is not None else MlflowConfig()
        self.settings = settings
        self.tracking_uri = resolve_tracking_uri(self.config)
        scheme = self.tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
        self.is_http = scheme in ("http", "https")
        if not self.is_http and scheme not in _SQL_SCHEMES:
            raise BackendSetupError(
                f"tracking_uri {self.tracking_uri!r} is not supported: use an http(s):// tracking server "
                "or a database URI such as sqlite:///mlflow.db (MLflow's file store cannot hold traces)",
                key="tracking_uri",
            )
        self.tracking_enabled = self.config.log_params or self.config.log_metrics or self.config.log_artifacts
        # this session's identity: its run is created (or found again) by it, in any process
        self.session = uuid.uuid4().hex
        self.started_ms = int(time.time() * 1000)
        self.run_name = self.config.run_name or time.strftime("spanmux-%Y%m%d-%H%M%S")
        self._own_spec = _RunSpec(self.session, self.config.experiment_name, self.run_name, self.started_ms,
                                  dict(self.config.tags), self._session_params())
        self._tracing: Any = None
        self._client: Any = None
        self._last_ok = 0.0
        self._experiments: dict[str, str] = {}
        self._runs: OrderedDict[str, _Run] = OrderedDict()
        self._delivered_scores = _RecentIds()
        self._waiting_scores: OrderedDict[str, tuple[Score, int]] = OrderedDict()
        self._closed = False

    @property
    def experiment_id(self) -> str | None:
        """The experiment of this session's traces (None before the first export)."""
        return self._experiments.get(self.config.experiment_name)

    @property
    def run_id(self) -> str | None:
        """This session's run (None before the first export, or when tracking is off)."""
        run = self._runs.get(self.session)
        return run.run_id if run is not None else None

    # ---- where records belong
    def origin(self) -> dict[str, str]:
        """This session's identity, stored with every batch spooled for MLflow: whoever delivers
        the batch later, in whatever process, finds or creates this session's run from it."""
        spec = self._own_spec
        out = {"session": spec.key, "experiment": spec.experiment, "run_name": spec.run_name,
               "started_ms": str(spec.started_ms), "pid": str(os.getpid())}
        if spec.tags:
            out["tags"] = json.dumps(spec.tags, sort_keys=True)
        if spec.params:
            params = json.dumps(spec.params, sort_keys=True)
            if len(params) <= _ORIGIN_PARAMS_LIMIT:  # else the run gets the models' parameters only
                out["params"] = params
        return out

    def _spec_of(self, origin: Mapping[str, str] | None) -> _RunSpec:
        """The run a batch of ``origin`` belongs to. None (batches of spanmux 0.1, fresh batches)
        is this session; ``{"replay": <store>}`` is the one run that replays of that store share."""
        if not origin or origin.get("session") == self.session:
            return self._own_spec
        source = origin.get("replay")
        if source:
            key = "replay-" + hashlib.sha256(source.encode()).hexdigest()[:24]
            tags = {**self.config.tags, "spanmux.replay_source": source[:5000]}
            return _RunSpec(key, self.config.experiment_name, "spanmux-replay", None, tags, self._own_spec.params)
        session = origin.get("session")
        if not session:
            return self._own_spec
        key = session if _ORIGIN_KEY.fullmatch(session) else hashlib.sha256(session.encode()).hexdigest()[:32]
        started = origin.get("started_ms", "")
        return _RunSpec(
            key, origin.get("experiment") or self.config.experiment_name,
            origin.get("run_name") or f"spanmux-{key[:8]}",
            int(started) if started.isdigit() else None,
            _json_map(origin.get("tags")), _json_map(origin.get("params")),
        )

    # ---- connection and runs, created lazily on the delivery thread
    def _ensure_ready(self) -> None:
        if self.is_http and time.monotonic() - self._last_ok > _PROBE_EVERY:
            self.check_connection(self.config.timeout)
        if self._tracing is None:
            try:
                from mlflow.tracing.client import TracingClient  # noqa: PLC0415
                from mlflow.tracking import MlflowClient  # noqa: PLC0415

                self._prepare_sqlite_folder()
                self._tracing = TracingClient(self.tracking_uri)
                self._client = MlflowClient(self.tracking_uri)
            except Exception as exc:
                raise self._export_error("cannot open the MLflow tracking store", exc) from None

    def _run_for(self, spec: _RunSpec) -> _Run:
        """The run of ``spec``: cached, else found by its ``spanmux.origin`` tag, else created."""
        run = self._runs.get(spec.key)
        if run is not None:
            self._runs.move_to_end(spec.key)
            return run
        experiment_id = self._experiments.get(spec.experiment)
        if experiment_id is None:
            experiment_id = self._call("find or create the experiment", self._experiment, spec.experiment)
            self._experiments[spec.experiment] = experiment_id
        run = _Run(spec.key, experiment_id)
        if self.tracking_enabled:
            self._call("find or create the session run", self._open_run, run, spec)
        self._runs[spec.key] = run
        while len(self._runs) > _MAX_RUNS:
            self._retire(next(key for key in self._runs if key != self.session))
        return run

    def _retire(self, key: str) -> None:
        """Forget the least recently used run of another session (its summary written first)."""
        run = self._runs.pop(key)
        try:
            self._close_run(run)
        except Exception as exc:
            log.warning("spanmux: could not write the summary of MLflow run %s: %s", run.run_id, exc)

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

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException  # noqa: PLC0415

        found = self._client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted":
                raise ExportError(
                    f"MLflow experiment {name!r} is deleted: restore it or choose another experiment_name",
                    retryable=False,
                )
            return str(found.experiment_id)
        try:
            return str(self._client.create_experiment(name, artifact_location=self._artifact_location()))
        except MlflowException:  # created meanwhile by another process
            found = self._client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def _open_run(self, run: _Run, spec: _RunSpec) -> None:
        """Find the run tagged with the spec's key (made earlier by this session, by a process that
        delivered its spool, or by an earlier replay) or create it, started when its session did."""
        from spanmux import __version__  # noqa: PLC0415

        found = self._client.search_runs(
            [run.experiment_id], filter_string=f"tags.`{ORIGIN_TAG}` = '{spec.key}'", max_results=1,
        )
        if found:
            existing = found[0]
            run.run_id = str(existing.info.run_id)
            run.own = spec.key == self.session
            self._restore(run, existing)
        else:
            tags = {"spanmux.version": __version__, "mlflow.source.name": "spanmux", **spec.tags,
                    ORIGIN_TAG: spec.key}
            created = self._client.create_run(run.experiment_id, run_name=spec.run_name, start_time=spec.started_ms,
                                              tags=tags)
            run.run_id = str(created.info.run_id)
            run.own = True
        # a parameter MLflow holds already cannot change: what the run says stays
        run.pending_params = {k: v for k, v in spec.params.items() if k not in run.logged_params}

    def _restore(self, run: _Run, existing: Any) -> None:
        """Pick up what a run found again holds: its parameters, models, trace steps, summary rows
        and session totals, so records delivered again are neither stepped nor counted twice."""
        data = existing.data
        run.logged_params = dict(data.params)
        run.models = {m for m in data.tags.get("spanmux.models", "").split(",") if m}
        run.table_tagged = SUMMARY_TABLE in data.tags.get("mlflow.loggedArtifacts", "")
        rows = self._load_summary(run.run_id) if run.table_tagged else []
        for row in rows:
            trace_id = str(row.get("trace_id", ""))[3:]
            if not trace_id:
                continue
            run.summary[trace_id] = row
            run.metrics_done.add(trace_id)
            step = row.get("step")
            if isinstance(step, int):
                run.traces[trace_id] = _TraceStats(step=step)
                run.steps = max(run.steps, step)
        metrics = data.metrics
        if "session.traces" in metrics:
            t = run.totals
            t["traces"] = metrics["session.traces"]
            t["errors"] = metrics.get("session.errors", 0.0)
            t["total_tokens"] = metrics.get("session.total_tokens", 0.0)
            t["cost_usd"] = metrics.get("session.cost_usd", 0.0)
            t["latency_ms"] = metrics.get("session.mean_latency_ms", 0.0) * t["traces"]
            run.steps = max(run.steps, int(t["traces"]))
        else:
            for row in rows:
                self._add_to_totals(run, row)
        if not rows and run.steps:
            # no summary table to tell which traces it counted: those linked to it were counted
            for trace_id in self._linked_traces(run):
                run.metrics_done.add(trace_id)

    def _load_summary(self, run_id: str | None) -> list[dict[str, Any]]:
        import tempfile  # noqa: PLC0415

        names = {f.path for f in self._client.list_artifacts(run_id, SUMMARY_TABLE.rsplit("/", 1)[0])}
        if SUMMARY_TABLE not in names:
            return []
        with tempfile.TemporaryDirectory(prefix="spanmux-") as folder:
            local = self._client.download_artifacts(run_id, SUMMARY_TABLE, folder)
            try:
                table = json.loads(Path(local).read_text(encoding="utf-8"))
                columns = list(table["columns"])
                return [dict(zip(columns, row, strict=True)) for row in table["data"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("spanmux: the summary table of MLflow run %s is unreadable (%s); it is rewritten",
                            run_id, exc)
                return []

    def _linked_traces(self, run: _Run) -> list[str]:
        out: list[str] = []
        token = None
        while True:
            page = self._tracing.search_traces(locations=[run.experiment_id], run_id=run.run_id,
                                               include_spans=False, max_results=500, page_token=token)
            out.extend(t.info.trace_id[3:] for t in page if t.info.trace_id.startswith("tr-"))
            token = page.token
            if not token or len(out) >= _MAX_TRACKED_TRACES:
                return out

    def _session_params(self) -> dict[str, str]:
        if not self.config.log_params:
            return {}
        out: dict[str, str] = {}
        _flatten("", self.config.params, out)
        settings = self.settings
        if settings is not None:
            out["spanmux.backends"] = ",".join(getattr(settings, "backends", []) or [])
            out["spanmux.sample_rate"] = str(getattr(settings, "sample_rate", 1.0))
            out["spanmux.capture_content"] = str(getattr(settings, "capture_content", True))
        return out

    def check_connection(self, timeout: float = 5.0) -> str:
        """Raise ``ExportError`` unless the tracking server answers ``/health`` within ``timeout``
        (used by ``spanmux doctor`` and before exports). MLflow's own client would retry a dead
        server for minutes with its process-wide retry settings; this probe fails in one try.
        For a database URI, open (and if needed create) the store."""
        if not self.is_http:
            try:
                from mlflow.tracing.client import TracingClient  # noqa: PLC0415

                self._prepare_sqlite_folder()
                TracingClient(self.tracking_uri)
            except Exception as exc:
                raise self._export_error("cannot open the MLflow store", exc) from None
            return f"MLflow store {self.tracking_uri} is ready"
        import urllib.error  # noqa: PLC0415
        import urllib.request  # noqa: PLC0415

        url = self.tracking_uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - user's URI
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
        self._last_ok = time.monotonic()
        return f"MLflow tracking server {self.tracking_uri} is up"

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except ExportError:
            raise
        except Exception as exc:
            raise self._export_error(f"MLflow could not {what}", exc) from None
        self._last_ok = time.monotonic()
        return result

    def _export_error(self, what: str, exc: BaseException) -> ExportError:
        code = str(getattr(exc, "error_code", "") or "")
        retryable = code not in _CLIENT_ERRORS
        message = str(exc).splitlines()[0][:500] if str(exc) else type(exc).__name__
        return ExportError(f"{what} at {self.tracking_uri}: {message}", retryable=retryable)

    # ---- export
    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        """A fresh batch of this session: into this session's run."""
        self._export(spans, scores, self._own_spec)

    def export_spooled(self, spans: Sequence[Span], scores: Sequence[Score],
                       origin: Mapping[str, str] | None) -> None:
        """A batch delivered later (from a spool, by ``spanmux replay``): into the run of the
        session that produced it, never this process's own run unless it is that session."""
        self._export(spans, scores, self._spec_of(origin))

    def _export(self, spans: Sequence[Span], scores: Sequence[Score], spec: _RunSpec) -> None:
        if self._closed:
            raise ExportError("the MLflow backend is shut down", retryable=False)
        self._ensure_ready()
        run = self._run_for(spec)
        converted = self._convert_all(spans)
        if converted:
            self._call("log spans", self._tracing.log_spans, run.experiment_id, converted)
        finished = self._account(run, spans)
        if run.run_id is not None:
            self._link(run, spans)
        self._deliver_scores(scores)
        if run.run_id is not None:
            self._log_tracking(run, finished, scores)

    def _convert_all(self, spans: Sequence[Span]) -> list[Any]:
        out = []
        for span in spans:
            try:
                out.append(to_mlflow_span(span, self.config.tags))
            except (ValueError, TypeError) as exc:  # a malformed id: skip it, keep the batch
                log.warning("spanmux: span %r of trace %s cannot be sent to MLflow: %s",
                            span.name, span.trace_id, exc)
        return out

    def _account(self, run: _Run, spans: Sequence[Span]) -> list[str]:
        """Fold the spans into per-trace totals; return the traces whose root arrived."""
        finished = []
        for span in spans:
            stats = run.traces.get(span.trace_id)
            if stats is None:
                stats = run.traces[span.trace_id] = _TraceStats()
                while len(run.traces) > _MAX_TRACKED_TRACES:
                    run.traces.popitem(last=False)
            stats.add(span)
            if span.parent_id is None:
                if stats.step is None:
                    run.steps += 1
                    stats.step = run.steps
                finished.append(span.trace_id)
                run.last_end_ms = max(run.last_end_ms, span.end_ns // 1_000_000)
            self._note_model(run, span)
        return list(dict.fromkeys(finished))

    def _note_model(self, run: _Run, span: Span) -> None:
        model = span.model
        if model is None or not model.name or not self.config.log_params:
            return
        run.models.add(model.name)
        prefix = f"model.{_safe_key(model.name)}"
        candidates = {f"{prefix}.provider": model.provider} if model.provider else {}
        for key, value in (model.parameters or {}).items():
            if isinstance(value, (str, int, float, bool)):
                candidates[f"{prefix}.{_safe_key(str(key))}"] = str(value)
        for key, value in candidates.items():
            if key not in run.logged_params and key not in run.pending_params:
                run.pending_params[key] = value[:_PARAM_VALUE_LIMIT]

    def _link(self, run: _Run, spans: Sequence[Span]) -> None:
        todo = [f"tr-{t}" for t in dict.fromkeys(s.trace_id for s in spans) if t not in run.linked]
        for start in range(0, len(todo), _LINKS_PER_CALL):
            chunk = todo[start:start + _LINKS_PER_CALL]
            self._call("link traces to the session run", self._client.link_traces_to_run, chunk, run.run_id)
            for trace_id in chunk:
                run.linked.add(trace_id[3:])

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
            raise self._export_error("log feedback", exc) from None
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
        trace exists). Older spanmux versions gave them MLflow's random ids: the metadata finds those."""
        info = self._tracing.get_trace_info(f"tr-{trace_id}")
        self._last_ok = time.monotonic()
        out: dict[str, Any] = {}
        for assessment in info.assessments or []:
            score_id = (assessment.metadata or {}).get("spanmux.score_id")
            if score_id and getattr(assessment, "valid", True) is not False:
                out.setdefault(score_id, assessment)
        return out

    def _upsert_feedback(self, score: Score, existing: Any) -> None:
        from mlflow.entities import AssessmentSource, Feedback  # noqa: PLC0415

        feedback = Feedback(
            name=score.name,
            value=score.value,
            source=AssessmentSource(
                source_type=ASSESSMENT_SOURCES.get(score.source, "CODE"), source_id=f"spanmux:{score.source}"
            ),
            rationale=score.comment,
            span_id=score.span_id,
            metadata={"spanmux.score_id": score.id, "spanmux.data_type": score.data_type},
            create_time_ms=score.timestamp_ns // 1_000_000 if score.timestamp_ns else None,
        )
        if existing is None:
            feedback.assessment_id = assessment_id_of(score.id)
            self._tracing.log_assessment(f"tr-{score.trace_id}", feedback)
        elif (existing.name, existing.value, existing.rationale) != (score.name, score.value, score.comment):
            self._tracing.update_assessment(f"tr-{score.trace_id}", existing.assessment_id, feedback)
        self._last_ok = time.monotonic()

    # ---- experiment tracking
    def _log_tracking(self, run: _Run, finished: Iterable[str], scores: Sequence[Score]) -> None:
        metrics: list[Any] = []
        newly_done = []
        score_ids: list[str] = []
        if self.config.log_metrics or self.config.log_artifacts:
            for trace_id in finished:
                if trace_id in run.metrics_done:
                    continue
                newly_done.append(trace_id)
                metrics.extend(self._trace_metrics(run, trace_id))
            if self.config.log_metrics:
                score_metrics, score_ids = self._score_metrics(run, scores)
                metrics.extend(score_metrics)
        if not self.config.log_metrics:
            metrics, score_ids = [], []
        params = dict(run.pending_params)
        self._write_batch(run, metrics, params)
        run.logged_params.update(params)
        for key in params:
            run.pending_params.pop(key, None)
        for score_id in score_ids:
            run.score_metrics_done.add(score_id)
        for trace_id in newly_done:
            run.metrics_done.add(trace_id)
            self._record_summary(run, trace_id)

    def _trace_metrics(self, run: _Run, trace_id: str) -> list[Any]:
        from mlflow.entities import Metric  # noqa: PLC0415

        stats = run.traces[trace_id]
        root = stats.root
        if root is None or stats.step is None:
            return []
        totals = stats.totals()
        stamp = root.end_ns // 1_000_000
        values = {
            "trace.latency_ms": root.duration_ms,
            "trace.input_tokens": totals["input_tokens"],
            "trace.output_tokens": totals["output_tokens"],
            "trace.total_tokens": totals["total_tokens"],
            "trace.cost_usd": totals["cost_usd"],
            "trace.error": 1.0 if root.status == "error" else 0.0,
        }
        return [Metric(key, float(value), stamp, stats.step) for key, value in values.items()]

    def _score_metrics(self, run: _Run, scores: Sequence[Score]) -> tuple[list[Any], list[str]]:
        """Numeric and boolean scores as ``score.<name>`` metrics, stepped like their trace (the
        same point again when delivered again: MLflow keeps one copy of an identical point)."""
        from mlflow.entities import Metric  # noqa: PLC0415

        out, ids = [], []
        for score in scores:
            if isinstance(score.value, str) or score.id in run.score_metrics_done:
                continue
            stats = run.traces.get(score.trace_id)
            step = stats.step if stats is not None and stats.step is not None else run.steps
            ids.append(score.id)
            stamp = (score.timestamp_ns or time.time_ns()) // 1_000_000
            out.append(Metric(f"score.{_safe_key(score.name)}", float(score.value), stamp, step))
        return out, ids

    def _record_summary(self, run: _Run, trace_id: str) -> None:
        stats = run.traces.get(trace_id)
        root = stats.root if stats is not None else None
        if stats is None or root is None:
            return
        totals = stats.totals()
        trace = root.trace
        metadata = dict(trace.metadata or {}) if trace is not None else {}
        row = {
            "trace_id": f"tr-{trace_id}",
            "step": stats.step,
            "name": (trace.name if trace is not None and trace.name else root.name),
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(root.start_ns / 1e9)),
            "latency_ms": round(root.duration_ms, 3),
            "status": root.status,
            "spans": totals["spans"],
            "llm_calls": totals["llm_calls"],
            "input_tokens": totals["input_tokens"],
            "output_tokens": totals["output_tokens"],
            "total_tokens": totals["total_tokens"],
            "cost_usd": round(totals["cost_usd"], 8),
            "user_id": trace.user_id if trace is not None else None,
            "session_id": trace.session_id if trace is not None else None,
            "variant": metadata.get("variant"),
            "tags": ",".join(trace.tags) if trace is not None else "",
        }
        run.summary[trace_id] = row
        while len(run.summary) > _MAX_SUMMARY_ROWS:
            run.summary.popitem(last=False)
        run.summary_dirty = True
        self._add_to_totals(run, row)

    @staticmethod
    def _add_to_totals(run: _Run, row: Mapping[str, Any]) -> None:
        t = run.totals
        t["traces"] += 1
        t["errors"] += row.get("status") == "error"
        t["total_tokens"] += float(row.get("total_tokens") or 0)
        t["cost_usd"] += float(row.get("cost_usd") or 0.0)
        t["latency_ms"] += float(row.get("latency_ms") or 0.0)

    def _write_batch(self, run: _Run, metrics: list[Any], params: dict[str, str]) -> None:
        from mlflow.entities import Param  # noqa: PLC0415

        param_list = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(param_list), _PARAMS_PER_CALL):
            self._call("log params", self._client.log_batch, run.run_id,
                        params=param_list[start:start + _PARAMS_PER_CALL])
        for start in range(0, len(metrics), _METRICS_PER_CALL):
            self._call("log metrics", self._client.log_batch, run.run_id,
                        metrics=metrics[start:start + _METRICS_PER_CALL])

    def _write_session(self, run: _Run) -> None:
        """Session totals as metrics (step = traces so far) and the summary table artifact."""
        from mlflow.entities import Metric  # noqa: PLC0415

        if run.run_id is None or self._client is None or not run.summary_dirty:
            return
        t = run.totals
        stamp = int(time.time() * 1000)
        if self.config.log_metrics and t["traces"]:
            step = int(t["traces"])
            values = {
                "session.traces": t["traces"],
                "session.errors": t["errors"],
                "session.total_tokens": t["total_tokens"],
                "session.cost_usd": t["cost_usd"],
                "session.mean_latency_ms": t["latency_ms"] / t["traces"],
            }
            metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
            self._call("log session metrics", self._client.log_batch, run.run_id, metrics=metrics)
        if self.config.log_artifacts and run.summary:
            rows = list(run.summary.values())
            columns = list(dict.fromkeys(key for row in rows for key in row))
            table = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
            self._call("log the trace summary table", self._client.log_dict, run.run_id, table, SUMMARY_TABLE)
            if not run.table_tagged:
                # what MlflowClient.log_table sets: the UI and load_table then treat it as a table
                tag = json.dumps([{"path": SUMMARY_TABLE, "type": "table"}])
                self._call("tag the summary table", self._client.set_tag, run.run_id, "mlflow.loggedArtifacts", tag)
                run.table_tagged = True
        if run.models:
            self._call("tag the session run", self._client.set_tag, run.run_id, "spanmux.models",
                       ",".join(sorted(run.models))[:5000])
        run.summary_dirty = False

    def _close_run(self, run: _Run) -> None:
        """Write the run's summary; a run this backend created (or its own session's) is marked
        finished, at the end of its last trace when it was made for another session."""
        self._write_session(run)
        if not run.own or run.run_id is None or self._tracing is None:
            return
        from mlflow.entities import RunStatus  # noqa: PLC0415

        now = int(time.time() * 1000)
        end = now if run.key == self.session or not run.last_end_ms else run.last_end_ms
        # the store call, not MlflowClient.set_terminated, which prints run URLs to stdout
        self._tracing.store.update_run_info(run.run_id, RunStatus.FINISHED, end, None)

    def force_flush(self, timeout: float) -> bool:
        if self._closed:
            return True
        for run in list(self._runs.values()):
            self._write_session(run)
        return True

    def shutdown(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        if self._waiting_scores:
            log.warning("spanmux: %d scores for MLflow never found their trace and were not sent",
                        len(self._waiting_scores))
        if self._client is None:
            return
        for run in self._runs.values():
            try:
                self._close_run(run)
            except Exception as exc:
                log.warning("spanmux: could not close the MLflow session run %s: %s", run.run_id, exc)


def assessment_id_of(score_id: str) -> str:
    """The MLflow assessment id of a spanmux score: the same on every delivery."""
    if _HEX32.fullmatch(score_id):
        return f"a-{score_id}"
    return "a-" + hashlib.sha256(score_id.encode()).hexdigest()[:32]


def _json_map(text: str | None) -> dict[str, str]:
    """A ``{str: str}`` map stored as JSON in an origin; anything else is ignored."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items()}


def to_mlflow_span(span: Span, extra_tags: dict[str, str] | None = None) -> Any:
    """One finished spanmux span as an ``mlflow.entities.Span`` with our ids and times."""
    from mlflow.entities import Span as MlflowSpan  # noqa: PLC0415
    from opentelemetry.sdk.trace import Event, ReadableSpan  # noqa: PLC0415
    from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags  # noqa: PLC0415

    trace_int, span_int = int(span.trace_id, 16), int(span.span_id, 16)
    context = SpanContext(trace_int, span_int, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = (
        SpanContext(trace_int, int(span.parent_id, 16), is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        if span.parent_id else None
    )
    attributes = span_attributes(span, extra_tags)
    events = []
    if span.error is not None:
        events.append(Event("exception", {
            "exception.type": span.error.type,
            "exception.message": span.error.message,
            "exception.stacktrace": span.error.traceback or "",
        }, timestamp=span.end_ns))
    if span.status == "error":
        message = f"{span.error.type}: {span.error.message}" if span.error else "error"
        status = Status(StatusCode.ERROR, message)
    else:
        status = Status(StatusCode.OK)
    readable = ReadableSpan(
        name=span.name, context=context, parent=parent, attributes=attributes, events=events,
        start_time=span.start_ns, end_time=max(span.end_ns, span.start_ns), status=status,
        resource=_resource(),
    )
    return MlflowSpan(readable)


_RESOURCE: Any = None


def _resource() -> Any:
    """An empty OpenTelemetry resource: MLflow copies resource attributes into trace tags (one
    database write each), and the SDK's default one (``unknown_service``, a random instance id)
    says nothing useful."""
    global _RESOURCE
    if _RESOURCE is None:
        from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

        _RESOURCE = Resource.get_empty()
    return _RESOURCE


def span_attributes(span: Span, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """The MLflow attribute map of one span, every value JSON-encoded as MLflow expects."""
    attrs: dict[str, Any] = {}
    for key, value in (span.attributes or {}).items():
        if not key.startswith("mlflow."):
            attrs[key] = value
    attrs["spanmux.kind"] = span.kind
    attrs["spanmux.framework"] = span.framework
    if span.truncated:
        attrs["spanmux.truncated"] = True
    attrs["mlflow.traceRequestId"] = f"tr-{span.trace_id}"
    attrs["mlflow.spanType"] = span_type_of(span)
    if span.input is not None:
        attrs["mlflow.spanInputs"] = span.input
    if span.output is not None:
        attrs["mlflow.spanOutputs"] = span.output
    elif span.kind == "retriever" and (span.attributes or {}).get("retrieval.documents"):
        attrs["mlflow.spanOutputs"] = _documents(span.attributes["retrieval.documents"])  # type: ignore[index]
    model, usage, cost = span.model, span.usage, span.cost
    if model is not None:
        if model.name:
            attrs["mlflow.llm.model"] = model.name
        if model.provider:
            attrs["mlflow.llm.provider"] = model.provider
        if model.parameters:
            attrs["model.parameters"] = model.parameters
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
        attrs["mlflow.chat.tokenUsage"] = tokens
        if usage.estimated:
            attrs["spanmux.usage_estimated"] = True
    elif usage is not None or model is not None or span.kind in ("llm", "embedding") or _usage_like(attrs):
        attrs["mlflow.chat.tokenUsage"] = None
    if has_tokens or (cost is not None and (cost.total or cost.input or cost.output)):
        attrs["mlflow.llm.cost"] = {
            "input_cost": cost.input if cost else 0.0,
            "output_cost": cost.output if cost else 0.0,
            "total_cost": cost.total if cost else 0.0,
        }
    if cost is not None:
        attrs["spanmux.cost_source"] = cost.source
    if span.completion_start_ns is not None:
        attrs["llm.time_to_first_token_ms"] = (span.completion_start_ns - span.start_ns) / 1e6
    trace = span.trace
    if trace is not None:
        if trace.user_id:
            attrs["user.id"] = trace.user_id
        if trace.session_id:
            attrs["session.id"] = trace.session_id
    if span.parent_id is None:
        attrs.update(_trace_tags(span, extra_tags))
    return {key: _dump(value) for key, value in attrs.items()}


def _usage_like(attrs: Mapping[str, Any]) -> bool:
    """Whether MLflow could read token counts out of these attributes (OTel GenAI, OpenInference,
    Vercel AI and other conventions all name them ``...token...``)."""
    return any("token" in key.lower() for key in attrs if not key.startswith("mlflow."))


def _trace_tags(root: Span, extra_tags: dict[str, str] | None) -> dict[str, str]:
    """Trace-level tags carried on the root span (``mlflow.traceTag.<key>``): MLflow turns them
    into trace tags when it stores the root. Trace metadata proper can only be written by
    ``start_trace``, which would freeze the trace's token totals, so user-visible metadata
    (variant, ...) travels as tags; user and session use MLflow's own ``user.id``/``session.id``."""
    prefix = "mlflow.traceTag."
    trace = root.trace
    name = trace.name if trace is not None and trace.name else root.name
    tags: dict[str, str] = {f"{prefix}mlflow.traceName": name[:250]}
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
