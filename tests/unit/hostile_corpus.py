"""Hostile input records and what each must become, for the unit, replay and live tests (issue #17).

Each entry is (name, raw bytes, expected outcome): `dlq:<reason>` for a dead letter,
`rejected:<reject_reason>` for a `done` rejected, or `open` for an order that rests (the valid
ones are buys at 5.00, below every ask the tests place, so they never trade). Ids are unique and
increasing, so the valid ones neither collide nor fall outside the id window.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec

from engine.messages import MAX_RECORD_BYTES

BASE_CREATED_AT = 1_700_000_000_000_000_000  # ns, a whole number of ms


class Hostile(NamedTuple):
    """One hostile record and its expected outcome."""

    name: str
    raw: bytes
    expect: str


def _order(product: str, oid: int, extra: bytes = b"", **fields) -> bytes:
    """A resting limit buy at 5.00 with `fields` overriding, and raw `extra` bytes before the `}`."""
    msg = {
        "id": oid,
        "created_at": BASE_CREATED_AT + oid * 1_000_000,
        "product_id": product,
        "user_id": 7,
        "client_oid": "",
        "price": "5.00",
        "size": "1",
        "funds": "0.00",
        "type": "limit",
        "side": "buy",
        "time_in_force": "GTC",
        "status": "new",
        **fields,
    }
    return msgspec.json.encode(msg)[:-1] + extra + b"}"


def with_value(raw: bytes, key: bytes, value: bytes) -> bytes:
    """`raw` with the JSON value of `key` (an int or a plain string) replaced by raw `value`."""
    head, sep, tail = raw.partition(b'"' + key + b'":')
    assert sep, key
    end = tail.index(b'"', 1) + 1 if tail.startswith(b'"') else min(tail.index(b","), tail.index(b"}"))
    return head + sep + value + tail[end:]


def hostile_corpus(product: str = "BTC-USD", first_id: int = 1) -> list[Hostile]:
    """The corpus for `product`, with ids from `first_id`."""
    entries: list[Hostile] = []

    def add(name: str, expect: str, make) -> None:
        oid = first_id + len(entries)
        raw = make(oid) if callable(make) else make
        entries.append(Hostile(name, raw, expect))

    def order(**fields):
        return lambda oid: _order(product, oid, **fields)

    def extra(data: bytes):
        return lambda oid: _order(product, oid, b',"x":' + data)

    def field(key: bytes, value: bytes):
        return lambda oid: with_value(_order(product, oid), key, value)

    digits = b"9" * 5000
    # nesting: msgspec recursed per level (RecursionError at ~1,000, even in skipped unknown fields)
    add("array_1000", "dlq:too_deep", b"[" * 1000)
    add("array_50000", "dlq:too_deep", b"[" * 50_000)
    add("array_1000_closed", "dlq:too_deep", b"[" * 1000 + b"]" * 1000)
    add("object_1000", "dlq:too_deep", b'{"a":' * 1000)
    add("object_10000_closed", "dlq:too_deep", b'{"a":' * 10_000 + b"1" + b"}" * 10_000)
    add("price_nested_1000", "dlq:too_deep", field(b"price", b"[" * 1000 + b"]" * 1000))
    add("price_nested_3", "rejected:invalid_price", field(b"price", b'[[["5.00"]]]'))
    add("unknown_nested_50000", "dlq:too_deep", extra(b"[" * 50_000))
    add("unknown_nested_40", "dlq:too_deep", extra(b"[" * 40 + b"]" * 40))
    add("unknown_objects_40", "dlq:too_deep", extra(b'{"a":' * 40 + b"1" + b"}" * 40))
    add("unknown_nested_20", "open", extra(b"[" * 20 + b"]" * 20))
    add("stray_closers_then_33", "dlq:too_deep", b"]" * 100 + b"[" * 33)
    add("depth_before_digits", "dlq:too_deep", b"[" * 40 + b"9" * 40)
    add("digits_before_depth", "dlq:number_too_long", b'{"x":' + b"9" * 40 + b',"y":' + b"[" * 40)
    # numbers: 5,000 digits where an int belongs, in unknown fields, in fractions and exponents
    add("id_5000_digits", "dlq:number_too_long", field(b"id", digits))
    add("id_minus_5000_digits", "dlq:number_too_long", field(b"id", b"-" + digits))
    add("user_id_5000_digits", "dlq:number_too_long", field(b"user_id", digits))
    add("created_at_5000_digits", "dlq:number_too_long", field(b"created_at", digits))
    add("price_5000_digit_number", "dlq:number_too_long", field(b"price", digits))
    # within Python's 4,300-digit limit msgspec built these ints in quadratic time (~0.3 ms each)
    add("user_id_4300_digits", "dlq:number_too_long", field(b"user_id", b"9" * 4300))
    add("id_1000_digits", "dlq:number_too_long", field(b"id", b"9" * 1000))
    add("created_at_33_digits", "dlq:number_too_long", field(b"created_at", b"9" * 33))
    add("created_at_32_digits", "open", field(b"created_at", b"9" * 32))  # an int: not validated
    add("unknown_5000_digits", "dlq:number_too_long", extra(digits))
    add("fraction_5000_digits", "dlq:number_too_long", extra(b"0." + b"0" * 5000 + b"1"))
    add("exponent_5000_digits", "dlq:number_too_long", extra(b"1e" + digits))
    add("unknown_32_digits", "open", extra(b"9" * 32))
    add("unknown_33_digits", "dlq:number_too_long", extra(b"9" * 33))
    add("id_25_digits", "dlq:invalid_id", field(b"id", b"9" * 25))
    # decimals are strings: 5,000 digits there are rejected by the decimal parser, not dead letters
    add("price_5000_digit_string", "rejected:invalid_price", order(price="9" * 5000))
    add("size_5000_digit_string", "rejected:invalid_size", order(size="9" * 5000))
    add("funds_5000_digit_string", "rejected:invalid_funds", order(type="market", funds="9" * 5000))
    add("client_oid_5000_digits", "open", order(client_oid="9" * 5000))
    add("client_oid_brackets", "open", order(client_oid="[{" * 2500))
    add("escaped_quote_then_brackets", "open", order(client_oid='"' + "[" * 100 + "\\"))
    # floats and other number text
    add("id_1e400", "dlq:not_json", field(b"id", b"1e400"))
    add("unknown_1e400", "open", extra(b"1e400"))
    add("id_huge_exponent", "dlq:not_json", field(b"id", b"1e99999999999999999999"))
    add("id_minus_zero", "dlq:invalid_id", field(b"id", b"-0"))
    add("user_id_minus_zero", "open", field(b"user_id", b"-0"))
    add("unknown_minus_zero_float", "open", extra(b"-0.0"))
    add("id_float", "dlq:invalid_id", field(b"id", b"1.5"))
    add("created_at_float", "rejected:invalid_created_at", field(b"created_at", b"1e5"))
    add("unknown_nan", "dlq:not_json", extra(b"NaN"))
    add("id_infinity", "dlq:not_json", field(b"id", b"Infinity"))
    add("price_nan_string", "rejected:invalid_price", order(price="NaN"))
    # text
    add("lone_surrogate", "dlq:not_json", field(b"client_oid", b'"\\ud800"'))
    add("lone_low_surrogate_unknown", "dlq:not_json", extra(b'"\\udc00"'))
    add("nul_in_string", "dlq:not_json", field(b"client_oid", b'"a\x00b"'))
    add("escaped_nul", "open", field(b"client_oid", b'"a\\u0000b"'))
    add("nul_after_record", "dlq:not_json", lambda oid: _order(product, oid) + b"\x00")
    add("nul_only", "dlq:not_json", b"\x00")
    add("not_utf8", "dlq:not_json", field(b"client_oid", b'"\xff\xfe"'))
    add("bom", "dlq:not_json", lambda oid: b"\xef\xbb\xbf" + _order(product, oid))
    add("unterminated_string_brackets", "dlq:not_json", extra(b'"' + b"[" * 100))
    add("backslash_at_the_end", "dlq:not_json", lambda oid: _order(product, oid)[:-1] + b',"x":"\\')
    # shapes
    add("empty", "dlq:not_json", b"")
    add("whitespace_only", "dlq:not_json", b" \t  ")
    add("truncated", "dlq:not_json", lambda oid: _order(product, oid)[:60])
    add("duplicate_keys", "open", lambda oid: _order(product, oid, b',"side":"buy","price":"5.00"'))
    add(
        "duplicate_id_key",
        "open",
        lambda oid: with_value(_order(product, oid), b"id", b'0,"id":' + str(oid).encode()),
    )
    add("array", "dlq:not_object", b"[1,2,3]")
    add("too_large_and_deep", "dlq:record_too_large", b"[" * (MAX_RECORD_BYTES + 1))
    return entries
