"""Warnings that cannot flood a log: at most one line per key per interval.

A stream of bad records (a gateway bug) would otherwise write a line per record at the rate of
the stream. The first occurrence of a key is logged at once; later ones within the interval are
counted, and the next line logged for that key says how many were left out (`suppressed=N`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedWarning:
    """One warning line per key per `interval_s`, with the count of those left out since the last."""

    def __init__(
        self, logger: logging.Logger, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        self.last_logged: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def warn(self, key: str, message: str, *args: object) -> bool:
        """Log `message % args` (plus `suppressed=N` when lines were left out) unless `key` was
        logged less than `interval_s` ago; returns whether it logged."""
        now = self.clock()
        last = self.last_logged.get(key)
        if last is not None and now - last < self.interval_s:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self.last_logged[key] = now
        left_out = self.suppressed.pop(key, 0)
        if left_out:
            self.logger.warning(message + " suppressed=%d", *args, left_out)
        else:
            self.logger.warning(message, *args)
        return True
