"""`orderbook-cluster bench core`: throughput and latency of the pure engine, no I/O.

Builds the workload (cluster/tools/workload.py), warms a book with the first WARMUP orders, snapshots
it, and runs every pass from that same warm snapshot:
  (a) core: `submit` on pre-decoded OrderMessages (the Python core);
  (b) wire: `submit_raw` on the bytes plus `encode_events` (decode + core + encode);
  (c) native_wire: the C core's `submit_encoded` on the bytes (decode + core + encode), when built.
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

from cluster.options import default_config_path, json_option, seed_option
from cluster.tools.workload import generate_orders
from engine.config import load_products
from engine.matching import MatchingEngine
from engine.messages import DeadLetter, OrderMessage, encode_events
from engine.native import NativeEngine, native_available

WARMUP = 20_000


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


def run_bench(orders: int, seed: int, product: str = "BTC-USD") -> dict:
    """The figures as a dict (see module docstring)."""
    config = load_products(default_config_path())[product]
    stream = [msgspec.json.encode(o) for o in generate_orders(product, WARMUP + orders, seed)]
    decoder = msgspec.json.Decoder(OrderMessage)
    warm_engine = MatchingEngine(config)
    for raw in stream[:WARMUP]:
        warm_engine.submit_raw(raw, 0)
    snapshot = warm_engine.snapshot()
    raws = [(raw, decoder.decode(raw).created_at) for raw in stream[WARMUP:]]
    decoded = [(decoder.decode(raw), ts) for raw, ts in raws]

    def wire(engine: MatchingEngine):
        submit_raw = engine.submit_raw

        def step(raw: bytes, ts: int) -> None:
            out = submit_raw(raw, ts)
            if not isinstance(out, DeadLetter):
                encode_events(out)

        return step

    result: dict = {
        "orders": orders,
        "seed": seed,
        "warmup": WARMUP,
        "resting_after_warmup": len(warm_engine.book),
    }
    passes = [
        ("core", MatchingEngine, lambda e: e.submit, decoded),
        ("wire", MatchingEngine, wire, raws),
    ]
    if native_available():
        passes.append(("native_wire", NativeEngine, lambda e: e.submit_encoded, raws))
    for name, engine_cls, make, items in passes:
        result[f"{name}_ops_per_s"] = round(_throughput(make(engine_cls.restore(config, snapshot)), items))
        p50, p99 = _latencies(make(engine_cls.restore(config, snapshot)), items)
        result[f"{name}_p50_ns"], result[f"{name}_p99_ns"] = p50, p99
    engine = MatchingEngine.restore(config, snapshot)
    tracemalloc.start()
    step = wire(engine)
    for raw, ts in raws:
        step(raw, ts)
    result["tracemalloc_peak_bytes"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result["resting_at_end"] = len(engine.book)
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
        ("core", "core (submit)"),
        ("wire", "decode+core+encode"),
        ("native_wire", "C core, same"),
    ):
        if f"{name}_ops_per_s" not in result:
            continue
        click.echo(
            f"{label:<20} {result[f'{name}_ops_per_s']:>10,} ops/s   p50 {result[f'{name}_p50_ns']:>6,} ns"
            f"   p99 {result[f'{name}_p99_ns']:>7,} ns"
        )
    click.echo(
        f"peak traced memory {result['tracemalloc_peak_bytes'] / 1e6:.1f} MB, max RSS {result['maxrss_kib'] / 1024:.0f} MiB"
    )
