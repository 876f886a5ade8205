"""The duplicate-id window: exactly which ids in (max_seen - size, max_seen] were seen.

A ring of `size` bits indexed by id % size; advancing max_seen clears the bits of ids that
slide out. Memory is size/8 bytes (125 KB for a million ids), which keeps snapshots small.
check_and_mark is O(1) for ids arriving in increasing order, O(gap) bounded by the window.
"""

from __future__ import annotations

FRESH = 0
DUPLICATE = 1
OUTSIDE_WINDOW = 2


class IdWindow:
    """Seen-ids tracker over the last `size` ids below the highest id seen."""

    __slots__ = ("size", "max_seen", "bits")

    def __init__(self, size: int, max_seen: int = 0, bits: bytes | None = None):
        self.size = size
        self.max_seen = max_seen
        nbytes = (size + 7) // 8
        if bits is not None and len(bits) != nbytes:
            raise ValueError(f"id window bitmap has {len(bits)} bytes, expected {nbytes}")
        self.bits = bytearray(bits) if bits is not None else bytearray(nbytes)

    def check_and_mark(self, order_id: int) -> int:
        """FRESH (and now marked), DUPLICATE, or OUTSIDE_WINDOW (too old to tell)."""
        top = self.max_seen
        pos = order_id % self.size
        if order_id > top:
            if order_id - top > 1:
                self._clear_ids(top + 1, order_id - 1)
            self.bits[pos >> 3] |= 1 << (pos & 7)
            self.max_seen = order_id
            return FRESH
        if order_id <= top - self.size:
            return OUTSIDE_WINDOW
        mask = 1 << (pos & 7)
        bits = self.bits
        if bits[pos >> 3] & mask:
            return DUPLICATE
        bits[pos >> 3] |= mask
        return FRESH

    def _clear_ids(self, lo: int, hi: int) -> None:
        size = self.size
        if hi - lo + 1 >= size:
            self.bits[:] = bytes(len(self.bits))
            return
        a, b = lo % size, hi % size
        if a <= b:
            self._clear_positions(a, b)
        else:
            self._clear_positions(a, size - 1)
            self._clear_positions(0, b)

    def _clear_positions(self, a: int, b: int) -> None:
        bits = self.bits
        while a <= b and a & 7:
            bits[a >> 3] &= ~(1 << (a & 7)) & 0xFF
            a += 1
        while b >= a and (b & 7) != 7:
            bits[b >> 3] &= ~(1 << (b & 7)) & 0xFF
            b -= 1
        if a <= b:
            bits[a >> 3 : (b >> 3) + 1] = bytes((b >> 3) - (a >> 3) + 1)
