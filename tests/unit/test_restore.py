"""Restoring snapshots: every impossible one is refused, the same way by both cores.

Valid snapshots come from random order streams; each is then mutated field by field into values
no engine writes (engine/snapshot.py's docstring lists them), or into random garbage. Both cores
must refuse it with the same SnapshotError, or both accept it, write it back byte for byte, and
give identical events on a following random stream. Also: the sequence never passes 2^63-1.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.api import SequenceExhausted, apply_one
from engine.config import ProductConfig
from engine.decimals import format_scaled
from engine.matching import MatchingEngine
from engine.native import NativeEngine, native_available
from engine.snapshot import INT64_MAX, SnapshotError
from tests.unit.test_native import PRODUCTS, orderish
from tests.unit.test_properties import wire_stream

pytestmark = pytest.mark.skipif(
    not native_available() and os.environ.get("OBC_REQUIRE_NATIVE") != "1",
    reason="the C core is not built",
)

INTS = st.one_of(
    st.sampled_from([0, 1, -1, 2, INT64_MAX, INT64_MAX - 1, 2**63, -(2**63), 2**64 - 1]),
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-3, 50),
)
# (row field, values no engine writes there) - each must be refused
IMPOSSIBLE_ROW = {
    0: [0, -1, 2**63, -(2**63)],  # id
    1: [2**63, 2**64 - 1],  # user_id (msgpack holds nothing below -2^63)
    2: ["BUY", "", "bid"],  # side
    3: [0, -5, 2**63, 2**64 - 1],  # price
    4: [0, -1, 2**63],  # remaining
    5: ["IOC", "FOK", "DAY", "gtc", ""],  # time_in_force: only GTC and GTX rest
}


def _outcome(engine_cls, cfg: ProductConfig, data: bytes):
    try:
        return engine_cls.restore(cfg, data)
    except SnapshotError as exc:
        return ("refused", exc.reason, str(exc))


def _apply(engine, raws: list[bytes]) -> list:
    out = []
    for i, raw in enumerate(raws):
        try:
            out.append(apply_one(engine, raw, i))
        except SequenceExhausted as exc:
            out.append(("exhausted", str(exc)))
    return out


def _valid_snapshot(data, cfg: ProductConfig, product: dict) -> dict:
    """A snapshot of a random stream (valid limits that rest and trade, then wire noise), decoded."""
    rules = cfg.rules()
    engine = MatchingEngine(cfg)
    limits = data.draw(
        st.lists(
            st.tuples(
                st.sampled_from(["buy", "sell"]),
                st.integers(1, 12),
                st.integers(1, 4),
                st.sampled_from(["GTC", "GTC", "GTX", "IOC"]),
                st.integers(1, 3),
            ),
            max_size=25,
        )
    )
    for i, (side, ticks, lots, tif, user) in enumerate(limits):
        order = {
            "id": 2 * i + 1,
            "product_id": product["product_id"],
            "user_id": user,
            "type": "limit",
            "side": side,
            "price": format_scaled(ticks * rules.tick, rules.quote_scale),
            "size": format_scaled(max(lots * rules.lot, rules.min_size), rules.base_scale),
            "time_in_force": tif,
        }
        apply_one(engine, msgspec.json.encode(order), i)
    noise = data.draw(st.lists(orderish(product["product_id"]), max_size=10))
    for i, obj in enumerate(noise):
        apply_one(engine, msgspec.json.encode(obj), i)
    return msgspec.msgpack.decode(engine.snapshot())


def _mutate(data, snap: dict, cfg: ProductConfig) -> tuple[bytes, bool]:
    """Snapshot bytes, and whether they are impossible for certain (else: either outcome)."""
    rules = cfg.rules()
    kind = data.draw(
        st.sampled_from(
            ["row", "row", "row_any", "dup_id", "unseen_id", "off_grid", "cross", "reorder"]
            + ["sequence", "trade_seq", "id_window_max", "bits", "product_id", "garbage", "none"]
        )
    )
    orders = [list(row) for row in snap["orders"]]
    impossible = True
    if kind in ("row", "row_any", "dup_id", "unseen_id", "off_grid", "reorder", "cross") and not orders:
        kind = "sequence"
    if kind == "row":
        field = data.draw(st.sampled_from(sorted(IMPOSSIBLE_ROW)))
        orders[data.draw(st.integers(0, len(orders) - 1))][field] = data.draw(
            st.sampled_from(IMPOSSIBLE_ROW[field])
        )
    elif kind == "row_any":
        field = data.draw(st.integers(0, 5))
        value = data.draw(
            INTS if field not in (2, 5) else st.sampled_from(["buy", "sell", "GTC", "GTX", "x"])
        )
        orders[data.draw(st.integers(0, len(orders) - 1))][field] = value
        impossible = False
    elif kind == "dup_id":
        if len(orders) < 2:
            orders.append(list(orders[0]))
        else:
            orders[1][0] = orders[0][0]
    elif kind == "unseen_id":
        orders[0][0] = snap["id_window_max"] + 1
    elif kind == "off_grid":
        row = orders[data.draw(st.integers(0, len(orders) - 1))]
        if rules.tick > 1 and data.draw(st.booleans()):
            row[3] += 1
        elif rules.lot > 1:
            row[4] += 1
        else:
            row[3] = 0
    elif kind == "cross":
        bids = [r for r in orders if r[2] == "buy"]
        asks = [r for r in orders if r[2] == "sell"]
        if bids and asks:
            asks[0][3] = bids[0][3]  # the best ask at the best bid: it would have traded
        else:
            orders[0][2] = "sell" if orders[0][2] == "buy" else "buy"
            impossible = False  # a lone order on the other side may well be possible
    elif kind == "reorder":
        if len({(r[2], r[3]) for r in orders}) < 2:
            orders[0][1] = 2**63  # no two levels to swap: break it otherwise
        else:
            orders.reverse()
    elif kind in ("sequence", "trade_seq", "id_window_max"):
        value = data.draw(INTS)
        snap[kind] = value
        bad = {
            "sequence": value < 0 or value > INT64_MAX or value < snap["trade_seq"] + len(orders),
            "trade_seq": value < 0 or value + len(orders) > snap["sequence"],
            "id_window_max": value < 0 or value > INT64_MAX or any(r[0] > value for r in orders),
        }[kind]
        impossible = bad
    elif kind == "bits":
        bits = bytearray(snap["id_window_bits"])
        how = data.draw(st.sampled_from(["flip", "short", "long", "pad"]))
        if how == "flip":
            pos = data.draw(st.integers(0, rules.id_window - 1))
            bits[pos >> 3] ^= 1 << (pos & 7)
            impossible = False  # forgetting an id can be possible; the checks decide
        elif how == "short":
            bits = bits[:-1]
        elif how == "long":
            bits += b"\0"
        elif rules.id_window % 8:
            bits[-1] |= 0x80  # a bit past the window
        else:
            impossible = False
        snap["id_window_bits"] = bytes(bits)
    elif kind == "product_id":
        snap["product_id"] = "OTHER"
    elif kind == "garbage":
        return data.draw(st.binary(max_size=80)), False
    else:
        impossible = False
    snap["orders"] = orders
    return msgspec.msgpack.encode(snap), impossible


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_both_cores_refuse_impossible_snapshots_alike(data):
    product = data.draw(st.sampled_from(PRODUCTS))
    cfg = ProductConfig(**product)
    snap = _valid_snapshot(data, cfg, product)
    raw, impossible = _mutate(data, snap, cfg)
    py = _outcome(MatchingEngine, cfg, raw)
    nat = _outcome(NativeEngine, cfg, raw)
    if isinstance(py, tuple) or isinstance(nat, tuple):
        assert py == nat
        return
    assert not impossible, f"restored an impossible snapshot: {msgspec.msgpack.decode(raw)}"
    assert py.snapshot() == nat.snapshot() == raw  # what is accepted is kept exactly
    objs = data.draw(st.lists(orderish(product["product_id"]), max_size=30))
    raws = [msgspec.json.encode(o) for o in objs]
    assert _apply(nat, raws) == _apply(py, raws)
    assert nat.snapshot() == py.snapshot()


def test_every_snapshot_of_a_stream_restores():
    """No false refusal: the snapshot after every step of a stream is accepted by both cores."""
    cfg = ProductConfig(**PRODUCTS[0])
    engine = MatchingEngine(cfg)
    steps = [
        ("new", s, k, p, 10 * n, "1.00", t, u, None)
        for n in range(1, 4)
        for s in ("buy", "sell")
        for k in ("limit",)
        for p in ("9.90", "10.00", "10.10")
        for t in ("GTC", "GTX", "IOC")
        for u in (1, 2)
    ]
    for i, obj in enumerate(wire_stream(steps)):
        apply_one(engine, msgspec.json.encode(obj), i)
        snap = engine.snapshot()
        for cls in (MatchingEngine, NativeEngine):
            assert cls.restore(cfg, snap).snapshot() == snap, (cls.__name__, i)
    assert engine.resting_orders() > 10 and engine.trade_seq > 10


def _near_the_end(resting: int, sequence: int) -> tuple[ProductConfig, bytes]:
    """A snapshot with `resting` bids of user 1 at 10.00 and the given sequence."""
    cfg = ProductConfig(product_id="BTC-USD", base_scale=2, quote_scale=2)
    engine = MatchingEngine(cfg)
    for oid in range(1, resting + 1):
        apply_one(engine, _limit(oid, "buy"), 0)
    snap = msgspec.msgpack.decode(engine.snapshot())
    snap["sequence"] = sequence
    return cfg, msgspec.msgpack.encode(snap)


def _limit(oid: int, side: str, size: str = "1") -> bytes:
    return msgspec.json.encode(
        {"id": oid, "product_id": "BTC-USD", "type": "limit", "side": side, "price": "10.00", "size": size}
    )


@pytest.mark.parametrize("engine_cls", [MatchingEngine, NativeEngine])
def test_the_sequence_stops_at_int64_max_without_wrapping(engine_cls):
    """From 2^63-2 with an empty book one order (1 event) fits; then an order that could take
    3 events is refused before it changes anything, and so is every input after it."""
    cfg, snap = _near_the_end(0, INT64_MAX - 1)
    engine = engine_cls.restore(cfg, snap)
    events = apply_one(engine, _limit(1, "buy"), 5)
    assert [msgspec.json.decode(e)["sequence"] for e in events] == [INT64_MAX]
    state, counters = engine.snapshot(), engine.counters.as_dict()
    for raw in (_limit(2, "sell"), msgspec.json.encode({"id": 1, "status": "cancelling"}), b"{}"):
        with pytest.raises(
            SequenceExhausted, match=r"product=BTC-USD sequence=9223372036854775807 resting=1"
        ):
            apply_one(engine, raw, 6)
    assert engine.snapshot() == state and engine.counters.as_dict() == counters
    assert engine.sequence == INT64_MAX and engine.trade_seq == 0


def test_both_cores_use_the_last_sequences_alike():
    """3 resting bids and room for exactly the worst case (2 per maker + 1): a sell that takes
    all three uses sequence up to 2^63-1 on both cores; the next input is refused on both."""
    cfg, snap = _near_the_end(3, INT64_MAX - 7)
    outcomes = []
    for cls in (MatchingEngine, NativeEngine):
        engine = cls.restore(cfg, snap)
        events = _apply(engine, [_limit(4, "sell", size="3"), _limit(5, "sell"), _limit(6, "buy")])
        outcomes.append((events, engine.snapshot(), engine.sequence, engine.trade_seq))
    assert outcomes[0] == outcomes[1]
    events, _, sequence, trade_seq = outcomes[0]
    assert sequence == INT64_MAX - 7 + 7 and trade_seq == 3
    assert [msgspec.json.decode(e)["sequence"] for e in events[0]][-1] == INT64_MAX
    assert events[1][0] == "exhausted" and events[2][0] == "exhausted"


@pytest.mark.parametrize(
    "args",
    [
        (-1, 0, 0, []),
        (5, 6, 0, []),
        (5, -1, 0, []),
        (5, 0, -1, []),
        (5, 0, 9, [(1, 1, "buy", 100, 5, "IOC")]),
        (5, 0, 9, [(1, 1, "buy", 100, 5, "FOK")]),
        (5, 0, 9, [(10, 1, "buy", 100, 5, "GTC")]),  # id above id_window_max
        (5, 0, 9, [(1, 1, "buy", 101, 5, "GTC")]),  # off the tick (0.05)
        (5, 0, 9, [(1, 1, "buy", 100, 15, "GTC")]),  # off the lot (0.010)
    ],
)
def test_the_c_core_load_keeps_its_own_checks(args):
    """Second line: the C core's load refuses what its state relies on, without engine/snapshot.py."""
    engine = NativeEngine(ProductConfig(**PRODUCTS[0]))
    sequence, trade_seq, id_max, rows = args
    with pytest.raises(ValueError):
        engine._core.load(sequence, trade_seq, id_max, bytes((engine.rules.id_window + 7) // 8), rows)


def test_the_envelope_format_is_checked_on_read():
    """cluster/redis_state.py: an envelope of another format, another product or no envelope at
    all is a SnapshotError that names it, not a misread."""
    from cluster.redis_state import SNAPSHOT_FORMAT, SnapshotEnvelope, decode_envelope, encode_envelope

    def envelope(**kw) -> bytes:
        fields = dict(format=SNAPSHOT_FORMAT, product="BTC-USD", epoch=1, next_offset=5, sequence=3)
        return encode_envelope(SnapshotEnvelope(**{**fields, "fingerprint": "f", "engine": b"x", **kw}))

    assert decode_envelope(envelope(), "BTC-USD").next_offset == 5
    with pytest.raises(
        SnapshotError, match=r"product=BTC-USD snapshot envelope format 2, this release reads 1"
    ) as err:
        decode_envelope(envelope(format=2), "BTC-USD")
    assert err.value.reason == "format_mismatch"
    with pytest.raises(SnapshotError) as err:
        decode_envelope(envelope(product="ETH-USD"), "BTC-USD")
    assert err.value.reason == "config_mismatch"
    with pytest.raises(SnapshotError) as err:
        decode_envelope(b"\x93garbage", "BTC-USD")
    assert err.value.reason == "corrupt" and "product=BTC-USD" in str(err.value)
