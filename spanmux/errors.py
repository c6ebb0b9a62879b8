"""Errors spanmux raises into user code. Only ``configure()`` raises; callbacks never do."""

from __future__ import annotations

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


class SpanmuxError(Exception):
    """Base class of spanmux's exceptions."""


class ConfigurationError(SpanmuxError):
    """Raised by ``spanmux.configure()`` listing every problem with its file, YAML path and line."""

    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        noun = "problem" if len(problems) == 1 else "problems"
        super().__init__(f"invalid spanmux configuration in {source} ({len(problems)} {noun}):\n{lines}")
