"""A real Arize Phoenix for the tests, from its own virtual environment (Phoenix is large; it is
not in the dev venv). ``make .venv-phoenix`` creates that environment and the Makefile passes its
interpreter as ``SPANMUX_PHOENIX_PYTHON``.

``PhoenixServer`` starts ``phoenix serve`` offline: a temporary working directory, free ports,
loopback HTTP (its gRPC port listens on every interface whatever ``PHOENIX_HOST`` says, so it gets a
free port too), telemetry and external resources off. ``read()`` reads back with
``phoenix.client.Client`` by running this file with Phoenix's interpreter (``python phoenix_server.py
read URL PROJECT``), so nothing of Phoenix is imported into the tests' process. This module imports
only the standard library for that reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from servers import ServerProcess, free_port  # tests/ is on sys.path (this folder when run as a script)

PYTHON_ENV = "SPANMUX_PHOENIX_PYTHON"


def phoenix_python() -> str | None:
    """The Phoenix venv's interpreter: $SPANMUX_PHOENIX_PYTHON, else the repository's .venv-phoenix."""
    given = os.environ.get(PYTHON_ENV)
    if given and Path(given).exists():
        return given
    local = Path(__file__).resolve().parents[1] / ".venv-phoenix" / "bin" / "python"
    return str(local) if local.exists() else None


class PhoenixServer(ServerProcess):
    """``phoenix serve`` in ``folder``; ``stop()`` then ``start()`` again keeps its data and ports."""

    name = "phoenix"
    health_path = "/healthz"
    poll_seconds = 0.5
    tail_lines = 40
    stop_seconds = 20.0

    def __init__(self, python: str, folder: Path) -> None:
        super().__init__(folder, log_name="phoenix.log")
        self.python = python
        self.grpc_port = free_port()

    def start(self, timeout: float = 180.0) -> PhoenixServer:
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(self.folder / "work"),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "DO_NOT_TRACK": "1",
        }
        for name in list(env):
            if name.startswith(("OTEL_", "PHOENIX_COLLECTOR", "PHOENIX_PROJECT")):
                env.pop(name)
        phoenix = Path(self.python).with_name("phoenix")
        self.launch([str(phoenix), "serve"], env, timeout, append_log=True)
        return self

    def read(self, project: str, *, expect_spans: int = 0, timeout: float = 60.0) -> dict[str, Any]:
        """Spans, span annotations and trace annotations of ``project``, read with phoenix.client in
        Phoenix's interpreter. Phoenix inserts in the background: read until ``expect_spans`` spans are
        there (or the timeout), then once more after a pause so late inserts and duplicates show."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._read_once(project)
            if len(found["spans"]) >= expect_spans or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # Phoenix's bulk inserter runs on its own schedule
        return found

    def _read_once(self, project: str) -> dict[str, Any]:
        result = subprocess.run([self.python, __file__, "read", self.url, project], capture_output=True,
                                timeout=120, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"reading Phoenix failed: {result.stderr.decode(errors='replace')[-2000:]}")
        return dict(json.loads(result.stdout))


def _read(url: str, project: str) -> dict[str, Any]:  # runs in Phoenix's interpreter
    import httpx
    from phoenix.client import Client

    client = Client(base_url=url)
    try:
        spans = client.spans.get_spans(project_identifier=project, limit=10_000)
    except Exception as exc:  # a project that does not exist yet: nothing arrived
        if "404" in str(exc) or "not found" in str(exc).lower():
            return {"spans": [], "span_annotations": [], "trace_annotations": []}
        raise
    annotations: list[Any] = []
    if spans:
        annotations = list(client.spans.get_span_annotations(spans=spans, project_identifier=project))
    trace_ids = sorted({s["context"]["trace_id"] for s in spans})
    trace_annotations: list[Any] = []
    if trace_ids:
        response = httpx.get(f"{url}/v1/projects/{project}/trace_annotations",
                             params=[("trace_ids", t) for t in trace_ids], timeout=30)
        response.raise_for_status()
        trace_annotations = response.json()["data"]
    return {"spans": spans, "span_annotations": annotations, "trace_annotations": trace_annotations}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "read":
        json.dump(_read(sys.argv[2], sys.argv[3]), sys.stdout, default=str)
    else:
        sys.exit("usage: phoenix_server.py read URL PROJECT")
