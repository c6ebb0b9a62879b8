"""Backend ``console``: one log line per finished span, for development."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from spanmux.backend import BaseBackend
from spanmux.model import Score, Span

log = logging.getLogger("spanmux.console")


class ConsoleBackend(BaseBackend):
    """Every kind is logged as itself (``<trace> <kind> <name> [<status>] ...``)."""

    name = "console"

    def __init__(self, config: Any, settings: Any = None) -> None:
        super().__init__(config, settings)
        self.level = logging.getLevelName(getattr(config, "level", "INFO"))
        if not isinstance(self.level, int):
            self.level = logging.INFO

    def export(self, spans: Sequence[Span], scores: Sequence[Score]) -> None:
        for s in spans:
            tokens = f" tokens={s.usage.total_tokens}" if s.usage else ""
            cost = f" cost=${s.cost.total:.6f}" if s.cost else ""
            model = f" model={s.model.name}" if s.model and s.model.name else ""
            log.log(self.level, "%s %s %s [%s] %.1fms%s%s%s", s.trace_id[:8], s.kind, s.name, s.status,
                    s.duration_ms, model, tokens, cost)
        for sc in scores:
            log.log(self.level, "%s score %s=%r", sc.trace_id[:8], sc.name, sc.value)
