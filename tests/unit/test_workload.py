"""The workload generator: deterministic, ms timestamps, and the engine agrees with the reference on it."""

from __future__ import annotations

import json

import msgspec
from click.testing import CliRunner

from cluster.bench.core import core
from cluster.tools.workload import generate_orders, orders_jsonl
from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.messages import DeadLetter
from tests.unit.helpers import as_plain, events_of
from tests.unit.reference_book import ReferenceBook


def test_deterministic_and_ms_timestamps():
    a = list(generate_orders("BTC-USD", 3000, seed=7))
    assert a == list(generate_orders("BTC-USD", 3000, seed=7))
    assert a != list(generate_orders("BTC-USD", 3000, seed=8))
    stamps = [o["created_at"] for o in a]
    assert all(t % 1_000_000 == 0 for t in stamps) and stamps == sorted(set(stamps))
    new_ids = [o["id"] for o in a if o["status"] == "new"]
    assert new_ids == list(range(1, len(new_ids) + 1))
    assert orders_jsonl("BTC-USD", 10, seed=7).count(b"\n") == 10


def test_mix_and_book_shape():
    config = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)
    engine = MatchingEngine(config)
    kinds = {"cancel": 0, "market": 0, "limit": 0}
    for o in generate_orders("BTC-USD", 30_000, seed=1):
        kinds["cancel" if o["status"] == "cancelling" else o["type"]] += 1
        out = events_of(engine, msgspec.json.encode(o), o["created_at"])
        assert not isinstance(out, DeadLetter)
    assert 0.2 < kinds["cancel"] / 30_000 < 0.4 and 0.02 < kinds["market"] / 30_000 < 0.1
    bids, asks = engine.depth(10_000)
    assert len(engine.book) > 1000 and len(bids) + len(asks) > 150
    assert engine.counters.rejected == 0


def test_engine_matches_reference_on_realistic_stream():
    engine = MatchingEngine(ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2))
    ref = ReferenceBook("BTC-USD", 6, 2, tick="0.01", lot="0.000001")
    for n, o in enumerate(generate_orders("BTC-USD", 1500, seed=3)):
        got = [as_plain(e) for e in events_of(engine, msgspec.json.encode(o), o["created_at"])]
        assert got == ref.apply(o, o["created_at"]), f"message {n} id {o['id']}"


def test_bench_core_smoke():
    result = CliRunner().invoke(core, ["--orders", "2000", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert figures["core_ops_per_s"] > 0 and figures["wire_p99_ns"] >= figures["wire_p50_ns"]
