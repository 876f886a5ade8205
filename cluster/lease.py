"""The leader lease of one product process: renew it as leader, follow and take it as standby.

Guarantees (with cluster/redis_state.py's scripts):
- At most one lease value `<epoch>|<token>` exists per product; epochs only grow.
- A leader trusts its lease only until the send time of its last successful renewal plus
  TTL minus a safety margin, on its own monotonic clock; past that it must stop publishing. It
  waits `lease_overdue_grace_ms` more for a late renewal: one that succeeds found the lease's
  exact value still in Redis, so nobody else can have held it meanwhile, and publishing resumes
  at the same epoch. Past the grace, or when the lease is lost, it steps down to standby.
- Renewal is the node's, not the matching loop's (cluster/lease_board.py: one renewer thread
  per node renews all its leaders' leases), so a long batch, a snapshot or a GC pause on the
  matching loop does not cost the lease. It renews only while the loop has shown progress
  within `Timing.loop_stall_limit_ms`: a loop that truly hangs (or a process that is stopped)
  lets the lease lapse, and a standby takes over.
- A lease that lapsed while Redis or its node was held up is taken again by the node's renewer
  if nobody can have held it since (its leader resumes at the same epoch); a standby that found
  it free on a slow look leaves it to its leader for two renewal rounds, once.
- A standby takes the lease only when the key is gone. Placement decides who goes first:
  a caught-up standby on the product's preferred node at once, other caught-up standbys after
  `placement_defer_ms`, standbys still catching up after three times that, and a stepped-down
  leader that would have to restart to lead after five lease TTLs. Nobody preempts.
- Planned handover: a leader that hands over (SIGTERM, an operator's `handover`, or placement)
  first delivers and records everything, then releases its lease and wakes its chosen caught-up
  standby in one script; that standby, blocked on its handover list, acquires at once.
- Leaders spread evenly: the preferred node of the k-th product (of the node's sorted products)
  is the (k mod n)-th of the n nodes that can lead it. A leader that finds another caught-up
  node preferred, after `rebalance_after_s` of leading, hands over to it: a node that joins gets
  its share by handover, never by a kill.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cluster.aio import cancelling, until_tick
from cluster.redis_state import NODES_KEY, handover_request_key, status_key

if TYPE_CHECKING:
    from cluster.lease_board import LeaseSlot

log = logging.getLogger(__name__)


# A free lease waits this many TTLs for another standby before one that must restart to lead takes it.
RESTART_TO_LEAD_DEFER_TTLS = 5


class Demoted(Exception):
    """The lease is gone or can no longer be trusted: restart as a standby."""


class LeaseLapsed(Exception):
    """A fenced write found nobody holding the lease: not written. Not a loss: the leader's node
    takes a lapsed lease again if nobody held it since, and the lease clock decides the rest."""


def preferred_node(product: str, nodes, products=()) -> str | None:
    """The node of `nodes` that should lead `product`: the k-th of `products` (sorted) goes to the
    (k mod n)-th node (sorted), so n nodes running the same products lead equal shares; a
    product not in `products` falls back to a stable hash."""
    if not nodes:
        return None
    ordered = sorted(nodes)
    names = sorted(products)
    index = names.index(product) if product in names else zlib.crc32(product.encode())
    return ordered[index % len(ordered)]


@dataclass
class Leadership:
    """What a leader knows: its lease value and where publishing resumes."""

    epoch: int
    lease_value: str
    suppress_upto: int
    dlq_from_offset: int
    valid_until: float
    delivered_seq: int
    # Last sequence handed to the producer; delivered_seq trails it.
    produced_seq: int = 0
    headers: list = field(default_factory=list)
    dlq_produced: int = 0
    dlq_delivered: int = 0
    # (next input offset, last sequence, dlq records produced) at each batch end, oldest first
    batch_marks: collections.deque = field(default_factory=collections.deque)
    progress: tuple[int, int] = (0, 0)
    written_progress: tuple[int, int] = (-1, -1)
    # Set when the node's renewer found the lease not ours any more (LeaseKeeper.sync).
    lost: str | None = None
    # Monotonic s at which publishing paused for a late renewal (check_lease_clock), else None.
    overdue_since: float | None = None
    since: float = field(default_factory=time.monotonic)


class Follower(Protocol):
    """What the lease keeper asks of its product process, and all it may touch of it."""

    def leadership(self) -> Leadership | None:
        """The current leadership, or None as a standby."""

    def follow(self, progress: tuple[int, int], checkpoint: int | None, leader_snapshot) -> None:
        """The leader's recorded (sequence, offset), announced checkpoint and stored snapshot hash."""

    def caught_up(self) -> bool:
        """Whether this standby could lead from memory now."""

    def quiet_for_s(self) -> float:
        """Seconds since input last came in."""

    def must_restart_to_lead(self) -> bool:
        """Whether winning the lease would make this process restart (a stepped-down leader whose
        computed events nobody has delivered yet)."""

    async def promote(self, acquired, valid_until: float) -> None:
        """Lead from now on (raises Demoted if it cannot)."""

    def want_handover(self, target: str) -> None:
        """Hand the product over at the next turn: to `target`, or '' for the preferred standby."""

    def restart(self, reason: str) -> None:
        """Leave through the recovery path (exit 75)."""


class LeaseKeeper:
    """The lease of a product process: its renewal thread, following and taking it as standby,
    placement and handover requests as leader."""

    def __init__(
        self, redis, settings, product: str, token: str, follower: Follower, slot: LeaseSlot
    ) -> None:
        self.redis = redis
        self.timing = settings.timing
        self.product = product
        self.token = token
        self.node_id = settings.node_id
        self.products = settings.products
        self.follower = follower
        self.slot = slot
        self.lease_free_since: float | None = None
        self.started_at = time.monotonic()
        self.preferred_seen: str | None = None  # the other node placement preferred at the last look
        self.progress_looked: tuple[int, int] | None = None  # the leader's progress at the last look
        self.slow_look_deferred = False  # whether this free lease was left to its leader once already
        self.stopped = False

    def hold(self, leader: Leadership) -> None:
        """Have the node renew this leadership from now on."""
        self.slot.hold(leader.epoch, leader.lease_value)

    def drop(self) -> None:
        """Stop renewing (stepped down, handed over, or stopping)."""
        self.slot.drop()

    def stop(self) -> None:
        """The process stops: take no lease any more, renew none."""
        self.stopped = True
        self.slot.drop()

    def beat(self) -> None:
        """The matching loop turned: the node may go on renewing."""
        self.slot.beat()

    def sync(self, leader: Leadership) -> None:
        """Take the node's last word on this leadership: a later valid_until, or that it is lost."""
        renewed = self.slot.valid_until(leader.epoch)
        if renewed is not None and renewed > leader.valid_until:
            leader.valid_until = renewed
        if self.slot.lost(leader.epoch) and leader.lost is None:
            leader.lost = "lease lost"

    def valid_until(self, sent: float) -> float:
        """How long an acquisition or renewal sent at `sent` (monotonic s) lets the leader publish."""
        return sent + self.timing.lease_trust_ms() / 1000

    async def run(self) -> None:
        """As standby, follow progress and take the lease when it is free or handed to us; as
        leader, look for handover requests and a better-placed node (the node renews)."""
        t, follower = self.timing, self.follower
        handed = False
        while not self.stopped:  # also cancelled when the process stops
            if follower.leadership() is not None:
                handed = False
                try:
                    await self.leader_step()
                except Exception as exc:  # noqa: BLE001 - placement is best effort
                    if cancelling():
                        raise
                    log.warning("leader step failed product=%s error=%s", self.product, exc)
                # As often as status is reported: an idle leader looks every status_idle_every_ms.
                await asyncio.sleep(until_tick(t.status_cadence_s(follower.quiet_for_s()), self.product))
                continue
            try:
                wait_s = await self.standby_step(handed)
                # Wait for the next look, or less if a leader hands the product to this node.
                handed = await self.redis.wait_for_handover(self.node_id, wait_s)
            except Exception as exc:  # noqa: BLE001 - keep following when Redis comes back
                if cancelling():
                    raise
                log.warning("standby step failed product=%s error=%s", self.product, exc)
                handed = False
                await asyncio.sleep(t.standby_poll_ms / 1000)

    async def leader_step(self) -> None:
        """Take an operator's handover request, or hand over to the preferred node if it is another."""
        request, (running, caught_up) = await self.look(take_request=True)
        if request is not None:
            self.follower.want_handover(request)
            return
        leader = self.follower.leadership()
        if leader is None or time.monotonic() - leader.since < self.timing.rebalance_after_s:
            self.preferred_seen = None
            return
        # Placement is over the nodes running the product (they come and go rarely), not over the
        # caught-up ones (a standby under load drops in and out of that set), and must prefer the
        # same caught-up node on two looks in a row: leaders move once, not back and forth.
        preferred = preferred_node(self.product, running | {self.node_id}, self.products)
        if preferred == self.node_id or preferred not in caught_up:
            self.preferred_seen = None
        elif self.preferred_seen != preferred:
            self.preferred_seen = preferred
        else:
            log.info("placement prefers another node product=%s node=%s", self.product, preferred)
            self.follower.want_handover(preferred)
            self.preferred_seen = None

    async def handover_target(self, wanted: str) -> str | None:
        """The caught-up standby to hand over to: `wanted`, or the preferred one if it is ''."""
        standbys = await self.caught_up_standbys() - {self.node_id}
        if wanted:
            return wanted if wanted in standbys else None
        return preferred_node(self.product, standbys, self.products)

    async def standby_step(self, handed: bool = False) -> float:
        """Read the leader's progress; acquire the lease when it is free and placement allows
        (at once when the leader handed it to this node). Returns the wait before the next look (s)."""
        asked = time.monotonic()
        seq, offset, checkpoint, leader_snapshot = await self.redis.read_follow()
        self.follower.follow((seq, offset), checkpoint, leader_snapshot)
        holder, ttl_ms = await self.redis.holder_ttl()
        if holder is not None:
            self.lease_free_since = None
            self.slow_look_deferred = False
            return self.next_look_s((seq, offset), ttl_ms)
        now = time.monotonic()
        if self.lease_free_since is None:
            self.lease_free_since = now
        if not handed and self.defer_after_slow_look(now - asked):
            return 2 * self.timing.lease_renew_ms / 1000
        if handed or await self.placement_allows(now):
            sent = time.monotonic()
            acquired = await self.redis.try_acquire(self.token, self.timing.lease_ttl_ms)
            if acquired is not None:
                try:
                    await self.follower.promote(acquired, self.valid_until(sent))
                except Demoted as exc:
                    self.follower.restart(str(exc))  # its exit releases the lease it just took
        return self.timing.standby_poll_ms / 1000

    def defer_after_slow_look(self, took_s: float) -> bool:
        """Whether to leave a lease we just found free to its leader for two renewal rounds: our
        look took longer than a round, so Redis (or this host) was held up, and a leader whose
        lease lapsed meanwhile takes it again at its node's next round (RENEW_MANY). Once per
        free lease, so a slow Redis delays a real failover by those two rounds at most."""
        if self.slow_look_deferred or took_s * 1000 <= self.timing.lease_renew_ms:
            return False
        self.slow_look_deferred = True
        log.info(
            "lease free after a slow look product=%s took_ms=%d: leaving it to its leader for two rounds",
            self.product,
            took_s * 1000,
        )
        return True

    def next_look_s(self, progress: tuple[int, int], ttl_ms: int) -> float:
        """When a standby looks again while the lease is held: at the lease's expiry if the leader
        does not renew it (so a dead leader is noticed at the expiry itself, not up to a poll later),
        and no later than `standby_poll_ms` while the leader makes progress or this standby is
        catching up (it follows closely). While the product is quiet, only at that expiry (capped by
        `status_every_ms`): an idle product's standby looks about twice a second, not 20 times."""
        moved, self.progress_looked = progress != self.progress_looked, progress
        expiry_s = (max(ttl_ms, 0) + 1) / 1000
        if moved or not self.follower.caught_up():
            return min(self.timing.standby_poll_ms / 1000, expiry_s)
        return min(self.timing.status_every_ms / 1000, expiry_s)

    async def placement_allows(self, now: float) -> bool:
        """Whether this standby may try for the free lease now (see the module docstring)."""
        waited_ms = (now - self.lease_free_since) * 1000
        defer_ms = self.timing.placement_defer_ms
        if self.follower.must_restart_to_lead():
            # Taking the lease would only restart this process: leave it to anyone else for a while.
            return waited_ms >= RESTART_TO_LEAD_DEFER_TTLS * self.timing.lease_ttl_ms
        if not self.follower.caught_up():
            return waited_ms >= 3 * defer_ms
        if (now - self.started_at) * 1000 < self.timing.startup_grace_ms and await self.other_nodes_live():
            return False  # let the nodes starting together see each other before leases are taken
        candidates = {self.node_id} | await self.caught_up_standbys()
        if preferred_node(self.product, candidates, self.products) == self.node_id:
            return True
        return waited_ms >= defer_ms

    async def caught_up_standbys(self) -> set[str]:
        """Nodes whose process for this product recently reported being a caught-up standby."""
        return (await self.standbys())[1]

    async def standbys(self) -> tuple[set[str], set[str]]:
        """(nodes whose process for this product reported recently, in any role: a leader that
        just handed over may still be reported as one; the caught-up standbys among them)."""
        return (await self.look(take_request=False))[1]

    async def look(self, take_request: bool) -> tuple[str | None, tuple[set[str], set[str]]]:
        """One round trip: an operator's pending handover request (consumed; its target node, ''
        for any) if `take_request`, and `standbys()`. A status counts while it is fresh (an idle
        process reports every status_idle_every_ms) and its node heartbeats (every
        node_heartbeat_ms): a node that died drops out within a second, not at the status's age."""
        now_ms = int(time.time() * 1000)
        pipe = self.redis.client.pipeline(transaction=False)
        if take_request:
            pipe.getdel(handover_request_key(self.product))
        pipe.hgetall(status_key(self.product))
        pipe.zrangebyscore(NODES_KEY, now_ms - self.timing.node_fresh_ms(), "+inf")
        *request, statuses, live = await pipe.execute()
        live_nodes = {node.decode() for node in live}
        fresh_after = now_ms - self.timing.status_fresh_ms()
        running, caught_up = set(), set()
        for raw_node, raw in statuses.items():
            node, status = raw_node.decode(), json.loads(raw)
            if status["reported_ms"] >= fresh_after and node in live_nodes:
                running.add(node)
                if status["role"] == "standby" and status["caught_up"]:
                    caught_up.add(node)
        wanted = request[0] if request else None
        return (None if wanted is None else wanted.decode()), (running, caught_up)

    async def other_nodes_live(self) -> bool:
        """Whether another node heartbeated recently."""
        cutoff_ms = int(time.time() * 1000) - self.timing.node_fresh_ms()
        live = await self.redis.client.zrangebyscore(NODES_KEY, cutoff_ms, "+inf")
        return any(n.decode() != self.node_id for n in live)
