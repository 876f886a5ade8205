"""The lease and the fenced writes, against the real redis-server: what zombies cannot do."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from cluster.redis_state import (
    LeaseRenewals,
    ProductRedis,
    SnapshotEnvelope,
    async_client,
    leader_key,
    sync_client,
)

pytestmark = pytest.mark.integration


def envelope(product: str, sequence: int, offset: int) -> SnapshotEnvelope:
    return SnapshotEnvelope(
        format=1,
        product=product,
        epoch=1,
        next_offset=offset,
        sequence=sequence,
        fingerprint="f",
        engine=b"x",
    )


def test_epochs_grow_and_stale_leaders_are_refused(services, product):
    async def scenario() -> None:
        client = async_client(services.redis_url)
        store = ProductRedis(client, product)
        renewals = LeaseRenewals(services.redis_url, 2.0)  # the node's renewer thread's call

        def renew(value: str, ttl_ms: int) -> bool:
            return not any(renewals([(product, value)], ttl_ms))

        first = await store.try_acquire("node-a:p:1", 10_000)
        assert first is not None and first.epoch == 1
        assert await store.try_acquire("node-b:p:2", 10_000) is None, "one holder at a time"
        assert not renew("1|someone-else", 10_000)
        assert renew(first.lease_value, 10_000)

        assert await store.write_progress(first.lease_value, 1, 10, 5, "f") == 1
        assert await store.write_progress(first.lease_value, 1, 9, 5, "f") == -2, "progress never goes back"
        assert await store.write_snapshot(first.lease_value, envelope(product, 10, 5)) == 1
        assert await store.write_snapshot(first.lease_value, envelope(product, 10, 5)) == -2, "only newer"

        assert await store.release("node-a:p:1")
        second = await store.try_acquire("node-b:p:2", 10_000)
        assert second is not None and second.epoch == 2
        assert (second.progress_sequence, second.progress_offset) == (10, 5), "read with the acquisition"

        # The old leader wakes up and writes late: refused, nothing changes.
        assert await store.write_progress(first.lease_value, 1, 99, 50, "f") == -1
        assert await store.write_snapshot(first.lease_value, envelope(product, 99, 50)) == -1
        assert not renew(first.lease_value, 10_000)
        assert not await store.release("node-a:p:1"), "a stale owner cannot release the new lease"
        assert await store.read_progress() == (10, 5, "f")
        assert (await store.read_snapshot()).sequence == 10
        assert (await store.holder_ttl())[0] == second.lease_value
        renewals.close()
        await client.aclose()

    asyncio.run(scenario())


def test_fenced_writes_tell_a_lapsed_lease_from_a_taken_one(services, product):
    """A write that finds nobody holding the lease answers -4, not -1: the leader's node may take
    the lapsed lease again (RENEW_MANY), so it is no reason to step down; nothing is written."""

    async def scenario() -> None:
        client = async_client(services.redis_url)
        store = ProductRedis(client, product)
        held = await store.try_acquire("node-a:p:1", 10_000)
        assert await store.write_progress(held.lease_value, held.epoch, 10, 5, "f") == 1
        await client.delete(leader_key(product))  # lapsed
        assert await store.write_progress(held.lease_value, held.epoch, 20, 9, "f") == -4
        assert await store.write_snapshot(held.lease_value, envelope(product, 20, 9)) == -4
        assert await store.read_progress() == (10, 5, "f") and await store.read_snapshot() is None
        taken = await store.try_acquire("node-b:p:2", 10_000)
        assert await store.write_progress(held.lease_value, held.epoch, 20, 9, "f") == -1, "taken: refused"
        assert taken is not None
        await client.aclose()

    asyncio.run(scenario())


def test_the_lease_expires_by_itself(services, product):
    async def scenario() -> None:
        client = async_client(services.redis_url)
        store = ProductRedis(client, product)
        held = await store.try_acquire("node-a:p:1", 200)
        assert held is not None
        deadline = asyncio.get_running_loop().time() + 5
        while (await store.holder_ttl())[0] is not None:
            assert asyncio.get_running_loop().time() < deadline, "the lease did not expire"
            await asyncio.sleep(0.05)
        taken = await store.try_acquire("node-b:p:2", 200)
        assert taken is not None and taken.epoch == held.epoch + 1
        await client.aclose()

    asyncio.run(scenario())


def test_redis_durability_is_checked(services, start_local, tmp_path):
    from cluster.embedded import redis_server
    from cluster.redis_state import durability_problems

    assert durability_problems(sync_client(services.redis_url)) == []
    loose = start_local(redis_server(tmp_path / "loose"))
    client = sync_client(f"redis://127.0.0.1:{loose.port}/0")
    client.config_set("appendfsync", "everysec")
    client.config_set("maxmemory-policy", "allkeys-lru")
    problems = durability_problems(client)
    assert len(problems) == 2 and "appendfsync is everysec" in problems[0] and "allkeys-lru" in problems[1]
    client.config_set("appendonly", "no")
    assert "appendonly is not yes" in durability_problems(client)[0]


def big_envelope(product: str, size: int) -> SnapshotEnvelope:
    """A snapshot of `size` engine bytes (a multiple of 256), at sequence 9 and offset 7."""
    return SnapshotEnvelope(
        format=1,
        product=product,
        epoch=1,
        next_offset=7,
        sequence=9,
        fingerprint="f",
        engine=bytes(range(256)) * (size // 256),
        state_hash="abc",
    )


def test_a_large_snapshot_is_written_in_pieces_and_fenced(services, product):
    """Bytes larger than a piece are staged and put in place whole; a stale writer's are discarded."""
    from cluster.redis_state import SNAPSHOT_PIECE_BYTES, snapshot_data_key

    async def scenario() -> None:
        client = async_client(services.redis_url)
        store = ProductRedis(client, product)
        first = await store.try_acquire("node-a:p:1", 10_000)
        big = big_envelope(product, 3 * SNAPSHOT_PIECE_BYTES + 17 * 256)
        assert await store.write_snapshot(first.lease_value, big) == 1
        assert await store.read_snapshot() == big
        assert await client.hget(f"matching_snapshot_{product}", "state_hash") == b"abc"
        assert await store.release("node-a:p:1")
        newer = msgspec.structs.replace(big, sequence=10)
        assert await store.write_snapshot(first.lease_value, newer) == -4, (
            "a stale leader's bytes (nobody holds it)"
        )
        assert await store.read_snapshot() == big, "stay out of place"
        staged = [k async for k in client.scan_iter(match=f"{snapshot_data_key(product)}:staging:*")]
        assert staged == [], "and are not left behind"
        await client.aclose()

    asyncio.run(scenario())


def test_a_snapshot_staged_by_another_process_is_committed_fenced_and_whole(services, product):
    """A leader's snapshot child stages the bytes over its own connection; the leader commits them
    in O(1): exactly those bytes, only while it holds the lease, and never bytes that changed."""
    from cluster.redis_state import SNAPSHOT_PIECE_BYTES, stage_snapshot, staging_key

    async def scenario() -> None:
        client = async_client(services.redis_url)
        child = sync_client(services.redis_url)
        store = ProductRedis(client, product)
        first = await store.try_acquire("node-a:p:1", 10_000)
        big = big_envelope(product, 2 * SNAPSHOT_PIECE_BYTES + 5 * 256)
        size = stage_snapshot(child, product, first.lease_value, big)
        assert await store.read_snapshot() is None, "staged is not stored"
        assert await store.commit_snapshot(first.lease_value, 9, 7, "abc", size) == 1
        assert await store.read_snapshot() == big

        newer = msgspec.structs.replace(big, sequence=12)
        size = stage_snapshot(child, product, first.lease_value, newer)
        child.append(staging_key(product, first.lease_value), b"x")  # disturbed after staging
        assert await store.commit_snapshot(first.lease_value, 12, 7, "abc", size) == -3
        assert await store.read_snapshot() == big

        size = stage_snapshot(child, product, first.lease_value, newer)
        assert await store.release("node-a:p:1")
        second = await store.try_acquire("node-b:p:2", 10_000)
        assert await store.commit_snapshot(first.lease_value, 12, 7, "abc", size) == -1, "a deposed leader"
        assert await store.read_snapshot() == big
        assert second is not None
        child.close()
        await client.aclose()

    asyncio.run(scenario())
