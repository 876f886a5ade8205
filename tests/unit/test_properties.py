"""Property tests: the fast engine against the naive reference book, step by step.

Random streams mix every order kind the contract knows (limits with all TIFs, market sells by
size, market buys by funds, STP modes, cancels of live/finished/unknown ids, duplicate ids and a
few invalid values). After every step: identical events, an uncrossed book, and resting size
= opens - fills - cancels of rested orders. Snapshot/restore at a random point changes nothing.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.messages import DeadLetter, encode_events
from tests.unit.helpers import as_plain, events_of
from tests.unit.reference_book import ReferenceBook
from tests.unit.strategies import CONFIG, streams, wire_stream


def _engine() -> MatchingEngine:
    return MatchingEngine(ProductConfig(**CONFIG))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_engine_matches_reference_step_by_step(steps):
    engine = _engine()
    ref = ReferenceBook("BTC-USD", 3, 2, tick="0.05", lot="0.010")
    opened: set[int] = set()
    resting_expected = Decimal(0)
    for n, msg in enumerate(wire_stream(steps)):
        ts = n * 1_000_000
        got = events_of(engine, msgspec.json.encode(msg), ts)
        want = ref.apply(msg, ts)
        if isinstance(got, DeadLetter):
            assert want == ("dlq", got.reason), f"step {n} order {msg}"
            continue
        events = [as_plain(e) for e in got]
        assert events == want, f"step {n} order {msg}"
        for e in events:
            if e["type"] == "open":
                opened.add(e["order_id"])
                resting_expected += e["remaining_size"]
            elif e["type"] == "match":
                resting_expected -= e["size"]
            elif e["reason"] == "cancelled" and e["order_id"] in opened:
                resting_expected -= e["remaining_size"]
        bid, ask = engine.best_bid(), engine.best_ask()
        assert bid is None or ask is None or bid < ask, f"crossed book after step {n}"
        bids, asks = engine.depth(1000)
        resting = sum(s for _, s in bids + asks)
        assert Decimal(resting).scaleb(-3) == resting_expected == ref.total_resting()
        assert len(engine.book) == len(ref.resting)


@settings(max_examples=150, deadline=None)
@given(streams, st.integers(min_value=0, max_value=60))
def test_snapshot_restore_is_invisible(steps, cut):
    raws = [msgspec.json.encode(m) for m in wire_stream(steps)]
    cut = min(cut, len(raws))
    uncut = _engine()
    whole = [_out(uncut, raw, i) for i, raw in enumerate(raws)]
    first = _engine()
    head = [_out(first, raw, i) for i, raw in enumerate(raws[:cut])]
    snap = first.snapshot()
    restored = MatchingEngine.restore(ProductConfig(**CONFIG), snap)
    assert restored.snapshot() == snap
    tail = [_out(restored, raw, i + cut) for i, raw in enumerate(raws[cut:])]
    assert head + tail == whole
    assert restored.snapshot() == uncut.snapshot()


def _out(engine: MatchingEngine, raw: bytes, i: int):
    got = events_of(engine, raw, i * 1_000_000)
    return got if isinstance(got, DeadLetter) else encode_events(got)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_no_exception_for_any_bytes(raw):
    engine = _engine()
    out = events_of(engine, raw, 0)
    assert isinstance(out, DeadLetter | list)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=5,
)
FIELDS = [
    "id",
    "created_at",
    "product_id",
    "user_id",
    "client_oid",
    "price",
    "size",
    "funds",
    "type",
    "side",
    "time_in_force",
    "status",
    "stp",
]


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.sampled_from(FIELDS), json_values | st.sampled_from(["buy", "sell", "limit", "new"]))
)
def test_no_exception_for_any_object(obj):
    engine = _engine()
    out = events_of(engine, msgspec.json.encode(obj), 0)
    if not isinstance(out, DeadLetter):
        for e in encode_events(out):
            msgspec.json.decode(e)
