"""Bad inputs of every kind: each becomes a DeadLetter or a `done`/`rejected`, never an exception."""

from __future__ import annotations

import msgspec
import pytest

from engine.messages import MAX_RECORD_BYTES, DeadLetter
from tests.unit.helpers import Harness, order

pytestmark = pytest.mark.usefixtures("each_core")  # every rule, on both cores


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"", "not_json"),
        (b"{", "not_json"),
        (b"\xff\xfe", "not_json"),
        # bytes that are not UTF-8 inside a JSON string: msgspec raises UnicodeDecodeError, which
        # once escaped both cores and crashed the product process on every replay (a poison pill)
        (b'"\x80"', "not_json"),
        (b'{"id": 1, "side": "buy", "client_oid": "\xff"}', "not_json"),
        (b'{"id": 1, "side": "\xc3", "product_id": "BTC-USD"}', "not_json"),
        (b'{"id": 1e999}', "not_json"),
        # msgspec recursed per level and raised RecursionError (a 1 KB record crash-looped the product)
        (b"[" * 1000, "too_deep"),
        (b'{"id": 1, "side": "buy", "x": ' + b"[" * 33 + b"]" * 33 + b"}", "too_deep"),
        (b'{"id": 1, "side": "buy", "created_at": ' + b"9" * 33 + b"}", "number_too_long"),
        (b'{"id": 1, "side": "buy", "x": 0.' + b"0" * 33 + b"1}", "number_too_long"),
        (b"[1, 2]", "not_object"),
        (b'"order"', "not_object"),
        (b"null", "not_object"),
        (b"{}", "missing_id"),
        (b'{"id": null, "side": "buy"}', "missing_id"),
        (b'{"id": "7", "side": "buy"}', "invalid_id"),
        (b'{"id": 1.5, "side": "buy"}', "invalid_id"),
        (b'{"id": true, "side": "buy"}', "invalid_id"),
        (b'{"id": 0, "side": "buy"}', "invalid_id"),
        (b'{"id": -3, "side": "buy"}', "invalid_id"),
        (b'{"id": 99999999999999999999999, "side": "buy"}', "invalid_id"),
        (b'{"id": 1}', "missing_side"),
        (b'{"id": 1, "side": "BUY"}', "invalid_side"),
        (b'{"id": 1, "side": 1}', "invalid_side"),
        (b'{"id": 1, "side": "buy", "status": "open"}', "invalid_status"),
        (b'{"id": 1, "side": "buy", "status": 3}', "invalid_status"),
        (b'{"id": 1, "status": "cancelling", "side": "left"}', "invalid_side"),
    ],
)
def test_dead_letters(raw, reason):
    h = Harness()
    assert h.send(raw) == DeadLetter(reason=reason)
    assert h.engine.counters.dead_letters == 1 and h.engine.sequence == 0


@pytest.mark.parametrize(
    "fields, reason",
    [
        ({"price": "NaN"}, "invalid_price"),
        ({"price": "Infinity"}, "invalid_price"),
        ({"price": "-Infinity"}, "invalid_price"),
        ({"price": "1e3"}, "invalid_price"),
        ({"price": "1E3"}, "invalid_price"),
        ({"price": "+10.00"}, "invalid_price"),
        ({"price": " 10.00"}, "invalid_price"),
        ({"price": "10."}, "invalid_price"),
        ({"price": ".5"}, "invalid_price"),
        ({"price": "1_000"}, "invalid_price"),
        ({"price": "١٠"}, "invalid_price"),  # non-ASCII digits
        ({"price": "-10.00"}, "invalid_price"),
        ({"price": "0.00"}, "invalid_price"),
        ({"price": "9" * 30}, "invalid_price"),
        ({"price": "1" + "0" * 70}, "invalid_price"),
        ({"price": "10.001"}, "price_too_precise"),
        ({"price": 10.0}, "invalid_price"),
        ({"price": 10}, "invalid_price"),
        ({"price": None}, "invalid_price"),
        ({"size": "0"}, "invalid_size"),
        ({"size": "-1"}, "invalid_size"),
        ({"size": "1e2"}, "invalid_size"),
        ({"size": "nan"}, "invalid_size"),
        ({"size": "0.0000001"}, "size_too_precise"),
        ({"size": "99999999999999999"}, "invalid_size"),
        ({"size": [1]}, "invalid_size"),
        ({"user_id": "alice"}, "invalid_user_id"),
        ({"user_id": 2**70}, "invalid_user_id"),
        ({"type": "stop"}, "invalid_type"),
        ({"type": None}, "invalid_type"),
        ({"type": 5}, "invalid_type"),
        ({"time_in_force": "gtc"}, "invalid_time_in_force"),
        ({"time_in_force": None}, "invalid_time_in_force"),
        ({"stp": "dc"}, "invalid_stp"),
        ({"product_id": "ETH-USD"}, "product_mismatch"),
        ({"product_id": None}, "product_mismatch"),
        ({"client_oid": 5}, "invalid_client_oid"),
        ({"created_at": "now"}, "invalid_created_at"),
    ],
)
def test_rejects(fields, reason):
    h = Harness()
    msg = {**order(1, "buy", "10.00", "1"), **fields}
    events = h.send(msgspec.json.encode(msg))
    assert len(events) == 1, events
    done = events[0]
    assert (done["type"], done["reason"], done["reject_reason"]) == ("done", "rejected", reason)
    assert done["order_id"] == 1 and done["side"] == "buy"
    assert h.engine.counters.rejected == 1 and h.engine.resting_orders() == 0


def test_market_buy_funds_bad_values():
    h = Harness(min_funds="1.00")
    for oid, funds, reason in [
        (1, "NaN", "invalid_funds"),
        (2, "-1.00", "invalid_funds"),
        (3, "0.001", "funds_too_precise"),
        (4, "0.99", "funds_below_minimum"),
        (5, "0", "market_buy_requires_funds"),
        (6, "1e2", "invalid_funds"),
    ]:
        events = h.send(order(oid, "buy", None, None, type="market", funds=funds))
        assert events[0]["reject_reason"] == reason, funds
        assert events[0]["price"] == 0 and events[0]["remaining_size"] == 0


def test_unknown_fields_are_tolerated():
    h = Harness()
    events = h.send({**order(1, "buy", "10.00", "1"), "new_field": {"x": [1]}, "another": None})
    assert events[0]["type"] == "open"


def test_cancel_needs_only_id():
    h = Harness()
    h.send(order(1, "buy", "10.00", "1"))
    assert h.send(b'{"id": 1, "status": "cancelling"}')[0]["reason"] == "cancelled"
    assert h.send(b'{"id": 1, "status": "cancelling", "price": 5}') == []  # wrong-typed extras ignored


def test_records_over_the_size_limit_are_dead_letters():
    """A reject echoes input text, so an unbounded record could make an event too large to publish;
    records over MAX_RECORD_BYTES are dead letters before any parsing, and the limit is inclusive."""
    h = Harness()
    raw = msgspec.json.encode(order(1, "buy", time_in_force="X" * 100))
    padded = raw[:-1] + b" " * (MAX_RECORD_BYTES - len(raw)) + b"}"
    assert len(padded) == MAX_RECORD_BYTES
    (done,) = h.send(padded)  # at the limit: read, and rejected with its time_in_force echoed
    assert done["reject_reason"] == "invalid_time_in_force" and done["time_in_force"] == "X" * 100
    huge = msgspec.json.encode(order(2, "buy", time_in_force="X" * MAX_RECORD_BYTES))
    assert h.send(huge) == DeadLetter(reason="record_too_large")
    assert h.send(b"x" * (MAX_RECORD_BYTES + 1)) == DeadLetter(reason="record_too_large")
    counters = h.engine.counters
    assert (counters.orders_in, counters.dead_letters, counters.rejected, h.engine.sequence) == (3, 2, 1, 1)


def test_the_shape_bounds_are_inclusive_and_skip_strings():
    """32 levels and 32 digits are an order; brackets and digits inside strings never count."""
    h = Harness()
    deep = b"[" * 31 + b"{}" + b"]" * 31  # 32 levels inside the order's object: 33, one too many
    base = msgspec.json.encode(order(1, "buy"))[:-1]
    assert h.send(base + b',"x":' + deep + b"}") == DeadLetter(reason="too_deep")
    assert h.send(base + b',"x":' + deep[1:-1] + b"}")[0]["type"] == "open"
    assert h.send(base.replace(b'"id":1', b'"id":2') + b',"x":' + b"9" * 32 + b"}")[0]["type"] == "open"
    quoted = b'"' + b"[" * 100 + b'\\"' + b"9" * 100 + b'"'  # an escaped quote does not end the string
    assert h.send(base.replace(b'"id":1', b'"id":3') + b',"x":' + quoted + b"}")[0]["type"] == "open"
    (done,) = h.send(order(4, "buy", price="9" * 5000))
    assert done["reject_reason"] == "invalid_price"
