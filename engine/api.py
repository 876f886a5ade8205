"""The one interface both matching cores implement, and the values they share.

A core is one product's state machine (docs/contract.md): `apply` takes a batch of input records
in log order and returns what the worker publishes, the bytes of every event (consecutive in
`sequence`) and the dead letters with their record's index. Both cores return the same types and,
for the same records, the same values byte for byte: engine/matching.py (the specification, in
Python) and engine/native.py (the same rules in C, for speed). engine/native.make_engine picks one.

A record is either a `(value, time_ns)` pair (replay, tools, tests) or a consumed Kafka record, read
through its public `value()` and `timestamp()` with time_ns = messages.record_time_ns(ms). A value of
None (a Kafka record without one) reads as b"".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeAlias

from engine.config import ProductConfig
from engine.messages import DeadLetter
from engine.snapshot import INT64_MAX

# Below this sequence no input can exhaust it (that would take 2^39 resting orders): the exact test
# runs only above it. The C core uses the same two steps.
SEQUENCE_CHECK_FROM = INT64_MAX - 2**40


class KafkaRecord(Protocol):
    """The part of a consumed confluent_kafka Message a core reads."""

    def value(self) -> bytes | None: ...

    def timestamp(self) -> tuple[int, int]: ...


Record: TypeAlias = "tuple[bytes | None, int] | KafkaRecord"
# (the bytes of every event in sequence order, [(index of the record, its DeadLetter)])
Applied: TypeAlias = "tuple[list[bytes], list[tuple[int, DeadLetter]]]"


class SequenceExhausted(RuntimeError):
    """The next input could take `sequence` past 2^63-1; nothing was changed.

    An order emits at most 2 events per resting order plus 1, so the check is exact. At 10^7
    events/s that is 29,000 years away: only a crafted snapshot gets there, and the product process
    stops with a configuration error (cluster/worker.py)."""


def sequence_exhausted(product_id: str, sequence: int, resting: int) -> SequenceExhausted | None:
    """The error to raise before applying an input in this state, or None."""
    if sequence + 2 * resting + 1 <= INT64_MAX:
        return None
    return SequenceExhausted(
        f"product={product_id} sequence={sequence} resting={resting}: "
        "the next input could take sequence past 2^63-1"
    )


class Counters:
    """Operational counts (not business state: not in snapshots, not replayed)."""

    __slots__ = ("orders_in", "duplicates", "unknown_cancels", "rejected", "dead_letters")

    def __init__(self) -> None:
        self.orders_in = 0
        self.duplicates = 0
        self.unknown_cancels = 0
        self.rejected = 0
        self.dead_letters = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class Engine(Protocol):
    """One product's matching core; see the module docstring."""

    core: str  # "python" or "native": which implementation this is
    config: ProductConfig
    product_id: str
    fingerprint: str

    @property
    def sequence(self) -> int:
        """The last event's sequence (0 before the first)."""
        ...

    @property
    def trade_seq(self) -> int:
        """The last match's trade_seq (0 before the first)."""
        ...

    @property
    def counters(self) -> Counters:
        """The operational counts so far."""
        ...

    def apply(self, records: Sequence[Record]) -> Applied:
        """Apply the records in order: every event's bytes, and the dead letters by record index."""
        ...

    def snapshot(self) -> bytes:
        """The business state as versioned bytes (engine/snapshot.py), identical for both cores."""
        ...

    @classmethod
    def restore(cls, config: ProductConfig, data: bytes) -> Engine:
        """An engine in the state of `data` (written by either core); raises SnapshotError."""
        ...

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top n levels per side as (price, total size) in scaled units, best first."""
        ...

    def best_bid(self) -> int | None:
        """Highest resting bid price in quote units, or None."""
        ...

    def best_ask(self) -> int | None:
        """Lowest resting ask price in quote units, or None."""
        ...

    def resting_orders(self) -> int:
        """How many orders rest on the book."""
        ...


def apply_one(engine: Engine, value: bytes, time_ns: int) -> list[bytes] | DeadLetter:
    """One record through `apply`: its events' bytes, or its DeadLetter (replay, tools, tests)."""
    events, dead = engine.apply(((value, time_ns),))
    return dead[0][1] if dead else events
