"""Small asyncio helpers shared by a product process's tasks."""

from __future__ import annotations

import asyncio
import time
import zlib


def cancelling() -> bool:
    """Whether the running task is being cancelled.

    A task loop that catches Exception to carry on (Redis down, say) must re-raise when this is
    true: a client interrupted by the cancellation may raise its own error instead of
    CancelledError, and a loop that swallowed it would outlive the process's shutdown (a product
    process once led again after its exit had been decided, because its lease task went on).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def until_tick(period_s: float, product: str) -> float:
    """Seconds until the product's next tick of `period_s`: the instants phase + k * period_s on
    the monotonic clock, with a phase of the product's own in [0, 1) s.

    A quiet product process has several periodic tasks (status, the leader's look, the stall
    watch). Each wake-up of an idle process costs ~0.3 ms of CPU with cold caches, far more than
    the work it does; on one phase they wake it once, not once each. (The input-log check stays
    off these ticks: see Timing.consume_timeout_ms.) The phase differs per product, so a node's
    idle processes do not all wake at once. A tick closer than a twentieth of a period (a timer
    that fired a hair early) is skipped.
    """
    phase_s = zlib.crc32(product.encode()) % 1000 / 1000
    delay = period_s - (time.monotonic() - phase_s) % period_s
    return delay if delay > period_s / 20 else delay + period_s
