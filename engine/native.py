"""The C matching core (engine/_native.c) behind MatchingEngine's interface, and which core to run.

engine/matching.py defines the rules and stays the oracle: the C core must give byte-identical
events, counters and snapshots for any input (tests/unit/test_native.py checks it on random
streams, and the cluster tests compare a live leader's output with a Python replay). The C core
exists for speed only: it keeps the book in C and writes each event's JSON directly, which takes
the per-order cost of the core from about 3 us to well under 1 us.

Which core runs is the node's `--core auto|native|python` (auto: native when the extension was
built). A node refuses to start with `native` when the extension is missing, so an
operator who asked for it never silently gets the slower core.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from engine.api import Applied, Counters, Engine, Record, SequenceExhausted
from engine.config import ProductConfig
from engine.intake import salvage_order
from engine.matching import MatchingEngine
from engine.messages import (
    MAX_NESTING,
    MAX_NUMBER_DIGITS,
    MAX_RECORD_BYTES,
    NOT_JSON,
    ORDER_FIELDS,
    DeadLetter,
    OrderMessage,
    decode_order,
    record_time_ns,
)
from engine.snapshot import SnapshotError, decode_snapshot, encode_snapshot_head

try:
    from engine import _native

    _native_error = ""
except ImportError as exc:  # built without a C compiler: the Python core runs instead
    _native = None
    _native_error = str(exc)

CORES = ("auto", "native", "python")


def native_available() -> bool:
    """Whether the C extension was built and imports."""
    return _native is not None


def native_import_error() -> str:
    """Why the C extension did not import ("" when it did)."""
    return _native_error


class NativeEngine:
    """One product's matching engine on the C core (engine/api.Engine)."""

    core = "native"

    def __init__(self, config: ProductConfig) -> None:
        if _native is None:
            raise RuntimeError("the C core (engine._native) is not built; reinstall with a C compiler")
        self.config = config
        self.rules = rules = config.rules()
        self.fingerprint = config.fingerprint()
        self.product_id = rules.product_id
        self._core = core = _native.Core(
            product_id=rules.product_id,
            base_scale=rules.base_scale,
            quote_scale=rules.quote_scale,
            tick=rules.tick,
            lot=rules.lot,
            min_size=rules.min_size,
            min_funds=rules.min_funds,
            id_window=rules.id_window,
            order_type=OrderMessage,
            decode=decode_order,
            validation_error=msgspec.ValidationError,
            not_json=NOT_JSON,
            salvage=salvage_order,
            dead_letter=DeadLetter,
            encode_str=msgspec.json.encode,
            time_ns=record_time_ns,
            max_record_bytes=MAX_RECORD_BYTES,
            max_nesting=MAX_NESTING,
            max_number_digits=MAX_NUMBER_DIGITS,
            sequence_exhausted=SequenceExhausted,
            fields=ORDER_FIELDS,
        )
        self._apply = core.apply

    def apply(self, records: Sequence[Record]) -> Applied:
        """Apply the records in order (engine/api.Engine.apply): the C core reads and matches them."""
        return self._apply(records)

    @property
    def counters(self) -> Counters:
        """A copy of the core's operational counts (read by the status loop, not per order)."""
        counts = Counters()
        for name in Counters.__slots__:
            setattr(counts, name, getattr(self._core, name))
        return counts

    @property
    def sequence(self) -> int:
        """The last event's sequence."""
        return self._core.sequence

    @property
    def trade_seq(self) -> int:
        """The last match's trade_seq."""
        return self._core.trade_seq

    def best_bid(self) -> int | None:
        """Highest resting bid price in quote units, or None."""
        return self._core.best_bid()

    def best_ask(self) -> int | None:
        """Lowest resting ask price in quote units, or None."""
        return self._core.best_ask()

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top n levels per side as (price, total size), best first."""
        return self._core.depth(n)

    def resting_orders(self) -> int:
        """How many orders rest on the book."""
        return len(self._core)

    def snapshot(self) -> bytes:
        """The business state, in the same bytes MatchingEngine.snapshot writes for that state.

        The C core writes the resting orders itself, with the GIL released: ~1,000,000 resting
        orders take tens of milliseconds, not the second that a row object per order took."""
        core = self._core
        id_max, bits = core.id_window()
        head = encode_snapshot_head(
            self.fingerprint, self.product_id, core.sequence, core.trade_seq, id_max, bits
        )
        return core.snapshot_bytes(head)

    @classmethod
    def restore(cls, config: ProductConfig, data: bytes) -> NativeEngine:
        """An engine in the state of `data` (from either core); raises SnapshotError if it does not fit."""
        engine = cls(config)
        snap = decode_snapshot(data, engine.rules, engine.fingerprint)
        try:
            engine._core.load(
                snap.sequence, snap.trade_seq, snap.id_window_max, snap.id_window_bits, snap.orders
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise SnapshotError("corrupt", str(exc)) from None
        return engine


def resolve_core(wanted: str) -> str:
    """'native' or 'python' for a --core choice; raises ValueError if it cannot be honoured."""
    if wanted not in CORES:
        raise ValueError(f"core {wanted!r}: expected one of {', '.join(CORES)}")
    if wanted == "native" and _native is None:
        raise ValueError("core 'native' asked for, but the C core (engine._native) is not built")
    if wanted == "auto":
        return "native" if _native is not None else "python"
    return wanted


def make_engine(config: ProductConfig, core: str = "auto") -> Engine:
    """A fresh engine on the chosen core."""
    return NativeEngine(config) if resolve_core(core) == "native" else MatchingEngine(config)


def restore_engine(config: ProductConfig, data: bytes, core: str = "auto") -> Engine:
    """An engine on the chosen core in the state of `data` (written by either core); raises SnapshotError."""
    if resolve_core(core) == "native":
        return NativeEngine.restore(config, data)
    return MatchingEngine.restore(config, data)
