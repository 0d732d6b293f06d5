"""Warnings that cannot flood the log: whoever can reach a port must not be able to fill the
disk or bury the one line an operator needs (5,000 unmatched ACKs used to be 5,000 lines)."""

from __future__ import annotations

import logging
import time

__all__ = ["RateLimitedWarning"]


class RateLimitedWarning:
    """A warning logged at most once per ``interval`` seconds, with the number suppressed, so
    that a flood (5,000 unmatched ACKs) cannot flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0) -> None:
        self.logger = logger
        self.interval = interval
        self.suppressed = 0
        self._last = float("-inf")

    def warn(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            message += " (%d more like it in the last %gs not logged)"
            args = (*args, self.suppressed, self.interval)
        self.suppressed = 0
        self._last = now
        self.logger.warning(message, *args)
