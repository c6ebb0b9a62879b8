"""An in-test OTLP receiver on loopback: OTLP/HTTP protobuf (``/v1/traces``, gzip or not) and
OTLP/gRPC (opentelemetry-proto's ``TraceService`` on grpcio), decoding what arrives with
opentelemetry-proto, so the tests read spans the way a Collector would. Failures, partial successes
and refusals can be scripted."""

from __future__ import annotations

import gzip
import threading
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from langfuse_server import attributes_of  # tests/ is on sys.path (rootdir conftest)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


@dataclass
class Received:
    """One span as a receiver decoded it."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_ns: int
    end_ns: int
    status: int
    attributes: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    resource: dict[str, Any]
    scope: str


@dataclass
class Script:
    """What the receiver answers next: failures first, then partial successes."""

    failures: list[tuple[int, str, float | None]] = field(default_factory=list)
    """(HTTP status, gRPC code name, retry-after seconds) per coming request."""
    partial: list[tuple[int, str]] = field(default_factory=list)
    refuse_names: set[str] = field(default_factory=set)
    """A request holding a span of one of these names is refused (HTTP 400 / INVALID_ARGUMENT)."""


class OtlpReceiver:
    """``with OtlpReceiver() as rx``: ``rx.http_url`` (``.../v1/traces``) and ``rx.grpc_url``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[Received] = []
        self.requests: list[dict[str, Any]] = []
        """Per request: transport, headers (lowercase), encoding, answer."""
        self.script = Script()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: Any = None
        self.http_url = ""
        self.grpc_url = ""

    # -- scripting
    def fail_next(self, count: int, status: int = 503, code: str = "UNAVAILABLE",
                  retry_after: float | None = None) -> None:
        with self.lock:
            self.script.failures.extend([(status, code, retry_after)] * count)

    def partial_next(self, rejected: int, message: str = "some spans were invalid") -> None:
        with self.lock:
            self.script.partial.append((rejected, message))

    def refuse(self, *names: str) -> None:
        with self.lock:
            self.script.refuse_names.update(names)

    # -- reading
    def by_name(self, name: str) -> Received:
        found = [s for s in self.spans if s.name == name]
        assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in self.spans]}"
        return found[0]

    def answers(self) -> list[str]:
        return [r["answer"] for r in self.requests]

    # -- the shared decision
    def _take(self, request: Any, transport: str, headers: dict[str, str], encoding: str | None) -> tuple[str, Any]:
        """('ok', response) | ('fail', (status, code, retry_after)) | ('refuse', message)."""
        with self.lock:
            names = {s.name for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans}
            entry: dict[str, Any] = {"transport": transport, "headers": headers, "encoding": encoding,
                                     "spans": sum(len(ss.spans) for rs in request.resource_spans
                                                  for ss in rs.scope_spans)}
            self.requests.append(entry)
            if self.script.failures:
                failure = self.script.failures.pop(0)
                entry["answer"] = f"fail {failure[0] if transport == 'http' else failure[1]}"
                return "fail", failure
            refused = names & self.script.refuse_names
            if refused:
                entry["answer"] = "refused"
                return "refuse", f"refused {sorted(refused)}"
            response = trace_service_pb2.ExportTraceServiceResponse()
            if self.script.partial:
                rejected, message = self.script.partial.pop(0)
                response.partial_success.rejected_spans = rejected
                response.partial_success.error_message = message
                entry["answer"] = f"partial {rejected}"
            else:
                entry["answer"] = "ok"
            self._store(request)
            return "ok", response

    def _store(self, request: Any) -> None:
        for rs in request.resource_spans:
            resource = attributes_of(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(Received(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex() or None, name=s.name,
                        start_ns=s.start_time_unix_nano, end_ns=s.end_time_unix_nano, status=s.status.code,
                        attributes=attributes_of(s.attributes),
                        events=[(e.name, attributes_of(e.attributes)) for e in s.events],
                        resource=resource, scope=ss.scope.name,
                    ))

    # -- lifecycle
    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body in two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                return None

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding")
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(415)
                    self.end_headers()
                    return
                if encoding == "gzip":
                    body = gzip.decompress(body)
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                headers = {k.lower(): v for k, v in self.headers.items()}
                outcome, detail = receiver._take(request, "http", headers, encoding)
                if outcome == "fail":
                    status, _, retry_after = detail
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("Retry-After", f"{retry_after:g}")
                    self.end_headers()
                    return
                if outcome == "refuse":
                    self.send_response(400)
                    self.end_headers()
                    self.wfile.write(str(detail).encode())
                    return
                data = detail.SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.http_url = f"http://127.0.0.1:{self._http.server_address[1]}/v1/traces"

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                headers = {k: v for k, v in context.invocation_metadata()}
                encoding = headers.get("grpc-encoding")
                outcome, detail = receiver._take(request, "grpc", headers, encoding)
                if outcome == "fail":
                    _, code, _ = detail
                    context.abort(getattr(grpc.StatusCode, code), "scripted failure")
                if outcome == "refuse":
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(detail))
                return detail

        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), self._grpc)
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.grpc_url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace=None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def as_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as a dict (for debugging failed assertions)."""
    return dict(MessageToDict(message))
