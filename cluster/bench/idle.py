"""`orderbook-cluster bench idle`: what N quiet products cost one node (issue #20).

One node runs N products on the embedded broker and Redis; nothing is sent. Once every product
has a leader and SETTLE_S (10 s) more have passed, so that start-up is over and every process's
periodic work runs at its idle pace, the benchmark reads /proc over a window: the CPU of the
node's own processes (the supervisor and everything it started: forkserver, product processes;
not the broker or Redis), of the broker and of Redis separately (each from every thread's
schedstat, to the nanosecond), each product process's unique memory (USS = Private_Clean +
Private_Dirty of smaps_rollup) and threads, and the node's total memory (the sum of PSS, which
counts shared pages once). Leader acquisitions are the sum of the products' epoch counters in
Redis (each INCR is one acquisition; a fresh Redis starts them at 0): N means no idle product
lost its lease.

Then, after every product was idle for --idle-s, one order goes to each product (one at a time,
--gap-ms apart, so each process wakes alone) and the time to its first event is taken as in
`bench e2e`'s latency phase (send time to the benchmark consumer's arrival time, one clock); the
busy p99 is that phase itself, run afterwards on the first --busy-products products (its order ids
are above the idle orders': the engine refuses ids far below those it has seen).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import click
import msgspec
import redis
from confluent_kafka import Producer

from cluster.bench.e2e import BenchNode, _exit_on_sigterm, restart_reasons, start_node, wait_for
from cluster.bench.latency import BenchError, LatencyProbe, latency_phase
from cluster.embedded import embedded_services
from cluster.kafka_io import order_topic
from cluster.redis_state import epoch_key
from cluster.settings import Timing
from cluster.tools.workload import generate_orders

LEADERS_TIMEOUT_S = 300.0
SETTLE_S = max(
    5.0, Timing().rebalance_after_s, (Timing().idle_after_ms + Timing().status_idle_every_ms) / 1000
)
_encoder = msgspec.json.Encoder()


def progress(message: str) -> None:
    """Progress to stderr: stdout is the report's."""
    click.echo(f"[bench idle] {message}", err=True)


# ---- /proc -------------------------------------------------------------------------------------
def children_of() -> dict[int, list[int]]:
    """Every process's children, from /proc/<pid>/stat."""
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    tree, found, todo = children_of(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def memory_kb(pid: int) -> dict[str, int]:
    """Rss, Pss and USS (Private_Clean + Private_Dirty) of a process in kB ({} once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0])
    return {
        "rss": values.get("Rss", 0),
        "pss": values.get("Pss", 0),
        "uss": values.get("Private_Clean", 0) + values.get("Private_Dirty", 0),
    }


def threads(pid: int) -> int:
    """The process's thread count (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def cpu_seconds(pid: int) -> float:
    """CPU time of a process's threads so far, to the nanosecond (schedstat). utime + stime are
    sampled at the clock tick (10 ms), which undercounts processes that wake for a few hundred
    microseconds at a time, as idle ones do (by ~15% here)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError, ValueError):
                continue  # the thread ended meanwhile
    except OSError:
        return float("nan")
    return total / 1e9


def cpu_total(pids) -> float:
    """CPU seconds of the processes still alive."""
    return sum(c for c in map(cpu_seconds, pids) if c == c)


def acquisitions(client: redis.Redis, products: list[str]) -> int:
    """Leader acquisitions so far: the sum of the epoch counters (one INCR per acquisition)."""
    return sum(int(v or 0) for v in client.mget([epoch_key(p) for p in products]))


LEASE_TROUBLE = ("matching loop stalled", "lease renewer late", "lease renew slow", "lease renew failed")


def lease_trouble(log_text: str) -> dict[str, int]:
    """How often the node logged each kind of lease trouble, and why processes stepped down."""
    counts = {kind: log_text.count(kind) for kind in LEASE_TROUBLE if kind in log_text}
    return counts | restart_reasons(log_text)


def mb(kb: float) -> float:
    return round(kb / 1024, 1)


# ---- the first order after idleness --------------------------------------------------------------
def first_orders(bootstrap: str, node: BenchNode, status: dict, gap_s: float, seed: int) -> dict:
    """One new order per product, `gap_s` apart; order-to-first-event ms of each (as bench e2e)."""
    probe = LatencyProbe()
    starts = {p: status[p]["delivered_sequence"] for p in node.products}
    consumer = threading.Thread(target=probe.consume, args=(bootstrap, starts, False), daemon=True)
    consumer.start()
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 0}
    )
    producer.list_topics(timeout=10)
    time.sleep(1.0)  # the benchmark's own consumer is assigned and fetching before the first send
    try:
        for product in node.products:
            order = next(o for o in generate_orders(product, 50, seed) if o["status"] == "new")
            now = time.time_ns()
            order["created_at"] = now // 1_000_000 * 1_000_000
            probe.sent[(product, order["id"])] = now
            producer.produce(order_topic(product), _encoder.encode(order), timestamp=now // 1_000_000)
            producer.poll(0)
            time.sleep(gap_s)
        if producer.flush(30):
            raise BenchError("idle orders not acknowledged by the broker")
        probe.wait_answered(node, 30)
    finally:
        probe.stop.set()
        consumer.join(10)
    if probe.unanswered():
        raise BenchError(f"{probe.unanswered()} idle product(s) never answered their first order")
    return probe.percentiles()


# ---- the run -------------------------------------------------------------------------------------
def run_idle(
    services,
    n: int,
    window_s: float,
    idle_s: float,
    busy_products: int,
    rate: float,
    gap_ms: float,
    seed: int,
) -> dict:
    """The scenario of the module docstring on running embedded services; the report as one dict."""
    products = [f"IDLE{i:03d}" for i in range(1, n + 1)]
    bootstrap, redis_client = services.bootstrap, redis.Redis.from_url(services.redis_url)
    broker_pid, redis_pid = services.broker.pid, services.redis.pid
    with tempfile.TemporaryDirectory(prefix="bench-idle-") as tmp:
        node = start_node(
            bootstrap, services.redis_url, products, Path(tmp), False, node_id="idle-1", log_level="INFO"
        )
        try:
            progress(f"node started with {n} products; waiting for every product to lead")
            status = wait_for(node, lambda s: s.get("role") == "leader", LEADERS_TIMEOUT_S, "leaders")
            idle_since = time.monotonic()
            # Start-up's last writes (first snapshots, topic metadata) and the switch of every
            # process's periodic work to its idle pace are over by then (the last: a leader's
            # placement look reads the standbys' status from rebalance_after_s of leading on).
            time.sleep(SETTLE_S)
            product_pids = {p: status[p]["pid"] for p in products}
            node_pids = process_tree(node.process.pid)
            acquired_before = acquisitions(redis_client, products)
            before = (time.monotonic(), cpu_total(node_pids), cpu_seconds(broker_pid), cpu_seconds(redis_pid))
            progress(f"every product leads; measuring {window_s:g} s of idleness")
            time.sleep(window_s)
            after = (time.monotonic(), cpu_total(node_pids), cpu_seconds(broker_pid), cpu_seconds(redis_pid))
            wall = after[0] - before[0]
            memory = {pid: memory_kb(pid) for pid in node_pids}
            uss = [memory[pid]["uss"] for pid in product_pids.values() if memory.get(pid)]
            rss = [memory[pid]["rss"] for pid in product_pids.values() if memory.get(pid)]
            acquired_window = acquisitions(redis_client, products) - acquired_before
            thread_counts = [threads(pid) for pid in product_pids.values()]
            left = idle_s - (time.monotonic() - idle_since)
            if left > 0:
                progress(f"idle {left:.0f} s more, then one order per product")
                time.sleep(left)
            node.check_alive()
            status = node.status()
            try:
                idle_latency = first_orders(bootstrap, node, status, gap_ms / 1000, seed)
            except BenchError as exc:  # the idle figures above still stand: report them with the failure
                idle_latency = {"error": str(exc)}
            acquired = acquisitions(redis_client, products)
            busy_latency = {"error": "not run: the first orders failed"}
            if "error" not in idle_latency:
                progress(f"busy latency on {busy_products} product(s) at {rate:g} orders/s each")
                status = wait_for(
                    node, lambda s: s.get("delivered_sequence", 0) >= s.get("sequence", 1) > 0, 60, "delivery"
                )
                busy = dataclasses.replace(node, products=products[:busy_products])
                busy_latency = latency_phase(busy, bootstrap, status, rate, 5.0, seed, False)
            cores = sorted({status[p].get("core", "unknown") for p in products})
            trouble = lease_trouble(node.log_path.read_text(errors="replace"))
        finally:
            node.stop()
    return {
        "products": n,
        "cpus": os.cpu_count(),
        "core": "+".join(cores),
        "window_s": round(wall, 1),
        "idle_s": idle_s,
        "node_processes": len(node_pids),
        "node_cpu_cores": round((after[1] - before[1]) / wall, 4),
        "broker_cpu_cores": round((after[2] - before[2]) / wall, 4),
        "redis_cpu_cores": round((after[3] - before[3]) / wall, 4),
        "uss_mb_per_product": {"median": mb(statistics.median(uss)), "max": mb(max(uss))},
        "rss_mb_per_product": {"median": mb(statistics.median(rss))},
        "threads_per_product": statistics.median(thread_counts),
        "node_total_pss_mb": mb(sum(m.get("pss", 0) for m in memory.values())),
        "broker_rss_mb": mb(memory_kb(broker_pid).get("rss", 0)),
        "redis_rss_mb": mb(memory_kb(redis_pid).get("rss", 0)),
        "leader_acquisitions": acquired,
        "leader_acquisitions_in_window": acquired_window,
        "lease_trouble": trouble,
        "first_order_after_idle": idle_latency,
        "busy": {"products": busy_products, **busy_latency},
        "first_order_p99_over_busy_p99": (
            round(idle_latency["p99_ms"] / busy_latency["p99_ms"], 2) if "p99_ms" in busy_latency else None
        ),
    }


def format_report(r: dict) -> str:
    """A few lines for a terminal."""
    idle, busy = r["first_order_after_idle"], r["busy"]
    if "error" in idle:
        latency = f"first orders after {r['idle_s']:g} s idle: {idle['error']}"
    else:
        latency = (
            f"first order after {r['idle_s']:g} s idle: p50 {idle['p50_ms']} ms, p99 {idle['p99_ms']} ms; busy "
            f"({busy['products']} product(s) at {busy['offered_per_product_per_s']}/s) p50 {busy['p50_ms']} ms, "
            f"p99 {busy['p99_ms']} ms; ratio {r['first_order_p99_over_busy_p99']}"
        )
    return "\n".join(
        [
            f"{r['products']} idle products, {r['core']} core, {r['cpus']} CPUs, window {r['window_s']} s",
            f"node processes ({r['node_processes']}): {r['node_cpu_cores']} cores; broker {r['broker_cpu_cores']}, "
            f"redis {r['redis_cpu_cores']}",
            f"USS per product median {r['uss_mb_per_product']['median']} MB (max {r['uss_mb_per_product']['max']}), "
            f"RSS median {r['rss_mb_per_product']['median']} MB, threads {r['threads_per_product']}; node total PSS "
            f"{r['node_total_pss_mb']} MB, broker RSS {r['broker_rss_mb']} MB, redis RSS {r['redis_rss_mb']} MB",
            f"leader acquisitions {r['leader_acquisitions']} ({r['leader_acquisitions_in_window']} in the window); "
            f"lease trouble {r['lease_trouble'] or 'none'}",
            latency,
        ]
    )


@click.command()
@click.option(
    "--products", "n", type=click.IntRange(1, 500), default=48, show_default=True, help="Idle products."
)
@click.option("--window-s", type=click.FloatRange(1), default=30.0, show_default=True, help="CPU window.")
@click.option(
    "--idle-s",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Idleness before the first orders.",
)
@click.option(
    "--busy-products", type=click.IntRange(1), default=1, show_default=True, help="Products of the busy run."
)
@click.option(
    "--rate", type=click.FloatRange(1), default=1000.0, show_default=True, help="Busy orders/s per product."
)
@click.option(
    "--gap-ms", type=click.FloatRange(0), default=50.0, show_default=True, help="Between first orders."
)
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed of the orders.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def idle(n, window_s, idle_s, busy_products, rate, gap_ms, seed, as_json) -> None:
    """N idle products on one node: CPU, memory, lease churn, and the first order's latency."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-idle-servers-") as state,
            embedded_services(Path(state)) as s,
        ):
            progress(f"local Tansu broker at {s.bootstrap}, Redis at {s.redis_url}")
            report = run_idle(s, n, window_s, idle_s, min(busy_products, n), rate, gap_ms, seed)
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report) if as_json else format_report(report))
