"""The contract between the pipeline and a backend.

A backend is a small class constructed from its validated config section. The worker thread
calls ``export`` with finished, serialized spans and scores; nothing else ever calls it, so a
backend needs no locking of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable

from spanmux.model import Score, Span


class ExportError(Exception):
    """Raised by ``Backend.export``. ``retryable`` tells the pipeline whether trying again later
    can succeed (connection refused, timeout, 429, 5xx) or not (401, validation error)."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


@runtime_checkable
class Backend(Protocol):
    name: str

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        """Deliver one batch, or raise ``ExportError``."""

    def force_flush(self, timeout: float) -> bool:
        """Push anything the backend buffers itself; True when done within ``timeout``."""

    def shutdown(self, timeout: float) -> None:
        """Release connections and files. Called once, after the last export."""


class BackendFactory(Protocol):
    """What the ``spanmux.backends`` entry point names: a class with these attributes."""

    config_model: ClassVar[Any]
    """pydantic model of the backend's YAML section (``None`` when it takes no options)."""
    required_modules: ClassVar[tuple[str, ...]]
    """Importable modules the backend needs; checked at configure time without importing them."""
    extra: ClassVar[str | None]
    """The spanmux extra that installs them (``pip install "spanmux[extra]"``)."""

    def __call__(self, config: Any, settings: Any) -> Backend: ...


class BackendSetupError(Exception):
    """Raised by a backend's constructor for a problem in its section; ``key`` is the offending
    key inside the section, so ``configure()`` can point at the YAML line."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key
