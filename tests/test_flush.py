"""``flush(timeout)`` means delivered: it keeps retrying every backend (its spool included) with the
lane's backoff, honouring ``Retry-After``, until everything emitted before the call was taken or the
timeout ran out, and says which. The exit path retries the same way within its deadline."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import spanmux

TRACES = "/api/public/otel/v1/traces"


def configure_langfuse(tmp_path: Path, host: str, server: Any, **extra: Any) -> None:
    spanmux.configure({
        "backends": ["local", "langfuse"],
        "local": {"path": str(tmp_path / "store.db")},
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval": 0.05,
        "langfuse": {"public_key": server.public_key, "secret_key": server.secret_key, "host": host, **extra},
    })


def emit(count: int) -> list[str]:
    span_ids = []
    for n in range(count):
        with spanmux.span(f"job-{n}", kind="agent") as root:
            with spanmux.span("answer", kind="llm") as child:
                pass
        root.score("quality", 1.0)
        span_ids += [root.span_id, child.span_id]
    return span_ids


def test_one_flush_delivers_through_two_503_answers(langfuse_server: Any, tmp_path: Path) -> None:
    configure_langfuse(tmp_path, langfuse_server.url, langfuse_server)
    langfuse_server.fail_next(2, status=503)
    span_ids = emit(10)
    assert spanmux.flush(timeout=30)  # one call, no loop around it
    assert sorted(o.span_id for o in langfuse_server.all_observations()) == sorted(span_ids)
    assert len(langfuse_server.all_scores()) == 10
    assert 503 in langfuse_server.statuses(TRACES) + langfuse_server.statuses("/api/public/scores")


def test_one_flush_delivers_500_traces_through_a_40_request_outage_honouring_retry_after(
    langfuse_server: Any, tmp_path: Path
) -> None:
    configure_langfuse(tmp_path, langfuse_server.url, langfuse_server)
    langfuse_server.fail_next(40, status=503, retry_after=0.05)  # far below the backoff it would use
    span_ids = emit(500)
    started = time.monotonic()
    assert spanmux.flush(timeout=120)
    elapsed = time.monotonic() - started
    assert sorted(o.span_id for o in langfuse_server.all_observations()) == sorted(span_ids)
    assert len(langfuse_server.all_scores()) == 500
    failures = langfuse_server.statuses(TRACES).count(503) + langfuse_server.statuses("/api/public/scores").count(503)
    assert failures == 40
    assert elapsed < 60, f"{elapsed:.1f}s: Retry-After of 50 ms was not honoured"
    assert spanmux.stats()["backends"]["langfuse"]["spool_pending_batches"] == 0


def test_flush_says_false_when_time_runs_out_and_logs_what_waits(
    langfuse_server: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spanmux")
    configure_langfuse(tmp_path, langfuse_server.url, langfuse_server)
    langfuse_server.fail_for(3600)  # down for the whole test
    emit(7)
    started = time.monotonic()
    assert not spanmux.flush(timeout=1.0)
    assert time.monotonic() - started < 5
    waiting = [r.getMessage() for r in caplog.records if "wait in its spool" in r.getMessage()]
    assert len(waiting) == 1 and "'langfuse'" in waiting[0] and "14 spans and 7 scores" in waiting[0], waiting
    assert not langfuse_server.all_observations()
    assert spanmux.stats()["backends"]["local"]["exported_spans"] == 14  # the other backend got them


SCRIPT = """
    import sys, spanmux
    spanmux.configure({
        "backends": ["langfuse"],
        "langfuse": {"public_key": "pk-lf-contract", "secret_key": "sk-lf-contract", "host": sys.argv[1]},
        "spool_dir": "spool",
    })
    for n in range(20):
        with spanmux.span(f"short-{n}") as s:
            pass
        s.score("n", n)
    # no flush: the script just ends, as short scripts do
"""


def test_a_short_script_meeting_a_2_second_outage_delivers_before_it_exits(
    langfuse_server: Any, tmp_path: Path
) -> None:
    script = tmp_path / "short.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("SPANMUX_EXIT_TIMEOUT", None)  # the default deadline
    langfuse_server.fail_for(2.0)
    result = subprocess.run([sys.executable, str(script), langfuse_server.url], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(o.name for o in langfuse_server.all_observations()) == sorted(f"short-{n}" for n in range(20))
    assert len(langfuse_server.all_scores()) == 20
    assert not list((tmp_path / "spool" / "langfuse").glob("*.batch"))
