"""Wire messages: the input order (orderbook-py's JSON) and the output events.

Input tolerates unknown fields and gives every field a default, so a cancel may carry only
`id` and `status`. Types are loose where a wrong value must become a `done`/`rejected` rather
than a dead letter (enum fields are plain strings, decimals are strings checked later).

Events are a tagged union on `type`; msgspec writes the tag first and then the fields in
declaration order, which gives orderbook-py's key order: type, sequence, product_id, time, ...
Events are immutable values and never change after creation.
"""

from __future__ import annotations

import typing
from typing import NamedTuple

import msgspec


class OrderMessage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An order (`status` "new") or a cancel (`status` "cancelling") as read from the input topic.

    This declaration is the order's field table (ORDER_FIELDS below): the typed decoder, the
    salvage of wrong-typed fields (engine/intake.py) and the C core's own reader all take the
    fields, their JSON kinds, whether null is accepted and their defaults from here. A new field
    is one line here (with a default: old producers do not send it), plus the rule that reads it.
    """

    id: int | None = None
    created_at: int = 0
    product_id: str | None = None
    user_id: int = 0
    client_oid: str = ""
    price: str | None = None
    size: str | None = None
    funds: str | None = None
    type: str | None = None
    side: str | None = None
    time_in_force: str = "GTC"
    status: str = "new"
    stp: str | None = None


class OrderField(NamedTuple):
    """One row of the field table: a JSON int or string field, whether it accepts null, its default."""

    name: str
    is_int: bool
    nullable: bool
    default: object

    def json_types(self) -> tuple[type, ...]:
        """The Python types of the JSON values this field accepts (bool is never an int here)."""
        return ((int,) if self.is_int else (str,)) + ((type(None),) if self.nullable else ())


def _field_table(struct: type[msgspec.Struct]) -> tuple[OrderField, ...]:
    """The rows of `struct`'s fields, in declaration order (each is an int or a str, maybe None)."""
    rows = []
    for field in msgspec.structs.fields(struct):
        kinds = set(typing.get_args(field.type)) or {field.type}
        nullable = type(None) in kinds
        kinds.discard(type(None))
        if kinds != {int} and kinds != {str}:
            raise TypeError(f"{struct.__name__}.{field.name}: an order field is an int or a str")
        rows.append(OrderField(field.name, kinds == {int}, nullable, field.default))
    return tuple(rows)


ORDER_FIELDS = _field_table(OrderMessage)


class EventBase(msgspec.Struct, frozen=True, gc=False, tag_field="type"):
    """Fields every event carries; `time` is the causing input record's timestamp (ns).

    Not kw_only: msgspec moves kw_only fields after the others, and these must come first.
    """

    sequence: int
    product_id: str
    time: int


class Open(EventBase, tag="open", kw_only=True):
    """A limit order (or its remainder) rests on the book."""

    order_id: int
    user_id: int
    remaining_size: str
    price: str
    side: str
    time_in_force: str


class Match(EventBase, tag="match", kw_only=True):
    """One fill between a taker and a resting maker, at the maker's price; `side` is the maker's."""

    trade_seq: int
    taker_order_id: int
    maker_order_id: int
    taker_user_id: int
    maker_user_id: int
    side: str
    price: str
    size: str
    taker_time_in_force: str
    maker_time_in_force: str


class Done(EventBase, tag="done", kw_only=True, omit_defaults=True):
    """An order leaves (or never enters) the book; `reject_reason` only when reason is "rejected"."""

    order_id: int
    user_id: int
    remaining_size: str
    price: str
    reason: str
    side: str
    time_in_force: str
    reject_reason: str | None = None


Event = Open | Match | Done


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An input that cannot be read as an order; it goes to the DLQ with this reason."""

    reason: str


_encoder = msgspec.json.Encoder()
_order_decoder = msgspec.json.Decoder(OrderMessage)
_event_decoder = msgspec.json.Decoder(Event)

decode_order = _order_decoder.decode

# What reading bytes that are not JSON raises: msgspec reports bytes that are not UTF-8 inside a
# string as UnicodeDecodeError, not DecodeError. Every reader of input catches both, so such a
# record is a dead letter (not_json) and never an exception that kills the process.
NOT_JSON = (msgspec.DecodeError, UnicodeDecodeError)

# The largest input record read as an order (~200x an orderbook-py order). Larger ones are dead
# letters (record_too_large): a reject echoes input text (time_in_force, user_id), so an unbounded
# record could make an event too large for the broker, which failed the publish and crashed the
# product process on every replay of the record.
MAX_RECORD_BYTES = 65_536

# Bounds on a record's shape, checked before any decoder reads it (engine/intake.shape_reason; the C
# core's shape_reason). An order is flat (depth 1) and its integers have at most 19 digits, so these
# leave room for unknown fields a newer producer may add. Beyond them a record is a dead letter:
# `too_deep`: msgspec recurses per level, even to skip an unknown field, and raised RecursionError at
# ~1,000 levels (a 1 KB record of `[` crash-looped the product process on every node);
# `number_too_long` (a run of digits outside strings): msgspec builds a Python int from up to 4,300
# digits, in quadratic time (~0.3 ms for 4,300 digits in an int field, ~0.4 us for 33), and refuses
# longer ones, a limit Python sets per process; the bound makes the outcome independent of both.
MAX_NESTING = 32
MAX_NUMBER_DIGITS = 32

NS_PER_MS = 1_000_000


def record_time_ns(timestamp_ms: int) -> int:
    """An event's `time` for its input record's Kafka timestamp (ms; 0 or less when it has none).

    The one definition: both cores apply it in `apply` to a Kafka record (the C core natively, for speed),
    and replay-based checks and drills must agree with it byte for byte.
    """
    return timestamp_ms * NS_PER_MS if timestamp_ms > 0 else 0


def encode_event(event: Event) -> bytes:
    """The event's published bytes (UTF-8 JSON, no trailing newline)."""
    return _encoder.encode(event)


def encode_events(events: list[Event]) -> list[bytes]:
    """The published bytes of each event, in order."""
    encode = _encoder.encode
    return [encode(e) for e in events]


def decode_event(data: bytes) -> Event:
    """Read back one published event (for consumers and tests)."""
    return _event_decoder.decode(data)
