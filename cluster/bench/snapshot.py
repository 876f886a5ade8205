"""`orderbook-cluster bench snapshot`: what a large book's snapshot costs the product process.

Builds a book of --resting orders, starts a local redis-server (fsync-always, as `start` runs it)
and, each round, takes the leader's snapshot the way the worker does (`Snapshotter.take`: a forked
child stages the bytes in Redis; the process commits them) and the standby's state-check capture (the child hands
back only the hash), beside the way both ran before: the child's bytes read back into the
process and written to Redis from its loop. For each: CPU of the product process (the matching
loop and its threads, which compete for the cores with the loop), CPU of the child, wall time.
A round is checked: the stored snapshot is the book's bytes.
"""

from __future__ import annotations

import asyncio
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import click
import msgspec

from cluster import snapshots
from cluster.embedded import embedded_services
from cluster.options import json_option
from cluster.redis_state import ProductRedis, async_client, snapshot_data_key, snapshot_key
from cluster.settings import Timing
from engine.config import ProductConfig
from engine.native import make_engine

PRODUCT = "BENCH-SNAP"
CONFIG = ProductConfig(product_id=PRODUCT, base_scale=6, quote_scale=2)
LOAD_BATCH = 5000
WAYS = ("leader_staged_by_child", "leader_bytes_back", "standby_hash_only", "standby_bytes_back")


def resting_book(resting: int, core: str):
    """An engine holding `resting` limit orders on a ladder of 10,000 prices a side (none cross)."""
    engine = make_engine(CONFIG, core)
    batch = []
    for i in range(resting):
        sell = i % 2 == 0
        price = 10_000 + i % 5000 if sell else 9_999 - i % 5000
        order = {
            "id": i + 1,
            "product_id": PRODUCT,
            "user_id": i % 1000,
            "price": f"{price}.00",
            "size": "0.5",
            "type": "limit",
            "side": "sell" if sell else "buy",
            "created_at": 1,
        }
        batch.append((msgspec.json.encode(order), i))
        if len(batch) == LOAD_BATCH:
            engine.apply(batch)
            batch = []
    engine.apply(batch)
    if engine.resting_orders() != resting:
        raise click.ClickException(f"built {engine.resting_orders()} resting orders, not {resting}")
    return engine


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def one_way(
    way: str, engine, snapshotter: snapshots.Snapshotter, store: ProductRedis, lease_value: str
) -> dict:
    """One snapshot taken `way`; the product process's and the child's CPU (ms) and the wall ms."""
    reader, offset = snapshotter.reader, engine.sequence
    await store.client.delete(snapshot_key(PRODUCT), snapshot_data_key(PRODUCT))
    own, child, began = _cpu(resource.RUSAGE_SELF), _cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
    if way == "leader_staged_by_child":  # as the worker does: Snapshotter.take, then the commit
        taken = snapshotter.take(engine, 1, offset, lease_value)
        captured = await asyncio.wrap_future(taken.engine)
        snapshotter.dropped()
        rc = await store.commit_snapshot(
            lease_value, taken.sequence, taken.next_offset, captured.state_hash, captured.staged_size
        )
    elif way == "leader_bytes_back":
        data, digest = await asyncio.wrap_future(snapshots.capture_bytes(engine, reader))
        rc = await store.write_snapshot(
            lease_value, snapshotter.envelope(1, offset, engine.sequence, data, digest)
        )
    elif way == "standby_hash_only":
        await asyncio.wrap_future(snapshotter.capture_hash(engine))
        rc = None
    else:
        await asyncio.wrap_future(snapshots.capture_bytes(engine, reader))
        rc = None
    figures = {
        "process_cpu_ms": (_cpu(resource.RUSAGE_SELF) - own) * 1000,
        "child_cpu_ms": (_cpu(resource.RUSAGE_CHILDREN) - child) * 1000,
        "wall_ms": (time.perf_counter() - began) * 1000,
    }
    if rc is not None:
        stored = await store.read_snapshot()
        if rc != 1 or stored is None or stored.engine != engine.snapshot():
            raise click.ClickException(f"{way}: the stored snapshot is not the book (rc={rc})")
    return figures


async def run_rounds(engine, redis_url: str, rounds: int) -> dict:
    store = ProductRedis(async_client(redis_url), PRODUCT)
    acquired = await store.try_acquire("bench:snapshot:1", 3_600_000)
    # Every book is forked, as a large one is in a product process.
    snapshotter = snapshots.Snapshotter(Timing(snapshot_fork_above_orders=1), PRODUCT, "bench", redis_url)
    per_way: dict[str, list[dict]] = {way: [] for way in WAYS}
    try:
        for _ in range(rounds):
            for way in WAYS:
                per_way[way].append(await one_way(way, engine, snapshotter, store, acquired.lease_value))
    finally:
        snapshotter.close()
        await store.client.aclose()
    return {
        way: {key: round(statistics.median(r[key] for r in runs), 1) for key in runs[0]}
        for way, runs in per_way.items()
    }


@click.command()
@click.option(
    "--resting", type=click.IntRange(1), default=1_000_000, show_default=True, help="Resting orders."
)
@click.option(
    "--rounds", type=click.IntRange(1), default=5, show_default=True, help="Snapshots per way (medians)."
)
@click.option(
    "--core",
    type=click.Choice(["auto", "native", "python"]),
    default="auto",
    show_default=True,
    help="Matching core of the book (the report names the one that ran).",
)
@json_option()
def snapshot(resting, rounds, core, as_json) -> None:
    """A large book's snapshot: the product process's CPU, the leader's way and the standby's."""
    started = time.perf_counter()
    engine = resting_book(resting, core)
    built_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as state, embedded_services(Path(state)) as s:
        figures = asyncio.run(run_rounds(engine, s.redis_url, rounds))
    report = {
        "resting_orders": resting,
        "core": engine.core,  # the core that ran, not the one asked for
        "snapshot_mb": round(len(engine.snapshot()) / 1e6, 1),
        "rounds": rounds,
        "book_built_s": round(built_s, 1),
        "medians": figures,
    }
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(
        f"{resting:,} resting orders ({report['snapshot_mb']} MB snapshot, {report['core']} core), "
        f"medians of {rounds}:"
    )
    click.echo(f"  {'way':<24} {'process CPU ms':>15} {'child CPU ms':>13} {'wall ms':>9}")
    for way, f in figures.items():
        click.echo(f"  {way:<24} {f['process_cpu_ms']:>15} {f['child_cpu_ms']:>13} {f['wall_ms']:>9}")
