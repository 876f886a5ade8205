"""The benchmark's passthrough engine: the engine interface, copying input to output."""

from __future__ import annotations

import json

import pytest

from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.passthrough import PassthroughEngine
from engine.snapshot import SnapshotError

BTC = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)


def records(n: int) -> list[tuple[bytes, int]]:
    return [(json.dumps({"id": i}).encode(), 1_000 + i) for i in range(n)]


def test_copies_each_record_once_and_counts_them_as_events():
    engine = PassthroughEngine(BTC)
    out, dead = engine.apply(records(5))
    assert out == [value for value, _ in records(5)] and dead == []
    assert engine.sequence == 5 and engine.trade_seq == 0 and engine.counters.orders_in == 5


@pytest.mark.parametrize("per_mille", [0, 250, 1810, 3000])
def test_copies_at_another_volume_add_up_exactly_across_batches(per_mille):
    engine = PassthroughEngine(BTC, per_mille)
    batches = [records(1000)[i : i + 137] for i in range(0, 1000, 137)]
    copied = sum(len(engine.apply(batch)[0]) for batch in batches)
    assert copied == 1000 * per_mille // 1000 == engine.sequence


def test_a_record_without_a_value_is_copied_as_empty():
    out, _ = PassthroughEngine(BTC).apply([(None, 1)])
    assert out == [b""]


def test_snapshot_is_an_empty_book_at_its_sequence_and_restores():
    engine = PassthroughEngine(BTC)
    engine.apply(records(7))
    data = engine.snapshot()
    assert MatchingEngine.restore(BTC, data).sequence == 7  # a real core reads it: the format is shared
    again = PassthroughEngine.restore(BTC, data)
    assert again.sequence == 7 and again.resting_orders() == 0 and again.depth(5) == ([], [])
    again.apply(records(1))
    assert again.sequence == 8


def test_a_snapshot_of_other_settings_is_refused_as_by_the_cores():
    data = PassthroughEngine(BTC).snapshot()
    other = ProductConfig(product_id="BTC-USD", base_scale=8, quote_scale=2)
    with pytest.raises(SnapshotError):
        PassthroughEngine.restore(other, data)
