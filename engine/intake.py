"""The slow path of decoding: make sense of input that the typed decoder refused.

The typed decoder (messages.decode_order) handles every well-formed message. When it fails
with a type error, the message is read as plain JSON and sorted out here:

- not JSON at all (or a number out of range, or
  bytes that are not UTF-8 inside a string)       -> DeadLetter not_json
- JSON but not an object                          -> DeadLetter not_object
- `id` absent / not an int in 1..2**63-1          -> DeadLetter missing_id / invalid_id
- `status` not a string                           -> DeadLetter invalid_status
- `side` absent or not buy|sell on a new order    -> left to the engine (missing_side/invalid_side)
- any other field of the wrong JSON type          -> the order is kept, with that field reset
  to its default, and the engine rejects it as `invalid_<field>` (first such field in wire order)
"""

from __future__ import annotations

import msgspec

from engine.messages import NOT_JSON, DeadLetter, OrderMessage

MAX_ID = 2**63 - 1
_INT64 = (-(2**63), 2**63 - 1)

# field -> accepted JSON types (bool is never an int here); None means null is accepted.
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "created_at": (int,),
    "product_id": (str, type(None)),
    "user_id": (int,),
    "client_oid": (str,),
    "price": (str, type(None)),
    "size": (str, type(None)),
    "funds": (str, type(None)),
    "type": (str, type(None)),
    "side": (str, type(None)),
    "time_in_force": (str,),
    "stp": (str, type(None)),
}


def salvage_order(raw: bytes) -> tuple[OrderMessage, str | None] | DeadLetter:
    """An OrderMessage plus the first wrong-typed field, or the DeadLetter for this input."""
    try:
        obj = msgspec.json.decode(raw)
    except NOT_JSON:
        return DeadLetter(reason="not_json")
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
