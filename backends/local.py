"""The built-in store's writer: backend ``local`` (alias ``superoptix``), SQLite in WAL mode.

The schema, its version and every read live in the core (``spanmux.store``: ``LocalStore``,
``TraceSummary``, ``order_tree``, re-exported here for 0.1 imports); this module only writes.
Spans are appended in arrival order (a rowid table) and found by a unique index on (trace number,
span id), where a trace's number (``traces.seq``) is given in order of first arrival: a batch
appends near the ends of the table and the index instead of dirtying pages all over a B-tree keyed
by random ids. A ``traces`` table keeps per-trace totals (duration, tokens, cost, status, root
name, user, session, tags) updated incrementally from the new spans of each batch only: listing
never scans spans, and a span written twice (a replayed batch) is dropped before it is counted.
Trace ids are indexed in bulk (``trace_ids``, schema version 3; ``RecentTraces``): a random key
inserted trace by trace dirtied an index page per trace in every commit.
Several processes may write one file: WAL plus a busy timeout serialize their short transactions
(a trace number is given inside the write transaction).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from operator import attrgetter
from pathlib import Path
from typing import Any

import msgspec
from msgspec.structs import astuple

from spanmux.backend import BackendSetupError, BaseBackend
from spanmux.model import ExperimentRun, ModelInfo, Score, Span, TraceAttributes, Usage
from spanmux.store import (
    DEFAULT_PATH,
    DETAIL_FIELDS,
    SCHEMA,
    SCHEMA_V2,
    SCHEMA_VERSION,
    SPAN_COLUMNS,
    TRACE_IDS_EVERY,
    TRACE_IDS_SCHEMA,
    LocalStore,
    StoreReadError,
    StoreSchemaError,
    TraceSummary,
    check_schema_version,
    connect_readonly,
    order_tree,
)
from spanmux.usage import is_model_call

__all__ = [  # the reader's names stay importable from here, as in 0.1
    "DEFAULT_PATH", "SCHEMA_VERSION", "LocalBackend", "LocalStore", "StoreReadError", "StoreSchemaError",
    "TraceSummary", "connect_readonly", "open_database", "order_tree", "write_batch",
]

log = logging.getLogger("spanmux.backends.local")

# ``detail`` is one JSON object with the span's other fields, only those set (``DETAIL_FIELDS``):
# one bound value instead of twenty, which is most of the cost of an insert.
# A value that may be None is bound as ``_NULL`` (int 0; '' for a number column) and made NULL again by
# ``NULLIF``: the sqlite3 module binds None through its adapter look-up, ~1 us a value against ~60 ns for
# an int (measured), and a span has about one None (a root's parent, the model of a non-LLM span).
_NULL = 0
_NULL_NUMBER = ""
_INSERT_SPAN = (f"INSERT OR IGNORE INTO spans ({', '.join(SPAN_COLUMNS)})"
                " VALUES (?, ?, NULLIF(?, 0), ?, ?, ?, ?, ?, ?, NULLIF(?, 0), NULLIF(?, 0), ?)")
_KNOWN_TRACES = "SELECT trace_id, seq FROM traces WHERE trace_id IN (SELECT value FROM json_each(?))"
_KNOWN_SPANS = (
    "SELECT s.trace_id, s.span_id FROM json_each(?) AS j"
    " JOIN spans AS s ON s.trace_seq = json_extract(j.value, '$[0]') AND s.span_id = json_extract(j.value, '$[1]')"
)
# Totals from the new spans only, added to what the trace already has. The root is the span without
# a parent that starts first (or, until it arrives, the earliest span): rank 0 beats rank 1, then the
# earlier start; the trace's name, root id, status and framework follow it.
_ADD_TOTALS = """
INSERT INTO traces (seq, trace_id, name, root_span_id, start_ns, end_ns, status, span_count, error_count, llm_calls,
                    input_tokens, output_tokens, total_tokens, cost_total, models, framework,
                    root_name, root_rank, root_start_ns)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULLIF(?, ''), NULLIF(?, 0), ?, ?, ?, ?)
ON CONFLICT (trace_id) DO UPDATE SET
    start_ns = MIN(traces.start_ns, excluded.start_ns),
    end_ns = MAX(traces.end_ns, excluded.end_ns),
    span_count = traces.span_count + excluded.span_count,
    error_count = traces.error_count + excluded.error_count,
    llm_calls = traces.llm_calls + excluded.llm_calls,
    input_tokens = traces.input_tokens + excluded.input_tokens,
    output_tokens = traces.output_tokens + excluded.output_tokens,
    total_tokens = traces.total_tokens + excluded.total_tokens,
    cost_total = CASE WHEN traces.cost_total IS NULL THEN excluded.cost_total
                      WHEN excluded.cost_total IS NULL THEN traces.cost_total
                      ELSE traces.cost_total + excluded.cost_total END,
    models = spanmux_merge_models(traces.models, excluded.models),
    name = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                THEN COALESCE(traces.attr_name, excluded.root_name) ELSE traces.name END,
    root_span_id = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                        THEN excluded.root_span_id ELSE traces.root_span_id END,
    status = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                  THEN excluded.status ELSE traces.status END,
    framework = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                     THEN excluded.framework ELSE traces.framework END,
    root_name = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                     THEN excluded.root_name ELSE traces.root_name END,
    root_rank = MIN(traces.root_rank, excluded.root_rank),
    root_start_ns = CASE WHEN (excluded.root_rank, excluded.root_start_ns) < (traces.root_rank, traces.root_start_ns)
                         THEN excluded.root_start_ns ELSE traces.root_start_ns END
"""

ROWS_PER_STATEMENT = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 32
"""Rows bound to one INSERT (``VALUES (...), (...)``): the sqlite3 module lets the GIL go around
each statement's step, so ``executemany`` of single rows hands the GIL over once per row, and a
writer thread waits for it behind the worker (up to the interpreter's 5 ms switch interval) that
often. 256 rows of 19 values stay under the 32,766 bound values SQLite allows since 3.32; older
ones allow 999 (32 rows)."""


class _ManyRows:
    """One ``VALUES (?, ...)`` statement as statements of ``ROWS_PER_STATEMENT`` rows and of every
    power of two below: any number of rows goes in at most log2(256) + 1 statements (a batch of 128
    new traces in one, not 128), each one step for SQLite, so one GIL handover each."""

    def __init__(self, head: str, group: str, tail: str = "") -> None:
        self.width = group.count("?")
        self.sizes: list[tuple[int, str]] = []
        size = ROWS_PER_STATEMENT
        while size:
            self.sizes.append((size, f"{head} VALUES " + ", ".join([group] * size) + tail))
            size //= 2

    def insert(self, conn: sqlite3.Connection, flat: list[Any]) -> None:
        """``flat``: the rows' values one after the other (``width`` a row), no tuple per row."""
        width = self.width
        rows = len(flat) // width
        (full, many), *smaller = self.sizes
        done = rows - rows % full
        if done:
            step = full * width
            conn.executemany(many, [flat[i:i + step] for i in range(0, done * width, step)])
        for size, sql in smaller:
            if rows - done >= size:
                conn.execute(sql, flat[done * width:(done + size) * width])
                done += size


def _parts(single: str) -> tuple[str, str, str]:
    """``single`` (one ``VALUES (...)`` group, then an optional ``ON CONFLICT`` clause) in three."""
    head, _, tail = single.partition("VALUES ")
    group, on_conflict, rest = tail.partition("\nON CONFLICT")
    return head.strip(), group.strip(), on_conflict + rest


_TRACE_HEAD, _TRACE_GROUP, _ON_CONFLICT = _parts(_ADD_TOTALS)
_NEW_SPANS = _ManyRows(*_parts(_INSERT_SPAN))
_NEW_TRACES = _ManyRows(_TRACE_HEAD, _TRACE_GROUP)
"""New traces: a plain INSERT (in a version-2 store a trace the writer took for new but is stored
fails it on the unique ``trace_id``, and the batch is written again the looked-up way)."""
_MORE_TOTALS = _ManyRows(_TRACE_HEAD, _TRACE_GROUP, _ON_CONFLICT)
"""Version 2: what new spans add to traces already stored, in the upsert's DO UPDATE."""
_TRACE_COLUMNS = [c.strip() for c in _TRACE_HEAD.partition("(")[2].rpartition(")")[0].split(",")]
_ADD_TO_STORED = _ManyRows(
    "UPDATE traces SET" + _ON_CONFLICT.partition("DO UPDATE SET")[2].rstrip() + " FROM (SELECT "
    + ", ".join(f"column{i} AS {c}" for i, c in enumerate(_TRACE_COLUMNS, 1)) + " FROM (",
    _TRACE_GROUP, ")) AS excluded WHERE traces.seq = excluded.seq")
"""Version 3 (no unique ``trace_id`` to upsert on): the same assignments as the upsert's DO UPDATE,
from the same values, for the traces found by number."""
_INDEXED_TRACES = "SELECT trace_id, seq FROM trace_ids WHERE trace_id IN (SELECT value FROM json_each(?))"
_INDEX_TRACE_IDS = ("INSERT OR IGNORE INTO trace_ids (trace_id, seq)"
                    " SELECT trace_id, seq FROM traces WHERE seq > ? ORDER BY trace_id")

_SET_TRACE_FIELDS = """
UPDATE traces SET
    attr_name = COALESCE(?1, attr_name),
    name = COALESCE(?1, name),
    user_id = COALESCE(?2, user_id),
    session_id = COALESCE(?3, session_id),
    tags = COALESCE(?4, tags),
    metadata = COALESCE(?5, metadata)
WHERE seq = ?6
"""

_json_encode = msgspec.json.Encoder().encode
_trace_id_of = attrgetter("trace_id")
_span_id_of = attrgetter("span_id")
_detail_encode = msgspec.json.Encoder(enc_hook=repr).encode


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return _json_encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return json.dumps(value, default=repr, ensure_ascii=False)


WRITER_AUTOCHECKPOINT_PAGES = 16_384
"""The writer's own WAL checkpoint mark (64 MB of 4 KB pages): only a bound for when the
``Checkpointer`` thread falls behind; SQLite's default (1,000) ran a checkpoint inside every
few commits, which cost the writer more than its inserts."""
WRITER_CACHE_KIB = 32 * 1024
"""The writer's page cache (SQLite's default is 2 MB): the ``traces.trace_id`` index takes random
inserts and outgrows 2 MB at ~150k traces; at 600k spans 32 MB measured 15-25% more spans/s."""
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the ``-wal`` file is truncated to when SQLite starts it over."""


def _connect(path: str, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
    conn.create_function("spanmux_merge_models", 2, _merge_models, deterministic=True)
    return conn


class _HeldAcrossFork:
    """Objects whose ``fork_lock`` guards their SQLite work: ``os.fork()`` waits until none of them is
    inside SQLite, so a child never inherits a connection (or one of SQLite's process-wide mutexes)
    mid-statement, which hung the child's first write (a checkpoint running at fork time)."""

    def __init__(self) -> None:
        self.owners: weakref.WeakSet[Any] = weakref.WeakSet()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(before=self._hold, after_in_parent=self._release, after_in_child=self._release)

    def _hold(self) -> None:
        self._held = list(self.owners)
        for owner in self._held:
            owner.fork_lock.acquire()

    def _release(self) -> None:
        for owner in getattr(self, "_held", ()):
            owner.fork_lock.release()
        self._held = []


_FORK = _HeldAcrossFork()


class Checkpointer:
    """Copies the write-ahead log back into the database file on its own thread and connection.

    A checkpoint writes every page the log holds into the main file and syncs it. Run by SQLite
    inside the writer's COMMIT (every 1,000 pages by default) it was the largest single cost of a
    span (about 5 of 17 us per span at 200k spans, the random ``trace_id`` index pages being most
    of the log). Here the writer only sets an event after a commit; this thread, which does not
    hold the GIL while SQLite works, runs a PASSIVE checkpoint (it never waits for the writer or
    for readers) at most every ``INTERVAL`` seconds, so a page written many times in between is
    copied once. The writer's ``wal_autocheckpoint`` stays as the bound if this thread falls behind.
    """

    INTERVAL = 0.25

    def __init__(self, path: str) -> None:
        self._conn = _connect(path)
        self.fork_lock = threading.Lock()  # held while SQLite works (see _HeldAcrossFork)
        _FORK.owners.add(self)
        self.runs = 0  # checkpoints run (tests and stats look)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spanmux-local-checkpoint", daemon=True)
        self._thread.start()

    def poke(self) -> None:
        """Called after each commit: there is log to copy back."""
        self._wake.set()

    def _run(self) -> None:
        while not self._halt.is_set():
            self._wake.wait()
            self._wake.clear()
            if self._halt.is_set():
                break
            try:
                with self.fork_lock:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error as exc:  # busy or locked by another process: the next turn retries
                log.debug("store checkpoint skipped: %s", exc)
            self.runs += 1
            self._halt.wait(self.INTERVAL)
        with self.fork_lock:
            self._conn.close()

    def stop(self, timeout: float) -> None:
        """End the thread (its connection closes there); the writer's close does the last checkpoint."""
        self._halt.set()
        self._wake.set()
        self._thread.join(max(0.0, timeout))


def _merge_models(old: str | None, new: str | None) -> str | None:
    """Union of two comma-separated model lists (the ``models`` column)."""
    if not new or old == new:
        return old or new
    if not old:
        return new
    known = old.split(",")
    added = [m for m in new.split(",") if m not in known]
    return ",".join(known + added) if added else old


class _UsageDetail(Usage, frozen=True, omit_defaults=True):
    """``Usage`` as the store keeps it: zero counts (most of the seven) are left out and read back
    as the same zeros (``msgspec.convert`` fills the defaults)."""


class _ModelDetail(ModelInfo, frozen=True, omit_defaults=True):
    """``ModelInfo`` as the store keeps it: unset fields are left out."""


class _Detail(msgspec.Struct, omit_defaults=True):
    """The ``detail`` column: the span's ``DETAIL_FIELDS`` that are set (plus ``truncated`` when
    true), encoded by msgspec in one call instead of a dict built key by key."""

    input: Any = None
    output: Any = None
    model: Any = None
    usage: Any = None
    cost: Any = None
    error: Any = None
    attributes: Any = None
    trace: Any = None
    completion_start_ns: int | None = None
    truncated: bool = False


_EMPTY_DETAIL = b"{}"


def _span_detail(span: Span) -> str | None:
    u, m = span.usage, span.model
    usage = None if u is None else _UsageDetail(*astuple(u))
    model = None if m is None else _ModelDetail(*astuple(m))
    detail = _Detail(span.input, span.output, model, usage, span.cost, span.error, span.attributes, span.trace,
                     span.completion_start_ns, span.truncated)
    try:
        encoded = _detail_encode(detail)
    except (TypeError, OverflowError, ValueError, msgspec.EncodeError):
        return _span_detail_slow(span)
    return None if encoded == _EMPTY_DETAIL else encoded.decode()


def _span_detail_slow(span: Span) -> str | None:
    """The detail of a span msgspec cannot encode as is (NaN-free JSON of odd values, huge ints)."""
    detail: dict[str, Any] = {}
    for key in DETAIL_FIELDS:
        value = getattr(span, key)
        if value is not None:
            detail[key] = value
    if span.truncated:
        detail["truncated"] = True
    if not detail:
        return None
    return json.dumps(msgspec.to_builtins(detail, enc_hook=repr), default=repr, ensure_ascii=False)


def _span_row(span: Span, trace_seq: int) -> tuple[Any, ...]:
    model = span.model
    return (
        span.trace_id, span.span_id, span.parent_id, span.name, span.kind, span.framework,
        span.start_ns, span.end_ns, span.status, model.name if model else None, _span_detail(span), trace_seq,
    )


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (creating folder and schema) a store; raises OSError/sqlite3.Error with the cause."""
    target = Path(path)
    if str(path) != ":memory:":
        target.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(str(target))
    conn.execute(f"PRAGMA cache_size={-WRITER_CACHE_KIB}")
    version = check_schema_version(conn, str(target))
    if version is None:  # a new file: the newest layout this SQLite can write
        version = SCHEMA_VERSION if _UPDATE_FROM else 2
    conn.executescript(SCHEMA if version == 3 else SCHEMA_V2)  # an older file gets only missing tables
    if version == 3:
        conn.executescript(TRACE_IDS_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(version),))
    return conn


_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


def schema_version_of(conn: sqlite3.Connection) -> int:
    """The schema version of an open store (``open_database`` wrote it)."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def _trace_numbers(conn: sqlite3.Connection, spans: Sequence[Span]) -> tuple[dict[str, int], set[str]]:
    """Each trace's number (``traces.seq``), new traces numbered after the last one, and the known ones,
    looked up in the store (the path of a batch with a trace the writer has not seen lately).

    Spans are indexed by this number rather than the random trace id, so a batch appends to the end
    of the index instead of dirtying pages all over it. Safe: the caller holds the write lock.
    """
    trace_ids = list(dict.fromkeys(map(_trace_id_of, spans)))
    numbers = dict(conn.execute(_KNOWN_TRACES, (_json_encode(trace_ids).decode(),)).fetchall())
    known = set(numbers)
    if len(numbers) < len(trace_ids):
        last = conn.execute(_LAST_SEQ).fetchone()[0]
        for trace_id in trace_ids:
            if trace_id not in numbers:
                last += 1
                numbers[trace_id] = last
    return numbers, known


_LAST_SEQ = "SELECT COALESCE(MAX(seq), 0) FROM traces"


def _unknown_spans(
    conn: sqlite3.Connection, spans: Sequence[Span], numbers: dict[str, int], known_traces: set[str]
) -> list[Span]:
    """The spans of a batch not yet in the store (the last copy of a span sent twice in the batch)."""
    if not known_traces and len(set(map(_span_id_of, spans))) == len(spans):
        return list(spans)  # the common case: new traces only, no span twice
    by_key = {(s.trace_id, s.span_id): s for s in spans}
    maybe_known = [[numbers[t], span_id] for t, span_id in by_key if t in known_traces]
    if maybe_known:
        for known in conn.execute(_KNOWN_SPANS, (_json_encode(maybe_known).decode(),)):
            by_key.pop(known, None)
    return list(by_key.values())


class RecentTraces:
    """What one writer knows of the traces of its store, so a batch needs no look-up in the random
    trace-id index for traces it wrote lately: ``numbers`` (trace id -> ``traces.seq``) of the traces
    it stored or met lately, the newest ``KEEP`` to ``2 * KEEP`` (~120 bytes each).

    Version 2 (unique ``traces.trace_id``): a trace not in ``numbers`` is taken for new and INSERTed
    plainly; when that guess is wrong (another process, an earlier run or a replay stored it, or it
    was forgotten here) the INSERT fails on the unique index and the batch is written again the
    looked-up way, in a new transaction: the guess costs time, never a wrong total.

    Version 3 (``trace_ids`` filled in bulk): a trace is stored when it is in ``numbers``, in
    ``unindexed`` (every trace numbered above ``upto``, exactly: after any other connection's commit,
    seen by ``PRAGMA data_version``, the writer indexes them all first) or in ``trace_ids``.
    Only committed batches are learnt; a failed one makes the writer read everything again."""

    KEEP = 50_000

    def __init__(self, schema_version: int = 2) -> None:
        self.numbers: dict[str, int] = {}
        self.bulk = schema_version == 3
        self.unindexed: dict[str, int] = {}
        self.upto = 0
        self.data_version: int | None = None  # None: not read yet, or to be read again

    def learn(self, numbers: dict[str, int]) -> None:
        known = self.numbers
        known.update(numbers)
        if len(known) > 2 * self.KEEP:
            self.numbers = dict(islice(known.items(), len(known) - self.KEEP, None))

    def sync(self, conn: sqlite3.Connection) -> None:
        """Version 3, inside the write transaction: when another connection committed since this
        writer's last look (or at its first write), index every trace not indexed yet, so that
        ``unindexed`` is exact again (empty)."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self.data_version:
            self.upto = int(conn.execute(
                "SELECT COALESCE((SELECT value FROM meta WHERE key = 'trace_ids_upto'), '0')").fetchone()[0])
            self.unindexed = {}
            self.index(conn)
            self.data_version = version

    def index(self, conn: sqlite3.Connection) -> None:
        """Version 3: the traces numbered above ``upto`` into ``trace_ids``, in one sorted insert (each
        index page is written about once, not once per trace)."""
        last = conn.execute(_LAST_SEQ).fetchone()[0]
        if last > self.upto:
            conn.execute(_INDEX_TRACE_IDS, (self.upto,))
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('trace_ids_upto', ?)", (str(last),))
            self.upto = last
        self.unindexed = {}


class _SeenElsewhere(Exception):
    """A trace the writer took for new is in the store already."""


def _span_values(spans: list[Span], numbers: dict[str, int]) -> list[Any]:
    """The ``_INSERT_SPAN`` values of ``spans``, row after row in one list (no tuple per row)."""
    flat: list[Any] = []
    add = flat.extend
    detail = _span_detail
    null = _NULL
    for s in spans:
        model, parent = s.model, s.parent_id
        add((s.trace_id, s.span_id, null if parent is None else parent, s.name, s.kind, s.framework, s.start_ns,
             s.end_ns, s.status, null if model is None or model.name is None else model.name, detail(s) or null,
             numbers[s.trace_id]))
    return flat


def _trace_totals(spans: list[Span], numbers: dict[str, int], known: set[str]) -> tuple[list[Any], list[Any]]:
    """The ``_ADD_TOTALS`` values (one row per trace, rows one after the other) of the traces of
    ``spans``: what these spans add and their best root candidate, the span without a parent that
    starts first (or, until it arrives, the earliest span; the first of a tie). Rows of new traces,
    then rows of ``known`` ones."""
    groups: dict[str, list[Span]] = {}
    for s in spans:
        group = groups.get(s.trace_id)
        if group is None:
            groups[s.trace_id] = [s]
        else:
            group.append(s)
    fresh: list[Any] = []
    more: list[Any] = []
    for trace_id, group in groups.items():
        root = group[0]
        root_rank = 0 if root.parent_id is None else 1
        root_start = start = root.start_ns
        end = root.end_ns
        errors = calls = tokens_in = tokens_out = tokens = 0
        cost_total: float | None = None
        models: list[str] = []
        for s in group:
            began = s.start_ns
            if began < start:
                start = began
            if s.end_ns > end:
                end = s.end_ns
            rank = 0 if s.parent_id is None else 1
            if rank < root_rank or (rank == root_rank and began < root_start):
                root, root_rank, root_start = s, rank, began
            if s.status == "error":
                errors += 1
            if s.kind == "llm" and is_model_call(s):  # a delegating wrapper (LlamaIndex predict) is no call
                calls += 1
            usage, cost, model = s.usage, s.cost, s.model
            if usage is not None:
                tokens_in += usage.input_tokens
                tokens_out += usage.output_tokens
                tokens += usage.total_tokens
            if cost is not None and cost.total is not None:
                cost_total = cost.total if cost_total is None else cost_total + cost.total
            if model is not None and model.name and model.name not in models:
                models.append(model.name)
        (more if trace_id in known else fresh).extend((
            numbers[trace_id], trace_id, root.name, root.span_id, start, end,
            "error" if root.status == "error" else "ok", len(group), errors, calls,
            tokens_in, tokens_out, tokens, _NULL_NUMBER if cost_total is None else cost_total,
            ",".join(models) or _NULL, root.framework, root.name,
            root_rank, root_start,
        ))
    return fresh, more


def _numbers_in_bulk_store(
    conn: sqlite3.Connection, spans: Sequence[Span], recent: RecentTraces
) -> tuple[dict[str, int], set[str], list[str]]:
    """Version 3: each trace's number, the stored ones (in ``recent``, or found in ``trace_ids``) and
    the new ones (numbered after the last), without a look-up for the traces the writer knows."""
    recent.sync(conn)
    seen, unindexed = recent.numbers, recent.unindexed
    numbers, known, fresh = _split_known(spans, lambda trace_id: seen.get(trace_id) or unindexed.get(trace_id))
    if fresh:
        found = dict(conn.execute(_INDEXED_TRACES, (_json_encode(fresh).decode(),)).fetchall())
        if found:
            numbers.update(found)
            known.update(found)
            fresh = [t for t in fresh if t not in found]
        _number_new(conn, numbers, fresh)
    return numbers, known, fresh


def _split_known(spans: Sequence[Span], number_of: Callable[[str], int | None]
                 ) -> tuple[dict[str, int], set[str], list[str]]:
    """The batch's trace ids split by ``number_of``: (numbers of the known, the known, the others in order)."""
    numbers: dict[str, int] = {}
    known: set[str] = set()
    fresh: list[str] = []
    for trace_id in dict.fromkeys(map(_trace_id_of, spans)):
        seq = number_of(trace_id)
        if seq is None:
            fresh.append(trace_id)
        else:
            numbers[trace_id] = seq
            known.add(trace_id)
    return numbers, known, fresh


def _number_new(conn: sqlite3.Connection, numbers: dict[str, int], fresh: Sequence[str]) -> None:
    """Number the new traces ``fresh`` after the last one (inside the write transaction)."""
    if fresh:
        last = conn.execute(_LAST_SEQ).fetchone()[0]
        numbers.update(zip(fresh, range(last + 1, last + 1 + len(fresh)), strict=True))


def _write_spans(conn: sqlite3.Connection, spans: Sequence[Span], recent: RecentTraces | None) -> dict[str, int]:
    """The batch's new spans and what they add to their traces; returns every trace's number.

    Version 2 with ``recent``: the traces not in it are taken for new (``_SeenElsewhere`` when one is
    not); without it the trace ids are looked up in the store first. Version 3: see ``RecentTraces``."""
    fresh: list[str] = []
    if recent is not None and recent.bulk:
        numbers, known, fresh = _numbers_in_bulk_store(conn, spans, recent)
    elif recent is None:
        numbers, known = _trace_numbers(conn, spans)
    else:
        numbers, known, fresh = _split_known(spans, recent.numbers.get)
        _number_new(conn, numbers, fresh)
    new_spans = _unknown_spans(conn, spans, numbers, known)  # a replayed span is neither stored nor counted twice
    if new_spans:
        fresh_rows, known_rows = _trace_totals(new_spans, numbers, known)
        if fresh_rows:
            try:
                _NEW_TRACES.insert(conn, fresh_rows)
            except sqlite3.IntegrityError as exc:
                if recent is None or recent.bulk:
                    raise
                raise _SeenElsewhere from exc
        if known_rows:
            (_ADD_TO_STORED if recent is not None and recent.bulk else _MORE_TOTALS).insert(conn, known_rows)
        _NEW_SPANS.insert(conn, _span_values(new_spans, numbers))
    fields: dict[str, TraceAttributes] = {}
    for s in spans:
        if s.trace is not None:
            fields[s.trace_id] = s.trace
    if fields:
        conn.executemany(_SET_TRACE_FIELDS, [
            (t.name, t.user_id, t.session_id, _json(list(t.tags)) if t.tags else None,
             _json(t.metadata) if t.metadata else None, numbers[trace_id])
            for trace_id, t in fields.items()
        ])
    if recent is not None and recent.bulk:
        unindexed = recent.unindexed
        for trace_id in fresh:
            unindexed[trace_id] = numbers[trace_id]
        if len(unindexed) >= TRACE_IDS_EVERY:
            recent.index(conn)
    return numbers


def write_batch(conn: sqlite3.Connection, spans: Sequence[Span], scores: Sequence[Score],
                recent: RecentTraces | None = None) -> None:
    """One transaction: spans, the totals of the traces they touch, scores. ``recent`` (the writer's
    ``RecentTraces``, made for the store's version) spares the look-up of known traces and learns the
    batch's once committed."""
    if recent is None and spans and schema_version_of(conn) == 3:
        recent = RecentTraces(3)  # knows nothing: indexes what is not indexed yet, then looks up
    conn.execute("BEGIN IMMEDIATE")
    try:
        numbers: dict[str, int] = {}
        if spans:
            try:
                numbers = _write_spans(conn, spans, recent)
            except _SeenElsewhere:  # a trace taken for new is stored: write the batch the looked-up way
                conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                numbers = _write_spans(conn, spans, None)
        if scores:
            conn.executemany(
                "INSERT OR REPLACE INTO scores (id, trace_id, span_id, name, value, data_type, comment, source,"
                " timestamp_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.id, s.trace_id, s.span_id, s.name, _json(s.value), s.data_type, s.comment, s.source,
                  s.timestamp_ns) for s in scores],
            )
        conn.execute("COMMIT")
    except BaseException:
        if recent is not None:
            recent.data_version = None  # what it learnt in this transaction may be rolled back: read again
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    if recent is not None:
        recent.learn(numbers)


def index_trace_ids(conn: sqlite3.Connection, recent: RecentTraces) -> None:
    """Version 3: index every trace not indexed yet (at close, so a closed store has none to scan)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        recent.data_version = None
        recent.sync(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class LocalBackend(BaseBackend):
    """Backend ``local`` (alias ``superoptix``)."""

    name = "local"
    merge_batches_up_to = 8192  # a commit costs about as much as a few hundred inserts

    def __init__(self, config: Any, settings: Any = None) -> None:
        super().__init__(config, settings)
        self.path = str(getattr(config, "path", None) or DEFAULT_PATH)
        try:
            self._conn = open_database(self.path)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BackendSetupError(f"cannot open the store at {self.path!r}: {reason}", key="path") from None
        self._lock = threading.Lock()
        self.fork_lock = self._lock  # a fork waits for a write in progress (see _HeldAcrossFork)
        _FORK.owners.add(self)
        self._pid = os.getpid()
        self._checkpointer: Checkpointer | None = None  # started by the first write (validate builds only)
        self._recent = RecentTraces(schema_version_of(self._conn))

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share the parent's connection
                self._reopen_in_child()
            write_batch(self._conn, spans, scores, self._recent)
            if self._checkpointer is None and self.path != ":memory:":
                self._checkpointer = Checkpointer(self.path)
            if self._checkpointer is not None:
                self._checkpointer.poke()

    def _reopen_in_child(self) -> None:
        """A forked child opens its own connections (and checkpoint thread: threads do not survive a fork)."""
        self._conn = open_database(self.path)
        self._pid = os.getpid()
        self._checkpointer = None  # the parent's thread did not come along; the next write starts one
        self._recent.data_version = None  # PRAGMA data_version is per connection

    def export_experiments(self, runs: Sequence[ExperimentRun], origin: Mapping[str, str] | None) -> None:
        """Experiment runs and their items, upserted by run id and item id (a replay changes nothing)."""
        with self._lock:
            if self._pid != os.getpid():
                self._reopen_in_child()
            write_experiments(self._conn, runs)

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            if self._recent.bulk and self._recent.data_version is not None and self._pid == os.getpid():
                try:  # this writer wrote: leave no trace for readers to scan
                    index_trace_ids(self._conn, self._recent)
                except sqlite3.Error as exc:  # busy: the next writer indexes them
                    log.debug("store: trace ids not indexed at close: %s", exc)
            if self._checkpointer is not None and self._pid == os.getpid():
                self._checkpointer.stop(timeout)
            self._conn.close()


_experiment_encode = msgspec.json.Encoder(enc_hook=repr).encode


def write_experiments(conn: sqlite3.Connection, runs: Sequence[ExperimentRun]) -> None:
    """One transaction: each run's row (replaced) and its items (replaced by item id)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for run in runs:
            conn.execute(
                "INSERT OR REPLACE INTO experiment_runs (run_id, name, dataset, status, source, start_ns, end_ns,"
                " item_count, error_count, scorers, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (run.run_id, run.name, run.dataset, run.status, run.source, run.start_ns, run.end_ns,
                 len(run.items), sum(1 for i in run.items if i.error or i.scorer_errors), _json(run.scorers),
                 _json(run.metadata) if run.metadata else None),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO experiment_items (run_id, item_id, idx, trace_id, detail)"
                " VALUES (?, ?, ?, ?, ?)",
                [(run.run_id, item.item_id, item.index, item.trace_id, _experiment_encode(item).decode())
                 for item in run.items],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
