"""The contract between spanmux and a backend, in one class.

A backend is a small class constructed from its validated config section. Its lane (one delivery
thread per backend, ``spanmux.pipeline.Lane``) calls ``export`` with finished, serialized spans and
scores; nothing else exports concurrently, so a backend needs no locking of its own.

``BaseBackend`` is everything spanmux may ask of a backend, with a default for all but ``export``:
subclass it, set the class attributes, write ``export``, override what your backend does
differently. The core and the CLI call these methods directly; an object written against the
smaller 0.1 protocol (``Backend``: ``export``, ``force_flush``, ``shutdown``) is completed with
the same defaults by ``as_backend``, the one place that asks an object what it has.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from spanmux.model import ExperimentRun, Score, Span

_Record = TypeVar("_Record")


class ExportError(Exception):
    """Raised by ``Backend.export``. ``retryable`` tells the pipeline whether trying again later
    can succeed (connection refused, timeout, 429, 5xx) or not (401, validation error)."""

    def __init__(self, message: str, *, retryable: bool = True, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class BackendSetupError(Exception):
    """Raised by a backend's constructor for a problem in its section; ``key`` is the offending
    key inside the section, so ``configure()`` can point at the YAML line."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class BaseBackend(abc.ABC):
    """The whole backend contract, with defaults. Register the class under the ``spanmux.backends``
    entry-point group (``name = "package.module:Class"``) and name it in ``backends:``."""

    name: str = "backend"
    """The backend's usual name, for messages (the configured name is the entry point's); a backend
    object listed in ``configure({"backends": [...]})`` is configured under its own ``name``."""
    config_model: ClassVar[Any] = None
    """pydantic model of the backend's YAML section, validated before construction; ``None``: it
    takes no options and is constructed with ``config=None``."""
    required_modules: ClassVar[tuple[str, ...]] = ()
    """Importable modules the backend needs; checked at configure time without importing them."""
    extra: ClassVar[str | None] = None
    """The spanmux extra that installs them (``pip install "spanmux[extra]"``)."""

    rejected_spans: int = 0
    """Spans the destination refused for good (a 400 for that record) and that were dropped, so
    they do not block the spool forever; reported by ``stats()`` so no loss goes uncounted."""
    rejected_scores: int = 0
    """The same for scores."""
    merge_batches_up_to: ClassVar[int] = 0
    """When several batches wait in the backend's lane, hand them to one ``export`` of up to this
    many records (0: one batch per call). Worth it where a call has a fixed cost, like a commit:
    the built-in store sets it, so a deep queue makes bigger transactions."""

    def __init__(self, config: Any = None, settings: Any = None) -> None:
        """``config`` is the validated section (an instance of ``config_model``, or None),
        ``settings`` the whole validated ``observability`` block. Connect to nothing here:
        ``spanmux validate`` builds backends only to check them."""
        self.config = config
        self.settings = settings

    @abc.abstractmethod
    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        """Deliver one batch, or raise ``ExportError`` (anything else counts as retryable). The
        same batch may come again after a failure or a crash: make delivery idempotent."""

    def export_spooled(self, spans: Sequence[Span], scores: Sequence[Score],
                       origin: Mapping[str, str] | None) -> None:
        """Deliver a batch that waited in a spool (or comes from ``spanmux replay``), with the
        ``origin()`` of the session that produced it (None when it had none). Default: ``export``."""
        self.export(spans, scores)

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        """Deliver experiment runs (``spanmux.evaluate``), after the spans and scores of their items
        (the lane keeps that order). Default: nothing, so a backend that knows no experiments (every
        0.1 plugin) keeps working. ``origin`` as in ``export_spooled`` (None for a fresh batch). The
        same run may come again: upsert by ``run_id`` and item id."""
        return None

    def origin(self) -> Mapping[str, str] | None:
        """A small description of this producing session, written with every batch spooled for
        this backend and handed back to ``export_spooled``, so a record delivered later, by
        another process, lands where its producer meant it (MLflow: that session's run)."""
        return None

    def force_flush(self, timeout: float) -> bool:
        """Push anything the backend buffers itself; True when done within ``timeout``."""
        return True

    def shutdown(self, timeout: float) -> None:
        """Release connections and files. Called once, after the last export."""
        return None

    def check_connection(self, timeout: float = 5.0) -> str | None:
        """Contact the destination once (``spanmux doctor``): a line saying what answered, or raise
        ``ExportError`` (``retryable=False`` when it refused the credentials). None: there is
        nothing to contact."""
        return None

    @property
    def has_connection_check(self) -> bool:
        """Whether ``check_connection`` contacts something (``spanmux validate`` says it did not)."""
        return type(self).check_connection is not BaseBackend.check_connection

    def stats(self) -> dict[str, int]:
        """The backend's own counters, shown under its name in ``spanmux.stats()["backends"]``
        beside the lane's (the lane's win on a clash)."""
        return {"rejected_spans": self.rejected_spans, "rejected_scores": self.rejected_scores}

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        """Log ``message`` the first time ``key`` happens on this backend, on its module's logger: a
        refused record or a partial answer would otherwise repeat for every batch."""
        warned: set[str] = self.__dict__.setdefault("_warned_keys", set())
        if key not in warned:
            warned.add(key)
            logging.getLogger(type(self).__module__).warning(message, *args)


    def isolate_refused(self, items: Sequence[_Record], refused: RefusedContent,
                        send: Callable[[Sequence[_Record]], None], what: str = "span") -> None:
        """After ``send(items)`` raised ``refused``: send each half again (``send`` catches its own
        refusals and calls this again), until the refused record is alone; drop and count that one
        (``rejected_spans``, or ``rejected_scores`` for ``what="score"``) and warn once per kind of
        refusal. Kept, it would block every later batch behind it in the spool."""
        if len(items) > 1:
            first, second = halves(items)
            send(first)
            send(second)
            return
        if what == "score":
            self.rejected_scores += 1
        else:
            self.rejected_spans += 1
        self.warn_once(f"refused-{what}-{refused.kind}", "%s refused a %s (dropped, not retried): %s",
                       refused.where, what, refused)


class RefusedContent(Exception):
    """The destination refused this request's content (HTTP 400/413/422, gRPC INVALID_ARGUMENT):
    retrying the same records cannot help; ``BaseBackend.isolate_refused`` finds and drops them."""

    def __init__(self, kind: str, detail: str, where: str) -> None:
        """``kind`` names the refusal ("HTTP 400", "gRPC INVALID_ARGUMENT"), ``where`` the destination."""
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.where = where


def halves(items: Sequence[_Record]) -> tuple[Sequence[_Record], Sequence[_Record]]:
    """A batch in two parts: how a backend re-sends a request too big to send, or refused for one
    record's content (split until the refused record is alone, so only it is dropped)."""
    middle = len(items) // 2
    return items[:middle], items[middle:]


@runtime_checkable
class Backend(Protocol):
    """The least an object must do to be a backend (the 0.1 contract); ``as_backend`` completes it."""

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None: ...

    def force_flush(self, timeout: float) -> bool: ...

    def shutdown(self, timeout: float) -> None: ...


class BackendFactory(Protocol):
    """What the ``spanmux.backends`` entry point names: a class with these attributes (a
    ``BaseBackend`` subclass has them all)."""

    config_model: ClassVar[Any]
    required_modules: ClassVar[tuple[str, ...]]
    extra: ClassVar[str | None]

    def __call__(self, config: Any, settings: Any) -> Backend: ...


def as_backend(backend: Backend | BaseBackend) -> BaseBackend:
    """``backend`` itself when it is a ``BaseBackend``; else the same object seen through the whole
    contract, with ``BaseBackend``'s defaults for what it lacks."""
    if isinstance(backend, BaseBackend):
        return backend
    return _CompletedBackend(backend)


class _CompletedBackend(BaseBackend):
    """An object written against the smaller protocol, duck-typed once, at construction."""

    def __init__(self, target: Any) -> None:
        super().__init__()
        for method in ("export", "force_flush", "shutdown"):
            if not callable(getattr(target, method, None)):
                raise TypeError(f"{type(target).__name__} is no backend: it has no {method}() method")
        self.target = target
        self._export_spooled = _method(target, "export_spooled")
        self._origin = _method(target, "origin")
        self._export_experiments = _method(target, "export_experiments")
        self._check = _method(target, "check_connection")
        self._stats = _method(target, "stats")

    def __repr__(self) -> str:
        return repr(self.target)

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        self.target.export(spans, scores)

    def export_spooled(self, spans: Sequence[Span], scores: Sequence[Score],
                       origin: Mapping[str, str] | None) -> None:
        if self._export_spooled is None:
            self.target.export(spans, scores)
        else:
            self._export_spooled(spans, scores, origin)

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        if self._export_experiments is not None:
            self._export_experiments(runs, origin)

    def origin(self) -> Mapping[str, str] | None:
        return self._origin() if self._origin is not None else None

    def force_flush(self, timeout: float) -> bool:
        return bool(self.target.force_flush(timeout))

    def shutdown(self, timeout: float) -> None:
        self.target.shutdown(timeout)

    def check_connection(self, timeout: float = 5.0) -> str | None:
        return None if self._check is None else self._check(timeout)

    @property
    def has_connection_check(self) -> bool:
        return self._check is not None

    def stats(self) -> dict[str, int]:
        if self._stats is not None:
            return dict(self._stats())
        return {key: int(getattr(self.target, key, 0) or 0) for key in ("rejected_spans", "rejected_scores")}


def _method(target: Any, name: str) -> Any:
    found = getattr(target, name, None)
    return found if callable(found) else None
