"""Replay: the built-in store's history, or what waits in a spool folder, sent to one backend
(``spanmux replay``; switching backend keeps history).

Idempotent: backends upsert by span and score id, so replaying twice duplicates nothing. Each
batch is retried with the delivery lanes' backoff (``spanmux.backoff.Backoff``): what the backend
calls retryable (timeouts, 429, 5xx) a few times, honouring ``Retry-After``; a refusal stops the
replay at once, with what was sent so far. Records from the store go to ``export_spooled`` with
one origin per store file (``{"replay": <resolved path>}``), so a backend that files records by
producer (MLflow: a run) reuses the same place on each replay. A spool's files are claimed as the
lanes claim them (``Spool.claim_oldest``, then ``done`` or ``release``), so a running program
draining the same folder never sends a batch twice.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from spanmux.backend import BaseBackend, ExportError, as_backend
from spanmux.backoff import Backoff
from spanmux.errors import SpanmuxError
from spanmux.model import ExperimentRun, Score, Span
from spanmux.spool import Spool, spool_folders
from spanmux.store import WRITER_BACKENDS, LocalStore

if TYPE_CHECKING:
    from spanmux.config import LoadedConfig

ATTEMPTS = 5
"""Tries per batch before a retryable failure stops the replay."""
FIRST_WAIT = 0.5
MAX_WAIT = 10.0


class ReplayRefused(SpanmuxError):
    """Replay will not start because of one input: ``argument`` names it (``to``, ``from_spool``),
    ``value`` is what was given and ``choices`` what would have been accepted (for a suggestion)."""

    def __init__(self, message: str, argument: str, value: str = "", choices: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.argument = argument
        self.value = value
        self.choices = tuple(choices)


class ReplayError(SpanmuxError):
    """Replay cannot run (no store, an unreadable store, a target that would write nowhere useful)."""


@dataclass
class ReplayResult:
    """What one replay sent; ``spool_left`` (from a spool) is what still waits there."""

    source: str
    to: str
    spans: int = 0
    scores: int = 0
    batches: int = 0
    experiments: int = 0
    spool_left: dict[str, int] | None = None
    close_error: str | None = None
    """The target did not close cleanly (everything was sent, so replay still succeeded)."""


class ReplayStopped(ReplayError):
    """The target stopped taking records; ``sent`` is what it took before."""

    def __init__(self, message: str, sent: ReplayResult) -> None:
        super().__init__(message)
        self.sent = sent


def send_retrying(
    backend: BaseBackend, spans: Sequence[Span], scores: Sequence[Score], *,
    origin: dict[str, str] | None = None, spooled: bool = False,
    attempts: int = ATTEMPTS, sleep: Callable[[float], None] = time.sleep,
    experiments: Sequence[ExperimentRun] = (),
) -> None:
    """Send one batch, retrying what the backend calls retryable with the lanes' backoff; raises
    the last ``ExportError`` (any other exception becomes a non-retryable one: a backend bug or a
    local disk error is one line, not a traceback). ``spooled``: through ``export_spooled`` with
    ``origin``."""
    backoff = Backoff(FIRST_WAIT, MAX_WAIT)
    for attempt in range(1, attempts + 1):
        try:
            if spooled and (spans or scores):
                backend.export_spooled(spans, scores, origin)
            elif spans or scores:
                backend.export(spans, scores)
            if experiments:  # after their items' spans and scores, as the lanes send them
                backend.export_experiments(experiments, origin if spooled else None)
            return
        except ExportError as exc:
            wait = backoff.failed(exc)
            if backoff.gave_up or attempt == attempts:
                raise
            sleep(wait)
        except Exception as exc:
            raise ExportError(f"{type(exc).__name__}: {exc}", retryable=False) from exc


def copy_store(backend: BaseBackend, store: LocalStore, result: ReplayResult, *, since_ns: int | None = None,
               batch_size: int = 500) -> None:
    """Send the spans, then the scores, of the store's traces started since ``since_ns``, counting
    into ``result`` as they go (so a failure says how far it got)."""
    origin = {"replay": str(Path(store.path).resolve())}
    for spans in store.iter_spans(since_ns=since_ns, batch=batch_size):
        send_retrying(backend, spans, [], origin=origin, spooled=True)
        result.spans += len(spans)
        result.batches += 1
    for scores in _chunks(store.iter_scores(since_ns=since_ns), batch_size):
        send_retrying(backend, [], scores, origin=origin, spooled=True)
        result.scores += len(scores)
        result.batches += 1
    runs = list(store.iter_experiments(since_ns=since_ns))  # upserted by run id: a second replay adds nothing
    for start in range(0, len(runs), 20):
        chunk = runs[start:start + 20]
        send_retrying(backend, [], [], origin=origin, spooled=True, experiments=chunk)
        result.experiments += len(chunk)
        result.batches += 1


def _chunks(items: Iterable[Score], size: int) -> Iterator[list[Score]]:
    chunk: list[Score] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def drain_spool(backend: BaseBackend, spool: Spool, result: ReplayResult, *, own: bool) -> None:
    """Send a spool's batches oldest first. Each file is claimed before sending, deleted once the
    target took its batch and put back when sending fails. ``own``: the target's own spool, so
    the origin recorded with each batch applies (``export_spooled``)."""
    spool.recover_orphans()  # batches claimed by a process that died
    while (claimed := spool.claim_oldest()) is not None:
        path, batch = claimed
        try:
            send_retrying(backend, batch.spans, batch.scores, origin=batch.origin, spooled=own,
                          experiments=batch.experiments)
        except BaseException:
            spool.release(path)
            raise
        spool.done(path)
        result.batches += 1
        result.spans += len(batch.spans)
        result.scores += len(batch.scores)
        result.experiments += len(batch.experiments)


# ---- from a configuration (what ``spanmux replay`` runs)

def check_target(to: str) -> None:
    """``ReplayRefused`` unless ``to`` names a backend this environment can build."""
    from spanmux.registry import known_backends  # entry points only when replaying

    known = sorted(known_backends())
    if to not in known:
        raise ReplayRefused(f"unknown backend {to!r}; known: {', '.join(known)}", "to", to, known)


def refuse_implicit_mlflow(loaded: LoadedConfig, to: str) -> None:
    """``replay --to mlflow`` without a tracking URI would write a new ./mlflow.db nobody looks at:
    replay is a deliberate copy, so it refuses instead of picking MLflow's default store."""
    if to != "mlflow":
        return
    section = getattr(loaded.settings, "mlflow", None)
    if getattr(section, "tracking_uri", None) or os.environ.get("MLFLOW_TRACKING_URI"):
        return
    where = "the file" if str(loaded.source).startswith("<") else str(loaded.source)
    raise ReplayError(f"replay --to mlflow: no tracking URI (mlflow.tracking_uri in {where}, or $MLFLOW_TRACKING_URI);"
                      " replay does not fall back to ./mlflow.db. Set one, e.g. http://127.0.0.1:5001, or"
                      " sqlite:///mlflow.db to write that file on purpose")


def find_spool_folder(root: Path, name: str) -> Path:
    """The spool folder ``name`` under ``root``; ``ReplayRefused`` naming the folders there."""
    folder = root / name
    if name in ("", ".", "..") or Path(name).name != name or not folder.is_dir():
        found = [p.name for p in spool_folders(root)]
        listed = f"; spool folders there: {', '.join(found)}" if found else "; there is none"
        raise ReplayRefused(f"no spool folder {name!r} in {root}{listed}", "from_spool", name, found)
    return folder


def _target(loaded: LoadedConfig, to: str) -> BaseBackend:
    from spanmux.registry import build_backend

    return as_backend(build_backend(loaded, to))  # ConfigurationError: the section is wrong


def _close(backend: BaseBackend, result: ReplayResult) -> None:
    try:
        backend.shutdown(10.0)
    except Exception as exc:
        result.close_error = f"backend {result.to} did not close cleanly: {exc}"


def _open_store(path: str) -> LocalStore:
    try:
        return LocalStore(path)
    except FileNotFoundError:
        raise ReplayError(f"no spanmux store at {path} (pass --store)") from None
    except sqlite3.Error as exc:  # StoreReadError, StoreSchemaError: their message names the file
        raise ReplayError(str(exc)) from None


def replay_store(loaded: LoadedConfig, to: str, path: str, *, since_ns: int | None = None,
                 batch_size: int = 500) -> ReplayResult:
    """Send the store at ``path`` (traces started since ``since_ns``) to the backend ``to`` of
    ``loaded``. Raises ``ReplayRefused``, ``ReplayError``, ``ReplayStopped`` or the
    ``ConfigurationError`` of a target that cannot be built."""
    check_target(to)
    with _open_store(path) as store:
        target_path = getattr(getattr(loaded.settings, to, None), "path", None)
        if to in WRITER_BACKENDS and target_path and Path(target_path).resolve() == Path(path).resolve():
            raise ReplayRefused(f"the {to} backend writes to {path}, the store being replayed", "to")
        refuse_implicit_mlflow(loaded, to)
        result = ReplayResult(source=path, to=to)
        backend = _target(loaded, to)
        try:
            copy_store(backend, store, result, since_ns=since_ns, batch_size=batch_size)
            backend.force_flush(30.0)
        except ExportError as exc:
            raise ReplayStopped(f"replay to {to} stopped after {result.spans} spans and {result.scores} scores:"
                                f" {exc}\nrun it again once the backend answers: nothing is duplicated",
                                result) from None
        except sqlite3.Error as exc:
            raise ReplayError(f"cannot read the spanmux store at {path}: {exc}") from None
        finally:
            _close(backend, result)
    return result


def replay_spool(loaded: LoadedConfig, to: str, name: str, *, spool_dir: str | None = None) -> ReplayResult:
    """Send what waits in the spool folder ``name`` (under ``spool_dir``, default the
    configuration's) to the backend ``to``; each file is deleted once the target took it."""
    check_target(to)
    settings = loaded.settings
    folder = find_spool_folder(Path(spool_dir or settings.spool_dir), name)
    refuse_implicit_mlflow(loaded, to)
    spool = Spool(folder, settings.spool_max_bytes)
    result = ReplayResult(source=str(folder), to=to)
    backend = _target(loaded, to)
    try:
        drain_spool(backend, spool, result, own=folder.name == to)
        backend.force_flush(30.0)
    except ExportError as exc:
        raise ReplayStopped(
            f"replay from spool {folder} to {to} stopped after {result.batches} batches ({result.spans} spans,"
            f" {result.scores} scores): {exc}\nthe rest stays in the spool; run it again once the backend answers",
            result) from None
    finally:
        _close(backend, result)
    result.spool_left = spool.describe()
    return result
