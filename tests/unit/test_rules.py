"""One test (or a few) per matching rule of the contract, numbered as in CONTRACT.md."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from engine.messages import DeadLetter
from tests.unit.helpers import Harness, cancel, order

pytestmark = pytest.mark.usefixtures("each_core")  # every rule, on both cores


@pytest.fixture
def book() -> Harness:
    return Harness()


def kinds(events):
    return [(e["type"], e.get("order_id", e.get("maker_order_id")), e.get("reason")) for e in events]


def test_every_event_has_type_sequence_product_time_first(book):
    events = book.send(order(1, "sell"), ts=123_000_000) + book.send(order(2, "buy"), ts=456_000_000)
    for e in events:
        assert list(e)[:4] == ["type", "sequence", "product_id", "time"]
    assert [e["sequence"] for e in events] == [1, 2, 3, 4]
    assert [e["time"] for e in events] == [123_000_000, 456_000_000, 456_000_000, 456_000_000]


def test_rule_1_price_time_priority(book):
    book.send(order(1, "sell", "10.02"))
    book.send(order(2, "sell", "10.01"))
    book.send(order(3, "sell", "10.01"))
    events = book.send(order(4, "buy", "10.02", "3"))
    matches = [e for e in events if e["type"] == "match"]
    assert [m["maker_order_id"] for m in matches] == [2, 3, 1]
    assert book.send(order(5, "buy", "10.00"))[0]["type"] == "open"


def test_rule_1_no_cross_below_price(book):
    book.send(order(1, "sell", "10.01"))
    assert kinds(book.send(order(2, "buy", "10.00"))) == [("open", 2, None)]
    assert book.engine.best_bid() == 1000 and book.engine.best_ask() == 1001


def test_rule_2_fill_at_maker_price_with_min_size(book):
    book.send(order(1, "buy", "10.05", "2"))
    events = book.send(order(2, "sell", "10.00", "0.5"))
    match = events[0]
    assert match["price"] == D("10.05") and match["size"] == D("0.5") and match["side"] == "buy"
    assert events[1]["order_id"] == 2 and events[1]["reason"] == "filled" and events[1]["remaining_size"] == 0
    events = book.send(order(3, "sell", "10.00", "1.5"))
    assert kinds(events) == [("match", 1, None), ("done", 1, "filled"), ("done", 3, "filled")]
    assert events[1]["remaining_size"] == 0


def test_rule_3_limit_remainder_rests_with_open(book):
    book.send(order(1, "sell", "10.00", "1"))
    events = book.send(order(2, "buy", "10.00", "3"))
    assert kinds(events) == [("match", 1, None), ("done", 1, "filled"), ("open", 2, None)]
    assert events[-1]["remaining_size"] == D(2)
    assert book.engine.depth(5) == ([(1000, 2_000_000)], [])


def test_rule_4_market_sell_by_size(book):
    book.send(order(1, "buy", "10.00", "1"))
    book.send(order(2, "buy", "9.00", "1"))
    events = book.send(order(3, "sell", None, "1.5", type="market"))
    assert [e["price"] for e in events if e["type"] == "match"] == [D(10), D(9)]
    done = events[-1]
    assert done["reason"] == "filled" and done["price"] == 0 and done["remaining_size"] == 0
    events = book.send(order(4, "sell", None, "5", type="market"))
    assert events[-1]["reason"] == "cancelled" and events[-1]["remaining_size"] == 0


def test_rule_4_market_buy_by_funds_truncates_to_size_scale(book):
    book.send(order(1, "sell", "3.00", "1"))
    book.send(order(2, "sell", "7.00", "1"))
    events = book.send(order(3, "buy", None, None, type="market", funds="10.00"))
    matches = [e for e in events if e["type"] == "match"]
    assert [(m["price"], m["size"]) for m in matches] == [(D(3), D(1)), (D(7), D(1))]
    assert events[-1]["reason"] == "filled"
    book.send(order(4, "sell", "3.00", "10"))
    events = book.send(order(5, "buy", None, None, type="market", funds="1.00"))
    assert events[0]["size"] == D("0.333333")
    assert events[-1]["reason"] == "cancelled"  # 0.000001 of funds left: not used up exactly


def test_rule_4_market_buy_stops_when_unit_unaffordable(book):
    book.send(order(1, "sell", "100000.00", "1"))
    events = book.send(order(2, "buy", None, None, type="market", funds="0.01"))
    assert kinds(events) == [("done", 2, "cancelled")]


def test_rule_4_market_buy_requires_funds_and_sell_requires_size(book):
    events = book.send(order(1, "buy", None, "1", type="market", funds=None))
    assert events[0]["reject_reason"] == "market_buy_requires_funds"
    events = book.send(order(2, "buy", None, "1", type="market", funds="0.00"))
    assert events[0]["reject_reason"] == "market_buy_requires_funds"
    events = book.send(order(3, "sell", None, "0", type="market"))
    assert events[0]["reject_reason"] == "invalid_size"


def test_rule_5_ioc_never_rests(book):
    book.send(order(1, "sell", "10.00", "1"))
    events = book.send(order(2, "buy", "10.00", "3", time_in_force="IOC"))
    assert kinds(events) == [("match", 1, None), ("done", 1, "filled"), ("done", 2, "cancelled")]
    assert events[-1]["remaining_size"] == D(2)
    assert book.engine.depth(5) == ([], [])


def test_rule_6_fok_all_or_nothing(book):
    book.send(order(1, "sell", "10.00", "1"))
    book.send(order(2, "sell", "10.01", "1"))
    events = book.send(order(3, "buy", "10.01", "2.5", time_in_force="FOK"))
    assert kinds(events) == [("done", 3, "cancelled")] and events[0]["remaining_size"] == D("2.5")
    events = book.send(order(4, "buy", "10.00", "2", time_in_force="FOK"))
    assert kinds(events) == [("done", 4, "cancelled")]  # 10.01 does not cross
    events = book.send(order(5, "buy", "10.01", "2", time_in_force="FOK"))
    assert [e["type"] for e in events] == ["match", "done", "match", "done", "done"]
    assert events[-1]["reason"] == "filled"


def test_rule_7_gtx_post_only(book):
    book.send(order(1, "sell", "10.00", "1"))
    events = book.send(order(2, "buy", "10.00", "1", time_in_force="GTX"))
    assert kinds(events) == [("done", 2, "cancelled")] and events[0]["remaining_size"] == D(1)
    assert kinds(book.send(order(3, "buy", "9.99", "1", time_in_force="GTX"))) == [("open", 3, None)]


def test_rule_8_cancel(book):
    book.send(order(1, "sell", "10.00", "2"))
    book.send(order(2, "buy", "10.00", "0.5"))
    events = book.send(cancel(1))
    assert kinds(events) == [("done", 1, "cancelled")]
    assert events[0]["remaining_size"] == D("1.5") and events[0]["price"] == D(10)
    assert book.send(cancel(1)) == [] and book.send(cancel(99)) == []
    assert book.engine.counters.unknown_cancels == 2


def test_rule_8_cancel_other_product_or_bad_side(book):
    book.send(order(1, "sell", "10.00", "2"))
    assert book.send(cancel(1, product_id="ETH-USD")) == []
    assert book.send(cancel(1, side="up")) == DeadLetter(reason="invalid_side")
    assert kinds(book.send(cancel(1, side="buy"))) == [("done", 1, "cancelled")]  # matched by id only


def test_rule_9_duplicates_and_window():
    h = Harness(id_window=10)
    h.send(order(5, "sell", "10.00"))
    assert h.send(order(5, "sell", "11.00")) == []
    assert h.engine.counters.duplicates == 1
    h.send(order(20, "sell", "10.00"))
    assert h.send(order(10, "sell", "10.00")) == DeadLetter(reason="order_id_outside_window")
    assert h.send(order(11, "sell", "10.00"))[0]["type"] == "open"  # 11 > 20 - 10: inside, unseen
    assert h.send(order(11, "sell", "10.00")) == []
    assert h.send(order(5, "sell", "10.00")) == DeadLetter(reason="order_id_outside_window")


def test_rule_9_rejected_ids_are_seen(book):
    assert book.send(order(1, "sell", "-1"))[0]["reason"] == "rejected"
    assert book.send(order(1, "sell", "10.00")) == []


def test_rule_10_validation_rejects():
    h = Harness(tick_size="0.05", lot_size="0.01", min_size="0.1", min_funds="5")
    cases = [
        (order(1, "buy", "10.03", "1"), "price_not_on_tick"),
        (order(2, "buy", "10.00", "1.005"), "size_not_on_lot"),
        (order(3, "buy", "10.00", "0.05"), "size_below_minimum"),
        (order(4, "buy", "10.001", "1"), "price_too_precise"),
        (order(5, "buy", "10.00", "1.0000001"), "size_too_precise"),
        (order(6, "buy", "0", "1"), "invalid_price"),
        (order(7, "buy", None, None, type="market", funds="4.99"), "funds_below_minimum"),
        (order(8, "buy", "10.00", "1", product_id="ETH-USD"), "product_mismatch"),
        (order(9, "buy", "10.00", "1", time_in_force="GTD"), "invalid_time_in_force"),
        (order(10, "buy", "10.00", "1", type="stop"), "invalid_type"),
        (order(11, "buy", "10.00", "1", stp="xx"), "invalid_stp"),
    ]
    for msg, reason in cases:
        events = h.send(msg)
        assert events[0]["reason"] == "rejected" and events[0]["reject_reason"] == reason, msg
    assert h.engine.counters.rejected == len(cases)
    assert h.send(order(12, "buy", "10.05", "1.01"))[0]["type"] == "open"


def test_rule_10_dead_letters(book):
    assert book.send(b"not json") == DeadLetter(reason="not_json")
    assert book.send(order(None, "buy")) == DeadLetter(reason="missing_id")
    assert book.send(order(1, None)) == DeadLetter(reason="missing_side")
    assert book.send(order(2, "long")) == DeadLetter(reason="invalid_side")
    assert book.engine.counters.dead_letters == 4


def _stp_book(mode):
    h = Harness()
    h.send(order(1, "sell", "10.00", "1", user_id=7))
    h.send(order(2, "sell", "10.00", "1", user_id=8))
    events = h.send(order(3, "buy", "10.00", "2", user_id=7, stp=mode))
    return h, events


def test_rule_11_stp_cancel_oldest():
    h, events = _stp_book("co")
    assert kinds(events) == [
        ("done", 1, "cancelled"),
        ("match", 2, None),
        ("done", 2, "filled"),
        ("open", 3, None),
    ]
    assert events[0]["remaining_size"] == D(1) and events[-1]["remaining_size"] == D(1)


def test_rule_11_stp_cancel_newest():
    h, events = _stp_book("cn")
    assert kinds(events) == [("done", 3, "cancelled")] and events[0]["remaining_size"] == D(2)
    assert h.engine.resting_orders() == 2


def test_rule_11_stp_cancel_both():
    h, events = _stp_book("cb")
    assert kinds(events) == [("done", 1, "cancelled"), ("done", 3, "cancelled")]
    assert h.engine.resting_orders() == 1


def test_rule_11_stp_only_when_reached(book):
    book.send(order(1, "sell", "10.00", "1", user_id=8))
    book.send(order(2, "sell", "10.01", "1", user_id=7))
    events = book.send(order(3, "buy", "10.00", "2", user_id=7, stp="cn"))
    assert kinds(events) == [
        ("match", 1, None),
        ("done", 1, "filled"),
        ("open", 3, None),
    ]  # 10.01 not reached
    events = book.send(order(5, "buy", None, None, type="market", funds="10.00", user_id=7, stp="cn"))
    # the market buy reaches order 2 (same user) and ends: price 0, remaining 0, cancelled
    assert kinds(events) == [("done", 5, "cancelled")] and events[0]["price"] == 0


def test_rule_11_stp_not_reached_when_no_lot_affordable():
    h = Harness(lot_size="0.01")
    h.send(order(1, "sell", "10.00", "1", user_id=7))
    events = h.send(order(2, "buy", None, None, type="market", funds="0.05", user_id=7, stp="co"))
    assert kinds(events) == [("done", 2, "cancelled")]  # 0.005 < one lot: matching stopped before
    assert h.engine.resting_orders() == 1


def test_rule_11_fok_with_stp_rejected(book):
    events = book.send(order(1, "buy", "10.00", "1", time_in_force="FOK", stp="co"))
    assert events[0]["reject_reason"] == "fok_with_stp_unsupported"


def test_self_trade_allowed_without_stp(book):
    book.send(order(1, "sell", "10.00", "1"))
    assert book.send(order(2, "buy", "10.00", "1"))[0]["type"] == "match"
