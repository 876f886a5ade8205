"""`orderbook-cluster bench core`: throughput and latency of the pure engine, no I/O.

Builds the workload (cluster/tools/workload.py), warms a book with the first WARMUP orders, snapshots
it, and runs every pass from that same warm snapshot:
  (a) core: the Python core's `apply_order` on pre-decoded OrderMessages;
  (b) wire: the Python core, one record per `apply` (decode + core + encode);
  (c) native_wire: the C core, the same, when built;
  (d) native_batch: the C core's `apply` on batches of BATCH consumed Kafka Messages, as the worker
      calls it (read through Message.value()/timestamp()); throughput only.
Throughput comes from an untimed-per-op pass; p50/p99 from a separate pass timing each order
with perf_counter_ns (so timer overhead never pollutes ops/s). Peak memory is tracemalloc's
peak during a further pass of (b) over a warm book, plus the process's max RSS.
"""

from __future__ import annotations

import json
import resource
import time
import tracemalloc

import click
import msgspec
from confluent_kafka import Message

from cluster.options import default_config_path, json_option, seed_option
from cluster.tools.workload import generate_orders
from engine.api import apply_one
from engine.config import load_products
from engine.matching import MatchingEngine
from engine.messages import OrderMessage
from engine.native import NativeEngine, native_available

WARMUP = 20_000
BATCH = 500  # records per apply in the batch pass, a typical consumed batch under load


def _throughput(fn, items) -> float:
    start = time.perf_counter_ns()
    for raw, ts in items:
        fn(raw, ts)
    return len(items) / ((time.perf_counter_ns() - start) / 1e9)


def _latencies(fn, items) -> tuple[int, int]:
    clock = time.perf_counter_ns
    samples = []
    append = samples.append
    for raw, ts in items:
        t0 = clock()
        fn(raw, ts)
        append(clock() - t0)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, len(samples) * 99 // 100)]


def _batch_throughput(engine, raws: list[tuple[bytes, int]]) -> float:
    """Orders/s of `apply` on batches of consumed Kafka Messages (the worker's call)."""
    messages = [Message(value=raw, timestamp=(1, ts // 1_000_000)) for raw, ts in raws]
    batches = [messages[i : i + BATCH] for i in range(0, len(messages), BATCH)]
    start = time.perf_counter_ns()
    for batch in batches:
        engine.apply(batch)
    return len(messages) / ((time.perf_counter_ns() - start) / 1e9)


def run_bench(orders: int, seed: int, product: str = "BTC-USD") -> dict:
    """The figures as a dict (see module docstring)."""
    config = load_products(default_config_path())[product]
    stream = [msgspec.json.encode(o) for o in generate_orders(product, WARMUP + orders, seed)]
    decoder = msgspec.json.Decoder(OrderMessage)
    warm_engine = MatchingEngine(config)
    warm_engine.apply([(raw, 0) for raw in stream[:WARMUP]])
    snapshot = warm_engine.snapshot()
    raws = [(raw, decoder.decode(raw).created_at) for raw in stream[WARMUP:]]
    decoded = [(decoder.decode(raw), ts) for raw, ts in raws]

    def wire(engine):
        return lambda raw, ts: apply_one(engine, raw, ts)

    result: dict = {
        "orders": orders,
        "seed": seed,
        "warmup": WARMUP,
        "resting_after_warmup": warm_engine.resting_orders(),
    }
    passes = [
        ("core", MatchingEngine, lambda e: e.apply_order, decoded),
        ("wire", MatchingEngine, wire, raws),
    ]
    if native_available():
        passes.append(("native_wire", NativeEngine, wire, raws))
    for name, engine_cls, make, items in passes:
        result[f"{name}_ops_per_s"] = round(_throughput(make(engine_cls.restore(config, snapshot)), items))
        p50, p99 = _latencies(make(engine_cls.restore(config, snapshot)), items)
        result[f"{name}_p50_ns"], result[f"{name}_p99_ns"] = p50, p99
    if native_available():
        result["native_batch_ops_per_s"] = round(
            _batch_throughput(NativeEngine.restore(config, snapshot), raws)
        )
    engine = MatchingEngine.restore(config, snapshot)
    tracemalloc.start()
    step = wire(engine)
    for raw, ts in raws:
        step(raw, ts)
    result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["resting_at_end"] = engine.resting_orders()
    result["events_sequence_at_end"] = engine.sequence
    return result


@click.command()
@click.option("--orders", default=200_000, show_default=True, help="Timed orders (after the warm-up).")
@seed_option
@json_option()
def core(orders: int, seed: int, as_json: bool) -> None:
    """Benchmark the pure matching core (no Kafka, no Redis)."""
    result = run_bench(orders, seed)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"orders={orders} seed={seed} warm book: {result['resting_after_warmup']} resting orders")
    for name, label in (
        ("core", "core (apply_order)"),
        ("wire", "decode+core+encode"),
        ("native_wire", "C core, same"),
    ):
        if f"{name}_ops_per_s" not in result:
            continue
        click.echo(
            f"{label:<20} {result[f'{name}_ops_per_s']:>10,} ops/s   p50 {result[f'{name}_p50_ns']:>6,} ns"
            f"   p99 {result[f'{name}_p99_ns']:>7,} ns"
        )
    if "native_batch_ops_per_s" in result:
        click.echo(f"{'C core, batches':<20} {result['native_batch_ops_per_s']:>10,} ops/s")
    click.echo(
        f"peak traced memory {result['tracemalloc_peak_bytes'] / 1e6:.1f} MB, max RSS {result['maxrss_kib'] / 1024:.0f} MiB"
    )
