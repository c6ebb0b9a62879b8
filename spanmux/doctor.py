"""What ``spanmux doctor`` finds: each configured backend built and asked to check its connection
(nothing sent), and every folder under ``spool_dir``, configured or not, with what waits in it and
the command that delivers it. The CLI only prints a ``Diagnosis``.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from spanmux.backend import as_backend
from spanmux.errors import ConfigurationError
from spanmux.spool import OVERFLOW, Spool, spool_folders
from spanmux.store import WRITER_BACKENDS

if TYPE_CHECKING:
    from spanmux.config import LoadedConfig

SPOOL_COUNTS = ("batches", "bytes", "spans", "scores", "experiments", "claimed", "corrupt")


class BackendCheck(msgspec.Struct):
    """One configured backend: ``status`` is ok, misconfigured, unreachable or refused (the keys),
    ``spool`` what waits in its spool (``Spool.describe``)."""

    backend: str
    ok: bool
    status: str
    detail: str
    spool: dict[str, int]


class SpoolFolder(msgspec.Struct):
    """One folder under ``spool_dir`` and how to deliver what waits in it (``deliver``)."""

    name: str
    folder: str
    configured: bool
    batches: int
    bytes: int
    spans: int
    scores: int
    experiments: int
    """Experiment runs (``spanmux.evaluate``), each with all its items."""
    claimed: int
    corrupt: int
    deliver: str

    @property
    def needs_attention(self) -> bool:
        """Something waits there, or cannot be read."""
        return bool(self.batches or self.claimed or self.corrupt)

    @property
    def stranded(self) -> bool:
        """Its backend is no longer configured: nothing will send it unless told to."""
        return not self.configured and self.name != OVERFLOW


class Diagnosis(msgspec.Struct):
    """Everything doctor found; ``ok`` when every configured backend is usable."""

    ok: bool
    source: str
    enabled: bool
    spool_dir: str
    backends: list[BackendCheck]
    overflow_spool: dict[str, int]
    spools: list[SpoolFolder]


def check_backend(loaded: LoadedConfig, name: str, timeout: float) -> BackendCheck:
    """Build the backend ``name`` as ``configure()`` would and ask it to contact its destination."""
    from spanmux.registry import build_backend  # entry points only when checking

    settings = loaded.settings
    check = BackendCheck(name, False, "", "", {})
    try:
        backend = build_backend(loaded, name)
    except ConfigurationError as exc:
        check.status = "misconfigured"
        check.detail = "; ".join(p.message for p in exc.problems) or str(exc)
    else:
        try:
            answer = as_backend(backend).check_connection(timeout)
            check.detail = "configured (this backend has no connection check)" if answer is None else str(answer)
            check.ok, check.status = True, "ok"
        except Exception as exc:
            check.status = "unreachable" if getattr(exc, "retryable", True) else "refused"
            check.detail = str(exc) or type(exc).__name__
        finally:
            try:
                backend.shutdown(1.0)
            except Exception:
                pass
    check.spool = Spool(Path(settings.spool_dir) / name, settings.spool_max_bytes).describe()
    return check


def config_hint(loaded: LoadedConfig) -> str:
    """`` -c FILE`` for the commands doctor suggests (nothing for the defaults)."""
    source = str(loaded.source)
    return "" if source.startswith("<") else f" -c {shlex.quote(source)}"


def _delivery(name: str, waiting: dict[str, int], configured: list[str], cfg: str) -> str:
    """How what waits in the spool folder ``name`` gets delivered, as a command to copy."""
    has_work = bool(waiting["batches"] or waiting["claimed"])
    if name == OVERFLOW:
        deliver = (f"{name} (records parked while the queue was full): the next traced run delivers them to"
                   " every configured backend" if has_work else "nothing waits")
    elif not has_work:
        deliver = "nothing waits"
    elif name in configured:
        deliver = (f"{name}: sent by the next traced run once it answers, or now: "
                   f"spanmux replay --from-spool {name} --to {name}{cfg}")
    else:
        targets = [b for b in configured if b not in WRITER_BACKENDS] or configured
        to = targets[0] if len(targets) == 1 else "BACKEND"
        choice = "" if len(targets) == 1 else f" (BACKEND: {', '.join(targets) or 'a configured backend'})"
        deliver = (f"{name} is not in backends: send it elsewhere with "
                   f"spanmux replay --from-spool {name} --to {to}{cfg}{choice}, or list {name} in backends again")
    if waiting["corrupt"]:
        note = f"{waiting['corrupt']} unreadable files (*.corrupt) are never sent"
        deliver = f"{deliver}; {note}" if has_work else f"{name}: {note}"
    return deliver


def spool_report(loaded: LoadedConfig) -> list[SpoolFolder]:
    """Every folder under the spool dir with what waits in it and how to deliver it."""
    settings = loaded.settings
    configured = list(settings.backends)
    cfg = config_hint(loaded)
    out = []
    for folder in spool_folders(Path(settings.spool_dir)):
        waiting = Spool(folder, settings.spool_max_bytes).describe()
        out.append(SpoolFolder(
            name=folder.name, folder=str(folder), configured=folder.name in configured,
            batches=waiting["batches"], bytes=waiting["bytes"], spans=waiting["spans"], scores=waiting["scores"],
            experiments=waiting["experiments"], claimed=waiting["claimed"], corrupt=waiting["corrupt"],
            deliver=_delivery(folder.name, waiting, configured, cfg),
        ))
    return out


def diagnose(loaded: LoadedConfig, timeout: float = 5.0) -> Diagnosis:
    """Check every configured backend (``timeout`` seconds each) and report every spool folder."""
    settings = loaded.settings
    checks = [check_backend(loaded, name, timeout) for name in settings.backends]
    spools = spool_report(loaded)
    overflow = next((s for s in spools if s.name == OVERFLOW), None)
    overflow_counts = {k: getattr(overflow, k) if overflow is not None else 0 for k in SPOOL_COUNTS}
    return Diagnosis(ok=all(c.ok for c in checks), source=str(loaded.source), enabled=settings.enabled,
                     spool_dir=str(settings.spool_dir), backends=checks, overflow_spool=overflow_counts,
                     spools=spools)
