"""Decimals, config, the id window, snapshots and the book's queries."""

from __future__ import annotations

from decimal import Decimal

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import ConfigError, ProductConfig, load_products
from engine.decimals import DecimalFormatError, format_scaled, parse_scaled
from engine.id_window import DUPLICATE, FRESH, OUTSIDE_WINDOW, IdWindow
from engine.matching import MatchingEngine
from engine.snapshot import SnapshotError
from tests.unit.helpers import Harness, events_of, order

BTC = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)


@pytest.mark.parametrize(
    "text, scale, value",
    [("10.00", 2, 1000), ("10", 2, 1000), ("0.5", 2, 50), ("1.000", 2, 100), ("007", 0, 7), ("-1.5", 1, -15)],
)
def test_parse_scaled(text, scale, value):
    assert parse_scaled(text, scale) == value


@pytest.mark.parametrize(
    "text, reason",
    [
        ("NaN", "not_decimal"),
        ("inf", "not_decimal"),
        ("1e5", "not_decimal"),
        ("", "not_decimal"),
        ("1.", "not_decimal"),
        (".1", "not_decimal"),
        ("1.2.3", "not_decimal"),
        (5, "not_decimal"),
        ("1.001", "too_precise"),
        ("9" * 20, "too_large"),
        ("1" * 65, "too_many_digits"),
    ],
)
def test_parse_scaled_refuses(text, reason):
    with pytest.raises(DecimalFormatError) as err:
        parse_scaled(text, 2)
    assert err.value.reason == reason


@given(st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False, allow_infinity=False))
def test_decimal_round_trip(value):
    scaled = parse_scaled(format(value, "f"), 6)
    assert Decimal(format_scaled(scaled, 6)) == value
    assert format_scaled(scaled, 6).count(".") == 1 and len(format_scaled(scaled, 6).split(".")[1]) == 6


def test_format_scaled():
    assert (
        format_scaled(0, 2) == "0.00" and format_scaled(5, 6) == "0.000005" and format_scaled(12, 0) == "12"
    )


def test_load_products_shipped_config():
    products = load_products("configs/products.toml")
    assert products["BTC-USD"] == BTC
    assert products["BTC-USD"].fingerprint() == BTC.fingerprint()


@pytest.mark.parametrize(
    "body, needle",
    [
        ('[products."X"]\nbase_scale = 6\nquote_scale = 2\ntick = "0.01"\n', "tick"),
        ('[products."X"]\nbase_scale = 6\n', "quote_scale"),
        ('[products."X"]\nbase_scale = 19\nquote_scale = 2\n', "base_scale"),
        ('[products."X"]\nbase_scale = 6\nquote_scale = 2\ntick_size = "0.001"\n', "tick_size"),
        ('[products."X"]\nbase_scale = 6\nquote_scale = 2\nlot_size = "0"\n', "lot_size"),
        ('[products."X"]\nbase_scale = 6\nquote_scale = 2\nmin_funds = "NaN"\n', "min_funds"),
        ('[products."X"]\nbase_scale = 6\nquote_scale = 2\nid_window = 0\n', "id_window"),
        ('[products."X"]\nbase_scale = "6"\nquote_scale = 2\n', "base_scale"),
        ('[products."X"]\nproduct_id = "Y"\nbase_scale = 6\nquote_scale = 2\n', "product_id"),
        ("[other]\n", "unknown"),
        ("not toml [", "cannot read"),
    ],
)
def test_config_errors(tmp_path, body, needle):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(ConfigError, match=needle):
        load_products(path)


def test_fingerprint_changes_with_settings():
    other = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2, tick_size="0.05")
    same = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2, tick_size="0.010")
    assert other.fingerprint() != BTC.fingerprint()
    assert same.fingerprint() == BTC.fingerprint()  # tick 0.01 is the default; text form does not matter


def test_id_window_ring():
    w = IdWindow(10)
    assert [w.check_and_mark(i) for i in (1, 2, 2, 5)] == [FRESH, FRESH, DUPLICATE, FRESH]
    assert w.check_and_mark(14) == FRESH
    assert w.check_and_mark(4) == OUTSIDE_WINDOW
    assert w.check_and_mark(5) == DUPLICATE  # 5 > 14 - 10: still tracked
    assert w.check_and_mark(1000) == FRESH
    assert w.check_and_mark(995) == FRESH and w.check_and_mark(995) == DUPLICATE


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 40), st.lists(st.integers(1, 300), max_size=200))
def test_id_window_matches_a_set(size, ids):
    w, seen, top = IdWindow(size), set(), 0
    for i in ids:
        if i <= top - size:
            expected = OUTSIDE_WINDOW
        else:
            expected = DUPLICATE if i in seen else FRESH
            seen.add(i)
            top = max(top, i)
        assert w.check_and_mark(i) == expected, (size, i)


def test_snapshot_refuses_other_config_or_version(each_core):
    h = Harness()
    h.send(order(1, "buy", "10.00", "1"))
    snap = h.engine.snapshot()
    with pytest.raises(SnapshotError) as err:
        MatchingEngine.restore(ProductConfig(product_id="BTC-USD", base_scale=8, quote_scale=2), snap)
    assert err.value.reason == "config_mismatch"
    obj = msgspec.msgpack.decode(snap)
    obj["version"] = 99
    with pytest.raises(SnapshotError) as err:
        MatchingEngine.restore(BTC, msgspec.msgpack.encode(obj))
    assert err.value.reason == "version_mismatch"
    with pytest.raises(SnapshotError) as err:
        MatchingEngine.restore(BTC, b"\x00garbage")
    assert err.value.reason == "corrupt"


def test_snapshot_keeps_fifo_sequence_and_ids(each_core):
    h = Harness()
    for oid in (1, 2, 3):
        h.send(order(oid, "sell", "10.00", "1", user_id=oid))
    restored = MatchingEngine.restore(h.engine.config, h.engine.snapshot())
    assert restored.sequence == 3 and restored.depth(1) == ([], [(1000, 3_000_000)])
    events = events_of(
        restored,
        b'{"id": 2, "side": "buy", "product_id": "BTC-USD", "type": "limit", "price": "10.00", "size": "3"}',
        9,
    )
    assert events == []  # id 2 already seen
    raw = msgspec.json.encode(order(4, "buy", "10.00", "3"))
    events = events_of(restored, raw, 9)
    assert [e.maker_order_id for e in events if e.__class__.__name__ == "Match"] == [1, 2, 3]
    assert events[0].sequence == 4 and events[0].trade_seq == 1


def test_snapshot_is_small_and_deterministic(each_core):
    a, b = Harness(), Harness()
    for h in (a, b):
        for oid in range(1, 200):
            h.send(
                order(
                    oid, "buy" if oid % 2 else "sell", f"{10 + (oid % 7) * (1 if oid % 2 else -1):.2f}", "1"
                )
            )
    assert a.engine.snapshot() == b.engine.snapshot()
    assert len(a.engine.snapshot()) < 140_000  # the 1M-id window is a 125 KB bitmap


def test_depth_and_best_prices(each_core):
    h = Harness()
    h.send(order(1, "buy", "9.00", "1"))
    h.send(order(2, "buy", "9.50", "2"))
    h.send(order(3, "buy", "9.50", "1"))
    h.send(order(4, "sell", "11.00", "1"))
    assert h.engine.best_bid() == 950 and h.engine.best_ask() == 1100
    assert h.engine.depth(1) == ([(950, 3_000_000)], [(1100, 1_000_000)])
    h.send({"id": 2, "status": "cancelling"})
    h.send({"id": 3, "status": "cancelling"})
    assert h.engine.best_bid() == 900
    assert h.engine.counters.as_dict()["orders_in"] == 6
