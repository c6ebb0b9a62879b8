"""Scores entered in the UI, sent the way a program sends them (``spanmux.score`` + ``flush``), so
with ``-c CONFIG`` they reach every configured backend (MLflow feedback, Langfuse scores, the
store) and without one they reach the store through its own writer (the ``local`` backend)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import spanmux
from spanmux.model import ScoreDataType

log = logging.getLogger("spanmux.ui")


class FeedbackWriter:
    """Configures spanmux in the server's process at the first score (not at start: configuring
    MLflow or Langfuse imports their SDKs, which would slow the start down)."""

    def __init__(self, store_path: str, config: str | None, spool_dir: str | None = None) -> None:
        self.store_path = store_path
        self.config = config
        self.spool_dir = spool_dir
        self._lock = threading.Lock()
        self._ready = False

    def _source(self) -> str | dict[str, Any]:
        if self.config is not None:
            return self.config
        source: dict[str, Any] = {"backends": ["local"], "local": {"path": self.store_path}}
        if self.spool_dir is not None:
            source["spool_dir"] = self.spool_dir
        return source

    def _configure(self) -> None:
        with self._lock:
            if not self._ready:
                spanmux.configure(self._source())  # raises ConfigurationError: shown on the page
                self._ready = True

    def send(self, trace_id: str, name: str, value: float | bool | str, *, comment: str | None,
             span_id: str | None, data_type: ScoreDataType) -> bool:
        """Score a trace (or one of its spans); True when every backend got it within 15 s."""
        self._configure()
        score_id = spanmux.score(trace_id, name, value, comment=comment, span_id=span_id, source="human",
                                 data_type=data_type)
        if score_id is None:
            return False
        delivered = spanmux.flush(timeout=15.0)
        if not delivered:
            log.warning("a score from the UI was not delivered to every backend yet (it waits in the spool)")
        return delivered
