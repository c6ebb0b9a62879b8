"""When to try a failing backend again: one rule for the delivery lanes and ``spanmux replay``.

Each failure doubles the wait (from ``first`` up to ``maximum``); a server's ``Retry-After``
(``ExportError.retry_after``) replaces the computed wait for that attempt; a failure the backend
calls not retryable (a refused key) waits the maximum, and ``gave_up`` says so, so a caller can
stop instead of retrying. A success starts the next series from ``first`` again.
"""

from __future__ import annotations

import time

from spanmux.backend import ExportError


class Backoff:
    """The waiting state of one series of attempts against one backend."""

    __slots__ = ("current", "first", "gave_up", "maximum", "retry_at")

    def __init__(self, first: float, maximum: float) -> None:
        self.first = first
        self.maximum = maximum
        self.current = 0.0  # the last computed wait; 0 before the first failure
        self.retry_at = 0.0  # time.monotonic() of the next attempt
        self.gave_up = False  # the last failure was not retryable

    def failed(self, exc: BaseException, now: float | None = None) -> float:
        """Record a failure; the seconds to wait before the next attempt (also in ``retry_at``)."""
        self.current = min(self.maximum, max(self.first, self.current * 2))
        self.gave_up = isinstance(exc, ExportError) and not exc.retryable
        if self.gave_up:
            self.current = self.maximum
        retry_after = getattr(exc, "retry_after", None)
        wait = retry_after if retry_after else self.current
        self.retry_at = (time.monotonic() if now is None else now) + wait
        return wait

    def succeeded(self) -> None:
        self.current = 0.0
        self.gave_up = False

    def restart(self) -> None:
        """A fresh series (a flush tries again from the shortest wait)."""
        self.current = 0.0


def retry_after_seconds(header: str | None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or HTTP date), for a backend's
    ``ExportError.retry_after``; None when absent or unreadable."""
    if not header:
        return None
    try:
        return max(0.0, float(header))
    except ValueError:
        pass
    import email.utils

    try:
        when = email.utils.parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
