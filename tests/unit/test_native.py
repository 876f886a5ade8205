"""The C core (engine/_native.c) against the Python core (engine/matching.py), its oracle.

For any input, both must give the same bytes for every event, the same dead letters, the same
counters and byte-identical snapshots; a snapshot written by either core restores in the other.
Streams are random mixes of valid orders, cancels, duplicates and wrong values of every field,
on products whose scales, ticks, lots, minimums and id windows stress the arithmetic.
"""

from __future__ import annotations

import json
import os

import msgspec
import pytest
from confluent_kafka import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cluster.tools.workload import generate_orders
from engine.api import apply_one
from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.messages import DeadLetter
from engine.native import NativeEngine, make_engine, native_available, resolve_core
from engine.snapshot import SnapshotError
from tests.unit.strategies import CONFIG, streams, wire_stream

pytestmark = pytest.mark.skipif(
    not native_available() and os.environ.get("OBC_REQUIRE_NATIVE") != "1",
    reason="the C core is not built",
)

PRODUCTS = [
    CONFIG,
    # extreme scales: a market buy's funds need 128 bits, sizes and prices need all 63
    dict(product_id="X-Y", base_scale=18, quote_scale=18, min_funds="0.5", id_window=7),
    # no decimals at all, a minimum size, a tiny id window, and a product id JSON must escape
    dict(product_id='Ünï"co\\de', base_scale=0, quote_scale=0, min_size="2", id_window=3),
    dict(
        product_id="ETH-USD",
        base_scale=4,
        quote_scale=3,
        tick_size="0.005",
        lot_size="0.0020",
        min_size="0.0040",
    ),
]

AMOUNTS = st.one_of(
    st.sampled_from(
        [
            "1",
            "2",
            "5",
            "10",
            "10.00",
            "9.95",
            "0.010",
            "0.05",
            "0.5",
            "100",
            "0",
            "-0",
            "-1",
            "00.10",
            "1.000",
            "1.0001",
            "1.",
            ".5",
            "1e3",
            "NaN",
            " 1",
            "1_0",
            "+1",
            "",
            "9223372036854775807",
            "9223372036854775808",
            "0.000000000000000001",
            "922337203.6854775807",
            "1" * 65,
            "٣",
        ]
    ),
    st.from_regex(r"-?[0-9]{1,21}(\.[0-9]{1,21})?", fullmatch=True),
    st.text(max_size=6),
    st.none(),
    st.integers(-3, 3),
)


def orderish(product_id: str):
    """Wire objects that are often valid orders and often wrong in one or more fields."""
    return st.fixed_dictionaries(
        {
            "id": st.one_of(
                st.integers(1, 40), st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, None, "7", 1.5, True])
            ),
            "side": st.sampled_from(["buy", "sell", "sell", "buy", "BUY", None, 0]),
        },
        optional={
            "created_at": st.one_of(st.integers(-(2**63), 2**64 - 1), st.just("x")),
            "product_id": st.sampled_from([product_id] * 6 + ["OTHER", None, 5]),
            "user_id": st.one_of(st.integers(1, 3), st.integers(1, 3), st.integers(), st.just("u")),
            "client_oid": st.one_of(st.text(max_size=4), st.integers()),
            "price": AMOUNTS,
            "size": AMOUNTS,
            "funds": AMOUNTS,
            "type": st.sampled_from(["limit"] * 4 + ["market"] * 2 + ["stop", None, 1]),
            "time_in_force": st.sampled_from(
                ["GTC"] * 4 + ["IOC", "GTX", "FOK", "gtc", 'é"\\\n\x7f\u2028', None, 3]
            ),
            "status": st.sampled_from(["new"] * 8 + ["cancelling"] * 3 + ["open", 3, None]),
            "stp": st.sampled_from([None] * 4 + ["co", "cn", "cb", "xx", 7]),
        },
    )


# How producers write the JSON: msgspec's compact form, Python's json.dumps (orderbook-py's own
# producer: ", " and ": "), indented, and with raw UTF-8; the C core's fast path must read each
# exactly as msgspec does.
ENCODINGS = [
    msgspec.json.encode,
    lambda o: json.dumps(o).encode(),
    lambda o: json.dumps(o, indent=1).encode(),
    lambda o: json.dumps(o, ensure_ascii=False, separators=(",", ":")).encode(),
]


def _draw_orders(data, min_size: int, max_size: int) -> tuple[dict, list[dict]]:
    """A product of PRODUCTS and a list of order-ish dicts for it."""
    config = data.draw(st.sampled_from(PRODUCTS))
    return config, data.draw(st.lists(orderish(config["product_id"]), min_size=min_size, max_size=max_size))


def _pair(config: dict) -> tuple[MatchingEngine, NativeEngine]:
    cfg = ProductConfig(**config)
    return MatchingEngine(cfg), NativeEngine(cfg)


def _assert_same_state(py: MatchingEngine, nat: NativeEngine) -> None:
    assert nat.snapshot() == py.snapshot()
    assert nat.counters.as_dict() == py.counters.as_dict()
    assert (nat.sequence, nat.trade_seq) == (py.sequence, py.trade_seq)
    assert nat.depth(50) == py.depth(50)
    assert (nat.best_bid(), nat.best_ask(), nat.resting_orders()) == (
        py.best_bid(),
        py.best_ask(),
        py.resting_orders(),
    )


def _check_same(config: dict, raws: list[bytes], first_ts: int = 0) -> None:
    """Both cores, fresh, on the same records: the same bytes for each, then the same state."""
    py, nat = _pair(config)
    _feed_both(py, nat, raws, first_ts)
    _assert_same_state(py, nat)


def _feed_both(py, nat, raws, first_ts: int = 0) -> None:
    for i, raw in enumerate(raws):
        ts = first_ts + i * 1_000_000
        want = apply_one(py, raw, ts)
        got = apply_one(nat, raw, ts)
        assert got == want, f"input {i}: {raw!r}"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams)
def test_same_bytes_on_valid_streams(steps):
    _check_same(CONFIG, [msgspec.json.encode(m) for m in wire_stream(steps)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_same_bytes_on_mixed_and_wrong_inputs(data):
    config, objs = _draw_orders(data, 1, 60)
    encode = data.draw(st.sampled_from(ENCODINGS))
    _check_same(config, [encode(o) for o in objs], first_ts=data.draw(st.integers(0, 2**63 - 1)))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=60), max_size=10))
def test_same_dead_letters_for_any_bytes(raws):
    _check_same(CONFIG, raws)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_snapshots_cross_between_cores(data):
    """Cut a stream anywhere: either core's snapshot, restored in either core, continues identically."""
    config, objs = _draw_orders(data, 2, 50)
    raws = [msgspec.json.encode(o) for o in objs]
    cut = data.draw(st.integers(0, len(raws)))
    cfg = ProductConfig(**config)
    uncut = MatchingEngine(cfg)
    whole = [apply_one(uncut, raw, i) for i, raw in enumerate(raws)]
    writer = data.draw(st.sampled_from([MatchingEngine, NativeEngine]))(cfg)
    head = [apply_one(writer, raw, i) for i, raw in enumerate(raws[:cut])]
    reader_cls = data.draw(st.sampled_from([MatchingEngine, NativeEngine]))
    reader = reader_cls.restore(cfg, writer.snapshot())
    assert reader.snapshot() == writer.snapshot()
    tail = [apply_one(reader, raw, i + cut) for i, raw in enumerate(raws[cut:])]
    assert head + tail == whole
    assert reader.snapshot() == uncut.snapshot()


def test_same_bytes_on_the_benchmark_workload():
    """The realistic stream (deep books, cancels, market orders) of `bench`: 30,000 orders."""
    from engine.config import load_products

    config = load_products("configs/products.toml")["BTC-USD"]
    py, nat = MatchingEngine(config), NativeEngine(config)
    raws = [msgspec.json.encode(o) for o in generate_orders("BTC-USD", 30_000, 3)]
    _feed_both(py, nat, raws)
    _assert_same_state(py, nat)
    assert py.trade_seq > 1000 and py.resting_orders() > 500  # the stream really matched and rested


def test_market_buy_funds_beyond_64_bits():
    """funds * 10**base_scale overflows int64 at these scales; the fill must still be exact."""
    config = dict(product_id="X-Y", base_scale=18, quote_scale=18)
    py, nat = _pair(config)
    big = "9.223372036854775807"  # the largest amount at scale 18
    raws = [
        msgspec.json.encode(
            {
                "id": 1,
                "product_id": "X-Y",
                "type": "limit",
                "side": "sell",
                "price": "0.000000000000000003",
                "size": big,
            }
        ),
        msgspec.json.encode({"id": 2, "product_id": "X-Y", "type": "market", "side": "buy", "funds": big}),
    ]
    _feed_both(py, nat, raws)
    _assert_same_state(py, nat)
    assert py.trade_seq == 1


def test_numbers_of_every_length_are_written_alike():
    """Ids, user ids and amounts of every decimal length, 1 to 19 digits and both int64 ends:
    the C core writes digits itself (a length from a bit count, two digits at a time)."""
    edges = sorted({v for k in range(19) for v in (10**k - 1, 10**k, 2 * 10**k)} - {0} | {2**63 - 1})
    users = [-(2**63), -1, 0, *edges]
    scaled = [f"{v // 10**18}.{v % 10**18:018d}" for v in edges]  # X-Y has 18 decimals each side
    raws = []
    for i, oid in enumerate(edges):
        # each amount rests as a sell, then a buy for twice the size takes it and rests the rest
        order = {"id": oid, "product_id": "X-Y", "user_id": users[i % len(users)], "type": "limit"}
        side, size = ("sell", scaled[i // 2]) if i % 2 == 0 else ("buy", scaled[i // 2 + 1])
        raws.append(msgspec.json.encode({**order, "side": side, "price": scaled[i // 2], "size": size}))
    raws += [msgspec.json.encode({"id": oid, "status": "cancelling", "product_id": "X-Y"}) for oid in edges]
    py, nat = _pair(PRODUCTS[1])  # ids only grow, so its tiny id window drops none
    _feed_both(py, nat, raws, first_ts=2**63 - 10**9)
    _assert_same_state(py, nat)
    assert py.trade_seq > len(edges) // 3 and py.sequence > 2 * len(edges)


@pytest.mark.parametrize(
    "row",
    [
        (1, 1, "up", 100, 5, "GTC"),
        (1, 1, "buy", 100, 0, "GTC"),
        (1, 1, "buy", 100, 5, "DAY"),
        ("x", 1, "buy", 100, 5, "GTC"),
        (1, 1, "buy", 2**63, 5, "GTC"),
    ],
)
def test_native_restore_refuses_bad_rows(row):
    cfg = ProductConfig(**CONFIG)
    py = MatchingEngine(cfg)
    snap = msgspec.msgpack.decode(py.snapshot())
    snap["orders"] = [row]
    with pytest.raises(SnapshotError) as err:
        NativeEngine.restore(cfg, msgspec.msgpack.encode(snap))
    assert err.value.reason == "corrupt"


def test_native_restore_refuses_duplicate_ids_and_other_config():
    cfg = ProductConfig(**CONFIG)
    snap = msgspec.msgpack.decode(MatchingEngine(cfg).snapshot())
    snap["orders"] = [(1, 1, "buy", 100, 5, "GTC"), (1, 1, "sell", 200, 5, "GTC")]
    with pytest.raises(SnapshotError):
        NativeEngine.restore(cfg, msgspec.msgpack.encode(snap))
    other = ProductConfig(**{**CONFIG, "base_scale": 4})
    with pytest.raises(SnapshotError) as err:
        NativeEngine.restore(other, MatchingEngine(cfg).snapshot())
    assert err.value.reason == "config_mismatch"


def test_core_choice():
    assert resolve_core("python") == "python"
    assert resolve_core("auto") == "native"
    assert isinstance(make_engine(ProductConfig(**CONFIG), "native"), NativeEngine)
    assert isinstance(make_engine(ProductConfig(**CONFIG), "python"), MatchingEngine)
    with pytest.raises(ValueError):
        resolve_core("fast")


def test_native_required_but_missing(monkeypatch):
    import engine.native

    monkeypatch.setattr(engine.native, "_native", None)
    assert resolve_core("auto") == "python"
    with pytest.raises(ValueError, match="not built"):
        resolve_core("native")


# the rest of a limit order, after the keys a test varies
LIMIT_FIELDS = '"product_id":"BTC-USD","type":"limit","price":"10.00","size":"1.000"'


def test_unusual_json_reads_as_msgspec_reads_it():
    """Escapes, duplicate keys, unknown keys, floats, big ints, lone surrogates: msgspec decides."""
    base = LIMIT_FIELDS
    raws = [
        b'{"id":1,"side":"buy",' + base.encode() + b"}",
        b'{"id":2,"side":"s\\u0065ll",' + base.encode() + b"}",
        b'{"id":3,"side":"buy","side":"sell",' + base.encode() + b"}",
        b'{"id":4,"side":"sell","extra":{"a":[1,2]},' + base.encode() + b"}",
        b'{"id":5.0,"side":"sell",' + base.encode() + b"}",
        b'{"id":6,"side":"sell","user_id":18446744073709551615,' + base.encode() + b"}",
        b'{"id":7,"side":"sell","time_in_force":"\\ud800",' + base.encode() + b"}",
        b'{"id":8,"side":"sell","time_in_force":"G\\"TC",' + base.encode() + b"}",
        b'{"id":9,"side":"sell","created_at":null,' + base.encode() + b"}",
        b' \n{"id":10,"side":"sell",' + base.encode() + b"} \t",
        b'{"id":11,"side":"sell",' + base.encode() + b"}x",
        b'{"id":12,"side":"sell","user_id":-0,' + base.encode() + b"}",
        b'{"id":013,"side":"sell",' + base.encode() + b"}",
        b'{"id":14,"side":"sell","price":"1\\u0030.00","product_id":"BTC-USD","type":"limit","size":"1"}',
        b'{"id":15,"status":"cancelling","product_id":null}',
        b'{"id":1,"status":"cancelling","side":null,"product_id":"BTC-USD"}',
    ]
    _check_same(CONFIG, raws)


def test_keys_near_the_known_ones_read_as_msgspec_reads_them():
    """The C reader matches known keys with one compare each: a key that starts like one (`ids`,
    `pric`, `sizes`), is cut short at the end of the record, or is written with an escape must still
    be read as msgspec reads it (unknown keys skipped, escaped ones decoded, truncation not JSON).
    The values are valid for every field, so a key taken for a known one changes the events."""
    base = LIMIT_FIELDS
    near = [
        "ids",
        "i",
        "pric",
        "prices",
        "sizes",
        "sid",
        "stat",
        "statuses",
        "stpx",
        "typ",
        "time_in_forc",
        "user_ids",
        "created_at_",
        "client_oi",
        "fund",
        "product_i",
        # the same length as a known key, one byte off
        "ie",
        "prica",
        "sizf",
        "sidf",
        "statuz",
        "stq",
        "typf",
        "time_in_forcf",
        "user_ie",
        "created_au",
        "client_oie",
        "fundt",
        "product_ie",
        "Id",
        "xrice",
    ]
    raws = [f'{{"id":{n + 1},"side":"buy","{key}":"1",{base}}}'.encode() for n, key in enumerate(near)]
    raws += [
        b'{"i\\u0064":40,"side":"sell",' + base.encode() + b"}",
        b'{"id":41,"s\\u0069de":"sell",' + base.encode() + b"}",
        b'{"id":42,"side":"sell",' + base.encode() + b',"time_in_force',
        b'{"id":43,"side":"sell",' + base.encode() + b',"st',
        b'{"id":44,"side":"sell",' + base.encode() + b',"',
        b'{"id":45,"side":"sell","price":"10.00","product_id":"BTC-USD","type":"limit","size":"1","stp":"cn"}',
    ]
    _check_same(CONFIG, raws)


@pytest.mark.parametrize("engine_cls", [MatchingEngine, NativeEngine])
def test_depth_needs_a_count(engine_cls):
    with pytest.raises(ValueError):
        engine_cls(ProductConfig(**CONFIG)).depth(-1)


def test_core_misuse_raises_instead_of_crashing():
    from engine import _native

    bare = _native.Core.__new__(_native.Core)
    with pytest.raises(RuntimeError):
        bare.apply([(b"{}", 0)])
    with pytest.raises(RuntimeError):
        bare.export()
    nat = NativeEngine(ProductConfig(**CONFIG))
    with pytest.raises(TypeError):
        nat.apply([(b'{"id":1}', 0, 0)])  # a record pair of three
    with pytest.raises(TypeError):
        nat.apply(5)
    with pytest.raises(TypeError):
        apply_one(nat, b'{"id":1,"side":"buy"}', "not a time")


def test_the_c_core_reads_kafka_messages_through_their_methods():
    """The C core reads a consumed Message through its public value() and timestamp(), for every
    kind of timestamp a record can have (none: type 0 and -1), as the Python core does."""
    if not native_available():
        pytest.skip("the C core is not built")
    from engine.config import load_products

    cfg = load_products("configs/products.toml")["BTC-USD"]
    objs = list(generate_orders("BTC-USD", 2_000, 5))
    stamps = [-1, 0, 1, 1_700_000_000_123, 2**63 // 10**6, 2**63 // 10**6 + 1, 2**63 - 1]
    records = [
        Message(value=msgspec.json.encode(o), timestamp=(0 if i % 7 == 0 else 1, stamps[i % len(stamps)]))
        for i, o in enumerate(objs)
    ]
    records.append(Message(value=None, timestamp=(1, 5)))
    native, oracle = NativeEngine(cfg), MatchingEngine(cfg)
    want = ([], [])
    for i, record in enumerate(records):
        got = apply_one(oracle, record.value() or b"", _time_ns(record.timestamp()[1]))
        if isinstance(got, DeadLetter):
            want[1].append((i, got))
        else:
            want[0].extend(got)
    assert native.apply(records) == want
    assert native.snapshot() == oracle.snapshot()


class _Record:
    """The shape of a consumed Kafka record that apply reads."""

    def __init__(self, value: bytes | None, ms: int) -> None:
        self._value, self._ms = value, ms

    def value(self) -> bytes | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ms)


def _time_ns(ms: int) -> int:
    """The contract's `time` of an event: its record's timestamp in ns (0 when there is none)."""
    return ms * 1_000_000 if ms > 0 else 0


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_batches_equal_record_by_record(data):
    """apply on a batch (the worker's call) = apply record by record, on both cores."""
    config, objs = _draw_orders(data, 1, 40)
    raws = [msgspec.json.encode(o) for o in objs]
    raws = [None if data.draw(st.integers(0, 20)) == 0 else raw for raw in raws]  # a record without a value
    # small and repeated stamps, and the ends of what the C core converts itself (ms * 10**6 in int64)
    edge = st.sampled_from(
        [2**63 // 10**6 - 1, 2**63 // 10**6, 2**63 // 10**6 + 1, 2**63 - 1, -(2**63), 2**70]
    )
    stamps = data.draw(st.lists(st.integers(-1, 3) | edge, min_size=len(raws), max_size=len(raws)))
    # confluent_kafka's own Message objects (read through their C methods) mixed with a
    # duck-typed record (read through its methods); a Message holds int64 timestamps only
    kinds = data.draw(st.lists(st.booleans(), min_size=len(raws), max_size=len(raws)))
    records = [
        Message(value=raw, timestamp=(1, ms)) if kafka and -(2**63) <= ms < 2**63 else _Record(raw, ms)
        for raw, ms, kafka in zip(raws, stamps, kinds, strict=True)
    ]
    cfg = ProductConfig(**config)
    one_by_one = MatchingEngine(cfg)
    want_events, want_dead = [], []
    for i, record in enumerate(records):
        got = apply_one(one_by_one, record.value() or b"", _time_ns(record.timestamp()[1]))
        if isinstance(got, DeadLetter):
            want_dead.append((i, got))
        else:
            want_events.extend(got)
    for engine in (MatchingEngine(cfg), NativeEngine(cfg)):
        assert engine.apply(records) == (want_events, want_dead), type(engine).__name__
        assert engine.snapshot() == one_by_one.snapshot()


@pytest.mark.parametrize("resting", [0, 1, 15, 16, 17, 65_535, 65_536, 70_000])
def test_the_c_core_writes_the_snapshot_bytes_msgspec_writes(resting):
    """NativeEngine.snapshot writes the resting orders in C: at every msgpack array size boundary and
    for integers of every width (user ids down to -2**63, prices up to 2**63-1), the bytes equal
    the Python core's msgspec-written snapshot of the same state, and restore into either core."""
    cfg = ProductConfig(product_id="X-Y", base_scale=0, quote_scale=0, id_window=200_000)
    widths = [0, 1, 127, 128, 255, 256, 65_535, 65_536, 2**32 - 1, 2**32, 2**63 - 1]
    user_ids = widths + [-1, -32, -33, -128, -129, -32_768, -32_769, -(2**31), -(2**31) - 1, -(2**63)]
    py, nat = MatchingEngine(cfg), NativeEngine(cfg)
    for i in range(resting):
        side = "buy" if i % 2 else "sell"
        price = 1 + i % 1000 if side == "buy" else 2**63 - 1 - i % 1000
        raw = msgspec.json.encode(
            {
                "id": i + 1,
                "product_id": "X-Y",
                "user_id": user_ids[i % len(user_ids)],
                "price": str(price),
                "size": str(widths[1 + i % (len(widths) - 1)]),
                "type": "limit",
                "side": side,
                "time_in_force": "GTX" if i % 3 else "GTC",
            }
        )
        assert apply_one(nat, raw, i) == apply_one(py, raw, i), f"order id={i + 1}"
    assert nat.resting_orders() == py.resting_orders() == resting
    written = nat.snapshot()
    assert written == py.snapshot()
    assert (
        MatchingEngine.restore(cfg, written).snapshot()
        == NativeEngine.restore(cfg, written).snapshot()
        == written
    )
