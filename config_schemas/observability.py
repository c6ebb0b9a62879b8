"""The ``observability:`` block, as accepted at the top level of a YAML file or under ``spec:``
of a SuperOptiX agent playbook. SuperOptiX's own keys are accepted verbatim.

Regenerate the committed schema with ``spanmux schema --write``; a test fails when it is stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

BUILTIN_BACKENDS: tuple[str, ...] = ("local", "superoptix", "console", "mlflow", "langfuse", "otlp", "phoenix")
SUPEROPTIX_KEYS: tuple[str, ...] = ("tracing", "logging", "metrics", "monitoring", "dashboard", "debugging")
"""Keys of SuperOptiX's own observability block: accepted verbatim; only ``tracing`` (on/off) and
``dashboard.port`` mean something to spanmux, the loader reports the rest in one info line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LocalConfig(_Section):
    """The built-in SQLite store (``local``, alias ``superoptix``)."""

    path: str = Field(".spanmux/spanmux.db", description="SQLite file; created with its folder.")


class ConsoleConfig(_Section):
    """Print finished traces to stderr through ``logging`` (handy in development)."""

    level: str = Field("INFO", description="logging level of the printed lines")


class MlflowConfig(_Section):
    """MLflow 3 tracing plus experiment tracking."""

    experiment_name: str = Field("spanmux", description="Experiment that receives traces and runs.")
    tracking_uri: str | None = Field(
        None, description="http(s):// tracking server or sqlite:/// store; default $MLFLOW_TRACKING_URI."
    )
    log_artifacts: bool = Field(True, description="Log each trace as a JSON artifact of the session run.")
    log_metrics: bool = Field(True, description="Log per-trace latency, tokens, cost and scores.")
    log_params: bool = Field(True, description="Log model names, parameters and agent parameters.")
    run_name: str | None = Field(None, description="Name of the session run (default: spanmux-<time>).")
    tags: dict[str, str] = Field(default_factory=dict, description="Tags set on the session run and traces.")
    params: dict[str, Any] = Field(default_factory=dict, description="Agent parameters logged on the run.")
    timeout: float = Field(10.0, gt=0, description="Seconds per request to the tracking server.")
    artifact_location: str | None = Field(
        None,
        description="Artifact root of a new experiment (default: beside a sqlite file; the server decides for http).",
    )


class LangfuseConfig(_Section):
    """Langfuse over its OpenTelemetry ingestion endpoint, plus the scores API."""

    public_key: str | None = Field(None, description="Default $LANGFUSE_PUBLIC_KEY.")
    secret_key: SecretStr | None = Field(None, description="Default $LANGFUSE_SECRET_KEY; never logged.")
    host: str | None = Field(
        None, description="Default $LANGFUSE_HOST, else $LANGFUSE_BASE_URL, else https://cloud.langfuse.com."
    )
    project: str | None = Field(None, description="Informational: Langfuse keys are project-scoped.")
    environment: str | None = Field(None, description="langfuse.environment (default $LANGFUSE_TRACING_ENVIRONMENT).")
    release: str | None = Field(None, description="langfuse.release (default $LANGFUSE_RELEASE).")
    timeout: float = Field(10.0, gt=0, description="Seconds per HTTP request.")


Convention = Literal["genai", "openinference"]
CONVENTIONS: tuple[Convention, ...] = ("genai", "openinference")


class OtlpConfig(_Section):
    """Any OpenTelemetry receiver over OTLP (a Collector, Jaeger, Tempo, a vendor). Unset fields take
    the OpenTelemetry environment variables (``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``,
    ``OTEL_RESOURCE_ATTRIBUTES``) with the specification's rules."""

    endpoint: str | None = Field(
        None,
        description="Default $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as is, else $OTEL_EXPORTER_OTLP_ENDPOINT "
        "(+ /v1/traces for http/protobuf), else http://localhost:4318/v1/traces (grpc: :4317).",
    )
    protocol: Literal["http/protobuf", "grpc"] | None = Field(
        None, description="Default $OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, $OTEL_EXPORTER_OTLP_PROTOCOL, http/protobuf."
    )
    headers: dict[str, SecretStr] = Field(
        default_factory=dict, description="Sent with every request (over $OTEL_EXPORTER_OTLP_HEADERS); never logged."
    )
    compression: Literal["gzip", "none"] | None = Field(
        None, description="Default $OTEL_EXPORTER_OTLP_TRACES_COMPRESSION, $OTEL_EXPORTER_OTLP_COMPRESSION, gzip."
    )
    service_name: str | None = Field(
        None, description="Resource service.name; default $OTEL_SERVICE_NAME, $OTEL_RESOURCE_ATTRIBUTES', spanmux."
    )
    resource_attributes: dict[str, str] = Field(
        default_factory=dict, description="Resource attributes, over those of $OTEL_RESOURCE_ATTRIBUTES."
    )
    conventions: list[Convention] = Field(
        default_factory=lambda: list(CONVENTIONS),
        min_length=1,
        description="Attribute sets sent: OpenTelemetry GenAI (gen_ai.*) and/or OpenInference.",
    )
    timeout: float | None = Field(
        None, gt=0, description="Seconds per request; default $OTEL_EXPORTER_OTLP_TIMEOUT or 10."
    )


class PhoenixConfig(OtlpConfig):
    """Arize Phoenix: OTLP with Phoenix's defaults, plus scores as Phoenix annotations (REST)."""

    endpoint: str | None = Field(
        None, description="Default $PHOENIX_COLLECTOR_ENDPOINT + /v1/traces, else http://127.0.0.1:6006/v1/traces."
    )
    project: str | None = Field(
        None, description="Resource openinference.project.name; default $PHOENIX_PROJECT_NAME, else default."
    )
    base_url: str | None = Field(None, description="Phoenix REST API for annotations; default: the endpoint's host.")
    api_key: SecretStr | None = Field(None, description="Default $PHOENIX_API_KEY (Bearer token); never logged.")
    annotations: bool = Field(True, description="Send scores as Phoenix span/trace annotations.")


class PriceConfig(_Section):
    """Price of a private or self-hosted model, in USD per million tokens."""

    input: float = Field(..., ge=0, description="USD per 1M input tokens")
    output: float = Field(..., ge=0, description="USD per 1M output tokens")
    cache_read: float | None = Field(None, ge=0, description="USD per 1M cached input tokens")


class _SuperOptixSection(BaseModel):
    """A SuperOptiX sub-block. Other keys are kept (SuperOptiX may add some); the loader warns
    about them with the closest known key, so a typo in ``enabled`` is not silent."""

    model_config = ConfigDict(extra="allow", frozen=True)


class TracingConfig(_SuperOptixSection):
    """SuperOptiX ``tracing:``; ``enabled: false`` turns spanmux off like ``enabled: false``."""

    enabled: bool = Field(True, description="false: spanmux records nothing (same as the block's enabled: false).")
    level: str | None = Field(None, description="SuperOptiX trace level; spanmux does not act on it.")
    include_tools: bool | None = Field(None, description="SuperOptiX option; spanmux does not act on it.")
    include_memory: bool | None = Field(None, description="SuperOptiX option; spanmux does not act on it.")
    include_rag: bool | None = Field(None, description="SuperOptiX option; spanmux does not act on it.")


class MonitoringConfig(_SuperOptixSection):
    """SuperOptiX ``monitoring:``; spanmux does not act on it."""

    enabled: bool | None = None
    metrics: list[Any] | dict[str, Any] | bool | None = None
    alerts: list[Any] | dict[str, Any] | bool | None = None


class DashboardConfig(_SuperOptixSection):
    """SuperOptiX ``dashboard:``; ``port`` is kept as the port of spanmux's UI, once there is one."""

    enabled: bool | None = None
    auto_open: bool | None = None
    port: int | None = Field(None, ge=1, le=65535, description="Port of the trace UI.")


_Free = bool | dict[str, Any] | list[Any] | str | None
_BOOL = TypeAdapter(bool)


def _is_off(value: Any) -> bool:
    """Whether a ``tracing:`` value says off: ``false`` (also as the string a ``${VAR}`` gives)
    or a mapping with ``enabled: false``. Anything unreadable is left to field validation."""
    if isinstance(value, dict):
        value = value.get("enabled", True)
    if isinstance(value, BaseModel):
        value = getattr(value, "enabled", True)
    try:
        return _BOOL.validate_python(value) is False
    except ValidationError:
        return False


class ObservabilityConfig(BaseModel):
    """The whole ``observability:`` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="false: every handler is a no-op.")
    backends: list[str] = Field(
        default_factory=lambda: ["local"],
        min_length=1,
        description="local | superoptix (= local) | console | mlflow | langfuse | otlp | phoenix | an installed plugin",
    )
    capture_content: bool = Field(True, description="false: inputs, outputs and messages are not recorded.")
    sample_rate: float = Field(1.0, ge=0.0, le=1.0, description="Fraction of traces kept (whole traces).")
    max_content_bytes: int = Field(
        65536, ge=256, description="Inputs/outputs larger than this are truncated and marked."
    )
    estimate_tokens: bool = Field(
        True, description="Estimate tokens with a local tokenizer when a provider reports none."
    )
    pricing: dict[str, PriceConfig] = Field(
        default_factory=dict, description="Per-model price overrides (model name -> USD per 1M tokens)."
    )
    queue_size: int = Field(100_000, ge=100, description="Records held in memory before spilling to disk.")
    batch_size: int = Field(512, ge=1, description="Records per export call.")
    flush_interval: float = Field(0.5, gt=0, description="Seconds between exports when the queue is quiet.")
    spool_dir: str = Field(".spanmux/spool", description="Where undelivered records wait for their backend.")
    spool_max_bytes: int = Field(512 * 1024 * 1024, ge=0, description="Bound of each backend's spool on disk.")
    local: LocalConfig = Field(default_factory=LocalConfig)
    console: ConsoleConfig = Field(default_factory=ConsoleConfig)
    mlflow: MlflowConfig | None = None
    langfuse: LangfuseConfig | None = None
    otlp: OtlpConfig | None = None
    phoenix: PhoenixConfig | None = None
    tracing: bool | TracingConfig | None = Field(
        None, description="SuperOptiX: true | false | {enabled, level, include_tools, include_memory, include_rag}; "
        "false or enabled: false turns spanmux off."
    )
    logging: _Free = Field(None, description="SuperOptiX logging settings; spanmux does not act on them.")
    metrics: _Free = Field(None, description="SuperOptiX metrics settings; spanmux does not act on them.")
    monitoring: bool | MonitoringConfig | None = Field(
        None, description="SuperOptiX {enabled, metrics, alerts}; spanmux does not act on it."
    )
    dashboard: bool | DashboardConfig | None = Field(
        None, description="SuperOptiX {enabled, auto_open, port}; port is kept for spanmux's UI."
    )
    debugging: _Free = Field(None, description="SuperOptiX debugging settings; spanmux does not act on them.")

    @property
    def ui_port(self) -> int | None:
        """The port for spanmux's trace UI, from SuperOptiX's ``dashboard.port`` (None: not set)."""
        return self.dashboard.port if isinstance(self.dashboard, DashboardConfig) else None

    @model_validator(mode="before")
    @classmethod
    def _tracing_off_disables(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tracing" in data and _is_off(data["tracing"]):
            return {**data, "enabled": False}
        return data

    @field_validator("backends")
    @classmethod
    def _dedupe(cls, value: list[str]) -> list[str]:
        seen: list[str] = []
        for name in value:
            canonical = "local" if name == "superoptix" else name
            if canonical not in seen:
                seen.append(canonical)
        return seen


class ObservabilityFile(BaseModel):
    """Schema of a YAML file holding the block (top level or under ``spec:``)."""

    model_config = ConfigDict(extra="allow")

    observability: ObservabilityConfig | None = None


def json_schema() -> str:
    """The JSON Schema text committed beside this module, for editors validating YAML."""
    schema = ObservabilityFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "spanmux observability block"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


SCHEMA_FILE = Path(__file__).with_name("observability.schema.json")
