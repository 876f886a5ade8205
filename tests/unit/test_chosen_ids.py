"""Order ids chosen by an attacker: the C core's keyed id map and its duplicate-id window.

Correctness only (both cores give the same bytes, every lookup finds what rests); the speed
target lives in `orderbook-cluster bench ids` (cluster/bench/ids.py), not in a timed test.
"""

from __future__ import annotations

import os
import random

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.bench.ids import SLOT_BITS, old_hash, old_hash_colliding_ids
from engine.api import apply_one
from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.native import NativeEngine, native_available

pytestmark = pytest.mark.skipif(
    not native_available() and os.environ.get("OBC_REQUIRE_NATIVE") != "1",
    reason="the C core is not built",
)

PRODUCT = "BTC-USD"


def _limit(oid: int, side: str, price: str, size: str = "0.01", user_id: int = 1) -> bytes:
    return msgspec.json.encode(
        {
            "id": oid,
            "product_id": PRODUCT,
            "user_id": user_id,
            "type": "limit",
            "side": side,
            "price": price,
            "size": size,
        }
    )


def _cancel(oid: int) -> bytes:
    return msgspec.json.encode({"id": oid, "status": "cancelling"})


def _both(window: int = 1_000_000) -> tuple[MatchingEngine, NativeEngine]:
    cfg = ProductConfig(product_id=PRODUCT, base_scale=2, quote_scale=2, id_window=window)
    return MatchingEngine(cfg), NativeEngine(cfg)


def _feed(py, nat, raws) -> None:
    for i, raw in enumerate(raws):
        want = apply_one(py, raw, i)
        assert apply_one(nat, raw, i) == want, f"input {i}: {raw!r}"


def test_the_old_hash_ids_collide_under_it():
    """The bench's attack ids really all share a slot of the former map, at every size up to 2^20."""
    ids = old_hash_colliding_ids(500)
    assert ids == sorted(ids) and len(set(ids)) == 500 and all(0 < i < 2**63 for i in ids)
    assert {old_hash(i) & ((1 << SLOT_BITS) - 1) for i in ids} == {0}


@pytest.mark.parametrize(
    "ids",
    [
        old_hash_colliding_ids(3000),
        [k << SLOT_BITS for k in range(1, 3001)],  # multiples of a power of two
        [k << 40 for k in range(1, 3001)],
        sorted({*old_hash_colliding_ids(1000), *range(1, 1001), *(k << 17 for k in range(1, 1001))}),
    ],
    ids=["old_hash", "pow2_20", "pow2_40", "mixed"],
)
def test_colliding_ids_rest_cancel_and_fill_right(ids):
    """Rest thousands of colliding ids, cancel a shuffled part (some twice, some never rested),
    fill others from the front of their level: the same bytes as the Python core at every step,
    and the same book after."""
    py, nat = _both()
    rng = random.Random(17)
    prices = ["1.00", "1.01", "1.02"]
    _feed(py, nat, [_limit(oid, "buy", rng.choice(prices)) for oid in ids])
    assert nat.resting_orders() == py.resting_orders() == len(ids)
    gone = rng.sample(ids, len(ids) // 3)
    cancels = [*gone, *gone[:50], ids[-1] + 1, 2**63 - 1]  # twice, never rested: unknown cancels
    rng.shuffle(cancels)
    _feed(py, nat, [_cancel(oid) for oid in cancels])
    # a sell takes 200 orders from the best levels (each leaves the map through a fill)
    _feed(py, nat, [_limit(2**63 - 2, "sell", "1.00", size="2.00", user_id=2)])
    _feed(py, nat, [_cancel(oid) for oid in ids])  # the rest, and the filled or cancelled: unknown
    assert nat.resting_orders() == py.resting_orders() == 0
    assert nat.snapshot() == py.snapshot()
    assert nat.counters.as_dict() == py.counters.as_dict()
    assert py.counters.unknown_cancels == 50 + 2 + len(gone) + 200


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from([1, 7, 64, 100, 4096, 5003, 3 * 4096 + 7]),
    st.lists(
        st.one_of(
            st.sampled_from([1, 2, 63, 64, 65, 511, 512, 4095, 4096, 4097]),
            st.integers(1, 3 * 4096 + 20),
            st.integers(-3 * 4096, -1),  # an older id: a duplicate, a fresh one, or outside the window
        ),
        max_size=120,
    ),
)
def test_id_window_jumps_as_the_python_core(window, steps):
    """Ids that jump by about the window (the C core clears only the window's dirty blocks):
    the same duplicates, dead letters and bitmap bytes as engine/id_window.py."""
    py, nat = _both(window)
    top, raws = 1, [_limit(1, "buy", "1.00")]
    for step in steps:
        oid = max(1, top + step)
        top = max(top, oid)
        raws.append(_limit(oid, "buy", "1.00"))
    _feed(py, nat, raws)
    assert nat.snapshot() == py.snapshot()
    assert nat.counters.as_dict() == py.counters.as_dict()
