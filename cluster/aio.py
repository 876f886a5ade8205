"""Small asyncio helpers shared by a product process's tasks."""

from __future__ import annotations

import asyncio


def cancelling() -> bool:
    """Whether the running task is being cancelled.

    A task loop that catches Exception to carry on (Redis down, say) must re-raise when this is
    true: a client interrupted by the cancellation may raise its own error instead of
    CancelledError, and a loop that swallowed it would outlive the process's shutdown (a product
    process once led again after its exit had been decided, because its lease task went on).
    """
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
