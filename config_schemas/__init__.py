"""pydantic models of the ``observability:`` block and the generated JSON Schema beside them."""

from spanmux.config_schemas.observability import (
    BUILTIN_BACKENDS,
    LangfuseConfig,
    LocalConfig,
    MlflowConfig,
    ObservabilityConfig,
    PriceConfig,
    json_schema,
)

__all__ = [
    "BUILTIN_BACKENDS",
    "LangfuseConfig",
    "LocalConfig",
    "MlflowConfig",
    "ObservabilityConfig",
    "PriceConfig",
    "json_schema",
]
