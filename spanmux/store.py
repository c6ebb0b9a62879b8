"""Reading the built-in store: the one read path of the CLI, ``spanmux replay`` and the web UI.

The store is a SQLite file in WAL mode written by the ``local`` backend
(``spanmux.backends.local``, the writer). This module owns what writer and readers share, the
schema and its version, and everything that reads: ``LocalStore`` (opened read-only, so reading
never creates, migrates or locks a file and works beside a live writer), the per-trace
``TraceSummary``, the typed ``TraceFilter`` and keyset paging (``page_traces``: no ``OFFSET`` on
a big table), and the tree order of a trace's spans. It imports no backend.

Layout: spans are appended in arrival order (a rowid table) and found by a unique index on
(trace number, span id), where a trace's number (``traces.seq``) is given in order of first
arrival. Only the columns queries filter on are columns; the rest of a span is one JSON ``detail``
object (``DETAIL_FIELDS``, only those set). ``traces`` keeps per-trace totals, updated by the
writer from each batch's new spans, so listing never scans spans. A trace id is found through
``trace_ids``, which the writer fills in bulk, or among the few newest traces not in it yet
(version 3; version 2 has a unique index on ``traces.trace_id``, see ``SCHEMA_VERSION``).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from spanmux.model import Cost, ErrorInfo, ExperimentItem, ExperimentRun, ModelInfo, Score, Span, TraceAttributes, Usage

if TYPE_CHECKING:
    from spanmux.experiments import ExperimentComparison

log = logging.getLogger("spanmux.store")

DEFAULT_PATH = ".spanmux/spanmux.db"
WRITER_BACKENDS = ("local", "superoptix")
"""The backend names that write this store (``superoptix`` is an alias of ``local``)."""
SCHEMA_VERSION = 3
"""What a new store gets. Version 3 differs from 2 only in how a trace id is found: 2 keeps a UNIQUE
index on ``traces.trace_id``; 3 has no index on that column and keeps ``trace_ids`` (id -> number)
instead, which the writer fills in bulk every ``TRACE_IDS_EVERY`` new traces (and at close), so the
traces it has not indexed yet are those numbered above ``meta.trace_ids_upto``. A random 32-hex key
inserted trace by trace dirtied about one index page per trace in every commit: at 1M spans that
index cost more than everything else the writer does (BENCHMARKS.md, 2026-12-02 "Store"). Both
versions are read and written; a version-2 file stays version 2."""
READ_VERSIONS = (2, 3)
TRACE_IDS_EVERY = 8192
"""New traces between two bulk inserts into ``trace_ids``: a reader looking up one of them scans at
most this many ``traces`` rows (by number, ~1 ms); the writer dirties each ``trace_ids`` page about
once per bulk insert instead of once per trace."""

SCHEMA = """
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
    trace_id TEXT NOT NULL,
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
CREATE TABLE IF NOT EXISTS experiment_runs (
    run_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    dataset TEXT,
    status TEXT NOT NULL,
    source TEXT NOT NULL,
    start_ns INTEGER NOT NULL,
    end_ns INTEGER NOT NULL,
    item_count INTEGER NOT NULL,
    error_count INTEGER NOT NULL,
    scorers TEXT,
    metadata TEXT
);
CREATE INDEX IF NOT EXISTS experiment_runs_by_start ON experiment_runs (start_ns DESC);
CREATE TABLE IF NOT EXISTS experiment_items (
    run_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
"""
TRACE_IDS_SCHEMA = """
CREATE TABLE IF NOT EXISTS trace_ids (trace_id TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO meta (key, value) VALUES ('trace_ids_upto', '0');
"""
"""Version 3 only: trace id -> trace number, filled in bulk by the writer (``TRACE_IDS_EVERY``)."""
SCHEMA_V2 = SCHEMA.replace("    seq INTEGER PRIMARY KEY,\n    trace_id TEXT NOT NULL,\n",
                           "    seq INTEGER PRIMARY KEY,\n    trace_id TEXT NOT NULL UNIQUE,\n", 1)
"""Version 2, for a new store where SQLite is older than 3.33 (no ``UPDATE ... FROM``, which the
version-3 writer uses)."""
EXPERIMENT_TABLES = ("experiment_runs", "experiment_items")
"""Added after schema version 2 as ``CREATE TABLE IF NOT EXISTS`` (the writer creates them in an older
file); a reader of a file without them sees no experiments. ``experiment_items.detail`` is the
``ExperimentItem`` as JSON."""

SPAN_COLUMNS = (
    "trace_id", "span_id", "parent_id", "name", "kind", "framework", "start_ns", "end_ns", "status", "model",
    "detail", "trace_seq",
)
"""The columns of ``spans``, in the order the writer binds them."""

DETAIL_FIELDS = (
    "input", "output", "model", "usage", "cost", "error", "attributes", "trace", "completion_start_ns",
)
"""The ``Span`` fields kept in the JSON ``detail`` column (plus ``truncated`` when true): one bound
value instead of twenty, which is most of the cost of an insert."""


_detail_decode = msgspec.json.Decoder().decode


class StoreSchemaError(sqlite3.DatabaseError):
    """The file was written by another schema version of the store."""


class StoreReadError(sqlite3.DatabaseError):
    """The store file exists but cannot be read (permissions, not a database, no spanmux tables)."""


def check_schema_version(conn: sqlite3.Connection, path: str) -> int | None:
    """The store's schema version (None: a new, empty file); refuses one this spanmux does not read
    (version 1 predates the first release), closing ``conn`` before raising ``StoreSchemaError``."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    except sqlite3.OperationalError:  # no meta table yet: a new, empty file
        return None
    if row is None:
        return None
    if row[0] not in {str(v) for v in READ_VERSIONS}:
        conn.close()
        raise StoreSchemaError(
            f"the store {path} has schema version {row[0]}, this spanmux reads versions"
            f" {' and '.join(map(str, READ_VERSIONS))}; move the file away (or delete it) to start a new store"
        )
    return int(row[0])


_UNINDEXED = "seq > COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'trace_ids_upto'), 0)"
_SEQ_OF = {
    2: "(SELECT seq FROM traces WHERE trace_id = :trace_id)",
    3: ("(SELECT seq FROM trace_ids WHERE trace_id = :trace_id UNION ALL SELECT * FROM"
        f" (SELECT seq FROM traces WHERE {_UNINDEXED} AND trace_id = :trace_id ORDER BY seq DESC) LIMIT 1)"),
}
"""The number of the trace ``:trace_id``, by version: version 3 looks in ``trace_ids``, then among the
traces not indexed yet (at most ``TRACE_IDS_EVERY``, scanned newest first: the one looked up is
usually one that just arrived)."""
_IDS_FROM = {
    2: "SELECT trace_id FROM traces WHERE trace_id >= :low AND trace_id < :high ORDER BY trace_id LIMIT :limit",
    3: ("SELECT trace_id FROM trace_ids WHERE trace_id >= :low AND trace_id < :high"
        f" UNION SELECT trace_id FROM traces WHERE {_UNINDEXED} AND trace_id >= :low AND trace_id < :high"
        " ORDER BY 1 LIMIT :limit"),
}


def default_store_path() -> str:
    """The store the commands read when given none: ``local.path`` of ./spanmux.yaml (or
    ``$SPANMUX_CONFIG``), else ``DEFAULT_PATH``."""
    from spanmux.config import load_config  # pydantic and YAML only when asked
    from spanmux.errors import ConfigurationError

    try:
        return str(load_config(None).settings.local.path)
    except ConfigurationError:
        return DEFAULT_PATH


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


class TraceSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One trace with its totals, read from the ``traces`` table (no span scan): what listings,
    the A/B stats and the UI's trace list show."""

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


class TraceFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which traces to read; every field is optional and they combine (AND). Times are the trace's
    start in epoch nanoseconds, ``until_ns`` excluded; ``model`` matches any model the trace called;
    ``metadata`` matches trace metadata ``KEY = VALUE`` for each item."""

    since_ns: int | None = None
    until_ns: int | None = None
    name: str | None = None
    status: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    tag: str | None = None
    metadata: dict[str, Any] | None = None
    model: str | None = None
    min_duration_ms: float | None = None
    min_cost: float | None = None
    errors_only: bool = False
    """Only traces with at least one failed span (a recovered tool error counts: the UI's "errors")."""

    def where(self) -> tuple[str, list[Any]]:
        """The SQL ``WHERE`` clause over ``traces`` (empty when nothing is filtered) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, value in (("name", self.name), ("status", self.status), ("user_id", self.user_id),
                              ("session_id", self.session_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.since_ns is not None:
            clauses.append("start_ns >= ?")
            params.append(self.since_ns)
        if self.until_ns is not None:
            clauses.append("start_ns < ?")
            params.append(self.until_ns)
        if self.tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(traces.tags) WHERE value = ?)")
            params.append(self.tag)
        if self.model is not None:
            clauses.append("(',' || models || ',') LIKE ?")
            params.append(f"%,{self.model},%")
        for key, value in (self.metadata or {}).items():
            clauses.append("json_extract(metadata, ?) = ?")
            params.extend([f'$."{key}"', value])
        if self.min_duration_ms is not None:
            clauses.append("end_ns - start_ns >= ?")
            params.append(int(self.min_duration_ms * 1e6))
        if self.min_cost is not None:
            clauses.append("cost_total >= ?")
            params.append(self.min_cost)
        if self.errors_only:
            clauses.append("error_count > 0")
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", params


EVERY_TRACE = TraceFilter()


class TraceCursor(msgspec.Struct, frozen=True):
    """Where a page of traces ended (start time, then the trace's number in the file): the next
    page starts right after it, found through the index whatever the depth (keyset paging).
    ``str()`` gives a token for a URL, ``parse`` reads it back."""

    start_ns: int
    seq: int

    def __str__(self) -> str:
        return f"{self.start_ns}.{self.seq}"

    @classmethod
    def parse(cls, token: str) -> TraceCursor:
        """The cursor of a ``str(cursor)`` token; ``ValueError`` for anything else."""
        start, dot, seq = token.partition(".")
        if not dot:
            raise ValueError(f"not a trace cursor: {token!r}")
        return cls(int(start), int(seq))


class TracePage(msgspec.Struct, frozen=True):
    """One page of traces, newest first; ``next`` is None on the last page."""

    traces: list[TraceSummary]
    next: TraceCursor | None


class SearchPage(msgspec.Struct, frozen=True):
    """A page of traces whose spans' input/output/attributes contain a text. ``scanned`` traces were
    read; ``budget_hit`` is True when the span budget stopped the scan before ``limit`` matches:
    ``next`` then continues it (the UI says so)."""

    traces: list[TraceSummary]
    next: TraceCursor | None
    scanned: int
    budget_hit: bool


class SpanRow(msgspec.Struct, frozen=True, array_like=True):
    """A span without its detail (what a tree or a waterfall draws): read from the columns only, so a
    10,000-span trace is listed without decoding 10,000 JSON documents."""

    span_id: str
    parent_id: str | None
    name: str
    kind: str
    status: str
    start_ns: int
    end_ns: int
    model: str | None
    total_tokens: int | None


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """One ``session_id`` over its traces (the UI's sessions list)."""

    session_id: str
    traces: int
    start_ns: int
    last_start_ns: int
    end_ns: int
    user_id: str | None
    errors: int
    total_tokens: int
    cost_total: float | None
    first_name: str | None


class TimeBucket(msgspec.Struct, frozen=True, kw_only=True):
    """Totals of the traces that started in one time bucket (``start_ns`` is the bucket's start)."""

    start_ns: int
    traces: int
    errors: int
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_total: float | None


def _filter_of(where: TraceFilter | None, filters: dict[str, Any]) -> TraceFilter:
    """A ``TraceFilter``, or the same filters given as keywords (the 0.1 call style)."""
    if not filters:
        return where or EVERY_TRACE
    if where is not None:
        raise TypeError("pass a TraceFilter or keyword filters, not both")
    return TraceFilter(**filters)


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


class LocalStore:
    """Read access to a store file (the CLI, ``spanmux replay``, the UI, the tests).

    Opened read-only (``connect_readonly``): reading never creates, migrates or locks the file, so
    it works on a read-only store and beside a program that is writing to it. Filters are a
    ``TraceFilter`` or, for the listing calls, the same fields as keywords.
    """

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = str(path)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"no spanmux store at {self.path}")
        if Path(self.path).is_dir():
            raise StoreReadError(f"cannot read the spanmux store at {self.path}: it is a folder")
        self._conn = connect_readonly(self.path)
        self._conn.row_factory = sqlite3.Row
        version = check_schema_version(self._conn, self.path)
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"traces", "spans", "scores"} <= tables:
            self._conn.close()
            raise StoreReadError(f"cannot read the spanmux store at {self.path}: it holds no spanmux tables"
                                 " (not a spanmux store, or one still being created)")
        self.schema_version = 3 if version == 3 and "trace_ids" in tables else 2
        self._seq_of = _SEQ_OF[self.schema_version]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> LocalStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- traces
    def list_traces(
        self,
        limit: int = 50,
        *,
        offset: int = 0,
        where: TraceFilter | None = None,
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
        """The newest ``limit`` traces with totals (``offset`` skips some: prefer ``page_traces``
        on a big store)."""
        given = {k: v for k, v in (("since_ns", since_ns), ("until_ns", until_ns), ("name", name),
                                   ("status", status), ("user_id", user_id), ("session_id", session_id),
                                   ("tag", tag), ("metadata", metadata), ("model", model)) if v is not None}
        clause, params = _filter_of(where, given).where()
        sql = f"SELECT * FROM traces {clause} ORDER BY start_ns DESC LIMIT ? OFFSET ?"
        rows = self._conn.execute(sql, (*params, limit, offset)).fetchall()
        return [_row_to_summary(r) for r in rows]

    def page_traces(self, where: TraceFilter = EVERY_TRACE, *, limit: int = 50,
                    after: TraceCursor | None = None) -> TracePage:
        """One page of matching traces, newest first, starting after ``after`` (the previous page's
        ``next``). Each page costs the same however deep it is; traces written meanwhile never
        shift a page (they are newer than the first one)."""
        clause, params = where.where()
        if after is not None:  # equal start times in order of arrival: the order of the traces_by_start index
            clause = f"{clause} AND" if clause else "WHERE"
            clause += " start_ns <= ? AND (start_ns < ? OR seq > ?)"
            params = [*params, after.start_ns, after.start_ns, after.seq]
        sql = f"SELECT * FROM traces {clause} ORDER BY start_ns DESC, seq LIMIT ?"
        rows = self._conn.execute(sql, (*params, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        last = rows[-1] if more else None
        return TracePage([_row_to_summary(r) for r in rows],
                         TraceCursor(last["start_ns"], last["seq"]) if last is not None else None)

    def iter_traces(self, where: TraceFilter | None = None, **filters: Any) -> Iterator[TraceSummary]:
        """Every matching trace, oldest first (stats, replay)."""
        clause, params = _filter_of(where, filters).where()
        for row in self._conn.execute(f"SELECT * FROM traces {clause} ORDER BY start_ns", params):
            yield _row_to_summary(row)

    def get_trace_summary(self, trace_id: str) -> TraceSummary | None:
        row = self._conn.execute(f"SELECT * FROM traces WHERE seq = {self._seq_of}", {"trace_id": trace_id}).fetchone()
        return _row_to_summary(row) if row else None

    def find_trace_id(self, prefix: str) -> str | None:
        """Resolve an abbreviated trace id (as the CLI shows them); None when none or several match."""
        matches = self.find_trace_ids(prefix, limit=2)
        return matches[0] if len(matches) == 1 else None

    def find_trace_ids(self, prefix: str, limit: int = 20) -> list[str]:
        """The ids starting with ``prefix`` (``tr-`` and case ignored), in id order, at most ``limit``:
        an ambiguous prefix can be shown with its matches instead of as "no trace"."""
        prefix = prefix.lower().removeprefix("tr-")
        rows = self._conn.execute(_IDS_FROM[self.schema_version],
                                  {"low": prefix, "high": prefix + "g", "limit": limit}).fetchall()
        return [row[0] for row in rows]

    # ---- spans
    def get_trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, parents before children, siblings by start time."""
        rows = self._conn.execute(f"SELECT * FROM spans WHERE trace_seq = {self._seq_of} ORDER BY start_ns",
                                  {"trace_id": trace_id}).fetchall()
        return order_tree([_row_to_span(r) for r in rows])

    def iter_spans(self, since_ns: int | None = None, batch: int = 1000, *,
                   where: TraceFilter | None = None) -> Iterator[list[Span]]:
        """The spans of every matching trace (``since_ns``: traces started since) in batches,
        trace by trace in order of arrival (``spanmux replay``)."""
        clause, params = _filter_of(where, {"since_ns": since_ns} if since_ns is not None else {}).where()
        sql = f"SELECT * FROM spans WHERE trace_seq IN (SELECT seq FROM traces {clause}) ORDER BY trace_seq"
        cursor = self._conn.execute(sql, params)
        while rows := cursor.fetchmany(batch):
            yield [_row_to_span(r) for r in rows]

    def count_spans(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM spans").fetchone()[0])

    # ---- experiments (``spanmux.evaluate``); none in a file written before them
    def _has_experiments(self) -> bool:
        found = self._conn.execute(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN (?, ?)", EXPERIMENT_TABLES,
        ).fetchone()[0]
        return int(found) == len(EXPERIMENT_TABLES)

    def list_experiments(self, limit: int = 50, *, name: str | None = None) -> list[ExperimentRun]:
        """The newest experiment runs (of experiment ``name``), without their items."""
        if not self._has_experiments():
            return []
        clause, params = ("WHERE name = ?", [name]) if name is not None else ("", [])
        rows = self._conn.execute(
            f"SELECT * FROM experiment_runs {clause} ORDER BY start_ns DESC LIMIT ?", (*params, limit),
        ).fetchall()
        return [_row_to_run(r, []) for r in rows]

    def get_experiment(self, run_id: str) -> ExperimentRun | None:
        """One run with its items in dataset order; ``run_id`` may be abbreviated (a unique prefix),
        or an experiment's name (its newest run)."""
        if not self._has_experiments():
            return None
        row = self._conn.execute("SELECT * FROM experiment_runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            rows = self._conn.execute(
                "SELECT * FROM experiment_runs WHERE run_id >= ? AND run_id < ? LIMIT 2", (run_id, run_id + "g"),
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            row = self._conn.execute(
                "SELECT * FROM experiment_runs WHERE name = ? ORDER BY start_ns DESC LIMIT 1", (run_id,),
            ).fetchone()
        if row is None:
            return None
        items = [_item_decode(r[0]) for r in self._conn.execute(
            "SELECT detail FROM experiment_items WHERE run_id = ? ORDER BY idx", (row["run_id"],))]
        return _row_to_run(row, items)

    def iter_experiments(self, since_ns: int | None = None) -> Iterator[ExperimentRun]:
        """Every run started since ``since_ns`` with its items, oldest first (``spanmux replay``)."""
        if not self._has_experiments():
            return
        ids = [r[0] for r in self._conn.execute(
            "SELECT run_id FROM experiment_runs WHERE start_ns >= ? ORDER BY start_ns", (since_ns or 0,))]
        for run_id in ids:
            run = self.get_experiment(run_id)
            if run is not None:
                yield run

    def compare_experiments(self, run_a: str, run_b: str) -> ExperimentComparison:
        """Per-scorer deltas and the items that got better, worse or stayed the same from run A to
        run B (joined on item id); ``LookupError`` names a run that is not in the store."""
        from spanmux.experiments import compare_runs

        runs = []
        for given in (run_a, run_b):
            found = self.get_experiment(given)
            if found is None:
                raise LookupError(f"no experiment run {given!r} in {self.path}")
            runs.append(found)
        return compare_runs(runs[0], runs[1])

    # ---- scores
    def get_scores(self, trace_id: str | None = None) -> list[Score]:
        """The scores of one trace (or of every trace), oldest first."""
        if trace_id is None:
            rows = self._conn.execute("SELECT * FROM scores ORDER BY timestamp_ns").fetchall()
        else:
            rows = self._conn.execute(
                "SELECT * FROM scores WHERE trace_id = ? ORDER BY timestamp_ns", (trace_id,)
            ).fetchall()
        return [_row_to_score(r) for r in rows]

    def iter_scores(self, where: TraceFilter | None = None, **filters: Any) -> Iterator[Score]:
        """The scores of every matching trace, in one query (stats, replay)."""
        clause, params = _filter_of(where, filters).where()
        sql = f"SELECT * FROM scores WHERE trace_id IN (SELECT trace_id FROM traces {clause}) ORDER BY timestamp_ns"
        for row in self._conn.execute(sql, params):
            yield _row_to_score(row)


    # ---- what the web UI reads (one read path: no SQL outside this module)
    def newest_seq(self) -> int:
        """The number of the last trace that arrived (0 for an empty store): where "new traces" start."""
        return int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM traces").fetchone()[0])

    def recent_values(self, traces: int = 2_000, most: int = 50) -> dict[str, list[str]]:
        """The names, users, sessions, tags and models of the newest ``traces`` traces (at most ``most``
        of each, most frequent first): what the UI's filter fields suggest. One index-ordered read."""
        rows = self._conn.execute(
            "SELECT name, user_id, session_id, tags, models FROM traces ORDER BY start_ns DESC LIMIT ?",
            (traces,)).fetchall()
        counts: dict[str, dict[str, int]] = {k: {} for k in ("name", "user", "session", "tag", "model")}

        def count(key: str, value: str | None) -> None:
            if value:
                counts[key][value] = counts[key].get(value, 0) + 1

        for name, user_id, session_id, tags, models in rows:
            count("name", name)
            count("user", user_id)
            count("session", session_id)
            for tag in _loads(tags) or []:
                count("tag", str(tag))
            for model in (models or "").split(","):
                count("model", model)
        return {key: sorted(found, key=lambda v: (-found[v], v))[:most] for key, found in counts.items()}

    def newest_start_ns(self) -> int | None:
        """The start of the newest trace (None for an empty store), through ``traces_by_start``."""
        value = self._conn.execute("SELECT MAX(start_ns) FROM traces").fetchone()[0]
        return int(value) if value is not None else None

    def traces_after_seq(self, where: TraceFilter, after_seq: int, limit: int = 200) -> tuple[list[TraceSummary], int]:
        """Matching traces that arrived after trace number ``after_seq``, newest first, and the newest
        number seen (live updates: arrival order, so a trace with an older start time is not missed)."""
        newest = max(after_seq, self.newest_seq())  # first: a trace landing meanwhile is left for the next call
        clause, params = where.where()
        clause = f"{clause} AND seq > ? AND seq <= ?" if clause else "WHERE seq > ? AND seq <= ?"
        rows = self._conn.execute(f"SELECT * FROM traces {clause} ORDER BY seq DESC LIMIT ?",
                                  (*params, after_seq, newest, limit)).fetchall()
        if len(rows) == limit:  # more than a poll shows: the next call goes on from the oldest one shown
            newest = min(r["seq"] for r in rows)
        rows.sort(key=lambda r: (-r["start_ns"], r["seq"]))
        return [_row_to_summary(r) for r in rows], newest

    def search_traces(self, text: str, where: TraceFilter = EVERY_TRACE, *, limit: int = 50,
                      after: TraceCursor | None = None, budget_spans: int = 200_000) -> SearchPage:
        """Matching traces, newest first, with a span whose stored detail (input, output, attributes,
        error) contains ``text`` (ASCII case ignored). A bounded scan: traces are read page by page
        through the start-time index and their spans through ``spans_by_trace``; it stops after
        ``limit`` matches or about ``budget_spans`` spans read, and ``next`` continues from there."""
        needle = json.dumps(text, ensure_ascii=False)[1:-1].lower()  # as the JSON detail spells it
        found: list[TraceSummary] = []
        scanned = spans_read = 0
        cursor = after
        while len(found) < limit and spans_read < budget_spans:
            clause, params = where.where()
            if cursor is not None:
                clause = f"{clause} AND" if clause else "WHERE"
                clause += " start_ns <= ? AND (start_ns < ? OR seq > ?)"
                params = [*params, cursor.start_ns, cursor.start_ns, cursor.seq]
            rows = self._conn.execute(f"SELECT * FROM traces {clause} ORDER BY start_ns DESC, seq LIMIT ?",
                                      (*params, min(200, budget_spans))).fetchall()
            if not rows:
                return SearchPage(found, None, scanned, False)
            seqs = [r["seq"] for r in rows]
            hits = {r[0] for r in self._conn.execute(
                "SELECT DISTINCT trace_seq FROM spans WHERE trace_seq IN (SELECT value FROM json_each(?))"
                " AND (instr(lower(detail), ?) > 0 OR instr(lower(name), ?) > 0)",
                (json.dumps(seqs), needle, needle))}
            for row in rows:
                scanned += 1
                spans_read += row["span_count"]
                if row["seq"] in hits:
                    found.append(_row_to_summary(row))
                if len(found) >= limit or spans_read >= budget_spans:
                    break
            cursor = TraceCursor(row["start_ns"], row["seq"])
        return SearchPage(found, cursor, scanned, len(found) < limit)

    def span_rows(self, trace_id: str) -> list[SpanRow]:
        """The spans of a trace without their detail, by start time (tokens only for model calls)."""
        rows = self._conn.execute(
            "SELECT span_id, parent_id, name, kind, status, start_ns, end_ns, model,"
            " CASE WHEN kind IN ('llm', 'embedding') THEN json_extract(detail, '$.usage.total_tokens') END"
            f" FROM spans WHERE trace_seq = {self._seq_of} ORDER BY start_ns",
            {"trace_id": trace_id}).fetchall()
        return [SpanRow(*row) for row in rows]

    def get_span(self, trace_id: str, span_id: str) -> Span | None:
        """One span with its detail, through the (trace number, span id) index."""
        row = self._conn.execute(
            f"SELECT * FROM spans WHERE trace_seq = {self._seq_of} AND span_id = :span_id",
            {"trace_id": trace_id, "span_id": span_id}).fetchone()
        return _row_to_span(row) if row is not None else None

    def scores_of(self, trace_ids: list[str]) -> dict[str, list[Score]]:
        """The scores of several traces (a page of the list), oldest first, in one query."""
        rows = self._conn.execute(
            "SELECT * FROM scores WHERE trace_id IN (SELECT value FROM json_each(?)) ORDER BY timestamp_ns",
            (json.dumps(trace_ids),)).fetchall()
        out: dict[str, list[Score]] = {}
        for row in rows:
            out.setdefault(row["trace_id"], []).append(_row_to_score(row))
        return out

    def list_sessions(self, where: TraceFilter = EVERY_TRACE, *, limit: int = 50,
                      before_ns: int | None = None) -> list[SessionSummary]:
        """Sessions with their totals, the most recently active first; ``before_ns`` pages on (the
        previous page's last ``last_start_ns``). The newest traces are read through the start-time
        index until ``limit`` sessions are found, then only those sessions are summed (through
        ``traces_by_session``): a big store is never grouped whole."""
        clause, params = where.where()
        clause = f"{clause} AND session_id IS NOT NULL" if clause else "WHERE session_id IS NOT NULL"
        if before_ns is not None:
            clause += " AND start_ns < ?"
            params = [*params, before_ns]
        recent = self._conn.execute(f"SELECT session_id FROM traces {clause} ORDER BY start_ns DESC", params)
        found: dict[str, SessionSummary] = {}
        seen: set[str] = set()
        while len(found) < limit:
            batch: list[str] = []
            for (session_id,) in recent:
                if session_id not in seen:
                    seen.add(session_id)
                    batch.append(session_id)
                    if len(batch) >= limit - len(found):
                        break
            if not batch:
                break
            for summary in self._sum_sessions(where, batch):
                if before_ns is None or summary.last_start_ns < before_ns:  # else it was on an earlier page
                    found[summary.session_id] = summary
        recent.close()
        return sorted(found.values(), key=lambda s: -s.last_start_ns)[:limit]

    def _sum_sessions(self, where: TraceFilter, session_ids: list[str]) -> list[SessionSummary]:
        clause, params = where.where()
        inside = "session_id IN (SELECT value FROM json_each(?))"
        clause = f"{clause} AND {inside}" if clause else f"WHERE {inside}"
        rows = self._conn.execute(
            "SELECT session_id, COUNT(*), MIN(start_ns), MAX(start_ns), MAX(end_ns), MAX(user_id),"
            " SUM(error_count > 0), SUM(total_tokens), SUM(cost_total), MIN(root_start_ns || ' ' || COALESCE(name, ''))"
            f" FROM traces {clause} GROUP BY session_id", (*params, json.dumps(session_ids))).fetchall()
        return [SessionSummary(
            session_id=r[0], traces=r[1], start_ns=r[2], last_start_ns=r[3], end_ns=r[4], user_id=r[5],
            errors=r[6], total_tokens=r[7], cost_total=r[8], first_name=(r[9] or " ").partition(" ")[2] or None,
        ) for r in rows]

    def count_traces(self, where: TraceFilter = EVERY_TRACE) -> int:
        """How many traces match (the UI says how many a bounded view left out)."""
        clause, params = where.where()
        return int(self._conn.execute(f"SELECT COUNT(*) FROM traces {clause}", params).fetchone()[0])

    def time_buckets(self, width_ns: int, where: TraceFilter = EVERY_TRACE) -> list[TimeBucket]:
        """Per-bucket totals of the matching traces (by start time), oldest bucket first; empty
        buckets are absent."""
        clause, params = where.where()
        rows = self._conn.execute(
            "SELECT (start_ns / ?) * ? AS bucket, COUNT(*), SUM(error_count > 0), SUM(input_tokens),"
            f" SUM(output_tokens), SUM(total_tokens), SUM(cost_total) FROM traces {clause}"
            " GROUP BY bucket ORDER BY bucket", (width_ns, width_ns, *params)).fetchall()
        return [TimeBucket(start_ns=r[0], traces=r[1], errors=r[2], input_tokens=r[3], output_tokens=r[4],
                           total_tokens=r[5], cost_total=r[6]) for r in rows]

_item_decode = msgspec.json.Decoder(ExperimentItem).decode


def _row_to_run(row: sqlite3.Row, items: list[ExperimentItem]) -> ExperimentRun:
    return ExperimentRun(
        run_id=row["run_id"], name=row["name"], dataset=row["dataset"], status=row["status"], source=row["source"],
        start_ns=row["start_ns"], end_ns=row["end_ns"], scorers=_loads(row["scorers"]) or [],
        metadata=_loads(row["metadata"]), items=items,
    )


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
