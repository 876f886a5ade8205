"""The live state hash, standby side: does this replica hold exactly the leader's state?

The leader announces the input offset of each snapshot it captures (`checkpoint` in the
progress record, written with, never after, the progress that lets standbys pass it) and stores
the snapshot with the hash of its bytes (cluster/snapshots.state_hash; both cores write the
same bytes for one state). A standby stops applying input at an announced offset, captures its
own snapshot there (off its loop for a large book, like the leader), goes on, and compares its
hash with the leader's once that snapshot is stored. A mismatch means this replica diverged
(memory corruption, a bug, a tampered input it saw and the leader did not): it must never lead
from that state, so it stops counting as caught up, says so (log, obc_state_diverged, status),
and restarts through snapshot + replay after `DIVERGED_RESTART_S` (the time for alarms to see it).
"""

from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

DIVERGED_RESTART_S = 10.0
KEPT_HASHES = 8  # own hashes kept for a leader snapshot still to be stored


class StateCheck:
    """Per standby process: the announced checkpoint, its own hashes, and the verdicts."""

    def __init__(self, product: str) -> None:
        self.product = product
        self.announced: int | None = None  # an offset ahead of us to stop at
        self.capturing: tuple[int, concurrent.futures.Future] | None = None
        self.own: dict[int, str] = {}  # offset -> our state hash there
        self.leader_snapshot: tuple[int, str] | None = None  # (offset, hash) as stored by the leader
        self.checks = 0
        self.diverged_at: int | None = None

    def follow(
        self, checkpoint: int | None, leader_snapshot: tuple[int, str] | None, next_offset: int
    ) -> None:
        """What the leader recorded, as read by the standby's lease task."""
        if checkpoint is not None and checkpoint > next_offset and checkpoint not in self.own:
            self.announced = checkpoint
        self.leader_snapshot = leader_snapshot

    def stop_offset(self, next_offset: int) -> int | None:
        """The offset a standby must not apply past yet (None: no limit from here)."""
        if self.announced is None or self.announced < next_offset or self.capturing is not None:
            return None
        return self.announced

    def turn(self, engine, next_offset: int, capture: Callable[[object], concurrent.futures.Future]) -> None:
        """At every turn of a standby's loop: capture at the checkpoint, collect, compare."""
        if self.announced is not None and next_offset >= self.announced:
            if next_offset == self.announced and self.capturing is None:
                self.capturing = (next_offset, capture(engine))
            self.announced = None
        if self.capturing is not None and self.capturing[1].done():
            offset, future = self.capturing
            self.capturing = None
            try:
                self.own[offset] = future.result()
            except OSError as exc:
                log.warning(
                    "state check capture failed product=%s offset=%d error=%s", self.product, offset, exc
                )
            for old in sorted(self.own)[:-KEPT_HASHES]:
                del self.own[old]
        self.compare()

    def compare(self) -> None:
        """Compare with the leader's stored snapshot when both hashed the same offset."""
        if self.leader_snapshot is None:
            return
        offset, leader_hash = self.leader_snapshot
        own = self.own.pop(offset, None)
        if own is None:
            return
        self.checks += 1
        if own != leader_hash and self.diverged_at is None:
            self.diverged_at = offset
            log.error(
                "state diverged from the leader product=%s offset=%d own_hash=%s leader_hash=%s: this "
                "replica will not lead and restarts from the snapshot in %.0f s",
                self.product,
                offset,
                own,
                leader_hash,
                DIVERGED_RESTART_S,
            )

    @property
    def diverged(self) -> bool:
        """Whether this replica's state was found to differ from the leader's."""
        return self.diverged_at is not None
