"""The built-in store: SQLite in WAL mode, zero setup, what the CLI reads.

Spans live in a table clustered by (trace_id, span_id), so reading one trace is a range scan.
A ``traces`` table keeps per-trace totals (duration, tokens, cost, status, root name, user,
session, tags) recomputed from the spans of each trace a batch touched: listing never scans
spans, and writing a span twice (a replayed batch) never double-counts. Several processes may
write one file: WAL plus a busy timeout serialize their short transactions.
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

log = logging.getLogger("spanmux.backends.local")

DEFAULT_PATH = ".spanmux/spanmux.db"
SCHEMA_VERSION = 1

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
    error TEXT,
    input TEXT,
    output TEXT,
    model TEXT,
    provider TEXT,
    model_parameters TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    cache_read_tokens INTEGER,
    cache_write_tokens INTEGER,
    reasoning_tokens INTEGER,
    usage_estimated INTEGER,
    cost_input REAL,
    cost_output REAL,
    cost_total REAL,
    cost_source TEXT,
    completion_start_ns INTEGER,
    attributes TEXT,
    trace_attributes TEXT,
    truncated INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (trace_id, span_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS traces (
    trace_id TEXT PRIMARY KEY,
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
    framework TEXT
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

_SPAN_COLUMNS = (
    "trace_id, span_id, parent_id, name, kind, framework, start_ns, end_ns, status, error, input, output, "
    "model, provider, model_parameters, input_tokens, output_tokens, total_tokens, cache_read_tokens, "
    "cache_write_tokens, reasoning_tokens, usage_estimated, cost_input, cost_output, cost_total, cost_source, "
    "completion_start_ns, attributes, trace_attributes, truncated"
)
_INSERT_SPAN = (
    f"INSERT OR REPLACE INTO spans ({_SPAN_COLUMNS}) VALUES ({', '.join('?' * len(_SPAN_COLUMNS.split(', ')))})"
)

_SUMMARIZE = """
INSERT INTO traces (trace_id, name, root_span_id, start_ns, end_ns, status, span_count, error_count, llm_calls,
                    input_tokens, output_tokens, total_tokens, cost_total, models, framework)
SELECT s.trace_id,
       (SELECT r.name FROM spans r WHERE r.trace_id = s.trace_id
          ORDER BY (r.parent_id IS NOT NULL), r.start_ns LIMIT 1),
       (SELECT r.span_id FROM spans r WHERE r.trace_id = s.trace_id
          ORDER BY (r.parent_id IS NOT NULL), r.start_ns LIMIT 1),
       MIN(s.start_ns), MAX(s.end_ns),
       CASE WHEN (SELECT r.status FROM spans r WHERE r.trace_id = s.trace_id
                  ORDER BY (r.parent_id IS NOT NULL), r.start_ns LIMIT 1) = 'error' THEN 'error' ELSE 'ok' END,
       COUNT(*), SUM(s.status = 'error'), SUM(s.kind = 'llm'),
       COALESCE(SUM(s.input_tokens), 0), COALESCE(SUM(s.output_tokens), 0), COALESCE(SUM(s.total_tokens), 0),
       SUM(s.cost_total), GROUP_CONCAT(DISTINCT s.model),
       (SELECT r.framework FROM spans r WHERE r.trace_id = s.trace_id
          ORDER BY (r.parent_id IS NOT NULL), r.start_ns LIMIT 1)
FROM spans s
WHERE s.trace_id IN (SELECT trace_id FROM temp.touched)
GROUP BY s.trace_id
ON CONFLICT (trace_id) DO UPDATE SET
    name = COALESCE((SELECT json_extract(t.trace_attributes, '$.name') FROM spans t
                     WHERE t.trace_id = excluded.trace_id AND json_extract(t.trace_attributes, '$.name') IS NOT NULL
                     LIMIT 1), excluded.name),
    root_span_id = excluded.root_span_id, start_ns = excluded.start_ns, end_ns = excluded.end_ns,
    status = excluded.status, span_count = excluded.span_count, error_count = excluded.error_count,
    llm_calls = excluded.llm_calls, input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    total_tokens = excluded.total_tokens, cost_total = excluded.cost_total, models = excluded.models,
    framework = excluded.framework
"""

_SET_TRACE_FIELDS = """
UPDATE traces SET
    name = COALESCE(?, name),
    user_id = COALESCE(?, user_id),
    session_id = COALESCE(?, session_id),
    tags = COALESCE(?, tags),
    metadata = COALESCE(?, metadata)
WHERE trace_id = ?
"""

_json_encode = msgspec.json.Encoder().encode


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
    return conn


def _span_row(span: Span) -> tuple[Any, ...]:
    usage, cost, model, trace = span.usage, span.cost, span.model, span.trace
    return (
        span.trace_id, span.span_id, span.parent_id, span.name, span.kind, span.framework,
        span.start_ns, span.end_ns, span.status,
        _json(msgspec.structs.asdict(span.error)) if span.error else None,
        _json(span.input), _json(span.output),
        model.name if model else None, model.provider if model else None,
        _json(model.parameters) if model and model.parameters else None,
        usage.input_tokens if usage else None, usage.output_tokens if usage else None,
        usage.total_tokens if usage else None, usage.cache_read_tokens if usage else None,
        usage.cache_write_tokens if usage else None, usage.reasoning_tokens if usage else None,
        int(usage.estimated) if usage else None,
        cost.input if cost else None, cost.output if cost else None, cost.total if cost else None,
        cost.source if cost else None,
        span.completion_start_ns, _json(span.attributes),
        _json(msgspec.to_builtins(trace)) if trace else None,
        int(span.truncated),
    )


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _row_to_span(row: sqlite3.Row) -> Span:
    usage = None
    if row["input_tokens"] is not None:
        usage = Usage(
            input_tokens=row["input_tokens"] or 0, output_tokens=row["output_tokens"] or 0,
            total_tokens=row["total_tokens"] or 0, cache_read_tokens=row["cache_read_tokens"] or 0,
            cache_write_tokens=row["cache_write_tokens"] or 0, reasoning_tokens=row["reasoning_tokens"] or 0,
            estimated=bool(row["usage_estimated"]),
        )
    cost = None
    if row["cost_total"] is not None:
        cost = Cost(row["cost_input"] or 0.0, row["cost_output"] or 0.0, row["cost_total"], row["cost_source"])
    model = None
    if row["model"] is not None or row["provider"] is not None or row["model_parameters"] is not None:
        model = ModelInfo(row["model"], row["provider"], _loads(row["model_parameters"]))
    error = ErrorInfo(**_loads(row["error"])) if row["error"] else None
    trace = msgspec.convert(_loads(row["trace_attributes"]), TraceAttributes) if row["trace_attributes"] else None
    return Span(
        trace_id=row["trace_id"], span_id=row["span_id"], parent_id=row["parent_id"], name=row["name"],
        kind=row["kind"], framework=row["framework"], start_ns=row["start_ns"], end_ns=row["end_ns"],
        status=row["status"], error=error, input=_loads(row["input"]), output=_loads(row["output"]),
        model=model, usage=usage, cost=cost, completion_start_ns=row["completion_start_ns"],
        attributes=_loads(row["attributes"]), trace=trace, truncated=bool(row["truncated"]),
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
    conn.executescript(_SCHEMA)
    conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    return conn


def write_batch(conn: sqlite3.Connection, spans: Sequence[Span], scores: Sequence[Score]) -> None:
    """One transaction: spans, the totals of the traces they touch, scores."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if spans:
            conn.executemany(_INSERT_SPAN, [_span_row(s) for s in spans])
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS touched (trace_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM temp.touched")
            fields: dict[str, TraceAttributes] = {}
            for s in spans:
                if s.trace is not None:
                    fields[s.trace_id] = s.trace
            conn.executemany(
                "INSERT OR IGNORE INTO temp.touched VALUES (?)", [(t,) for t in {s.trace_id for s in spans}]
            )
            conn.execute(_SUMMARIZE)
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


class LocalStore:
    """Read access to a store file (the CLI, the tests, ``spanmux replay``)."""

    def __init__(self, path: str | Path = DEFAULT_PATH) -> None:
        self.path = str(path)
        if not Path(self.path).exists():
            raise FileNotFoundError(f"no spanmux store at {self.path}")
        self._conn = _connect(self.path)
        self._conn.row_factory = sqlite3.Row
        self._conn.executescript(_SCHEMA)

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
        """Resolve an abbreviated trace id (as the CLI shows them)."""
        prefix = prefix.lower().removeprefix("tr-")
        rows = self._conn.execute(
            "SELECT trace_id FROM traces WHERE trace_id >= ? AND trace_id < ? LIMIT 2", (prefix, prefix + "g")
        ).fetchall()
        return rows[0][0] if len(rows) == 1 else None

    def get_trace(self, trace_id: str) -> list[Span]:
        """The spans of one trace, parents before children, siblings by start time."""
        rows = self._conn.execute("SELECT * FROM spans WHERE trace_id = ? ORDER BY start_ns", (trace_id,)).fetchall()
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
            "SELECT * FROM spans WHERE trace_id IN (SELECT trace_id FROM traces WHERE start_ns >= ?)"
            " ORDER BY trace_id"
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
