"""At most one warning per key per interval, and the next line says how many were left out."""

from __future__ import annotations

import logging

from cluster.log_limit import RateLimitedWarning


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_reason_per_interval_with_the_suppressed_count(caplog):
    clock = Clock()
    limiter = RateLimitedWarning(logging.getLogger("test.limit"), 10.0, clock)
    caplog.set_level(logging.WARNING, "test.limit")
    assert limiter.warn("not_json", "dead letter reason=%s offset=%d", "not_json", 1)
    for offset in range(2, 6):
        clock.now += 1
        assert not limiter.warn("not_json", "dead letter reason=%s offset=%d", "not_json", offset)
    assert limiter.warn("missing_side", "dead letter reason=%s offset=%d", "missing_side", 6)
    clock.now = 109.9
    assert not limiter.warn("not_json", "dead letter reason=%s offset=%d", "not_json", 7)
    clock.now = 110.0
    assert limiter.warn("not_json", "dead letter reason=%s offset=%d", "not_json", 8)
    clock.now = 125.0
    assert limiter.warn("not_json", "dead letter reason=%s offset=%d", "not_json", 9)
    assert [r.getMessage() for r in caplog.records] == [
        "dead letter reason=not_json offset=1",
        "dead letter reason=missing_side offset=6",
        "dead letter reason=not_json offset=8 suppressed=5",
        "dead letter reason=not_json offset=9",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
