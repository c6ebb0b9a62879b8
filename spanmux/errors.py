"""Errors spanmux raises into user code. Only ``configure()`` raises; callbacks never do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a configuration: where it is and what is wrong (never the value itself,
    which may be a secret)."""

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.path or '<root>'}: {self.message}"


def in_line_order(problems: Iterable[ConfigProblem]) -> list[ConfigProblem]:
    """Problems sorted by line (those without one last), stable otherwise: read top to bottom
    like the file."""
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


def did_you_mean(name: str, candidates: Iterable[str], cutoff: float = 0.75, prefixes: bool = True) -> str:
    """``"; did you mean 'x'?"`` for the closest candidate, or ``""`` when none is close: a typo
    should be named as one, not only refused."""
    names = list(candidates)
    close = difflib.get_close_matches(name, names, n=1, cutoff=cutoff)
    if not close and prefixes and len(name) >= 4:  # a prefix ('experiment' of 'experiment_name') is close
        close = sorted(c for c in names if c.startswith(name) or name.startswith(c))[:1]
    return f"; did you mean {close[0]!r}?" if close else ""


class SpanmuxError(Exception):
    """Base class of spanmux's exceptions."""


class ConfigurationError(SpanmuxError):
    """Raised by ``spanmux.configure()`` listing every problem with its file, YAML path and line."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = in_line_order(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"invalid spanmux configuration in {source} ({len(problems)} {noun}):\n{lines}")
