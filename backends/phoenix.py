"""Backend ``phoenix``: Arize Phoenix, the ``otlp`` backend with Phoenix's defaults plus annotations.

Spans go over OTLP exactly as ``otlp`` sends them (OpenInference attributes are what Phoenix
renders; it also converts ``gen_ai.*``), to ``http://127.0.0.1:6006/v1/traces`` unless told
otherwise, with ``project:`` as the resource attribute ``openinference.project.name``. Scores are
not OTLP in Phoenix: they become span annotations (a score on a span) or trace annotations (a
score on a trace) over its REST API, ``POST /v1/span_annotations`` and ``/v1/trace_annotations``.
Each annotation's ``identifier`` is the score id, so a re-sent score updates the same annotation.
Phoenix queues annotations and inserts them once their span has arrived, so a score may travel in
the same batch as its spans.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from typing import Any, ClassVar, Final

from spanmux import attributes as attr
from spanmux.backend import BackendSetupError, ExportError
from spanmux.backends.otel_spans import json_text
from spanmux.backends.otlp import TRACES_SUFFIX, OtlpBackend, Target, resolve, shown
from spanmux.backoff import retry_after_seconds
from spanmux.config_schemas.observability import PhoenixConfig
from spanmux.model import Score

DEFAULT_BASE_URL: Final = "http://127.0.0.1:6006"
DEFAULT_PROJECT: Final = "default"
SPAN_ANNOTATIONS: Final = "/v1/span_annotations"
TRACE_ANNOTATIONS: Final = "/v1/trace_annotations"
ANNOTATOR_KIND: Final[dict[str, str]] = {"human": "HUMAN", "llm_judge": "LLM", "code": "CODE"}
"""spanmux score source -> Phoenix ``annotator_kind``."""
_RETRYABLE = frozenset({404, 408, 429, 500, 502, 503, 504})
"""404 too: Phoenix answers it while the span being annotated is not stored yet."""


def annotation(score: Score) -> dict[str, Any]:
    """One item of Phoenix's annotation request for ``score``."""
    result: dict[str, Any] = {}
    value = score.value
    if score.data_type == "numeric" and not isinstance(value, str):
        result["score"] = float(value)
    elif score.data_type == "boolean":
        truthy = value.strip().lower() in ("true", "1", "yes") if isinstance(value, str) else bool(value)
        result["score"] = 1.0 if truthy else 0.0
        result["label"] = "true" if truthy else "false"
    else:
        result["label"] = str(value)
    if score.comment:
        result["explanation"] = score.comment
    item: dict[str, Any] = {
        "name": score.name,
        "annotator_kind": ANNOTATOR_KIND.get(score.source, "CODE"),
        "result": result,
        "metadata": {"source": score.source},
        "identifier": score.id,
    }
    if score.span_id:
        item["span_id"] = score.span_id
    else:
        item["trace_id"] = score.trace_id
    return item


class PhoenixBackend(OtlpBackend):  # type: ignore[misc]  # mypy sees backends/ as "backends", not spanmux.backends
    """OTLP to Phoenix with its defaults; scores as Phoenix annotations."""

    name = "phoenix"
    config_model: ClassVar[Any] = PhoenixConfig
    extra: ClassVar[str | None] = "phoenix"
    scores_as_events: ClassVar[bool] = False

    def __init__(self, config: PhoenixConfig | None, settings: Any = None) -> None:
        super().__init__(config, settings)
        section: PhoenixConfig = self.config
        base = section.base_url or os.environ.get("PHOENIX_COLLECTOR_ENDPOINT") or None
        if base is None:
            parts = urllib.parse.urlsplit(self.target.endpoint)
            base = DEFAULT_BASE_URL if self.target.protocol == "grpc" else f"{parts.scheme}://{parts.netloc}"
        base = base.rstrip("/")
        if base.endswith("/" + TRACES_SUFFIX):
            base = base[: -len(TRACES_SUFFIX) - 1]
        if not re.match(r"^https?://[^/\s]+", base):
            raise BackendSetupError("phoenix base_url must be an http:// or https:// URL", key="base_url")
        self.base_url = base
        self.project = self.target.resource[attr.OPENINFERENCE_PROJECT_NAME]
        self.annotations = section.annotations
        self._rest: Any = None

    def resolve(self, section: Any) -> Target:
        """Phoenix's defaults: ``$PHOENIX_COLLECTOR_ENDPOINT`` + ``/v1/traces`` or 127.0.0.1:6006,
        ``$PHOENIX_API_KEY`` as a Bearer token, the project as ``openinference.project.name``. The
        generic OTEL_EXPORTER_OTLP_* variables are for the ``otlp`` backend and are not read here."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_EXPORTER_OTLP_")}
        endpoint = section.endpoint
        if endpoint is None and section.protocol != "grpc":
            collector = os.environ.get("PHOENIX_COLLECTOR_ENDPOINT") or DEFAULT_BASE_URL
            collector = collector.rstrip("/")
            endpoint = collector if collector.endswith("/" + TRACES_SUFFIX) else f"{collector}/{TRACES_SUFFIX}"
        elif endpoint is None:
            endpoint = "http://127.0.0.1:4317"
        target = resolve(section.model_copy(update={"endpoint": endpoint}), environ)
        key = section.api_key.get_secret_value() if section.api_key is not None else os.environ.get("PHOENIX_API_KEY")
        if key and "authorization" not in {k.lower() for k in target.headers}:
            target.headers["authorization"] = f"Bearer {key}"
        project = section.project or os.environ.get("PHOENIX_PROJECT_NAME") or DEFAULT_PROJECT
        target.resource[attr.OPENINFERENCE_PROJECT_NAME] = project
        return target

    def __repr__(self) -> str:
        return f"PhoenixBackend(endpoint={shown(self.target.endpoint)!r}, project={self.project!r})"

    # -- scores as annotations
    def export_scores(self, scores: Sequence[Score]) -> None:
        if not self.annotations:
            return
        items = [annotation(score) for score in scores]
        spans = [i for i in items if "span_id" in i]
        traces = [i for i in items if "trace_id" in i]
        if spans:
            self._post(SPAN_ANNOTATIONS, spans)
        if traces:
            self._post(TRACE_ANNOTATIONS, traces)

    def _post(self, path: str, items: list[dict[str, Any]]) -> None:
        import requests

        if self._rest is None:
            self._rest = requests.Session()
            self._rest.headers.update({"User-Agent": "spanmux", "Content-Type": "application/json"})
            auth = {k.lower(): v for k, v in self.target.headers.items()}.get("authorization")
            if auth:
                self._rest.headers["Authorization"] = auth
        where = shown(self.base_url) + path
        try:
            response = self._rest.post(self.base_url + path, data=json_text({"data": items}).encode(),
                                       timeout=self.target.timeout)
        except requests.RequestException as exc:
            raise ExportError(f"Phoenix at {where} is unreachable ({type(exc).__name__})", retryable=True) from None
        status = response.status_code
        if 200 <= status < 300:
            return
        if status in _RETRYABLE:
            raise ExportError(f"Phoenix at {where} answered HTTP {status}", retryable=True,
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
        if status in (400, 422):  # these annotations are wrong, not the moment: drop and count them
            self.rejected_scores += len(items)
            self.warn_once(f"annotations-{status}", "Phoenix at %s refused %d annotations (dropped): %s",
                           where, len(items), str(response.text)[:300])
            return
        raise ExportError(f"Phoenix at {where} answered HTTP {status}", retryable=status not in (401, 403))

    def shutdown(self, timeout: float) -> None:
        super().shutdown(timeout)
        rest, self._rest = self._rest, None
        if rest is not None:
            rest.close()

    def check_connection(self, timeout: float = 5.0) -> str:
        line = super().check_connection(timeout)
        return f"{line}; project {self.project!r}, annotations at {shown(self.base_url)}"

