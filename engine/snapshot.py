"""Versioned snapshots of an engine's business state (msgpack).

A snapshot holds everything that decides future events: the book with each level's FIFO
order, `sequence`, `trade_seq` and the duplicate-id window, plus the config fingerprint.
Counters and caches are not business state and are not kept. Restoring a snapshot and
applying the rest of the input gives exactly the events of an uncut run. Two engines in the
same state write byte-identical snapshots.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from engine.book import BUY, SELL, RestingOrder
from engine.id_window import IdWindow

if TYPE_CHECKING:
    from engine.matching import MatchingEngine

SNAPSHOT_VERSION = 1


class SnapshotError(ValueError):
    """A snapshot that must not be restored; `reason` is version_mismatch, config_mismatch or corrupt."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Header(msgspec.Struct, kw_only=True):
    version: int
    config_fingerprint: str


class EngineSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Snapshot format v1; `orders` rows are (id, user_id, side, price, remaining, tif), in priority order."""

    version: int
    config_fingerprint: str
    product_id: str
    sequence: int
    trade_seq: int
    id_window_max: int
    id_window_bits: bytes
    orders: list[tuple[int, int, str, int, int, str]]


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_snapshot_decoder = msgspec.msgpack.Decoder(EngineSnapshot)


def take_snapshot(engine: MatchingEngine) -> bytes:
    """The engine's business state as bytes."""
    return encode_snapshot(
        engine.fingerprint,
        engine.product_id,
        engine.sequence,
        engine.trade_seq,
        engine.ids.max_seen,
        bytes(engine.ids.bits),
        [
            (o.order_id, o.user_id, o.side, o.price, o.remaining, o.time_in_force)
            for o in engine.book.resting_in_priority()
        ],
    )


def encode_snapshot(
    fingerprint: str,
    product_id: str,
    sequence: int,
    trade_seq: int,
    id_window_max: int,
    id_window_bits: bytes,
    orders: list[tuple[int, int, str, int, int, str]],
) -> bytes:
    """Snapshot bytes from the state's parts; both cores (Python and C) write through here."""
    return _encoder.encode(
        EngineSnapshot(
            version=SNAPSHOT_VERSION,
            config_fingerprint=fingerprint,
            product_id=product_id,
            sequence=sequence,
            trade_seq=trade_seq,
            id_window_max=id_window_max,
            id_window_bits=id_window_bits,
            orders=orders,
        )
    )


def encode_snapshot_head(
    fingerprint: str,
    product_id: str,
    sequence: int,
    trade_seq: int,
    id_window_max: int,
    id_window_bits: bytes,
) -> bytes:
    """encode_snapshot's bytes up to the value of `orders`, which comes last: the C core appends
    the resting orders itself (engine/_native.c snapshot_bytes), with no Python object per order."""
    encoded = encode_snapshot(fingerprint, product_id, sequence, trade_seq, id_window_max, id_window_bits, [])
    assert encoded[-1] == 0x90, "orders must be the last field, encoded as an empty array here"
    return encoded[:-1]


def decode_snapshot(data: bytes, fingerprint: str, product_id: str) -> EngineSnapshot:
    """The snapshot in `data`; raises SnapshotError unless its version and config fit this engine."""
    try:
        header = _header_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError("corrupt", str(exc)) from None
    if header.version != SNAPSHOT_VERSION:
        raise SnapshotError(
            "version_mismatch", f"snapshot v{header.version}, engine reads v{SNAPSHOT_VERSION}"
        )
    if header.config_fingerprint != fingerprint:
        raise SnapshotError(
            "config_mismatch",
            f"product={product_id} snapshot config {header.config_fingerprint} != {fingerprint}",
        )
    try:
        return _snapshot_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError("corrupt", str(exc)) from None


def restore_into(engine: MatchingEngine, data: bytes) -> MatchingEngine:
    """Put a fresh engine into the snapshot's state; raises SnapshotError if it does not fit."""
    if engine.sequence or len(engine.book):
        raise ValueError("restore_into needs a fresh engine")
    snap = decode_snapshot(data, engine.fingerprint, engine.product_id)
    try:
        engine.ids = IdWindow(engine.rules.id_window, snap.id_window_max, snap.id_window_bits)
    except ValueError as exc:
        raise SnapshotError("corrupt", str(exc)) from None
    engine.sequence = snap.sequence
    engine.trade_seq = snap.trade_seq
    book = engine.book
    price_text = engine._price_text
    for order_id, user_id, side, price, remaining, tif in snap.orders:
        if side not in (BUY, SELL) or remaining <= 0 or order_id in book.index:
            raise SnapshotError("corrupt", f"bad resting order id={order_id}")
        book.rest(RestingOrder(order_id, user_id, side, price, remaining, tif), price_text(price))
    return engine
