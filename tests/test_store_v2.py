# ruff: noqa: E501  (the fixture is an SQL dump, its INSERT lines as SQLite writes them)
"""A version-2 store (unique ``traces.trace_id``, before ``trace_ids``) keeps working: read, and
written on as version 2. The fixture is the dump of a file the version-2 writer made (spanmux at
41e10ff: two traces, one of them written in two batches, a score)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from spanmux.backends.local import LocalBackend
from spanmux.config_schemas import LocalConfig
from spanmux.model import ModelInfo, Span, Usage, new_span_id, new_trace_id
from spanmux.store import SCHEMA_VERSION, LocalStore

A, B = "0af7651916cd43dd8448eb211c80319c", "4bf92f3577b34da6a3ce929d0e0e4736"
ROOT = "b7ad6b7169203331"

VERSION_2_DUMP = r"""
BEGIN TRANSACTION;
CREATE TABLE experiment_items (
    run_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    detail TEXT NOT NULL,
    PRIMARY KEY (run_id, item_id)
);
CREATE TABLE experiment_runs (
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
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO "meta" VALUES('schema_version','2');
CREATE TABLE scores (
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
INSERT INTO "scores" VALUES('score-1','0af7651916cd43dd8448eb211c80319c',NULL,'helpful','1.0','numeric',NULL,'code',1764000000020000000);
CREATE TABLE spans (
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
INSERT INTO "spans" VALUES('0af7651916cd43dd8448eb211c80319c','00f067aa0ba902b7','b7ad6b7169203331','ChatOpenAI','llm','langchain',1764000000000001000,1764000000005000000,'ok','gpt-4o-mini','{"input":[{"role":"user","content":"weather?"}],"output":{"role":"assistant","content":"sunny"},"model":{"name":"gpt-4o-mini","provider":"openai"},"usage":{"input_tokens":50,"output_tokens":10,"total_tokens":60},"cost":{"input":0.0001,"output":0.0002,"total":0.0003,"source":"price-table"},"completion_start_ns":1764000000000002000}',1);
INSERT INTO "spans" VALUES('0af7651916cd43dd8448eb211c80319c','53995c3f42cd8ad8','b7ad6b7169203331','search','tool','langchain',1764000000006000000,1764000000007000000,'error',NULL,'{"input":{"q":"weather"},"error":{"type":"TimeoutError","message":"search timed out","traceback":null}}',1);
INSERT INTO "spans" VALUES('0af7651916cd43dd8448eb211c80319c','b7ad6b7169203331',NULL,'agent','agent','langchain',1764000000000000000,1764000000009000000,'ok',NULL,'{"input":{"q":"weather?"},"output":"sunny","trace":{"name":"weather run","user_id":"alice","session_id":"chat-1","tags":["prod"],"metadata":{"variant":"A"}}}',1);
INSERT INTO "spans" VALUES('4bf92f3577b34da6a3ce929d0e0e4736','e457b5a2e4d86bd1',NULL,'step','chain','manual',1764000000010000000,1764000000011000000,'ok',NULL,NULL,2);
CREATE TABLE traces (
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
INSERT INTO "traces" VALUES(1,'0af7651916cd43dd8448eb211c80319c','weather run','b7ad6b7169203331',1764000000000000000,1764000000009000000,'ok',3,1,1,50,10,60,0.0003,'gpt-4o-mini','alice','chat-1','["prod"]','{"variant":"A"}','langchain','agent',0,1764000000000000000,'weather run');
INSERT INTO "traces" VALUES(2,'4bf92f3577b34da6a3ce929d0e0e4736','step','e457b5a2e4d86bd1',1764000000010000000,1764000000011000000,'ok',1,0,0,0,0,0,NULL,NULL,NULL,NULL,NULL,NULL,'manual','step',0,1764000000010000000,NULL);
CREATE UNIQUE INDEX spans_by_trace ON spans (trace_seq, span_id);
CREATE INDEX traces_by_start ON traces (start_ns DESC);
CREATE INDEX traces_by_session ON traces (session_id, start_ns);
CREATE INDEX traces_by_user ON traces (user_id, start_ns);
CREATE INDEX scores_by_trace ON scores (trace_id);
CREATE INDEX scores_by_name ON scores (name, trace_id);
CREATE INDEX experiment_runs_by_start ON experiment_runs (start_ns DESC);
COMMIT;
"""


def version_2_store(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.executescript(VERSION_2_DUMP)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return path


def version_of(path: Path) -> tuple[str, str]:
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
    traces = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'traces'").fetchone()[0]
    conn.close()
    return version, traces


def test_a_version_2_store_reads_as_before(tmp_path: Path) -> None:
    path = version_2_store(tmp_path / "v2.db")
    with LocalStore(path) as store:
        assert store.schema_version == 2
        first = store.get_trace_summary(A)
        assert first is not None and first.name == "weather run" and first.root_span_id == ROOT
        assert (first.span_count, first.error_count, first.llm_calls, first.total_tokens) == (3, 1, 1, 60)
        assert first.cost_total == 0.0003 and first.user_id == "alice" and first.tags == ["prod"]
        assert [s.name for s in store.get_trace(A)] == ["agent", "ChatOpenAI", "search"]
        assert [r.name for r in store.span_rows(A)] == ["agent", "ChatOpenAI", "search"]
        span = store.get_span(A, "00f067aa0ba902b7")
        assert span is not None and span.usage is not None and span.usage.total_tokens == 60
        assert store.find_trace_ids("0af7") == [A] and store.find_trace_id("tr-4BF9") == B
        assert [t.trace_id for t in store.list_traces()] == [B, A]
        assert [s.name for s in store.get_scores(A)] == ["helpful"]


def test_a_version_2_store_is_written_as_version_2(tmp_path: Path) -> None:
    path = version_2_store(tmp_path / "v2.db")
    backend = LocalBackend(LocalConfig(path=str(path)))
    t0 = time.time_ns()
    late = Span(trace_id=A, span_id=new_span_id(), parent_id=ROOT, name="ChatOpenAI", kind="llm",
                framework="langchain", start_ns=1_764_000_000_008_000_000, end_ns=1_764_000_000_010_000_000,
                model=ModelInfo("gpt-4o", "openai"), usage=Usage(5, 5, 10))
    new = Span(trace_id=new_trace_id(), span_id=new_span_id(), parent_id=None, name="fresh", kind="chain",
               framework="manual", start_ns=t0, end_ns=t0 + 1)
    backend.export([late, new], [])
    backend.export([late], [])  # a replay: stored once
    backend.shutdown(5)
    version, traces = version_of(path)
    assert version == "2" and "trace_id TEXT NOT NULL UNIQUE" in traces
    with LocalStore(path) as store:
        assert store.schema_version == 2 and store.count_spans() == 6
        first = store.get_trace_summary(A)
        assert first is not None and (first.span_count, first.llm_calls, first.total_tokens) == (4, 2, 70)
        assert first.models == ["gpt-4o", "gpt-4o-mini"] and first.end_ns == 1_764_000_000_010_000_000
        assert first.name == "weather run" and first.root_span_id == ROOT
        fresh = store.get_trace_summary(new.trace_id)
        assert fresh is not None and fresh.span_count == 1


def test_a_new_store_is_the_newest_version(tmp_path: Path) -> None:
    backend = LocalBackend(LocalConfig(path=str(tmp_path / "s.db")))
    backend.shutdown(5)
    version, traces = version_of(tmp_path / "s.db")
    assert version == str(SCHEMA_VERSION) == "3" and "UNIQUE" not in traces


@pytest.mark.parametrize("version", [1, 4])
def test_other_versions_are_refused(tmp_path: Path, version: int) -> None:
    from spanmux.store import StoreSchemaError

    path = version_2_store(tmp_path / "v.db")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    conn.commit()
    conn.close()
    with pytest.raises(StoreSchemaError, match=f"schema version {version}, this spanmux reads versions 2 and 3"):
        LocalStore(path)
