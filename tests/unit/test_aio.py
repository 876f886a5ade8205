"""A task loop that carries on after errors still ends when it is cancelled, even if the call it
was in turns the cancellation into an error of its own (as a Redis client interrupted mid-command
may): the loop re-raises when cluster.aio.cancelling() says its task is being cancelled."""

from __future__ import annotations

import asyncio

import pytest

from cluster.aio import cancelling


async def loop_that_carries_on(recheck: bool, state: dict) -> None:
    while not state["stop"]:
        try:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                raise ConnectionError("interrupted") from None  # the client's own error
        except Exception:
            if recheck and cancelling():
                raise
            state["carried_on"] += 1


@pytest.mark.parametrize("recheck", [True, False])
def test_a_cancelled_loop_ends_when_it_rechecks(recheck):
    async def scenario() -> bool:
        state = {"stop": False, "carried_on": 0}
        task = asyncio.create_task(loop_that_carries_on(recheck, state))
        await asyncio.sleep(0.02)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=0.5)
        state["stop"] = True  # without the recheck, only a flag ends it
        await asyncio.gather(task, return_exceptions=True)
        return bool(done) and state["carried_on"] == 0

    assert asyncio.run(scenario()) is recheck


def test_a_products_periodic_tasks_wake_on_the_same_ticks(monkeypatch):
    """Timers of one product started at different moments end at the same instant (one wake-up
    of an idle process, not one per task); another product's ticks have their own phase; a tick a
    hair away is skipped rather than taken as a second wake-up."""
    import cluster.aio as aio

    now = {"t": 1000.0}
    monkeypatch.setattr(aio.time, "monotonic", lambda: now["t"])

    def due(period_s: float, product: str) -> float:
        return round(now["t"] + aio.until_tick(period_s, product), 9)

    ends = set()
    for start in (1000.5, 1001.37, 1002.5, 1004.1):  # status, the leader's look, the stall watch
        now["t"] = start
        ends.add(due(4.0, "BTC-USD"))
        assert 0 < aio.until_tick(4.0, "BTC-USD") <= 4.0 * 1.05
    assert len(ends) == 1, "one wake-up for all of them"
    now["t"] = 1000.0
    assert due(1.0, "BTC-USD") != due(1.0, "ETH-USD"), "each product has its own phase"
    tick = due(1.0, "BTC-USD")
    now["t"] = tick - 0.001  # a timer that fired a millisecond early
    assert due(1.0, "BTC-USD") == round(tick + 1.0, 9)
