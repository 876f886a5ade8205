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
