"""Reading input records that are not the common shape of an order.

Before any decoder reads a record, shape_reason checks two bounds (engine/messages.py) that keep
the decoders away from their limits, in both cores and in replay:

- nesting deeper than MAX_NESTING (32) levels       -> DeadLetter too_deep
- more than MAX_NUMBER_DIGITS (32) digits in a row,
  outside strings (a number's integer part,
  fraction or exponent)                             -> DeadLetter number_too_long

Brackets and digits inside strings do not count (a 5,000-digit `price` string is an order, and
the engine rejects it as invalid_price). The first bound crossed, in byte order, is the reason.
Both bounds hold before the typed decoder too, for every record: it recurses to skip a nested
unknown field, and it reads an int field of up to 4,300 digits in quadratic time (see
engine/messages.py). The C core's fast reader needs no scan: it takes only flat records whose
integers have at most 19 digits and hands anything else to msgspec, after the same scan.

The typed decoder (messages.decode_order) handles every well-formed message. When it fails
with a type error, the message is read as plain JSON and sorted out here (salvage_order):

- not JSON at all (or a number out of range, or
  bytes that are not UTF-8 inside a string)       -> DeadLetter not_json
- JSON but not an object                          -> DeadLetter not_object
- `id` absent / not an int in 1..2**63-1          -> DeadLetter missing_id / invalid_id
- `status` not a string                           -> DeadLetter invalid_status
- `side` absent or not buy|sell on a new order    -> left to the engine (missing_side/invalid_side)
- any other field of the wrong JSON type          -> the order is kept, with that field reset
  to its default, and the engine rejects it as `invalid_<field>` (first such field in wire order)

Every decoder of input also maps RecursionError to too_deep. Within the bounds it cannot happen;
the guard is there so that no record can ever stop a product.
"""

from __future__ import annotations

import re

import msgspec

from engine.messages import MAX_NESTING, MAX_NUMBER_DIGITS, NOT_JSON, ORDER_FIELDS, DeadLetter, OrderMessage

MAX_ID = 2**63 - 1
_INT64 = (-(2**63), 2**63 - 1)

# field -> accepted JSON types, in wire order, from the field table; `id` and `status` are read first.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    field.name: field.json_types() for field in ORDER_FIELDS if field.name not in ("id", "status")
}


# One token outside strings: a whole string with its escapes (to the record's end if unterminated), an
# opening or a closing bracket, or a run of digits. Bytes between tokens count for nothing.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]|[\]}]|[0-9]+', re.DOTALL)
# A sketch of a record for the quick test that almost every record passes: digits -> "0",
# opening brackets -> "[", any other byte -> " ".
_SKETCH = bytes(48 if 48 <= b <= 57 else 91 if b in b"[{" else 32 for b in range(256))
_LONG_RUN = b"0" * (MAX_NUMBER_DIGITS + 1)


def shape_reason(raw: bytes) -> str | None:
    """too_deep or number_too_long when the record crosses a bound (first in byte order), else None.

    Linear in the record's length. The C core's shape_reason is the same scan, byte by byte.
    """
    if type(raw) is not bytes:
        raw = bytes(raw)
    sketch = raw.translate(_SKETCH)
    if sketch.count(b"[") <= MAX_NESTING and _LONG_RUN not in sketch:
        return None  # no bound can be crossed, even counting what is inside strings
    depth = 0
    for token in _TOKEN.finditer(raw):
        first = raw[token.start()]
        if first in b"[{":
            depth += 1
            if depth > MAX_NESTING:
                return "too_deep"
        elif first in b"]}":
            depth = max(depth - 1, 0)
        elif first != 34 and token.end() - token.start() > MAX_NUMBER_DIGITS:  # 34: '"'
            return "number_too_long"
    return None


def salvage_order(raw: bytes) -> tuple[OrderMessage, str | None] | DeadLetter:
    """An OrderMessage plus the first wrong-typed field, or the DeadLetter for this input."""
    try:
        obj = msgspec.json.decode(raw)
    except NOT_JSON:
        return DeadLetter(reason="not_json")
    except RecursionError:  # not within MAX_NESTING; here so that it can never escape
        return DeadLetter(reason="too_deep")
    if not isinstance(obj, dict):
        return DeadLetter(reason="not_object")
    if "id" not in obj or obj["id"] is None:
        return DeadLetter(reason="missing_id")
    oid = obj["id"]
    if type(oid) is not int or not 0 < oid <= MAX_ID:
        return DeadLetter(reason="invalid_id")
    status = obj.get("status", "new")
    if type(status) is not str:
        return DeadLetter(reason="invalid_status")
    fields: dict[str, object] = {"id": oid, "status": status}
    bad_field = None
    for name, accepted in _FIELD_TYPES.items():
        if name not in obj:
            continue
        value = obj[name]
        ok = type(value) in accepted
        if ok and type(value) is int and not _INT64[0] <= value <= _INT64[1]:
            ok = False
        if ok:
            fields[name] = value
        elif name == "side":
            fields[name] = "?"  # neither buy nor sell: the engine dead-letters it as invalid_side
        elif bad_field is None:
            bad_field = name
    return OrderMessage(**fields), bad_field
