"""The node's lease renewer (cluster/lease_board.py) against the real redis-server: it renews the
leases its product processes hold, only while their loops turn, and tells them when one is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.lease_board import LeaseBoard, NodeRenewer
from cluster.redis_state import (
    LeaseRenewals,
    ProductRedis,
    async_client,
    leader_key,
    release_sync,
    sync_client,
)
from cluster.settings import Timing
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration

# Short enough that a lease left alone expires within the test, with the renewal rules kept.
TIMING = Timing(
    lease_ttl_ms=600, lease_renew_ms=100, lease_safety_ms=100, consume_timeout_ms=200, loop_stall_limit_ms=800
)


def acquire(redis_url: str, product: str, token: str, ttl_ms: int):
    async def go():
        client = async_client(redis_url)
        try:
            return await ProductRedis(client, product).try_acquire(token, ttl_ms)
        finally:
            await client.aclose()

    return asyncio.run(go())


@pytest.fixture
def board():
    made = LeaseBoard.create(3)
    yield made
    made.remove()
    assert not made.path.exists()


def test_one_round_trip_renews_the_owned_leases_and_refuses_the_others(services):
    products = [f"T{uuid.uuid4().hex[:10].upper()}-USD" for _ in range(3)]
    held = [acquire(services.redis_url, p, f"node-a:{p}:1", 1000) for p in products]
    renewals = LeaseRenewals(services.redis_url, 2.0)
    client = sync_client(services.redis_url)
    try:
        leases = [(p, h.lease_value) for p, h in zip(products, held, strict=True)]
        leases[1] = (products[1], f"{held[1].epoch}|someone-else")
        assert renewals(leases, 60_000) == ({1}, set()), "the positions of the leases that are not ours"
        ttls = [client.pttl(leader_key(p)) for p in products]
        assert ttls[0] > 1000 and ttls[2] > 1000, "the owned leases were extended"
        assert ttls[1] <= 1000, "a lease that is not ours is left as it was"
    finally:
        renewals.close()
        client.close()


def test_a_lapsed_lease_is_taken_again_only_if_nobody_can_have_held_it_since(services):
    """Redis (or the node) held up past the TTL: the lease expired with nobody taking it, and the
    next renewal takes it again with the same value. One acquired by another meanwhile (even if
    that one lapsed too), or given up by its holder, is lost for good."""
    products = [f"T{uuid.uuid4().hex[:10].upper()}-USD" for _ in range(3)]
    held = [acquire(services.redis_url, p, f"node-a:{p}:1", 60_000) for p in products]
    renewals = LeaseRenewals(services.redis_url, 2.0)
    client = sync_client(services.redis_url)
    try:
        for product in products:
            client.delete(leader_key(product))  # as if it expired
        # Product 1: another node acquired after the lapse, and its lease lapsed in turn.
        other = acquire(services.redis_url, products[1], "node-b:p:2", 60_000)
        assert other.epoch == held[1].epoch + 1
        client.delete(leader_key(products[1]))
        # Product 2: its holder handed it over or released it (the lease is gone by that path).
        client.set(leader_key(products[2]), held[2].lease_value, px=60_000)
        assert release_sync(client, products[2], f"node-a:{products[2]}:1")
        leases = [(p, h.lease_value) for p, h in zip(products, held, strict=True)]
        assert renewals(leases, 60_000) == ({1, 2}, {0})
        assert client.get(leader_key(products[0])) == held[0].lease_value.encode(), "taken again, same value"
        assert client.get(leader_key(products[1])) is None and client.get(leader_key(products[2])) is None
        assert renewals(leases, 60_000) == ({1, 2}, set()), "from then on an ordinary renewal"
    finally:
        renewals.close()
        client.close()


@pytest.fixture
def renewing(services, board):
    """A node renewer running over `board` for three fresh products; a sync client to look."""
    products = tuple(f"T{uuid.uuid4().hex[:10].upper()}-USD" for _ in range(3))
    renewer = NodeRenewer(board, products, services.redis_url, TIMING)
    client = sync_client(services.redis_url)
    renewer.start()
    try:
        yield SimpleNamespace(products=products, board=board, client=client, redis_url=services.redis_url)
    finally:
        renewer.stop()
        client.close()


def lead_in_slot(renewing, index: int):
    """Acquire product `index`'s lease and have the node renew it; (acquired, slot) after the
    first renewal."""
    held = acquire(renewing.redis_url, renewing.products[index], f"node-a:p:{index}", TIMING.lease_ttl_ms)
    slot = renewing.board.slot(index)
    slot.hold(held.epoch, held.lease_value)
    wait_until(lambda: slot.valid_until(held.epoch), 5, "the first renewal")
    return held, slot


def test_the_node_renews_a_live_loop_and_lets_a_stalled_one_lapse(renewing):
    held, slot = lead_in_slot(renewing, 1)
    key = leader_key(renewing.products[1])
    first = slot.valid_until(held.epoch)
    # Beating the loop keeps the lease well past its TTL, each renewal moving valid_until on.
    keep_until = time.monotonic() + 3 * TIMING.lease_ttl_ms / 1000
    while time.monotonic() < keep_until:
        slot.beat()
        time.sleep(TIMING.lease_renew_ms / 1000)
    assert renewing.client.get(key) == held.lease_value.encode()
    assert slot.valid_until(held.epoch) > first
    assert slot.valid_until(held.epoch + 1) is None, "a renewal is for its epoch only"
    assert not slot.lost(held.epoch)
    # The loop stops turning: past the stall limit nothing renews it, and it expires.
    wait_until(lambda: renewing.client.get(key) is None, 5, "the stalled lease to lapse")


def test_a_lease_taken_by_another_is_reported_lost_and_a_cleared_slot_is_not_renewed(renewing):
    held, slot = lead_in_slot(renewing, 0)
    renewing.client.set(leader_key(renewing.products[0]), f"{held.epoch + 1}|node-b:p:2", px=60_000)  # taken
    wait_until(lambda: slot.lost(held.epoch), 5, "the loss to be reported")

    lead_in_slot(renewing, 2)
    renewing.board.clear(2)  # its process died: the node renews it no more
    key = leader_key(renewing.products[2])
    wait_until(lambda: renewing.client.get(key) is None, 5, "the dead slot's lease to lapse")


def test_a_killed_nodes_board_is_removed_by_the_next_node():
    import subprocess
    import sys

    from cluster.lease_board import BOARD_PREFIX, board_dir

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    orphan = Path(board_dir()) / f"{BOARD_PREFIX}{int(gone.stdout)}-test"
    orphan.write_bytes(b"\0" * 512)
    mine = LeaseBoard.create(1)
    try:
        assert not orphan.exists(), "the dead node's board was left behind"
        assert mine.path.exists() and mine.path.name.startswith(f"{BOARD_PREFIX}{os.getpid()}-")
    finally:
        mine.remove()


def test_a_redis_held_up_past_the_ttl_leaves_the_lease_with_its_leader(renewing, services):
    """Redis stops for longer than the TTL while the loop lives: rounds keep going out on time
    (queued in Redis), and the first one Redis runs takes the lapsed lease again. The leader's
    slot is renewed again, never reported lost."""
    held, slot = lead_in_slot(renewing, 0)
    key = leader_key(renewing.products[0])
    redis_pid = services.redis.process.pid
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        stop_until = time.monotonic() + 2 * TIMING.lease_ttl_ms / 1000  # the fault: Redis silent
        while time.monotonic() < stop_until:
            slot.beat()
            time.sleep(TIMING.lease_renew_ms / 1000)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    resumed = time.monotonic()
    wait_until(lambda: slot.beat() or (slot.valid_until(held.epoch) or 0) > resumed, 10, "a renewal after it")
    assert not slot.lost(held.epoch)
    assert renewing.client.get(key) == held.lease_value.encode()
