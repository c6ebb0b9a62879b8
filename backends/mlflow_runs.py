"""MLflow experiment tracking for the ``mlflow`` backend: which run a batch belongs to, and what
that run receives.

One run per session (one ``spanmux.configure``) receives the agent's parameters, the models and
their parameters as they are first seen, per-trace stepped metrics, session totals and a summary
table artifact; every trace is linked to that run explicitly (``link_traces_to_run``), never
through MLflow's "active run".

A trace belongs to the run of the session that produced it, whenever and by whichever process it is
delivered: each spooled batch carries ``origin()`` (session id, experiment, run name, start time),
and a batch delivered with an origin goes to that session's run, found by its ``spanmux.origin``
tag or created. A replay of a store (``{"replay": <store>}``) always goes to one run per store. A
run found again is read back first (parameters, summary table with each trace's step, session
totals), so delivering the same records again changes nothing in it.

The trace exporter (``spanmux.backends.mlflow``) owns the connection and the traces; this module
only asks it for clients, experiments and guarded calls.
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
from typing import TYPE_CHECKING, Any

from spanmux.config_schemas.observability import MlflowConfig
from spanmux.model import Score, Span
from spanmux.usage import is_model_call

if TYPE_CHECKING:
    from spanmux.backends.mlflow import MlflowConnection

log = logging.getLogger("spanmux.backends.mlflow")

SUMMARY_TABLE = "spanmux/traces.json"
"""Run artifact: one row per trace (MLflow table format), rewritten whole at each flush."""

ORIGIN_TAG = "spanmux.origin"
"""Run tag naming the session whose traces the run holds (``origin()['session']``, or
``replay-<hash of the store>``): how any process finds that run again."""
CREATED_TAG = "spanmux.created"
"""When a run of an origin was created (nanoseconds, then a random part): the earliest one wins a race."""
_RACE_RUNS = 20
"""How many runs of one origin are looked at to find the earliest (a race makes two or three)."""
MODELS_TAG = "spanmux.models"
VERSION_TAG = "spanmux.version"
REPLAY_SOURCE_TAG = "spanmux.replay_source"
SOURCE_NAME_TAG = "mlflow.source.name"
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
"""What ``MlflowClient.log_table`` sets: the UI and ``load_table`` then treat the artifact as a table."""
SESSION_METRICS = {"traces": "session.traces", "errors": "session.errors", "total_tokens": "session.total_tokens",
                   "cost_usd": "session.cost_usd"}
"""Session totals (``Run.totals`` key -> metric), written at each flush and read back from a run
found again; the mean latency is ``session.mean_latency_ms`` (totals keep the sum)."""
MEAN_LATENCY_METRIC = "session.mean_latency_ms"

_LINKS_PER_CALL = 100  # MLflow's MAX_TRACE_LINKS_PER_REQUEST
_METRICS_PER_CALL = 1000  # MLflow's MAX_METRICS_PER_BATCH
_PARAMS_PER_CALL = 100  # MLflow's MAX_PARAMS_TAGS_PER_BATCH
_PARAM_VALUE_LIMIT = 6000
_MAX_TRACKED_TRACES = 20_000  # per-trace aggregates kept in memory (oldest dropped first)
_MAX_SUMMARY_ROWS = 10_000
_MAX_RUNS = 16  # runs of other sessions kept open at once (a spool rarely holds more sessions)
_ORIGIN_PARAMS_LIMIT = 16_000  # session params carried in each spooled batch's origin, at most
_ORIGIN_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_KEY_CHARS = re.compile(r"[^\w\-. /]")


def safe_key(text: str) -> str:
    """MLflow keys allow letters, digits, ``_ - . / space``; anything else becomes ``_``."""
    return _KEY_CHARS.sub("_", text)[:250] or "_"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out)
        return
    text = value if isinstance(value, str) else json.dumps(value, default=repr)
    out[safe_key(prefix)] = text[:_PARAM_VALUE_LIMIT]


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


class RecentIds:
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
class RunSpec:
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
class Run:
    """Where a batch lands (``experiment_id``; with tracking on, ``run_id``) and what that run holds
    already, so that delivering the same records again (a replay, a spool file sent twice) adds
    nothing to it."""

    key: str
    experiment_id: str
    run_id: str | None = None
    own: bool = False  # created by (or for) this backend's session: marked FINISHED at shutdown
    traces: OrderedDict[str, _TraceStats] = field(default_factory=OrderedDict)
    linked: RecentIds = field(default_factory=RecentIds)
    metrics_done: RecentIds = field(default_factory=RecentIds)
    score_metrics_done: RecentIds = field(default_factory=RecentIds)
    logged_params: dict[str, str] = field(default_factory=dict)
    pending_params: dict[str, str] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    steps: int = 0
    summary: OrderedDict[str, dict[str, Any]] = field(default_factory=OrderedDict)
    summary_dirty: bool = False
    table_tagged: bool = False
    totals: dict[str, float] = field(default_factory=_new_totals)
    last_end_ms: int = 0


class RunTracker:
    """This session's identity and the runs batches go to, with what each run receives."""

    def __init__(self, config: MlflowConfig, settings: Any, mlflow: MlflowConnection) -> None:
        self.config = config
        self.settings = settings
        self._mlflow = mlflow
        self.enabled = config.log_params or config.log_metrics or config.log_artifacts
        # this session's identity: its run is created (or found again) by it, in any process
        self.session = uuid.uuid4().hex
        self.started_ms = int(time.time() * 1000)
        self.run_name = config.run_name or time.strftime("spanmux-%Y%m%d-%H%M%S")
        self.own_spec = RunSpec(self.session, config.experiment_name, self.run_name, self.started_ms,
                                dict(config.tags), self._session_params())
        self._runs: OrderedDict[str, Run] = OrderedDict()

    @property
    def run_id(self) -> str | None:
        """This session's run (None before the first export, or when tracking is off)."""
        run = self._runs.get(self.session)
        return run.run_id if run is not None else None

    # ---- where records belong
    def origin(self) -> dict[str, str]:
        """This session's identity, stored with every batch spooled for MLflow: whoever delivers
        the batch later, in whatever process, finds or creates this session's run from it."""
        spec = self.own_spec
        out = {"session": spec.key, "experiment": spec.experiment, "run_name": spec.run_name,
               "started_ms": str(spec.started_ms), "pid": str(os.getpid())}
        if spec.tags:
            out["tags"] = json.dumps(spec.tags, sort_keys=True)
        if spec.params:
            params = json.dumps(spec.params, sort_keys=True)
            if len(params) <= _ORIGIN_PARAMS_LIMIT:  # else the run gets the models' parameters only
                out["params"] = params
        return out

    def spec_of(self, origin: Mapping[str, str] | None) -> RunSpec:
        """The run a batch of ``origin`` belongs to. None (batches of spanmux 0.1, fresh batches)
        is this session; ``{"replay": <store>}`` is the one run that replays of that store share."""
        if not origin or origin.get("session") == self.session:
            return self.own_spec
        source = origin.get("replay")
        if source:
            key = "replay-" + hashlib.sha256(source.encode()).hexdigest()[:24]
            tags = {**self.config.tags, REPLAY_SOURCE_TAG: source[:5000]}
            return RunSpec(key, self.config.experiment_name, "spanmux-replay", None, tags, self.own_spec.params)
        session = origin.get("session")
        if not session:
            return self.own_spec
        key = session if _ORIGIN_KEY.fullmatch(session) else hashlib.sha256(session.encode()).hexdigest()[:32]
        started = origin.get("started_ms", "")
        return RunSpec(
            key, origin.get("experiment") or self.config.experiment_name,
            origin.get("run_name") or f"spanmux-{key[:8]}",
            int(started) if started.isdigit() else None,
            _json_map(origin.get("tags")), _json_map(origin.get("params")),
        )

    def run_for(self, spec: RunSpec) -> Run:
        """The run of ``spec``: cached, else found by its ``spanmux.origin`` tag, else created."""
        run = self._runs.get(spec.key)
        if run is not None:
            self._runs.move_to_end(spec.key)
            return run
        run = Run(spec.key, self._mlflow.experiment_id(spec.experiment))
        if self.enabled:
            self._mlflow.call("find or create the session run", self._open_run, run, spec)
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

    def _open_run(self, run: Run, spec: RunSpec) -> None:
        """Find the run tagged with the spec's key (made earlier by this session, by a process that
        delivered its spool, or by an earlier replay) or create it, started when its session did.

        Two processes can both find none and both create one (two replays of one store, a lane and
        a replay of one spool): after creating, each looks again and keeps the earliest created run
        of the key (``spanmux.created``, then run id; a run without the tag predates this rule and
        comes first); the loser deletes its own, still empty, run, so both write to one."""
        from spanmux import __version__

        client = self._mlflow.client
        existing = self._earliest(client, run.experiment_id, spec.key)
        if existing is None:
            tags = {VERSION_TAG: __version__, SOURCE_NAME_TAG: "spanmux", **spec.tags, ORIGIN_TAG: spec.key,
                    CREATED_TAG: f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"}
            created = client.create_run(run.experiment_id, run_name=spec.run_name, start_time=spec.started_ms,
                                        tags=tags)
            mine = str(created.info.run_id)
            existing = self._earliest(client, run.experiment_id, spec.key)
            if existing is None or str(existing.info.run_id) == mine:
                existing = None
                run.run_id = mine
                run.own = True
            else:
                log.info("spanmux: MLflow run %s of %s was created at the same time as %s; writing to %s",
                         mine, spec.key, existing.info.run_id, existing.info.run_id)
                client.delete_run(mine)
        if existing is not None:
            run.run_id = str(existing.info.run_id)
            run.own = spec.key == self.session
            self._restore(run, existing)
        # a parameter MLflow holds already cannot change: what the run says stays
        run.pending_params = {k: v for k, v in spec.params.items() if k not in run.logged_params}

    @staticmethod
    def _earliest(client: Any, experiment_id: str, key: str) -> Any:
        """The earliest created active run tagged with ``key`` (None: there is none)."""
        found = client.search_runs([experiment_id], filter_string=f"tags.`{ORIGIN_TAG}` = '{key}'",
                                   max_results=_RACE_RUNS)
        if not found:
            return None
        return min(found, key=lambda r: (r.data.tags.get(CREATED_TAG, ""), str(r.info.run_id)))

    def _restore(self, run: Run, existing: Any) -> None:
        """Pick up what a run found again holds: its parameters, models, trace steps, summary rows
        and session totals, so records delivered again are neither stepped nor counted twice."""
        data = existing.data
        run.logged_params = dict(data.params)
        run.models = {m for m in data.tags.get(MODELS_TAG, "").split(",") if m}
        run.table_tagged = SUMMARY_TABLE in data.tags.get(LOGGED_ARTIFACTS_TAG, "")
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
        if SESSION_METRICS["traces"] in metrics:
            t = run.totals
            for key, metric in SESSION_METRICS.items():
                t[key] = metrics.get(metric, 0.0)
            t["latency_ms"] = metrics.get(MEAN_LATENCY_METRIC, 0.0) * t["traces"]
            run.steps = max(run.steps, int(t["traces"]))
        else:
            for row in rows:
                self._add_to_totals(run, row)
        if not rows and run.steps:
            # no summary table to tell which traces it counted: those linked to it were counted
            for trace_id in self._linked_traces(run):
                run.metrics_done.add(trace_id)

    def _load_summary(self, run_id: str | None) -> list[dict[str, Any]]:
        import tempfile

        client = self._mlflow.client
        names = {f.path for f in client.list_artifacts(run_id, SUMMARY_TABLE.rsplit("/", 1)[0])}
        if SUMMARY_TABLE not in names:
            return []
        with tempfile.TemporaryDirectory(prefix="spanmux-") as folder:
            local = client.download_artifacts(run_id, SUMMARY_TABLE, folder)
            try:
                table = json.loads(Path(local).read_text(encoding="utf-8"))
                columns = list(table["columns"])
                return [dict(zip(columns, row, strict=True)) for row in table["data"]]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("spanmux: the summary table of MLflow run %s is unreadable (%s); it is rewritten",
                            run_id, exc)
                return []

    def _linked_traces(self, run: Run) -> list[str]:
        out: list[str] = []
        token = None
        while True:
            page = self._mlflow.tracing.search_traces(locations=[run.experiment_id], run_id=run.run_id,
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

    # ---- a delivered batch
    def account(self, run: Run, spans: Sequence[Span]) -> list[str]:
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

    def _note_model(self, run: Run, span: Span) -> None:
        model = span.model
        if model is None or not model.name or not self.config.log_params:
            return
        run.models.add(model.name)
        prefix = f"model.{safe_key(model.name)}"
        candidates = {f"{prefix}.provider": model.provider} if model.provider else {}
        for key, value in (model.parameters or {}).items():
            if isinstance(value, (str, int, float, bool)):
                candidates[f"{prefix}.{safe_key(str(key))}"] = str(value)
        for key, value in candidates.items():
            if key not in run.logged_params and key not in run.pending_params:
                run.pending_params[key] = value[:_PARAM_VALUE_LIMIT]

    def link(self, run: Run, spans: Sequence[Span]) -> None:
        """Link the batch's traces to the run (each once)."""
        todo = [f"tr-{t}" for t in dict.fromkeys(s.trace_id for s in spans) if t not in run.linked]
        for start in range(0, len(todo), _LINKS_PER_CALL):
            chunk = todo[start:start + _LINKS_PER_CALL]
            self._mlflow.call("link traces to the session run", self._mlflow.client.link_traces_to_run, chunk,
                              run.run_id)
            for trace_id in chunk:
                run.linked.add(trace_id[3:])

    def log(self, run: Run, finished: Iterable[str], scores: Sequence[Score]) -> None:
        """Parameters seen so far, the metrics of finished traces and of scores, the summary rows."""
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

    def _trace_metrics(self, run: Run, trace_id: str) -> list[Any]:
        from mlflow.entities import Metric

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

    def _score_metrics(self, run: Run, scores: Sequence[Score]) -> tuple[list[Any], list[str]]:
        """Numeric and boolean scores as ``score.<name>`` metrics, stepped like their trace (the
        same point again when delivered again: MLflow keeps one copy of an identical point)."""
        from mlflow.entities import Metric

        out, ids = [], []
        for score in scores:
            if isinstance(score.value, str) or score.id in run.score_metrics_done:
                continue
            stats = run.traces.get(score.trace_id)
            step = stats.step if stats is not None and stats.step is not None else run.steps
            ids.append(score.id)
            stamp = (score.timestamp_ns or time.time_ns()) // 1_000_000
            out.append(Metric(f"score.{safe_key(score.name)}", float(score.value), stamp, step))
        return out, ids

    def _record_summary(self, run: Run, trace_id: str) -> None:
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
    def _add_to_totals(run: Run, row: Mapping[str, Any]) -> None:
        t = run.totals
        t["traces"] += 1
        t["errors"] += row.get("status") == "error"
        t["total_tokens"] += float(row.get("total_tokens") or 0)
        t["cost_usd"] += float(row.get("cost_usd") or 0.0)
        t["latency_ms"] += float(row.get("latency_ms") or 0.0)

    def _write_batch(self, run: Run, metrics: list[Any], params: dict[str, str]) -> None:
        from mlflow.entities import Param

        client = self._mlflow.client
        param_list = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(param_list), _PARAMS_PER_CALL):
            self._mlflow.call("log params", client.log_batch, run.run_id,
                              params=param_list[start:start + _PARAMS_PER_CALL])
        for start in range(0, len(metrics), _METRICS_PER_CALL):
            self._mlflow.call("log metrics", client.log_batch, run.run_id,
                              metrics=metrics[start:start + _METRICS_PER_CALL])

    # ---- flush and shutdown
    def _write_session(self, run: Run) -> None:
        """Session totals as metrics (step = traces so far) and the summary table artifact."""
        from mlflow.entities import Metric

        client = self._mlflow.client
        if run.run_id is None or client is None or not run.summary_dirty:
            return
        call = self._mlflow.call
        t = run.totals
        stamp = int(time.time() * 1000)
        if self.config.log_metrics and t["traces"]:
            step = int(t["traces"])
            values = {metric: t[key] for key, metric in SESSION_METRICS.items()}
            values[MEAN_LATENCY_METRIC] = t["latency_ms"] / t["traces"]
            metrics = [Metric(k, float(v), stamp, step) for k, v in values.items()]
            call("log session metrics", client.log_batch, run.run_id, metrics=metrics)
        if self.config.log_artifacts and run.summary:
            rows = list(run.summary.values())
            columns = list(dict.fromkeys(key for row in rows for key in row))
            table = {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}
            call("log the trace summary table", client.log_dict, run.run_id, table, SUMMARY_TABLE)
            if not run.table_tagged:
                tag = json.dumps([{"path": SUMMARY_TABLE, "type": "table"}])
                call("tag the summary table", client.set_tag, run.run_id, LOGGED_ARTIFACTS_TAG, tag)
                run.table_tagged = True
        if run.models:
            call("tag the session run", client.set_tag, run.run_id, MODELS_TAG, ",".join(sorted(run.models))[:5000])
        run.summary_dirty = False

    def _close_run(self, run: Run) -> None:
        """Write the run's summary; a run this backend created (or its own session's) is marked
        finished, at the end of its last trace when it was made for another session."""
        self._write_session(run)
        tracing = self._mlflow.tracing
        if not run.own or run.run_id is None or tracing is None:
            return
        from mlflow.entities import RunStatus

        now = int(time.time() * 1000)
        end = now if run.key == self.session or not run.last_end_ms else run.last_end_ms
        # the store call, not MlflowClient.set_terminated, which prints run URLs to stdout
        tracing.store.update_run_info(run.run_id, RunStatus.FINISHED, end, None)

    def flush(self) -> None:
        """Write every open run's session metrics and summary table."""
        for run in list(self._runs.values()):
            self._write_session(run)

    def close(self) -> None:
        """Write and finish every run (once, at shutdown); a failure is logged per run."""
        for run in self._runs.values():
            try:
                self._close_run(run)
            except Exception as exc:
                log.warning("spanmux: could not close the MLflow session run %s: %s", run.run_id, exc)


# ---------------------------------------------------------------- experiment runs (spanmux.evaluate)

EXPERIMENT_RUN_TAG = "spanmux.experiment_run"
"""Run tag holding the spanmux experiment run id: how a redelivered run finds its MLflow run."""
RUN_TYPE_TAG = "mlflow.runType"
GENAI_EVALUATE = "genai_evaluate"
"""The run type ``mlflow.genai.evaluate`` sets; MLflow's UI shows such runs as evaluation runs."""
EVAL_RESULTS_TABLE = "eval_results_table.json"
"""The per-item table artifact, named and tagged as MLflow's own evaluation writes it."""
SOURCE_RUN_METADATA = "mlflow.assessment.sourceRunId"
"""Assessment metadata naming the evaluation run a feedback belongs to (``AssessmentMetadataKey.SOURCE_RUN_ID``)."""


class ExperimentRunWriter:
    """One MLflow run per spanmux experiment run, in the shape ``mlflow.genai.evaluate`` leaves:
    run type ``genai_evaluate``, a ``<scorer>/mean`` metric per scorer (plus latency, tokens, cost
    and errors), the item table ``eval_results_table.json`` (``trace_id``, ``<scorer>/value``...),
    every item's trace linked to the run. The scores themselves reach the traces as feedback through
    the score path; each is then tied to the run (``mlflow.assessment.sourceRunId``), as
    ``genai.evaluate`` ties its own. Delivering the same run again finds its MLflow run by tag and rewrites the same
    values (metrics at the same point, the same parameters, the table whole)."""

    def __init__(self, config: MlflowConfig, mlflow: MlflowConnection, assessment_id: Any) -> None:
        self.config = config
        self._mlflow = mlflow
        self._assessment_id = assessment_id  # spanmux score id -> MLflow assessment id
        self._runs: OrderedDict[str, str] = OrderedDict()  # spanmux run id -> MLflow run id

    def write(self, run: Any) -> str:
        from mlflow.entities import Metric, Param, RunStatus

        from spanmux.experiments import summarize

        call = self._mlflow.call
        client = self._mlflow.client
        experiment_id = self._mlflow.experiment_id(self.config.experiment_name)
        run_id = self._run_for(run, experiment_id)
        summary = summarize(run)
        if self.config.log_params:
            params: dict[str, str] = {}
            _flatten("", dict(run.metadata or {}), params)
            params.update({"spanmux.experiment": run.name, "spanmux.dataset": run.dataset or "",
                           "spanmux.scorers": ",".join(run.scorers), "spanmux.items": str(len(run.items))})
            param_list = [Param(k, v) for k, v in params.items()]
            for start in range(0, len(param_list), _PARAMS_PER_CALL):
                call("log experiment params", client.log_batch, run_id,
                     params=param_list[start:start + _PARAMS_PER_CALL])
        if self.config.log_metrics:
            values: dict[str, float | None] = {f"{safe_key(n)}/mean": s.mean for n, s in summary.scorers.items()}
            values.update({
                "latency_p50_ms": summary.latency_p50_ms, "latency_p95_ms": summary.latency_p95_ms,
                "input_tokens": summary.input_tokens, "output_tokens": summary.output_tokens,
                "total_tokens": summary.total_tokens, "cost_usd": summary.cost,
                "evaluator_tokens": summary.evaluator_tokens, "evaluator_cost_usd": summary.evaluator_cost,
                "items": summary.items, "errors": summary.errors,
            })
            stamp = run.end_ns // 1_000_000
            metrics = [Metric(k, float(v), stamp, 0) for k, v in values.items() if v is not None]
            call("log experiment metrics", client.log_batch, run_id, metrics=metrics)
        if self.config.log_artifacts:
            call("log the experiment results table", client.log_dict, run_id, self._table(run), EVAL_RESULTS_TABLE)
            tag = json.dumps([{"path": EVAL_RESULTS_TABLE, "type": "table"}])
            call("tag the experiment results table", client.set_tag, run_id, LOGGED_ARTIFACTS_TAG, tag)
        traces = [f"tr-{i.trace_id}" for i in run.items if i.trace_id]
        for start in range(0, len(traces), _LINKS_PER_CALL):
            call("link experiment traces", client.link_traces_to_run, traces[start:start + _LINKS_PER_CALL], run_id)
        self._tie_feedback(run, run_id)
        # the store call, not MlflowClient.set_terminated, which prints run URLs to stdout
        status = RunStatus.FINISHED if run.status == "finished" else RunStatus.KILLED
        call("finish the experiment run", self._mlflow.tracing.store.update_run_info, run_id, status,
             run.end_ns // 1_000_000, None)
        return run_id

    def _tie_feedback(self, run: Any, run_id: str) -> None:
        """Name the run in each item's feedback (metadata only: value and rationale stay). A score
        MLflow does not hold (refused, or its trace still missing) is left alone."""
        store = self._mlflow.tracing.store
        for item in run.items:
            for score_id in item.score_ids.values():
                try:
                    store.update_assessment(trace_id=f"tr-{item.trace_id}", assessment_id=self._assessment_id(score_id),
                                            metadata={SOURCE_RUN_METADATA: run_id})
                except Exception as exc:
                    if str(getattr(exc, "error_code", "")) != "RESOURCE_DOES_NOT_EXIST":
                        raise self._mlflow.error("tie feedback to the evaluation run", exc) from None
                    log.debug("spanmux: feedback %s of trace %s is not in MLflow (yet)", score_id, item.trace_id)
                else:
                    self._mlflow.answered()

    def _run_for(self, run: Any, experiment_id: str) -> str:
        found = self._runs.get(run.run_id)
        if found is not None:
            return found
        client = self._mlflow.client
        existing = self._mlflow.call("find the experiment run", client.search_runs, [experiment_id],
                                     filter_string=f"tags.`{EXPERIMENT_RUN_TAG}` = '{run.run_id}'", max_results=1)
        if existing:
            mlflow_run_id = str(existing[0].info.run_id)
        else:
            from spanmux import __version__

            tags = {VERSION_TAG: __version__, SOURCE_NAME_TAG: "spanmux", RUN_TYPE_TAG: GENAI_EVALUATE,
                    EXPERIMENT_RUN_TAG: run.run_id, "spanmux.experiment": run.name, **self.config.tags}
            if run.dataset:
                tags["spanmux.dataset"] = run.dataset
            created = self._mlflow.call("create the experiment run", client.create_run, experiment_id,
                                        run_name=f"{run.name}-{run.run_id[:8]}", start_time=run.start_ns // 1_000_000,
                                        tags=tags)
            mlflow_run_id = str(created.info.run_id)
        self._runs[run.run_id] = mlflow_run_id
        while len(self._runs) > 1000:
            self._runs.popitem(last=False)
        return mlflow_run_id

    @staticmethod
    def _table(run: Any) -> dict[str, Any]:
        """The items as an MLflow table (``columns`` + ``data``), columns as ``genai.evaluate``'s result."""
        names = list(dict.fromkeys([*run.scorers, *(n for i in run.items for n in i.scores)]))
        columns = ["trace_id", *(f"{n}/value" for n in names), "item_id", "inputs", "outputs", "expectations",
                   "latency_ms", "input_tokens", "output_tokens", "total_tokens", "cost_usd", "evaluator_tokens",
                   "evaluator_cost_usd", "error"]
        data = []
        for i in run.items:
            errors = [i.error] if i.error else []
            errors += [f"{k}: {v}" for k, v in i.scorer_errors.items()]
            data.append([f"tr-{i.trace_id}" if i.trace_id else None, *(i.scores.get(n) for n in names), i.item_id,
                         i.input, i.output, i.expected, round(i.latency_ms, 3), i.input_tokens, i.output_tokens,
                         i.total_tokens, i.cost, i.evaluator_tokens, i.evaluator_cost, "; ".join(errors) or None])
        return {"columns": columns, "data": data}
