"""A per-backend spool on disk: batches a backend could not take wait here, in order.

One file per batch, written to a temporary name and renamed, so a crash or ``kill -9`` never
leaves half a batch. A process claims a file by renaming it before sending it, so several
processes sharing a folder never deliver the same batch twice. Files claimed by a process that
died are released again at the next start.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

import msgspec

from spanmux.model import ExperimentRun, Score, Span

log = logging.getLogger("spanmux.spool")


OVERFLOW = "_overflow"
"""The spool folder of records parked while the queue was full (for every backend, not one)."""


def spool_folders(root: Path) -> list[Path]:
    """Every spool folder under ``root``, configured or not (a backend removed from ``backends:``
    leaves its folder behind, with whatever still waited in it)."""
    try:
        return sorted(p for p in root.iterdir() if p.is_dir())
    except OSError:
        return []


class SpooledBatch(msgspec.Struct):
    spans: list[Span]
    scores: list[Score]
    origin: dict[str, str] | None = None
    """Who produced the batch, as the backend described itself (``Backend.origin()``), so a batch
    delivered later, by another process, still lands where its producer meant it to (MLflow's
    run of that session). Files of spanmux 0.1 have none."""
    experiments: list[ExperimentRun] = []
    """Experiment runs (``spanmux.evaluate``) of the batch; files written before experiments have none."""


class _SpoolFile(msgspec.Struct, omit_defaults=True):  # no experiments: no key, as before
    """The on-disk layout of a ``SpooledBatch`` with its records already encoded: the records are
    encoded once per batch, the small origin once per backend that spools it."""

    spans: msgspec.Raw
    scores: msgspec.Raw
    origin: dict[str, str] | None = None
    experiments: msgspec.Raw | None = None  # only written when the batch has experiment runs


def _plain(value: object) -> object:
    """What msgspec cannot encode by itself (str/int/float subclasses such as LangChain's
    TextAccessor, stray objects) becomes its plain value, so a batch is never lost to encoding."""
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    return repr(value)


_encoder = msgspec.msgpack.Encoder(enc_hook=_plain)


class EncodedRecords(msgspec.Struct, frozen=True):
    """A batch's spans and scores in their spool encoding, made once for every lane that spools it."""

    spans: bytes
    scores: bytes
    experiments: bytes | None = None


def encode_records(spans: list[Span], scores: list[Score],
                   experiments: list[ExperimentRun] | None = None) -> EncodedRecords:
    return EncodedRecords(_encoder.encode(spans), _encoder.encode(scores),
                          _encoder.encode(experiments) if experiments else None)


def encode_batch(
    spans: list[Span], scores: list[Score], origin: dict[str, str] | None = None,
    records: EncodedRecords | None = None, experiments: list[ExperimentRun] | None = None,
) -> bytes:
    records = records if records is not None else encode_records(spans, scores, experiments)
    runs = msgspec.Raw(records.experiments) if records.experiments is not None else None
    return _encoder.encode(_SpoolFile(msgspec.Raw(records.spans), msgspec.Raw(records.scores), origin, runs))


_decoder = msgspec.msgpack.Decoder(SpooledBatch)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Spool:
    """Ordered, bounded, crash-safe queue of batches for one backend."""

    SUFFIX = ".batch"

    def __init__(self, folder: Path, max_bytes: int) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self._seq = 0
        self._lock = threading.Lock()
        self._bytes: int | None = None
        self.dropped_spans = 0
        self.dropped_scores = 0
        self._warned = False
        self._backlog: deque[str] = deque()  # names listed once, claimed in order (no listing per claim)

    def _ensure(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def size_bytes(self) -> int:
        if self._bytes is None:
            self._bytes = sum(p.stat().st_size for p in self._files(include_claimed=True))
        return self._bytes

    def _files(self, include_claimed: bool = False) -> list[Path]:
        if not self.folder.is_dir():
            return []
        out = []
        for path in self.folder.iterdir():
            if path.name.endswith(self.SUFFIX) or (include_claimed and ".claimed-" in path.name):
                out.append(path)
        return sorted(out, key=lambda p: p.name)

    def pending(self) -> int:
        """Number of batch files waiting (not counting ones another process is sending)."""
        return len(self._files())

    def has_pending(self) -> bool:
        """Whether any batch waits: stops at the first file, without listing and sorting them all
        (the lanes ask before every batch, and a long outage leaves thousands of files)."""
        if not self.folder.is_dir():
            return False
        return any(path.name.endswith(self.SUFFIX) for path in self.folder.iterdir())

    def append(
        self, spans: list[Span], scores: list[Score], records: EncodedRecords | None = None,
        origin: dict[str, str] | None = None, experiments: list[ExperimentRun] | None = None,
    ) -> bool:
        """Write one batch (``records``: its encoding, when already made for another backend's
        spool; ``origin``: its producer); False (and counted as dropped) when the bound is reached."""
        data = encode_batch(spans, scores, origin, records, experiments)
        with self._lock:
            if self.size_bytes() + len(data) > self.max_bytes:
                self.dropped_spans += len(spans)
                self.dropped_scores += len(scores)
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "spool %s reached its bound of %d bytes: new records for this backend are dropped "
                        "(counted in spanmux.stats()); raise spool_max_bytes or fix the backend",
                        self.folder, self.max_bytes,
                    )
                return False
            self._ensure()
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid():07d}-{self._seq:08d}"
            tmp = self.folder / (name + ".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.folder / (name + self.SUFFIX))
            self._bytes = (self._bytes or 0) + len(data)
            return True

    def _next_name(self) -> str | None:
        """The oldest batch name not tried yet. The folder is listed only when the names listed
        before are used up: a spool of 100,000 batches is drained in linear time. Batches written
        meanwhile carry later names, so the order holds."""
        with self._lock:
            if not self._backlog:
                self._backlog.extend(p.name for p in self._files())
            return self._backlog.popleft() if self._backlog else None

    def claim_oldest(self) -> tuple[Path, SpooledBatch] | None:
        """Take the oldest batch for sending; None when empty. Undecodable files are set aside."""
        while (name := self._next_name()) is not None:
            path = self.folder / name
            claimed = path.with_name(path.name[: -len(self.SUFFIX)] + f".claimed-{os.getpid()}")
            try:
                os.replace(path, claimed)
            except FileNotFoundError:
                continue  # another process took it
            try:
                return claimed, _decoder.decode(claimed.read_bytes())
            except (msgspec.DecodeError, OSError) as exc:
                log.error("spool file %s is unreadable (%s); moved aside", claimed.name, exc)
                os.replace(claimed, claimed.with_suffix(".corrupt"))
        return None

    def describe(self) -> dict[str, int]:
        """What waits here, for ``spanmux doctor``: batches, bytes, records (spans, scores, experiment
        runs), claimed and corrupt files."""
        out = {"batches": 0, "bytes": 0, "spans": 0, "scores": 0, "experiments": 0, "claimed": 0, "corrupt": 0}
        if not self.folder.is_dir():
            return out
        for path in self.folder.iterdir():
            if path.name.endswith(".corrupt"):
                out["corrupt"] += 1
                continue
            if not (path.name.endswith(self.SUFFIX) or ".claimed-" in path.name):
                continue
            out["batches" if path.name.endswith(self.SUFFIX) else "claimed"] += 1
            try:
                data = path.read_bytes()
                batch = _decoder.decode(data)
            except FileNotFoundError:
                continue  # sent meanwhile
            except (msgspec.DecodeError, OSError):
                out["corrupt"] += 1
                continue
            out["bytes"] += len(data)
            out["spans"] += len(batch.spans)
            out["scores"] += len(batch.scores)
            out["experiments"] += len(batch.experiments)
        return out

    def done(self, claimed: Path) -> None:
        with self._lock:
            try:
                size = claimed.stat().st_size
                claimed.unlink()
                if self._bytes is not None:
                    self._bytes = max(0, self._bytes - size)
            except FileNotFoundError:
                pass

    def release(self, claimed: Path) -> None:
        """Put a claimed batch back (sending failed) under its original, ordered name."""
        original = claimed.name.split(".claimed-")[0] + self.SUFFIX
        try:
            os.replace(claimed, claimed.with_name(original))
        except FileNotFoundError:
            return
        with self._lock:
            self._backlog.appendleft(original)  # first again at the next claim

    def recover_orphans(self) -> int:
        """Release batches claimed by processes that no longer exist."""
        count = 0
        if not self.folder.is_dir():
            return 0
        for path in self.folder.iterdir():
            if ".claimed-" in path.name:
                pid = int(path.name.rsplit("-", 1)[-1])
                if pid != os.getpid() and not _pid_alive(pid):
                    self.release(path)
                    count += 1
            elif path.name.endswith(".tmp"):
                pid = int(path.name.split("-")[1])
                if not _pid_alive(pid):
                    path.unlink(missing_ok=True)
        return count
