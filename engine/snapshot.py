"""Versioned snapshots of an engine's business state (msgpack).

A snapshot holds everything that decides future events: the book with each level's FIFO
order, `sequence`, `trade_seq` and the duplicate-id window, plus the config fingerprint.
Counters and caches are not business state and are not kept. Restoring a snapshot and
applying the rest of the input gives exactly the events of an uncut run. Two engines in the
same state write byte-identical snapshots.

Restore refuses every snapshot no engine under this product's rules could have written, once,
here (`decode_snapshot`), before either core loads it; the C core's `load` keeps its own checks
as a second line. "Impossible" follows from the rules (docs/contract.md), all values are int64:
- `sequence` in 0..2^63-1; `trade_seq` in 0..sequence (a match is an event); and
  trade_seq + resting orders <= sequence (each resting order emitted one `open`, no match).
- `id_window_max` in 0..2^63-1 (the highest id seen; 0: none); the bitmap has the window's
  length, no bit past the window, the bit of `id_window_max` set when it is > 0, and no bit of
  an id <= 0 (while id_window_max < the window, ids at or below 0 fall inside it).
- Each resting order (id, user_id, side, price, remaining, tif): id in 1..id_window_max (it
  was seen) and, inside the window, marked in the bitmap; ids unique; user_id in int64; side
  buy|sell; price in 1..2^63-1 on the tick; remaining in 1..2^63-1 on the lot (sizes are whole
  lots and every fill is, rule 4 and contract choice 9; a remainder may be below min_size);
  time_in_force GTC or GTX (IOC and FOK never rest, rules 5 and 6).
- Rows in priority order, as both cores write them: bids best (highest) first, then asks best
  (lowest) first; and the book is not crossed (best bid < best ask: a crossing order trades).
A refused snapshot raises SnapshotError: `version_mismatch`, `config_mismatch` (other settings or
another product), or `corrupt` (unreadable or impossible), with the field and order id.
"""

from __future__ import annotations

import msgspec

from engine.book import BUY, SELL
from engine.config import ProductRules

SNAPSHOT_VERSION = 1
INT64_MAX = 2**63 - 1
RESTING_TIFS = ("GTC", "GTX")


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


def decode_snapshot(data: bytes, rules: ProductRules, fingerprint: str) -> EngineSnapshot:
    """The snapshot in `data`; raises SnapshotError unless it fits these rules (module docstring)."""
    product_id = rules.product_id
    try:
        header = _header_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError("corrupt", f"product={product_id} {exc}") from None
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
        snap = _snapshot_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError("corrupt", f"product={product_id} {exc}") from None
    if snap.product_id != product_id:
        raise SnapshotError(
            "config_mismatch", f"snapshot of product {snap.product_id!r}, engine of {product_id!r}"
        )
    problem = _impossible(snap, rules)
    if problem:
        raise SnapshotError("corrupt", f"product={product_id} {problem}")
    return snap


def _impossible(snap: EngineSnapshot, rules: ProductRules) -> str | None:
    """What makes `snap` a state no engine under `rules` reaches, or None (see module docstring)."""
    if not 0 <= snap.sequence <= INT64_MAX:
        return f"sequence={snap.sequence} outside 0..2^63-1"
    if not 0 <= snap.trade_seq <= snap.sequence:
        return f"trade_seq={snap.trade_seq} outside 0..sequence={snap.sequence}"
    if snap.trade_seq + len(snap.orders) > snap.sequence:
        return f"trade_seq={snap.trade_seq} + {len(snap.orders)} resting orders > sequence={snap.sequence}"
    problem = _impossible_window(snap.id_window_max, snap.id_window_bits, rules.id_window)
    if problem:
        return problem
    top, window, bits = snap.id_window_max, rules.id_window, snap.id_window_bits
    seen: set[int] = set()
    best_bid = None
    last_side, last_price = BUY, INT64_MAX
    for order_id, user_id, side, price, remaining, tif in snap.orders:
        where = f"resting order id={order_id}"
        if not 0 < order_id <= top:
            return f"{where}: id outside 1..id_window_max={top}"
        pos = order_id % window
        if order_id > top - window and not bits[pos >> 3] & (1 << (pos & 7)):
            return f"{where}: id not marked in the id window"
        if order_id in seen:
            return f"{where}: id rests twice"
        seen.add(order_id)
        if not -(2**63) <= user_id <= INT64_MAX:
            return f"{where}: user_id={user_id} outside int64"
        if side not in (BUY, SELL):
            return f"{where}: side={side!r}"
        if not 0 < price <= INT64_MAX or price % rules.tick:
            return f"{where}: price={price} not in 1..2^63-1 on tick {rules.tick}"
        if not 0 < remaining <= INT64_MAX or remaining % rules.lot:
            return f"{where}: remaining={remaining} not in 1..2^63-1 on lot {rules.lot}"
        if tif not in RESTING_TIFS:
            return f"{where}: time_in_force={tif!r} cannot rest"
        if side == BUY:
            in_order = last_side == BUY and price <= last_price
            if best_bid is None:
                best_bid = price
        else:
            in_order = last_side == BUY or price >= last_price
            if last_side == BUY and best_bid is not None and price <= best_bid:
                return f"{where}: ask at {price} crosses the best bid {best_bid}"
        if not in_order:
            return f"{where}: rows not in priority order (bids best first, then asks best first)"
        last_side, last_price = side, price
    return None


def _impossible_window(top: int, bits: bytes, window: int) -> str | None:
    """What makes (top, bits) a duplicate-id window no engine writes, or None."""
    if not 0 <= top <= INT64_MAX:
        return f"id_window_max={top} outside 0..2^63-1"
    if len(bits) != (window + 7) // 8:
        return f"id window bitmap has {len(bits)} bytes, expected {(window + 7) // 8}"
    if not _bits_clear(bits, window, len(bits) * 8 - 1):
        return "id window bitmap has bits past the window"
    if top > 0 and not bits[(top % window) >> 3] & (1 << (top % window & 7)):
        return f"id_window_max={top} not marked in the id window"
    if top < window and not (_bits_clear(bits, 0, 0) and _bits_clear(bits, top + 1, window - 1)):
        return f"id window marks ids <= 0 (id_window_max={top}, window {window})"
    return None


def _bits_clear(bits: bytes, lo: int, hi: int) -> bool:
    """Whether bit positions lo..hi (inclusive; none if lo > hi) are all 0."""
    while lo <= hi and lo & 7:
        if bits[lo >> 3] & (1 << (lo & 7)):
            return False
        lo += 1
    while hi >= lo and (hi & 7) != 7:
        if bits[hi >> 3] & (1 << (hi & 7)):
            return False
        hi -= 1
    return lo > hi or not bits[lo >> 3 : (hi >> 3) + 1].strip(b"\0")
