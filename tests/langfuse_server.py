"""A contract server for Langfuse's ingestion API, on loopback, for tests.

No real Langfuse can run on these machines, so this server implements the parts spanmux talks to
and is deliberately at least as strict as the real one:

- ``POST /api/public/otel/v1/traces``: OTLP/HTTP protobuf, gzip or plain, decoded with the
  OpenTelemetry proto package; rejects (400) missing or malformed ids, unknown observation types,
  levels and environments, JSON attributes that are not JSON objects, usage buckets that overlap
  (exceed the total) and bad timestamps. Observations are upserted by (trace id, span id), as
  Langfuse does, so a re-sent batch never doubles them.
- ``POST /api/public/scores``: one object or a list, each validated with the Langfuse SDK's own
  ``CreateScoreRequest`` through ``parse_obj_as`` plus the server's value rules; 202, 207 (some
  rejected) or 400. Upserted by id.
- ``POST /api/public/datasets`` and ``POST /api/public/dataset-items``: validated with the SDK's
  ``CreateDatasetRequest`` / ``CreateDatasetItemRequest``; datasets upserted by name, items by id
  (an id is project-wide: reusing it in another dataset is a 400); answered with bodies that parse
  as the SDK's ``Dataset`` / ``DatasetItem``. Every accepted body is kept (``dataset_posts``).
- Dataset runs as Langfuse 5 derives them: from observations carrying ``langfuse.experiment.*``
  attributes (``dataset_runs()``; one run item per dataset item and trace).
- ``GET /api/public/projects`` (authenticated) and ``GET /api/public/health``.

Every route but health needs ``Authorization: Basic base64(public:secret)`` (else 401). It can be
told to fail the next N requests (503, or 429 with Retry-After).
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OBSERVATION_TYPES = frozenset({
    "span", "generation", "event", "agent", "tool", "chain", "retriever", "evaluator", "embedding", "guardrail",
})
LEVELS = frozenset({"DEBUG", "DEFAULT", "WARNING", "ERROR"})
JSON_OBJECT_ATTRIBUTES = (
    "langfuse.observation.usage_details",
    "langfuse.observation.cost_details",
    "langfuse.observation.model.parameters",
)
ENVIRONMENT = re.compile(r"^(?!langfuse)[a-z0-9_-]{1,40}$")


class Invalid(Exception):
    """The request content is wrong: answered with 400."""


@dataclass
class Observation:
    """One decoded OTLP span as Langfuse stores it (attributes decoded to Python values)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    scope: str
    resource: dict[str, Any] = field(default_factory=dict)

    @property
    def type(self) -> str:
        return str(self.attributes.get("langfuse.observation.type", "span"))

    def json_attr(self, key: str) -> Any:
        value = self.attributes.get(key)
        return json.loads(value) if isinstance(value, str) else value

    @property
    def usage(self) -> Any:
        return self.json_attr("langfuse.observation.usage_details")

    @property
    def cost(self) -> Any:
        return self.json_attr("langfuse.observation.cost_details")

    @property
    def model(self) -> str | None:
        return self.attributes.get("langfuse.observation.model.name")

    def metadata(self, prefix: str = "langfuse.observation.metadata.") -> dict[str, Any]:
        return {k[len(prefix):]: v for k, v in self.attributes.items() if k.startswith(prefix)}


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as Python: arrays as tuples, key-value lists as dicts, unset as None."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, which)


def attributes_of(kvs: Any) -> dict[str, Any]:
    """OTLP ``KeyValue``s (span, event or resource attributes) as a dict of Python values."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def _iso(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    text = value
    if text.startswith('"'):
        try:
            text = json.loads(text)
        except ValueError:
            return False
    try:
        datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def validate_observation(obs: Observation) -> None:
    """What a Langfuse server refuses (or would store wrongly), raised as ``Invalid``."""
    attrs = obs.attributes
    where = f"span {obs.name!r} ({obs.span_id})"
    otype = attrs.get("langfuse.observation.type")
    if otype is not None and otype not in OBSERVATION_TYPES:
        raise Invalid(f"{where}: unknown observation type {otype!r}")
    level = attrs.get("langfuse.observation.level")
    if level is not None and level not in LEVELS:
        raise Invalid(f"{where}: unknown level {level!r}")
    if obs.start_ns <= 0 or obs.end_ns < obs.start_ns:
        raise Invalid(f"{where}: bad timestamps")
    for key in JSON_OBJECT_ATTRIBUTES:
        if key not in attrs:
            continue
        try:
            parsed = json.loads(attrs[key])
        except (TypeError, ValueError) as exc:
            raise Invalid(f"{where}: {key} is not valid JSON") from exc
        if not isinstance(parsed, dict):
            raise Invalid(f"{where}: {key} must be a JSON object")
        if key != "langfuse.observation.model.parameters":
            for bucket, number in parsed.items():
                if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                    raise Invalid(f"{where}: {key}.{bucket} must be a non-negative number")
    usage = obs.usage
    if usage and "total" in usage:
        buckets = sum(v for k, v in usage.items() if k != "total")
        if buckets > usage["total"]:
            raise Invalid(f"{where}: usage buckets overlap: they add up to {buckets} > total {usage['total']}")
    cost = obs.cost
    if cost and "total" in cost:
        parts = sum(v for k, v in cost.items() if k != "total")
        if parts > cost["total"] * 1.000001 + 1e-12:
            raise Invalid(f"{where}: cost buckets add up to more than the total")
    start = attrs.get("langfuse.observation.completion_start_time")
    if start is not None and not _iso(start):
        raise Invalid(f"{where}: completion_start_time is not an ISO 8601 timestamp")
    environment = attrs.get("langfuse.environment")
    if environment is not None and not ENVIRONMENT.match(str(environment)):
        raise Invalid(f"{where}: invalid environment {environment!r}")
    tags = attrs.get("langfuse.trace.tags")
    if tags is not None and not (isinstance(tags, str) or all(isinstance(t, str) for t in tags)):
        raise Invalid(f"{where}: langfuse.trace.tags must be strings")
    version = attrs.get("langfuse.observation.prompt.version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise Invalid(f"{where}: prompt.version must be an integer")


def decode_traces(body: bytes, encoding: str | None) -> list[Observation]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    if encoding == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError) as exc:
            raise Invalid("body is not gzip") from exc
    elif encoding not in (None, "", "identity"):
        raise Invalid(f"unsupported Content-Encoding {encoding!r}")
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except Exception as exc:  # protobuf raises DecodeError, a plain Exception subclass
        raise Invalid("body is not an OTLP ExportTraceServiceRequest") from exc
    out: list[Observation] = []
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or not any(span.trace_id):
                    raise Invalid(f"span {span.name!r}: traceId missing or not 16 bytes")
                if len(span.span_id) != 8 or not any(span.span_id):
                    raise Invalid(f"span {span.name!r}: spanId missing or not 8 bytes")
                if span.parent_span_id and len(span.parent_span_id) != 8:
                    raise Invalid(f"span {span.name!r}: parentSpanId not 8 bytes")
                obs = Observation(
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex() or None,
                    name=span.name,
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    attributes=attributes_of(span.attributes),
                    status_code=span.status.code,
                    status_message=span.status.message,
                    scope=scope_spans.scope.name,
                    resource=resource,
                )
                validate_observation(obs)
                out.append(obs)
    return out


def validate_score(item: Any) -> dict[str, Any]:
    """Parse one score with the SDK's own API type, then apply the server's value rules."""
    from langfuse.api.core.pydantic_utilities import parse_obj_as
    from langfuse.api.scores.types.create_score_request import CreateScoreRequest

    if not isinstance(item, dict):
        raise Invalid("a score must be a JSON object")
    try:
        parsed = parse_obj_as(CreateScoreRequest, item)
    except Exception as exc:
        raise Invalid(f"score does not match CreateScoreRequest: {exc}") from exc
    if not (parsed.trace_id or parsed.session_id or parsed.dataset_run_id):
        raise Invalid("score needs traceId, sessionId or datasetRunId")
    if parsed.observation_id and not parsed.trace_id:
        raise Invalid("observationId needs traceId")
    if not parsed.id:
        raise Invalid("score id missing (spanmux always sends one, for idempotency)")
    data_type = str(parsed.data_type.value if parsed.data_type is not None else "NUMERIC")
    value = parsed.value
    if data_type in ("NUMERIC", "BOOLEAN"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"{data_type} score value must be a number")
        if data_type == "BOOLEAN" and value not in (0, 1):
            raise Invalid("BOOLEAN score value must be 0 or 1")
    elif data_type == "CATEGORICAL":
        if not isinstance(value, str):
            raise Invalid("CATEGORICAL score value must be a string")
    else:
        raise Invalid(f"dataType {data_type} is not accepted here")
    if parsed.environment is not None and not ENVIRONMENT.match(parsed.environment):
        raise Invalid("invalid environment")
    return dict(item)


class LangfuseContractServer:
    """Start with ``start()``; ``url`` is the Langfuse host to configure."""

    def __init__(self, public_key: str = "pk-lf-contract", secret_key: str = "sk-lf-contract") -> None:
        self.public_key = public_key
        self.secret_key = secret_key
        self.lock = threading.Lock()
        self.observations: dict[tuple[str, str], Observation] = {}
        self.scores: dict[str, dict[str, Any]] = {}
        self.datasets: dict[str, dict[str, Any]] = {}  # by name, as answered (Dataset)
        self.dataset_items: dict[str, dict[str, Any]] = {}  # by id, as answered (DatasetItem)
        self.dataset_posts: list[tuple[str, dict[str, Any]]] = []  # (path, body) of every accepted POST
        self.requests: list[tuple[str, str, int]] = []
        self.headers: list[dict[str, str]] = []
        self.spans_received = 0
        self.auth_failures = 0
        self._fail: list[tuple[int, float | None]] = []
        self._down_until = 0.0  # time.monotonic() before which every request gets a 503
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> LangfuseContractServer:
        server = self

        class Handler(_Handler):
            contract = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="langfuse-contract", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- test controls
    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next ``count`` authenticated requests with ``status``."""
        with self.lock:
            self._fail.extend([(status, retry_after)] * count)

    def fail_for(self, seconds: float) -> None:
        """An outage of ``seconds`` from now: every authenticated request meanwhile gets a 503."""
        with self.lock:
            self._down_until = time.monotonic() + seconds

    def _take_failure(self) -> tuple[int, float | None] | None:
        with self.lock:
            if time.monotonic() < self._down_until:
                return (503, None)
            return self._fail.pop(0) if self._fail else None

    # -- reading what arrived
    def all_observations(self) -> list[Observation]:
        with self.lock:
            return sorted(self.observations.values(), key=lambda o: (o.start_ns, o.span_id))

    def trace(self, trace_id: str) -> list[Observation]:
        return [o for o in self.all_observations() if o.trace_id == trace_id]

    def by_name(self, name: str) -> Observation:
        found = [o for o in self.all_observations() if o.name == name]
        assert len(found) == 1, f"expected one observation named {name!r}, found {len(found)}"
        return found[0]

    def all_scores(self) -> list[dict[str, Any]]:
        with self.lock:
            return list(self.scores.values())

    def dataset_runs(self) -> dict[str, dict[str, Any]]:
        """Dataset runs by experiment id, derived from the observations as Langfuse does:
        ``{"name", "dataset_id", "metadata", "items": [{"dataset_item_id", "trace_id", "observation_id"}]}``."""
        runs: dict[str, dict[str, Any]] = {}
        for obs in self.all_observations():
            experiment = obs.attributes.get("langfuse.experiment.id")
            item = obs.attributes.get("langfuse.experiment.item.id")
            if not experiment or not item:
                continue
            run = runs.setdefault(str(experiment), {
                "name": obs.attributes.get("langfuse.experiment.name"),
                "dataset_id": obs.attributes.get("langfuse.experiment.dataset.id"),
                "metadata": json.loads(obs.attributes.get("langfuse.experiment.metadata") or "null"),
                "items": [],
            })
            link = {"dataset_item_id": item, "trace_id": obs.trace_id,
                    "observation_id": obs.attributes.get("langfuse.experiment.item.root_observation_id")}
            if link not in run["items"]:
                run["items"].append(link)
        return runs

    def ingest_dataset(self, body: bytes) -> dict[str, Any]:
        from langfuse.api.commons.types.dataset import Dataset
        from langfuse.api.core.pydantic_utilities import parse_obj_as
        from langfuse.api.datasets.types.create_dataset_request import CreateDatasetRequest

        payload = _json_object(body)
        try:
            parsed = parse_obj_as(CreateDatasetRequest, payload)
        except Exception as exc:
            raise Invalid(f"dataset does not match CreateDatasetRequest: {exc}") from exc
        now = _now_iso()
        with self.lock:
            self.dataset_posts.append(("/api/public/datasets", payload))
            found = self.datasets.get(parsed.name)
            answer = {"id": found["id"] if found else f"ds-{len(self.datasets) + 1}", "name": parsed.name,
                      "description": parsed.description, "metadata": parsed.metadata, "projectId": "contract-project",
                      "createdAt": found["createdAt"] if found else now, "updatedAt": now}
            parse_obj_as(Dataset, answer)  # what we answer is what the SDK reads
            self.datasets[parsed.name] = answer
        return answer

    def ingest_dataset_item(self, body: bytes) -> dict[str, Any]:
        from langfuse.api.commons.types.dataset_item import DatasetItem
        from langfuse.api.core.pydantic_utilities import parse_obj_as
        from langfuse.api.dataset_items.types.create_dataset_item_request import CreateDatasetItemRequest

        payload = _json_object(body)
        try:
            parsed = parse_obj_as(CreateDatasetItemRequest, payload)
        except Exception as exc:
            raise Invalid(f"dataset item does not match CreateDatasetItemRequest: {exc}") from exc
        if parsed.id is not None and len(parsed.id) > 255:
            raise Invalid("dataset item id longer than 255 characters")
        now = _now_iso()
        with self.lock:
            dataset = self.datasets.get(parsed.dataset_name)
            if dataset is None:
                raise Invalid(f"dataset {parsed.dataset_name!r} does not exist")
            item_id = parsed.id or f"item-{len(self.dataset_items) + 1}"
            found = self.dataset_items.get(item_id)
            if found is not None and found["datasetName"] != parsed.dataset_name:
                raise Invalid(f"dataset item id {item_id} belongs to another dataset")
            self.dataset_posts.append(("/api/public/dataset-items", payload))
            answer = {"id": item_id, "status": "ACTIVE", "input": parsed.input,
                      "expectedOutput": parsed.expected_output, "metadata": parsed.metadata,
                      "sourceTraceId": parsed.source_trace_id,
                      "sourceObservationId": parsed.source_observation_id, "datasetId": dataset["id"],
                      "datasetName": parsed.dataset_name, "createdAt": found["createdAt"] if found else now,
                      "updatedAt": now, "mediaReferences": []}
            parse_obj_as(DatasetItem, answer)
            self.dataset_items[item_id] = answer
        return answer

    def statuses(self, path: str) -> list[int]:
        with self.lock:
            return [status for _, p, status in self.requests if p == path]

    # -- request handling (called on the server's threads)
    def authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.public_key}:{self.secret_key}".encode()).decode()
        return header == f"Basic {expected}"

    def ingest_traces(self, body: bytes, encoding: str | None) -> dict[str, Any]:
        observations = decode_traces(body, encoding)
        with self.lock:
            self.spans_received += len(observations)
            for obs in observations:
                self.observations[(obs.trace_id, obs.span_id)] = obs
        return {}

    def ingest_scores(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise Invalid("body is not JSON") from exc
        if isinstance(payload, dict):
            score = validate_score(payload)
            with self.lock:
                self.scores[score["id"]] = score
            return 200, {"id": score["id"]}
        if not isinstance(payload, list) or not payload:
            raise Invalid("body must be a score object or a non-empty list of scores")
        accepted: list[dict[str, Any]] = []
        errors: list[dict[str, str]] = []
        for item in payload:
            try:
                accepted.append(validate_score(item))
            except Invalid as exc:
                errors.append({"message": str(exc)})
        if not accepted:
            raise Invalid("; ".join(e["message"] for e in errors))
        with self.lock:
            for score in accepted:
                self.scores[score["id"]] = score
        if errors:
            return 207, {"accepted": len(accepted), "rejected": len(errors), "errors": errors}
        return 202, {"message": "Accepted"}


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise Invalid("body is not JSON") from exc
    if not isinstance(payload, dict):
        raise Invalid("body must be a JSON object")
    return payload


def _now_iso() -> str:
    return datetime.now().astimezone().isoformat()


class _Handler(BaseHTTPRequestHandler):
    contract: LangfuseContractServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        return

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        with self.contract.lock:
            self.contract.requests.append((self.command, self.path.split("?")[0], status))

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _gate(self) -> bool:
        """Auth and injected failures; True when the request may proceed."""
        with self.contract.lock:
            self.contract.headers.append({k.lower(): v for k, v in self.headers.items()})
        if not self.contract.authorized(self.headers.get("Authorization")):
            with self.contract.lock:
                self.contract.auth_failures += 1
            self._reply(401, {"message": "Invalid credentials. Confirm that you've configured the correct host."})
            return False
        failure = self.contract._take_failure()
        if failure is not None:
            status, retry_after = failure
            headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
            self._reply(status, {"message": "injected failure"}, headers)
            return False
        return True

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path == "/api/public/health":
            self._reply(200, {"status": "OK", "version": "contract"})
            return
        if not self._gate():
            return
        if path == "/api/public/projects":
            self._reply(200, {"data": [{"id": "contract-project", "name": "spanmux-contract", "metadata": {}}]})
            return
        self._reply(404, {"message": "not found"})

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        body = self._body()
        if not self._gate():
            return
        try:
            if path == "/api/public/otel/v1/traces":
                self._reply(200, self.contract.ingest_traces(body, self.headers.get("Content-Encoding")))
            elif path == "/api/public/scores":
                status, answer = self.contract.ingest_scores(body)
                self._reply(status, answer)
            elif path == "/api/public/datasets":
                self._reply(200, self.contract.ingest_dataset(body))
            elif path == "/api/public/dataset-items":
                self._reply(200, self.contract.ingest_dataset_item(body))
            else:
                self._reply(404, {"message": "not found"})
        except Invalid as exc:
            self._reply(400, {"message": str(exc)})
