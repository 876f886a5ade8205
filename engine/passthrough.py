"""The benchmark's limit: the engine interface (engine/api.Engine) with matching replaced by a copy.

`bench e2e` runs the same node, the same loop, the same publisher and the same Kafka and Redis
traffic with this engine in place of a matching core (`start --passthrough`): what it drains is the
most any core could drain here, so the engine's throughput is reported as a ratio of it. Each input
record's value is copied to the output `copies_per_mille / 1000` times on average (exactly: the
n-th record applied, counting from 0, is copied floor((n+1)k/1000) - floor(nk/1000) times), so the
passthrough can also be run at a matching core's output volume. The copies are not events of the
contract; `sequence` counts them as if they were, so progress, delivery and snapshots work as for a
real core. The book stays empty: snapshots are an empty book at that sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.api import Applied, Record
from engine.config import ProductConfig
from engine.matching import MatchingEngine


class PassthroughEngine:
    """Copies input values to the output (see the module docstring)."""

    core = "passthrough"

    def __init__(self, config: ProductConfig, copies_per_mille: int = 1000) -> None:
        self.empty = MatchingEngine(config)  # state as a core keeps it: an empty book, the sequence
        self.config = config
        self.product_id = self.empty.product_id
        self.fingerprint = self.empty.fingerprint
        self.counters = self.empty.counters
        self.copies_per_mille = copies_per_mille
        self.applied = 0  # records applied by this instance: decides how many copies each gets

    @property
    def sequence(self) -> int:
        """Copies made so far (restored from a snapshot, then counted on)."""
        return self.empty.sequence

    @property
    def trade_seq(self) -> int:
        """Always 0: nothing trades."""
        return self.empty.trade_seq

    def apply(self, records: Sequence[Record]) -> Applied:
        """Every record's value, copied; no dead letters (nothing is read)."""
        values = [(r[0] if isinstance(r, tuple) else r.value()) or b"" for r in records]
        k = self.copies_per_mille
        if k == 1000:
            out = values
        else:
            n = self.applied
            out = [raw for i, raw in enumerate(values, n) for _ in range((i + 1) * k // 1000 - i * k // 1000)]
        self.applied += len(values)
        self.empty.sequence += len(out)
        self.counters.orders_in += len(values)
        return out, []

    def snapshot(self) -> bytes:
        """An empty book at this sequence."""
        return self.empty.snapshot()

    @classmethod
    def restore(cls, config: ProductConfig, data: bytes, copies_per_mille: int = 1000) -> PassthroughEngine:
        """A passthrough at the snapshot's sequence; raises SnapshotError as the cores do."""
        engine = cls(config, copies_per_mille)
        engine.empty = MatchingEngine.restore(config, data)
        engine.counters = engine.empty.counters
        return engine

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Always empty."""
        return self.empty.depth(n)

    def best_bid(self) -> int | None:
        """Always None."""
        return None

    def best_ask(self) -> int | None:
        """Always None."""
        return None

    def resting_orders(self) -> int:
        """Always 0."""
        return 0
