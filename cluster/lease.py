"""The leader lease of one product process: renew it as leader, follow and take it as standby.

Guarantees (with cluster/redis_state.py's scripts):
- At most one lease value `<epoch>|<token>` exists per product; epochs only grow.
- A leader trusts its lease only until the send time of its last successful renewal plus
  TTL minus a safety margin, on its own monotonic clock; past that it must stop (Demoted).
- A standby takes the lease only when the key is gone. Placement decides who goes first:
  a caught-up standby on the product's preferred node at once, other caught-up standbys after
  `placement_defer_ms`, standbys still catching up after three times that. Nobody preempts.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cluster.redis_state import NODES_KEY, status_key

if TYPE_CHECKING:
    from cluster.worker import ProductWorker

log = logging.getLogger(__name__)


class Demoted(Exception):
    """The lease is gone or can no longer be trusted: restart as a standby."""


def preferred_node(product: str, nodes: list[str]) -> str | None:
    """Spread leaders over nodes: a stable hash of the product picks one of `nodes`."""
    if not nodes:
        return None
    ordered = sorted(nodes)
    return ordered[zlib.crc32(product.encode()) % len(ordered)]


@dataclass
class Leadership:
    """What a leader knows: its lease value and where publishing resumes."""

    epoch: int
    lease_value: str
    suppress_upto: int
    dlq_from_offset: int
    valid_until: float
    delivered_seq: int
    # Last sequence handed to the producer (passthrough: records copied); delivered_seq trails it.
    produced_seq: int = 0
    headers: list = field(default_factory=list)
    dlq_produced: int = 0
    dlq_delivered: int = 0
    # (next input offset, last sequence, dlq records produced) at each batch end, oldest first
    batch_marks: collections.deque = field(default_factory=collections.deque)
    progress: tuple[int, int] = (0, 0)
    written_progress: tuple[int, int] = (-1, -1)


class LeaseKeeper:
    """The lease task of a product process; it hands an acquired lease to `start_publishing`."""

    def __init__(self, worker: ProductWorker) -> None:
        self.worker = worker
        self.timing = worker.timing
        self.redis = worker.redis
        self.product = worker.product
        self.node_id = worker.settings.node_id
        self.lease_free_since: float | None = None
        self.started_at = time.monotonic()

    def valid_until(self, sent: float) -> float:
        """How long a renewal sent at `sent` (monotonic) lets the leader publish."""
        return sent + (self.timing.lease_ttl_ms - self.timing.lease_safety_ms) / 1000

    async def run(self) -> None:
        """Renew as leader; as standby, follow progress and take the lease when it is free."""
        worker, t = self.worker, self.timing
        while not worker.stopping:
            leader = worker.leader
            if leader is not None:
                sent = time.monotonic()
                try:
                    still_ours = await self.redis.renew(leader.lease_value, t.lease_ttl_ms)
                except Exception as exc:  # noqa: BLE001 - Redis unreachable: the clock decides
                    log.warning("lease renew failed product=%s error=%s", self.product, exc)
                else:
                    if not still_ours:
                        worker.demote("lease lost")
                        return
                    leader.valid_until = self.valid_until(sent)
                await asyncio.sleep(t.lease_renew_ms / 1000)
                continue
            try:
                await self.standby_step()
            except Exception as exc:  # noqa: BLE001 - keep following when Redis comes back
                log.warning("standby step failed product=%s error=%s", self.product, exc)
            await asyncio.sleep(t.standby_poll_ms / 1000)

    async def standby_step(self) -> None:
        """Read the leader's progress; acquire the lease when it is free and placement allows."""
        seq, offset, _ = await self.redis.read_progress()
        self.worker.progress_seen = (seq, offset)
        if await self.redis.holder() is not None:
            self.lease_free_since = None
            return
        now = time.monotonic()
        if self.lease_free_since is None:
            self.lease_free_since = now
        if not await self.placement_allows(now):
            return
        sent = time.monotonic()
        acquired = await self.redis.try_acquire(self.worker.token, self.timing.lease_ttl_ms)
        if acquired is not None:
            try:
                await self.worker.start_publishing(acquired, self.valid_until(sent))
            except Demoted as exc:
                self.worker.demote(str(exc))

    async def placement_allows(self, now: float) -> bool:
        """Whether this standby may try for the free lease now (see the module docstring)."""
        waited_ms = (now - self.lease_free_since) * 1000
        defer_ms = self.timing.placement_defer_ms
        if not self.worker.caught_up():
            return waited_ms >= 3 * defer_ms
        if (now - self.started_at) * 1000 < self.timing.startup_grace_ms and await self.other_nodes_live():
            return False  # let the nodes starting together see each other before leases are taken
        candidates = {self.node_id} | await self.caught_up_standbys()
        if preferred_node(self.product, sorted(candidates)) == self.node_id:
            return True
        return waited_ms >= defer_ms

    async def caught_up_standbys(self) -> set[str]:
        """Nodes whose process for this product recently reported being a caught-up standby."""
        fresh_after = int(time.time() * 1000) - 3 * self.timing.status_every_ms
        nodes = set()
        for node, raw in (await self.redis.client.hgetall(status_key(self.product))).items():
            status = json.loads(raw)
            if status["reported_ms"] >= fresh_after and status["role"] == "standby" and status["caught_up"]:
                nodes.add(node.decode())
        return nodes

    async def other_nodes_live(self) -> bool:
        """Whether another node heartbeated recently."""
        cutoff_ms = int(time.time() * 1000) - 3 * self.timing.node_heartbeat_ms
        live = await self.redis.client.zrangebyscore(NODES_KEY, cutoff_ms, "+inf")
        return any(n.decode() != self.node_id for n in live)
