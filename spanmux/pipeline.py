"""From the framework's thread to every backend, without ever blocking the caller.

    emit() ──► bounded deque ──► worker thread: process (sample, serialize, cost) ──► one Lane per backend
                  │ full                                                               │ export fails
                  ▼                                                                    ▼
            overflow spool                                                     the backend's spool,
            (replayed by the worker)                                           replayed with backoff

The caller's cost is one ``deque.append``. Processing happens once, on the worker. Each backend
gets its own delivery thread (a Lane) so a slow MLflow server never delays the local store; a
Lane that cannot deliver writes the batch to its spool on disk and retries with backoff, also
in the next process. ``flush()`` sends a marker through the same queues, so it waits for exactly
what was emitted before it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spanmux.backend import Backend, BaseBackend, as_backend
from spanmux.backoff import Backoff
from spanmux.model import ExperimentRun, Score, Span
from spanmux.spool import OVERFLOW, EncodedRecords, Spool, SpooledBatch, encode_records

log = logging.getLogger("spanmux.pipeline")

Processor = Callable[[Span], Span | None]

YIELD_EVERY = 16
"""The worker lets the GIL go after this many records. A thread that released the GIL (a lane in
SQLite, the caller in I/O) otherwise waits for a busy worker up to the interpreter's switch interval
(5 ms) to get it back; a yield costs about a microsecond. Not while a ``flush()`` waits with every
lane idle: then no thread of ours wants the GIL, and on a loaded machine each yield can hand the
core to another process for a time slice (a flush after 40 chain invokes: ~100 us per invoke)."""


class _Marker:
    """A flush request travelling through the queues behind the records emitted before it. Each
    lane arrives once it delivered everything before the marker (its spool included) or gave up
    at ``deadline``; ``undelivered`` names the lanes that gave up."""

    __slots__ = ("deadline", "done", "remaining", "undelivered")

    def __init__(self, parties: int, deadline: float) -> None:
        self.done = threading.Event()
        self.remaining = parties
        self.deadline = deadline
        self.undelivered: list[str] = []
        if parties == 0:
            self.done.set()

    def arrive(self, lock: threading.Lock, undelivered: str | None = None) -> None:
        with lock:
            if undelivered is not None:
                self.undelivered.append(undelivered)
            self.remaining -= 1
            if self.remaining <= 0:
                self.done.set()


@dataclass
class LaneStats:
    exported_spans: int = 0
    exported_scores: int = 0
    export_errors: int = 0
    spooled_spans: int = 0
    spooled_scores: int = 0
    replayed_batches: int = 0
    unspooled_spans: int = 0
    unspooled_scores: int = 0
    last_error: str | None = None

    def as_dict(self, spool: Spool | None) -> dict[str, Any]:
        out = dict(self.__dict__)
        lost_spans, lost_scores = out.pop("unspooled_spans"), out.pop("unspooled_scores")
        out["dropped_spans"] = (spool.dropped_spans if spool else 0) + lost_spans
        out["dropped_scores"] = (spool.dropped_scores if spool else 0) + lost_scores
        out["spool_pending_batches"] = spool.pending() if spool else 0
        return out


@dataclass
class _Batch:
    spans: list[Span] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    encoded: EncodedRecords | None = None  # the spool encoding, made once for every lane that spools it
    experiments: list[ExperimentRun] = field(default_factory=list)  # delivered after the spans and scores

    def encode(self) -> EncodedRecords:
        if self.encoded is None:
            self.encoded = encode_records(self.spans, self.scores, self.experiments)
        return self.encoded


class Lane:
    """Delivers batches to one backend on its own thread; spools what it cannot deliver."""

    MAX_BACKOFF = 30.0
    FIRST_BACKOFF = 0.25

    def __init__(self, name: str, backend: Backend, spool: Spool | None, max_pending: int) -> None:
        self.name = name
        self.backend = backend  # as configured (tests and the CLI look at it)
        self.contract: BaseBackend = as_backend(backend)  # what the lane calls
        self.spool = spool
        self.stats = LaneStats()
        self._pending: deque[_Batch | _Marker] = deque()
        self._pending_records = 0
        self._max_pending = max_pending
        self._count_lock = threading.Lock()  # the worker and the lane both touch these counters
        self._inflight: _Batch | None = None  # the fresh batch being exported (spilled if the lane hangs)
        self._wake = threading.Event()
        self._waiting = False  # in _wake.wait between batches (read by the worker: a hint only)
        self._halt = threading.Event()  # the exit deadline passed: stop waiting between retries
        self._stop = False
        self._healthy = True
        # when to try again (doubling waits, Retry-After honoured); after a refusal a flush does not wait
        self._backoff = Backoff(self.FIRST_BACKOFF, self.MAX_BACKOFF)
        self._reported: set[str] = set()
        self._lost_since_flush = False  # dropped, not delivered: the next flush must say False
        self._origin = _origin_of(name, self.contract)
        self._thread = threading.Thread(target=self._run, name=f"spanmux-lane-{name}", daemon=True)
        self._thread.start()

    # called from the worker thread
    def submit(self, batch: _Batch) -> None:
        size = len(batch.spans) + len(batch.scores)
        with self._count_lock:
            spill = self._pending_records + size > self._max_pending and self.spool is not None
            if not spill:
                self._pending_records += size
        if spill:
            self._to_spool(batch)  # the backend is far behind: keep memory bounded
            return
        self._pending.append(batch)
        self._wake.set()

    def idle(self) -> bool:
        """Nothing to deliver right now (a hint: it may wake the next moment)."""
        return self._waiting and not self._pending

    def mark(self, marker: _Marker) -> None:
        self._pending.append(marker)
        self._wake.set()

    def request_stop(self) -> None:
        """Finish what is pending (to the backend or the spool), then end the thread."""
        self._stop = True
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self.request_stop()
        self._thread.join(max(0.0, timeout))

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def spill_pending(self) -> int:
        """The lane missed the exit deadline (its backend hangs): park what it still holds in
        memory, including the batch in flight, in the spool for the next run. A batch that the
        hanging export delivers after all is then sent twice, which idempotent backends absorb."""
        spilled = 0
        self._halt.set()
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            self._to_spool(inflight)
            spilled += len(inflight.spans) + len(inflight.scores)
        while True:
            try:
                item = self._pending.popleft()
            except IndexError:
                return spilled
            if isinstance(item, _Marker):
                item.arrive(_MARKER_LOCK, self.name)
                continue
            self._forget(item)
            self._to_spool(item)
            spilled += len(item.spans) + len(item.scores)

    def _forget(self, batch: _Batch) -> None:
        with self._count_lock:
            self._pending_records -= len(batch.spans) + len(batch.scores)

    def _to_spool(self, batch: _Batch) -> None:
        if self.spool is None:
            self._lost(batch)
            return
        if self.spool.append(batch.spans, batch.scores, batch.encode(), self._origin, batch.experiments):
            with self._count_lock:
                self.stats.spooled_spans += len(batch.spans)
                self.stats.spooled_scores += len(batch.scores)

    def _lost(self, batch: _Batch) -> None:
        """No spool configured: the records are gone, and counted as dropped."""
        with self._count_lock:
            self.stats.unspooled_spans += len(batch.spans)
            self.stats.unspooled_scores += len(batch.scores)
        self._lost_since_flush = True

    def _report(self, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        self.stats.last_error = message
        key = type(exc).__name__ + message[:80]
        if key not in self._reported:
            self._reported.add(key)
            retryable = getattr(exc, "retryable", True)
            then = ("they are retried with backoff" if retryable
                    else "fix the problem: they are sent again at the next flush or run")
            log.warning(
                "backend %r failed (%s): %s; records are kept in the spool, %s",
                self.name, "will retry" if retryable else "not retryable", message, then,
            )

    def _export(self, spans: Sequence[Span], scores: Sequence[Score], spooled: SpooledBatch | None = None,
                experiments: Sequence[ExperimentRun] = ()) -> bool:
        """One delivery attempt. A batch from the spool goes to ``export_spooled`` with the origin
        it was written with. Experiment runs go last: a backend files them against their traces."""
        try:
            if spooled is not None:
                if spans or scores:
                    self.contract.export_spooled(spans, scores, spooled.origin)
            elif spans or scores:
                self.contract.export(spans, scores)
            if experiments:
                self.contract.export_experiments(experiments, spooled.origin if spooled is not None else None)
        except Exception as exc:  # any failure of a backend is contained here
            self.stats.export_errors += 1
            self._report(exc)
            self._healthy = False
            self._backoff.failed(exc)
            return False
        self._healthy = True
        self._backoff.succeeded()
        self.stats.exported_spans += len(spans)
        self.stats.exported_scores += len(scores)
        return True

    def _replay_spool(self, force: bool) -> bool:
        """Send spooled batches oldest first while the backend takes them; True once none waits."""
        if self.spool is None:
            return True
        if not force and time.monotonic() < self._backoff.retry_at:
            return False
        while True:
            claimed = self.spool.claim_oldest()
            if claimed is None:
                return True
            path, batch = claimed
            if self._export(batch.spans, batch.scores, batch, batch.experiments):
                self.spool.done(path)
                self.stats.replayed_batches += 1
            else:
                self.spool.release(path)
                return False

    def _settle(self, marker: _Marker) -> None:
        """A flush reached this lane: everything before it was delivered or spooled; now retry the
        spool with the lane's backoff (honouring ``Retry-After``) until it is empty or the flush's
        deadline comes. Waiting here holds only this lane, never the caller or other backends."""
        self._backoff.restart()  # a flush starts a fresh series of attempts
        lost, self._lost_since_flush = self._lost_since_flush, False
        delivered = self._replay_spool(force=True)
        while not delivered and not self._backoff.gave_up:
            now = time.monotonic()
            if now >= marker.deadline:
                break
            self._halt.wait(min(self._backoff.retry_at, marker.deadline) - now)
            if self._halt.is_set() or time.monotonic() >= marker.deadline:
                break
            delivered = self._replay_spool(force=True)
        if delivered:
            try:
                self.contract.force_flush(max(0.1, min(5.0, marker.deadline - time.monotonic())))
            except Exception as exc:
                self._report(exc)
                delivered = False
        if lost:
            delivered = False
            log.warning("flush: backend %r did not take everything, and without a spool what it refused "
                        "was dropped (counted in spanmux.stats()); set spool_dir to keep it", self.name)
        elif not delivered and self.spool is not None:
            waiting = self.spool.describe()
            log.warning("flush: backend %r did not take everything in time; %d spans and %d scores wait in "
                        "its spool %s (delivered at the next flush or run, or with `spanmux replay`)",
                        self.name, waiting["spans"], waiting["scores"], self.spool.folder)
        marker.arrive(_MARKER_LOCK, None if delivered else self.name)

    def _deliver(self, item: _Batch) -> None:
        self._forget(item)
        # without a spool a batch not tried now is lost: always try it (the cost stays on this lane)
        fresh = self.spool is None or (self._healthy and not self._spool_has_work())
        if fresh:
            self._inflight = item
            delivered = self._export(item.spans, item.scores, experiments=item.experiments)
            if self._inflight is not item:
                return  # shutdown already parked it in the spool while the export hung
            self._inflight = None
            if delivered:
                return
        self._to_spool(item)  # without a spool it is counted as dropped

    def _merged(self, batch: _Batch) -> _Batch:
        """``batch`` and the batches queued right behind it (up to the backend's
        ``merge_batches_up_to`` records, never across a flush marker) as one: a deep queue
        becomes fewer, bigger export calls (the store's commits)."""
        limit = self.contract.merge_batches_up_to
        pending = self._pending
        if not limit or not pending or not isinstance(pending[0], _Batch):
            return batch
        size = len(batch.spans) + len(batch.scores)
        merged = _Batch(list(batch.spans), list(batch.scores), experiments=list(batch.experiments))
        while pending and isinstance(pending[0], _Batch):
            following = pending[0]
            extra = len(following.spans) + len(following.scores)
            if size + extra > limit:
                break
            pending.popleft()
            merged.spans.extend(following.spans)
            merged.scores.extend(following.scores)
            merged.experiments.extend(following.experiments)
            size += extra
        return merged

    def _spool_has_work(self) -> bool:
        return self.spool is not None and self.spool.has_pending()

    def _run(self) -> None:
        if self.spool is not None:
            try:
                self.spool.recover_orphans()
            except OSError as exc:
                log.warning("spool %s: %s", self.spool.folder, exc)
        while True:
            timeout = max(0.05, self._backoff.retry_at - time.monotonic()) if self._spool_has_work() else None
            self._waiting = True
            self._wake.wait(timeout)
            self._waiting = False
            self._wake.clear()
            try:
                while self._pending:
                    item = self._pending.popleft()
                    if isinstance(item, _Marker):
                        self._settle(item)
                    else:
                        self._deliver(self._merged(item))
                if not self._stop:
                    self._replay_spool(force=False)
            except Exception:  # never let the lane die
                log.exception("spanmux lane %r crashed on a batch; continuing", self.name)
            if self._stop and not self._pending:
                return


_MARKER_LOCK = threading.Lock()


class Pipeline:
    """The bounded queue, the worker thread and the lanes of one ``configure()``."""

    def __init__(
        self,
        backends: Sequence[tuple[str, Backend]],
        processor: Processor,
        *,
        queue_size: int = 100_000,
        batch_size: int = 512,
        flush_interval: float = 0.5,
        spool_dir: str | None = None,
        spool_max_bytes: int = 512 * 1024 * 1024,
    ) -> None:
        self._processor = processor
        self._queue: deque[Any] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._interval = flush_interval
        self._wake = threading.Event()
        self._stopped = False
        self._taken = 0
        self._flushes = 0  # flush markers queued and not yet taken by the worker
        self._flushes_lock = threading.Lock()
        self.processed_spans = 0
        self.sampled_out = 0
        self.processor_errors = 0
        self.overflowed = 0
        self.overflow_dropped = 0
        self._replayed_overflow = 0
        spool_root = Path(spool_dir) if spool_dir else None
        self._overflow_spool = Spool(spool_root / OVERFLOW, spool_max_bytes) if spool_root else None
        self._overflow_lock = threading.Lock()
        self._overflow_buffer = _Batch()  # written as one spool file per OVERFLOW_BATCH records
        self.lanes = tuple(
            Lane(name, backend, Spool(spool_root / name, spool_max_bytes) if spool_root else None, queue_size)
            for name, backend in backends
        )
        self.observers: tuple[Callable[[Span | Score | ExperimentRun], None], ...] = ()
        """Called with every record on the caller's thread before it is queued (``spanmux.evaluate``
        watches its items' spans for their tokens); empty otherwise, so emit pays one empty loop."""
        self._worker: threading.Thread | None = None
        self._start_worker()

    def _start_worker(self) -> None:
        self._worker = threading.Thread(target=self._run, name="spanmux-worker", daemon=True)
        self._worker.start()

    # ---- the caller's side: keep it tiny
    def emit(self, record: Span | Score | ExperimentRun) -> None:
        for observe in self.observers:  # empty unless spanmux.evaluate is running
            observe(record)
        queue = self._queue
        if len(queue) >= self._queue_size:
            self._overflow(record)
            return
        queue.append(record)
        if len(queue) >= self._batch_size:
            self._wake.set()

    OVERFLOW_BATCH = 64

    def _overflow(self, record: Span | Score | ExperimentRun) -> None:
        """The worker is behind: process the record here and park it on disk, a file per
        ``OVERFLOW_BATCH`` records (the worker writes a partial one at its next turn). The caller
        pays the processing, which is the back-pressure, but never waits for the worker or a backend."""
        with self._overflow_lock:
            self.overflowed += 1
            if self._overflow_spool is None:
                self.overflow_dropped += 1
                return
            buffer = self._overflow_buffer
            if isinstance(record, Span):
                processed = self._process(record)
                if processed is not None:
                    buffer.spans.append(processed)
            elif isinstance(record, ExperimentRun):
                buffer.experiments.append(record)
            else:
                buffer.scores.append(record)
            if len(buffer.spans) + len(buffer.scores) >= self.OVERFLOW_BATCH:
                self._write_overflow_locked()

    def _write_overflow_locked(self) -> None:
        buffer, self._overflow_buffer = self._overflow_buffer, _Batch()
        size = len(buffer.spans) + len(buffer.scores) + len(buffer.experiments)
        if size and (self._overflow_spool is None or not self._overflow_spool.append(
                buffer.spans, buffer.scores, experiments=buffer.experiments)):
            self.overflow_dropped += size

    def _write_overflow(self) -> None:
        if self._overflow_buffer.spans or self._overflow_buffer.scores or self._overflow_buffer.experiments:
            with self._overflow_lock:
                self._write_overflow_locked()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every backend took everything emitted before this call, its spool included,
        retrying within ``timeout``. False when time ran out first (the rest stays spooled)."""
        if self._stopped or self._worker is None:
            return True
        marker = _Marker(1, time.monotonic() + timeout)
        with self._flushes_lock:
            self._flushes += 1
            self._queue.append(marker)
        self._wake.set()
        # a lane gives up at the deadline by itself; the grace covers its last attempt's answer
        arrived = marker.done.wait(timeout + self.FLUSH_GRACE)
        return arrived and not marker.undelivered

    FLUSH_GRACE = 0.5

    def shutdown(self, timeout: float = 10.0) -> None:
        """Deliver what it can within ``timeout``; what is left goes to the spools, never lost
        (unless no spool is configured). A hanging backend cannot hold the process beyond it."""
        if self._stopped:
            return
        deadline = time.monotonic() + timeout
        self.flush(timeout)
        self._stopped = True
        self._wake.set()
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
            if self._worker.is_alive():
                self._spill_queue()
        self._write_overflow()  # records a caller parked after the worker's last turn
        for lane in self.lanes:
            lane.request_stop()
        for lane in self.lanes:  # an idle lane ends at once: a small grace even past the deadline
            lane.stop(max(0.2, deadline - time.monotonic()))
        for lane in self.lanes:
            if lane.is_alive():  # stuck in its backend: do not wait, do not close it under its feet
                spilled = lane.spill_pending()
                log.warning("backend %r did not finish within the %gs shutdown deadline; %d records kept "
                            "in its spool for the next run", lane.name, timeout, spilled)
                continue
            try:
                lane.contract.shutdown(max(0.1, deadline - time.monotonic()))
            except Exception as exc:
                log.warning("backend %r failed to shut down cleanly: %s", lane.name, exc)

    def _spill_queue(self) -> None:
        """The worker missed the deadline: park the records still queued in the overflow spool."""
        spans: list[Span] = []
        scores: list[Score] = []
        experiments: list[ExperimentRun] = []
        while True:
            try:
                item = self._queue.popleft()
            except IndexError:
                break
            if isinstance(item, _Marker):
                with self._flushes_lock:
                    self._flushes -= 1
                item.undelivered.append("queue")
                item.done.set()
            elif isinstance(item, Span):
                processed = self._process(item)  # the overflow spool holds processed spans
                if processed is not None:
                    spans.append(processed)
            elif isinstance(item, ExperimentRun):
                experiments.append(item)
            else:
                scores.append(item)
        if not spans and not scores and not experiments:
            return
        with self._overflow_lock:
            self.overflowed += len(spans) + len(scores)
            self._overflow_buffer.spans.extend(spans)
            self._overflow_buffer.scores.extend(scores)
            self._overflow_buffer.experiments.extend(experiments)
            self._write_overflow_locked()

    def after_fork_in_child(self) -> None:
        """The child inherits a copy of the queue the parent will export: drop it, restart threads."""
        self._queue = deque()
        self._wake = threading.Event()
        self._flushes, self._flushes_lock = 0, threading.Lock()
        self._overflow_lock = threading.Lock()
        self._overflow_buffer = _Batch()
        if self._overflow_spool is not None:  # fresh locks: the parent may have held them at fork
            self._overflow_spool = Spool(self._overflow_spool.folder, self._overflow_spool.max_bytes)
        self.lanes = tuple(
            Lane(lane.name, lane.backend, Spool(lane.spool.folder, lane.spool.max_bytes) if lane.spool else None,
                 self._queue_size)
            for lane in self.lanes
        )
        after_fork = getattr(self._processor, "after_fork", None)
        if callable(after_fork):  # e.g. SpanProcessor's memo belongs to the parent's worker thread
            after_fork()
        self._start_worker()

    @staticmethod
    def _lane_stats(lane: Lane) -> dict[str, Any]:
        """The lane's counters plus what the backend itself refused for good (a 400 from a server
        that will never accept that record), so no loss goes uncounted."""
        own: dict[str, Any] = {"rejected_spans": 0, "rejected_scores": 0}
        try:
            own.update(lane.contract.stats())
        except Exception:  # spanmux.stats() never raises into the caller
            log.debug("backend %r: stats() failed", lane.name, exc_info=True)
        numbers = lane.stats.as_dict(lane.spool)
        return numbers | {key: value for key, value in own.items() if key not in numbers}

    def stats(self) -> dict[str, Any]:
        return {
            "records_emitted": self._taken + len(self._queue) + self.overflowed - self._replayed_overflow,
            "spans_processed": self.processed_spans,
            "sampled_out": self.sampled_out,
            "processor_errors": self.processor_errors,
            "queue_overflowed": self.overflowed,
            "overflow_dropped": self.overflow_dropped,
            "queued": len(self._queue),
            "backends": {lane.name: self._lane_stats(lane) for lane in self.lanes},
            **self._processor_stats(),
        }

    def _processor_stats(self) -> dict[str, Any]:
        """The processor's own counters (token estimates, costs) when it keeps any."""
        counters = getattr(self._processor, "stats", None)
        if not callable(counters):
            return {}
        try:
            found = counters()
        except Exception:
            return {}
        return found if isinstance(found, dict) else {}

    # ---- the worker's side
    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            try:
                self._drain()
            except Exception:
                log.exception("spanmux worker failed on a batch; continuing")
            if self._stopped:
                self._drain()
                return

    def _drain(self) -> None:
        self._replay_overflow()
        queue = self._queue
        batch = _Batch()
        while queue:
            item = queue.popleft()
            if isinstance(item, _Marker):
                with self._flushes_lock:
                    self._flushes -= 1
                self._send(batch)
                batch = _Batch()
                self._replay_overflow()
                self._pass_marker(item)
                continue
            self._taken += 1
            if not self._taken % YIELD_EVERY and (not self._flushes or not self._lanes_idle()):
                time.sleep(0)  # let the GIL go: a lane or the caller waiting for it gets it now, not in 5 ms
            if isinstance(item, Span):
                processed = self._process(item)
                if processed is not None:
                    batch.spans.append(processed)
            elif isinstance(item, ExperimentRun):
                batch.experiments.append(item)
            else:
                batch.scores.append(item)
            if len(batch.spans) + len(batch.scores) >= self._batch_size:
                self._send(batch)
                batch = _Batch()
        self._send(batch)

    def _lanes_idle(self) -> bool:
        return all(lane.idle() for lane in self.lanes)

    def _pass_marker(self, marker: _Marker) -> None:
        """Hand the flush marker to every lane without waiting for them: a hanging backend must not
        hold the worker, hence the other backends."""
        if not self.lanes:
            marker.done.set()
            return
        marker.remaining = len(self.lanes)
        for lane in self.lanes:
            lane.mark(marker)

    def _process(self, span: Span) -> Span | None:
        try:
            out = self._processor(span)
        except Exception:
            self.processor_errors += 1
            log.exception("spanmux could not process span %r; it is dropped (counted as processor_errors)",
                          span.name)
            return None
        if out is None:
            self.sampled_out += 1
        else:
            self.processed_spans += 1
        return out

    def _send(self, batch: _Batch) -> None:
        if not batch.spans and not batch.scores and not batch.experiments:
            return
        for lane in self.lanes:
            lane.submit(batch)

    def _replay_overflow(self) -> None:
        self._write_overflow()  # what callers parked since the last turn: on disk, then in order
        spool = self._overflow_spool
        if spool is None or not spool.has_pending():
            return
        while len(self._queue) < self._queue_size // 2:
            claimed = spool.claim_oldest()
            if claimed is None:
                return
            path, batch = claimed
            self._replayed_overflow += len(batch.spans) + len(batch.scores)
            self._taken += len(batch.spans) + len(batch.scores)
            self._send(_Batch(list(batch.spans), list(batch.scores), experiments=list(batch.experiments)))
            spool.done(path)


def _origin_of(name: str, backend: BaseBackend) -> dict[str, str] | None:
    """The backend's description of this producing session, written with each batch it spools."""
    try:
        found = backend.origin()
    except Exception:
        log.warning("backend %r: origin() failed; its spooled batches carry none", name, exc_info=True)
        return None
    return {str(k): str(v) for k, v in found.items()} if found else None


def register_fork_handler(get: Callable[[], Pipeline | None]) -> None:
    def child() -> None:
        pipeline = get()
        if pipeline is not None:
            pipeline.after_fork_in_child()

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=child)
