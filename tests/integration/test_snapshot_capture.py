"""Snapshots captured in a forked child (cluster/snapshots.py) are the state at the fork, to the byte."""

from __future__ import annotations

import concurrent.futures

import msgspec
import pytest

from cluster import snapshots
from cluster.tools.workload import generate_orders
from engine.api import apply_one
from engine.config import ProductConfig
from engine.native import make_engine

CONFIG = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)


@pytest.mark.parametrize("core", ["python", "native"])
def test_a_forked_capture_is_the_state_at_the_fork(core):
    engine = make_engine(CONFIG, core)
    orders = [msgspec.json.encode(o) for o in generate_orders("BTC-USD", 4000, seed=7)]
    for i, raw in enumerate(orders[:3000]):
        apply_one(engine, raw, i)
    assert engine.resting_orders() > 0
    expected = engine.snapshot()
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        captured = snapshots.capture(engine, 1, reader)
        for i, raw in enumerate(orders[3000:]):  # the loop goes on matching while the child writes
            apply_one(engine, raw, 3000 + i)
        assert engine.snapshot() != expected
        assert captured.result(timeout=60) == (expected, snapshots.state_hash(expected))
        in_place = snapshots.capture(engine, engine.resting_orders() + 1, reader)
        assert in_place.done() and in_place.result()[0] == engine.snapshot()


def test_a_failed_child_is_an_error_not_a_snapshot():
    class Broken:
        def resting_orders(self) -> int:
            return 10

        def snapshot(self) -> bytes:
            raise RuntimeError("cannot")

    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        with pytest.raises(OSError, match="failed"):
            snapshots.capture(Broken(), 1, reader).result(timeout=60)
