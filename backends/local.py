"""The built-in store: SQLite in WAL mode, zero setup, what the CLI reads.

Spans are appended in arrival order (a rowid table) and found by a unique index on
(trace number, span id), where a trace's number (``traces.seq``) is given in order of first
arrival: a batch appends near the ends of the table and the index instead of dirtying pages all
over a B-tree keyed by random ids. A ``traces`` table keeps per-trace totals (duration, tokens,
cost, status, root name, user, session, tags) updated incrementally from the new spans of each
batch only: listing never scans spans, and a span written twice (a replayed batch) is dropped
before it is counted. Several processes may write one file: WAL plus a busy timeout serialize
their short transactions (a trace number is given inside the write transaction).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import msgspec

from spanmux.backend import BackendSetupError
from spanmux.model import Cost, ErrorInfo, ModelInfo, Score, Span, TraceAttributes, Usage
from spanmux.usage import is_model_call

log = logging.getLogger("spanmux.backends.local")

DEFAULT_PATH = ".spanmux/spanmux.db"
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS spans (
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_id TEXT,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    framework TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    model TEXT,
    detail TEXT,
    trace_seq INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS spans_by_trace ON spans (trace_seq, span_id);
CREATE TABLE IF NOT EXISTS traces (
    seq INTEGER PRIMARY KEY,
    trace_id TEXT NOT NULL UNIQUE,
    name TEXT,
    root_span_id TEXT,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    status TEXT NOT NULL,
    span_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    llm_calls INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    total_tokens INTEGER NOT NULL,
    cost_total REAL,
    models TEXT,
    user_id TEXT,
    session_id TEXT,
    tags TEXT,
    metadata TEXT,
    framework TEXT,
    root_name TEXT,
    root_rank INTEGER NOT NULL,
    root_start_ns INTEGER NOT NULL,
    attr_name TEXT
);
CREATE INDEX IF NOT EXISTS traces_by_start ON traces (start_ns DESC);
CREATE INDEX IF NOT EXISTS traces_by_session ON traces (session_id, start_ns);
CREATE INDEX IF NOT EXISTS traces_by_user ON traces (user_id, start_ns);
CREATE TABLE IF NOT EXISTS scores (
    id TEXT PRIMARY KEY,
    trace_id TEXT NOT NULL,
    span_id TEXT,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    data_type TEXT NOT NULL,
    comment TEXT,
    source TEXT NOT NULL,
    timestamp_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS scores_by_trace ON scores (trace_id);
CREATE INDEX IF NOT EXISTS scores_by_name ON scores (name, trace_id);
"""

# ``detail`` is one JSON object with the span's other fields, only those set (input, output, model,
# usage, cost, error, attributes, trace, completion_start_ns, truncated): one bound value instead of
# twenty, which is most of the cost of an insert. SQLite's json functions still reach inside it.
_SPAN_COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, framework, start_ns, end_ns, status, model, detail, trace_seq"
)
_SPAN_PLACEHOLDERS = ", ".join("?" * len(_SPAN_COLUMNS.split(", ")))

_INSERT_SPAN = f"INSERT OR IGNORE INTO spans ({_SPAN_COLUMNS}) VALUES ({_SPAN_PLACEHOLDERS})"
_KNOWN_TRACES = "SELECT trace_id, seq FROM traces WHERE trace_id IN (SELECT value FROM json_each(?))"
_KNOWN_SPANS = (
    "SELECT s.trace_id, s.span_id FROM json_each(?) AS j"
    " JOIN spans AS s ON s.trace_seq = json_extract(j.value, '$[0]') AND s.span_id = json_extract(j.value, '$[1]')"
)
_SPANS_OF_TRACE = "SELECT * FROM spans WHERE trace_seq = (SELECT seq FROM traces WHERE trace_id = ?) ORDER BY start_ns"

# Totals from the new spans only, added to what the trace already has. The root is the span without
# a parent that starts first (or, until it arrives, the earliest span): rank 0 beats rank 1, then the
# earlier start; the trace's name, root id, status and framework follow it.
_ADD_TOTALS = """
INSERT INTO traces (seq, trace_id, name, root_span_id, start_ns, end_ns, status, span_count, error_count, llm_calls,
                    input_tokens, output_tokens, total_tokens, cost_total, models, framework,
                    root_name, root_rank, root_start_ns)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
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

_SET_TRACE_FIELDS = """
UPDATE traces SET
    attr_name = COALESCE(?1, attr_name),
    name = COALESCE(?1, name),
    user_id = COALESCE(?2, user_id),
    session_id = COALESCE(?3, session_id),
    tags = COALESCE(?4, tags),
    metadata = COALESCE(?5, metadata)
WHERE trace_id = ?6
"""

_json_encode = msgspec.json.Encoder().encode
_detail_encode = msgspec.json.Encoder(enc_hook=repr).encode
_detail_decode = msgspec.json.Decoder().decode
_DETAIL_FIELDS = (
    "input", "output", "model", "usage", "cost", "error", "attributes", "trace", "completion_start_ns",
)


def _json(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return _json_encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return json.dumps(value, default=repr, ensure_ascii=False)


def _connect(path: str, timeout: float = 30.0) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=timeout, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
    conn.create_function("spanmux_merge_models", 2, _merge_models, deterministic=True)
    return conn


def _merge_models(old: str | None, new: str | None) -> str | None:
    """Union of two comma-separated model lists (the ``models`` column)."""
    if not new or old == new:
        return old or new
    if not old:
        return new
    known = old.split(",")
    added = [m for m in new.split(",") if m not in known]
    return ",".join(known + added) if added else old


class StoreSchemaError(sqlite3.DatabaseError):
    """The file was written by another schema version of the store."""


def _check_schema_version(conn: sqlite3.Connection, path: str) -> None:
    """Refuse a store of another schema version (no migration: version 1 predates the first release)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet: a new, empty file
        return
    if row is not None and row[0] != str(SCHEMA_VERSION):
        conn.close()
        raise StoreSchemaError(
            f"the store {path} has schema version {row[0]}, this spanmux reads version {SCHEMA_VERSION};"
            " move the file away (or delete it) to start a new store"
        )


def _span_detail(span: Span) -> str | None:
    detail: dict[str, Any] = {}
    for key in _DETAIL_FIELDS:
        value = getattr(span, key)
        if value is not None:
            detail[key] = value
    if span.truncated:
        detail["truncated"] = True
    if not detail:
        return None
    try:
        return _detail_encode(detail).decode()
    except (TypeError, OverflowError, msgspec.EncodeError):
        return json.dumps(msgspec.to_builtins(detail, enc_hook=repr), default=repr, ensure_ascii=False)


def _span_row(span: Span, trace_seq: int) -> tuple[Any, ...]:
    model = span.model
    return (
        span.trace_id, span.span_id, span.parent_id, span.name, span.kind, span.framework,
        span.start_ns, span.end_ns, span.status, model.name if model else None, _span_detail(span), trace_seq,
    )


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row_to_span(row: sqlite3.Row) -> Span:
    detail: dict[str, Any] = {}
    if row["detail"]:
        try:
            detail = _detail_decode(row["detail"])
        except msgspec.DecodeError:  # written by the json fallback (NaN and the like)
            detail = json.loads(row["detail"])
    model, usage, cost, error, trace = (detail.get(k) for k in ("model", "usage", "cost", "error", "trace"))
    return Span(
        trace_id=row["trace_id"], span_id=row["span_id"], parent_id=row["parent_id"], name=row["name"],
        kind=row["kind"], framework=row["framework"], start_ns=row["start_ns"], end_ns=row["end_ns"],
        status=row["status"], input=detail.get("input"), output=detail.get("output"),
        model=msgspec.convert(model, ModelInfo) if model is not None else None,
        usage=msgspec.convert(usage, Usage) if usage is not None else None,
        cost=msgspec.convert(cost, Cost) if cost is not None else None,
        error=msgspec.convert(error, ErrorInfo) if error is not None else None,
        completion_start_ns=detail.get("completion_start_ns"), attributes=detail.get("attributes"),
        trace=msgspec.convert(trace, TraceAttributes) if trace is not None else None,
        truncated=bool(detail.get("truncated", False)),
    )


class TraceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One row of ``list_traces``: the totals the CLI and the A/B stats need."""

    trace_id: str
    name: str | None
    root_span_id: str | None
    start_ns: int
    end_ns: int
    status: str
    span_count: int
    error_count: int
    llm_calls: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_total: float | None
    models: list[str]
    user_id: str | None
    session_id: str | None
    tags: list[str]
    metadata: dict[str, Any]
    framework: str | None

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _row_to_summary(row: sqlite3.Row) -> TraceSummary:
    return TraceSummary(
        trace_id=row["trace_id"], name=row["name"], root_span_id=row["root_span_id"], start_ns=row["start_ns"],
        end_ns=row["end_ns"], status=row["status"], span_count=row["span_count"],
        error_count=row["error_count"], llm_calls=row["llm_calls"], input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"], total_tokens=row["total_tokens"], cost_total=row["cost_total"],
        models=sorted(m for m in (row["models"] or "").split(",") if m), user_id=row["user_id"],
        session_id=row["session_id"], tags=_loads(row["tags"]) or [], metadata=_loads(row["metadata"]) or {},
        framework=row["framework"],
    )


def _row_to_score(row: sqlite3.Row) -> Score:
    return Score(
        id=row["id"], trace_id=row["trace_id"], span_id=row["span_id"], name=row["name"],
        value=_loads(row["value"]), data_type=row["data_type"], comment=row["comment"], source=row["source"],
        timestamp_ns=row["timestamp_ns"],
    )


def open_database(path: str | Path) -> sqlite3.Connection:
    """Open (creating folder and schema) a store; raises OSError/sqlite3.Error with the cause."""
    target = Path(path)
    if str(path) != ":memory:":
        target.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(str(target))
    _check_schema_version(conn, str(target))
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return conn


def _trace_numbers(conn: sqlite3.Connection, spans: Sequence[Span]) -> tuple[dict[str, int], set[str]]:
    """Each trace's number (``traces.seq``), new traces numbered after the last one, and the known ones.

    Spans are indexed by this number rather than the random trace id, so a batch appends to the end
    of the index instead of dirtying pages all over it. Safe: the caller holds the write lock.
    """
    trace_ids = list(dict.fromkeys(s.trace_id for s in spans))
    numbers = dict(conn.execute(_KNOWN_TRACES, (_json_encode(trace_ids).decode(),)).fetchall())
    known = set(numbers)
    if len(numbers) < len(trace_ids):
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM traces").fetchone()[0]
        for trace_id in trace_ids:
            if trace_id not in numbers:
                last += 1
                numbers[trace_id] = last
    return numbers, known


def _unknown_spans(
    conn: sqlite3.Connection, spans: Sequence[Span], numbers: dict[str, int], known_traces: set[str]
) -> list[Span]:
    """The spans of a batch not yet in the store (the last copy of a span sent twice in the batch)."""
    by_key = {(s.trace_id, s.span_id): s for s in spans}
    maybe_known = [[numbers[t], span_id] for t, span_id in by_key if t in known_traces]
    if maybe_known:
        for known in conn.execute(_KNOWN_SPANS, (_json_encode(maybe_known).decode(),)):
            by_key.pop(known, None)
    return list(by_key.values())


def _trace_totals(spans: list[Span], numbers: dict[str, int]) -> list[tuple[Any, ...]]:
    """One ``_ADD_TOTALS`` row per trace: the totals of these spans and their best root candidate."""
    totals: dict[str, list[Any]] = {}
    for s in spans:
        usage, cost = s.usage, s.cost
        rank = 0 if s.parent_id is None else 1
        row = totals.get(s.trace_id)
        if row is None:
            totals[s.trace_id] = row = [s.start_ns, s.end_ns, 0, 0, 0, 0, 0, 0, None, [], rank, s.start_ns, s]
        else:
            row[0] = min(row[0], s.start_ns)
            row[1] = max(row[1], s.end_ns)
            if (rank, s.start_ns) < (row[10], row[11]):
                row[10], row[11], row[12] = rank, s.start_ns, s
        row[2] += 1
        row[3] += s.status == "error"
        row[4] += is_model_call(s)  # a delegating wrapper (LlamaIndex predict over complete) is no call
        if usage is not None:
            row[5] += usage.input_tokens
            row[6] += usage.output_tokens
            row[7] += usage.total_tokens
        if cost is not None and cost.total is not None:
            row[8] = cost.total if row[8] is None else row[8] + cost.total
        if s.model is not None and s.model.name and s.model.name not in row[9]:
            row[9].append(s.model.name)
    out = []
    for trace_id, (start, end, count, errors, llm, tin, tout, ttotal, cost_total, models, rank, root_start,
                   root) in totals.items():
        out.append((
            numbers[trace_id], trace_id, root.name, root.span_id, start, end,
            "error" if root.status == "error" else "ok", count, errors, llm, tin, tout, ttotal, cost_total,
            ",".join(models) or None, root.framework, root.name, rank, root_start,
        ))
    return out


def write_batch(conn: sqlite3.Connection, spans: Sequence[Span], scores: Sequence[Score]) -> None:
    """One transaction: spans, the totals of the traces they touch, scores."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if spans:
            numbers, known_traces = _trace_numbers(conn, spans)
            # a replayed span is neither stored nor counted twice
            new_spans = _unknown_spans(conn, spans, numbers, known_traces)
            if new_spans:
                conn.executemany(_INSERT_SPAN, [_span_row(s, numbers[s.trace_id]) for s in new_spans])
                conn.executemany(_ADD_TOTALS, _trace_totals(new_spans, numbers))
            fields: dict[str, TraceAttributes] = {}
            for s in spans:
                if s.trace is not None:
                    fields[s.trace_id] = s.trace
            if fields:
                conn.executemany(_SET_TRACE_FIELDS, [
                    (t.name, t.user_id, t.session_id, _json(list(t.tags)) if t.tags else None,
                     _json(t.metadata) if t.metadata else None, trace_id)
                    for trace_id, t in fields.items()
                ])
        if scores:
            conn.executemany(
                "INSERT OR REPLACE INTO scores (id, trace_id, span_id, name, value, data_type, comment, source,"
                " timestamp_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(s.id, s.trace_id, s.span_id, s.name, _json(s.value), s.data_type, s.comment, s.source,
                  s.timestamp_ns) for s in scores],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class LocalBackend:
    """Backend ``local`` (alias ``superoptix``)."""

    name = "local"
    config_model: ClassVar[Any] = None
    required_modules: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None

    def __init__(self, config: Any, settings: Any = None) -> None:
        self.path = str(getattr(config, "path", None) or DEFAULT_PATH)
        try:
            self._conn = open_database(self.path)
            self._conn.execute("BEGIN IMMEDIATE")
            self._conn.execute("ROLLBACK")
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            raise BackendSetupError(f"cannot open the store at {self.path!r}: {reason}", key="path") from None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share the parent's connection
                self._conn = open_database(self.path)
                self._pid = os.getpid()
            write_batch(self._conn, spans, scores)

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        with self._lock:
            self._conn.close()


class StoreReadError(sqlite3.DatabaseError):
    """The store file exists but cannot be read (permissions, not a database, no spanmux tables)."""


def _uri_connect(uri: str, timeout: float) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout, check_same_thread=False, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the file for real
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: str, timeout: float = 30.0) -> sqlite3.Connection:
    """A connection that never writes: the CLI reads stores it may not write to.

    ``mode=ro`` reads beside a live writer in WAL mode (it uses the writer's ``-shm`` index). In a
    read-only folder whose writer closed cleanly there is no ``-shm`` and none can be created, so
    SQLite refuses even a read-only open; no one can be writing there then, and the file is read
    as ``immutable``. Raises ``StoreReadError`` with the reason where the file really cannot be read.
    """
    file = Path(path)
    uri = file.absolute().as_uri()
    try:
        return _uri_connect(uri + "?mode=ro", timeout)
    except sqlite3.DatabaseError as exc:
        first = exc
    if not os.access(file, os.R_OK):
        raise StoreReadError(f"cannot read the spanmux store at {path}: permission denied") from None
    if isinstance(first, sqlite3.OperationalError):
        try:
            conn = _uri_connect(uri + "?immutable=1", timeout)
        except sqlite3.DatabaseError:
            pass
        else:
            wal = Path(f"{path}-wal")
            if wal.exists() and wal.stat().st_size > 0:
                log.warning("the store %s is read without its write-ahead log (%s is not readable here): the "
                            "newest records may be missing", path, wal.name)
            return conn
    reason = str(first)
    if "not a database" in reason:
        reason = "not a SQLite database"
    raise StoreReadError(f"cannot read the spanmux store at {path}: {reason}") from None


class LocalStore:
    """Read access to a store file (the CLI, the tests, ``spanmux replay``).

    Opened read-only (``connect_readonly``): reading never creates, migrates or locks the file, so
    it works on a read-only store and beside a program that is writing to it.
    """

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = str(path)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"no spanmux store at {self.path}")
        if Path(self.path).is_dir():
            raise StoreReadError(f"cannot read the spanmux store at {self.path}: it is a folder")
        self._conn = connect_readonly(self.path)
        self._conn.row_factory = sqlite3.Row
        _check_schema_version(self._conn, self.path)
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"traces", "spans", "scores"} <= tables:
            self._conn.close()
            raise StoreReadError(f"cannot read the spanmux store at {self.path}: it holds no spanmux tables"
                                 " (not a spanmux store, or one still being created)")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def list_traces(
        self,
        limit: int = 50,
        *,
        offset: int = 0,
        since_ns: int | None = None,
        until_ns: int | None = None,
        name: str | None = None,
        status: str | None = None,
        user_id: str | None = None,
        session_id: str | None = None,
        tag: str | None = None,
        metadata: dict[str, Any] | None = None,
        model: str | None = None,
    ) -> list[TraceSummary]:
        """Newest first, with totals; every filter is optional."""
        where, params = self._filters(since_ns, until_ns, name, status, user_id, session_id, tag, metadata, model)
        sql = f"SELECT * FROM traces {where} ORDER BY start_ns DESC LIMIT ? OFFSET ?"
        rows = self._conn.execute(sql, (*params, limit, offset)).fetchall()
        return [_row_to_summary(r) for r in rows]

    def iter_traces(self, **filters: Any) -> Iterator[TraceSummary]:
        """Every matching trace, oldest first (stats, replay)."""
        where, params = self._filters(**filters)
        for row in self._conn.execute(f"SELECT * FROM traces {where} ORDER BY start_ns", params):
            yield _row_to_summary(row)

    @staticmethod
    def _filters(
        since_ns: int | None = None, until_ns: int | None = None, name: str | None = None,
        status: str | None = None, user_id: str | None = None, session_id: str | None = None,
        tag: str | None = None, metadata: dict[str, Any] | None = None, model: str | None = None,
    ) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", name), ("status", status), ("user_id", user_id), ("session_id", session_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if since_ns is not None:
            clauses.append("start_ns >= ?")
            params.append(since_ns)
        if until_ns is not None:
            clauses.append("start_ns < ?")
            params.append(until_ns)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(traces.tags) WHERE value = ?)")
            params.append(tag)
        if model is not None:
            clauses.append("(',' || models || ',') LIKE ?")
            params.append(f"%,{model},%")
        for key, value in (metadata or {}).items():
            clauses.append("json_extract(metadata, ?) = ?")
            params.extend([f'$."{key}"', value])
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params

    def get_trace_summary(self, trace_id: str) -> TraceSummary | None:
        row = self._conn.execute("SELECT * FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
        return _row_to_summary(row) if row else None

    def find_trace_id(self, prefix: str) -> str | None:
        """Resolve an abbreviated trace id (as the CLI shows them); None when none or several match."""
        matches = self.find_trace_ids(prefix, limit=2)
        return matches[0] if len(matches) == 1 else None

    def find_trace_ids(self, prefix: str, limit: int = 20) -> list[str]:
        """The ids starting with ``prefix`` (``tr-`` and case ignored), in id order, at most ``limit``:
        an ambiguous prefix can be shown with its matches instead of as "no trace"."""
        prefix = prefix.lower().removeprefix("tr-")
        rows = self._conn.execute(
            "SELECT trace_id FROM traces WHERE trace_id >= ? AND trace_id < ? ORDER BY trace_id LIMIT ?",
            (prefix, prefix + "g", limit),
        ).fetchall()
        return [row[0] for row in rows]

    def get_trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, parents before children, siblings by start time."""
        rows = self._conn.execute(_SPANS_OF_TRACE, (trace_id,)).fetchall()
        spans = [_row_to_span(r) for r in rows]
        return order_tree(spans)

    def get_scores(self, trace_id: str | None = None) -> list[Score]:
        if trace_id is None:
            rows = self._conn.execute("SELECT * FROM scores ORDER BY timestamp_ns").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM scores WHERE trace_id = ? ORDER BY timestamp_ns", (trace_id,)
            ).fetchall()
        return [_row_to_score(r) for r in rows]

    def iter_scores(self, **filters: Any) -> Iterator[Score]:
        """The scores of every trace matching the ``list_traces`` filters, in one query (stats)."""
        where, params = self._filters(**filters)
        sql = f"SELECT * FROM scores WHERE trace_id IN (SELECT trace_id FROM traces {where}) ORDER BY timestamp_ns"
        for row in self._conn.execute(sql, params):
            yield _row_to_score(row)

    def iter_spans(self, since_ns: int | None = None, batch: int = 1000) -> Iterator[list[Span]]:
        """All spans in batches, trace by trace (``spanmux replay``)."""
        sql = (
            "SELECT * FROM spans WHERE trace_seq IN (SELECT seq FROM traces WHERE start_ns >= ?)"
            " ORDER BY trace_seq"
        )
        cursor = self._conn.execute(sql, (since_ns or 0,))
        while rows := cursor.fetchmany(batch):
            yield [_row_to_span(r) for r in rows]

    def count_spans(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])


def order_tree(spans: list[Span]) -> list[Span]:
    """Depth-first order: each parent right before its children (orphans treated as roots)."""
    ids = {s.span_id for s in spans}
    children: dict[str | None, list[Span]] = {}
    for s in sorted(spans, key=lambda x: x.start_ns):
        parent = s.parent_id if s.parent_id in ids else None
        children.setdefault(parent, []).append(s)
    out: list[Span] = []
    stack = list(reversed(children.get(None, [])))
    while stack:
        node = stack.pop()
        out.append(node)
        stack.extend(reversed(children.get(node.span_id, [])))
    return out
