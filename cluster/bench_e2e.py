"""`orderbook-cluster bench e2e`: the whole loop (broker, product process, broker) end to end.

Two runs in one invocation, on the same broker and Redis, each on fresh products (so fresh topics
and Redis keys): the passthrough limit (`start --passthrough`: the same consumer, loop and
producer, with matching replaced by copying each input record to the output topic), then the
engine (`start`). Each run has two phases on one node with N products on N processes:

- Throughput: M orders per product are preloaded (the deterministic stream of
  cluster/workload.py), then the node starts and drains them. Orders/s = M / (producer timestamp
  of the last output record - that of the first), read back from the output topic once /status
  shows every input applied and every output delivered. So start-up is excluded, and the
  benchmark's own consumer does not compete with the node while it works.
- Latency: a paced producer offers R orders/s per product for a few seconds on the same, now warm,
  topics and books (created_at = send time). Order-to-event latency = when this process consumed
  the first event of an order - when it called produce() for it, on one clock. Only new orders
  count (a cancel's `done` carries the cancelled order's id); passthrough measures the same
  orders, by the copied record's `id`.

CPU is utime+stime of each product process (/proc/<pid>/stat) over the throughput phase, peak
memory its VmHWM at the end. Every node started here is SIGTERMed by process group (SIGKILL after
a deadline); the embedded broker and Redis stop with their context manager.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import click
import msgspec
from confluent_kafka import Consumer, TopicPartition

from cluster.bench_latency import BenchError, latency_phase
from cluster.embedded import embedded_services, free_port
from cluster.kafka_io import ensure_topics, message_topic, product_topics
from cluster.send import produce_orders
from cluster.workload import generate_orders

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NODE_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
_encoder = msgspec.json.Encoder()


def progress(message: str) -> None:
    """Progress to stderr: stdout is the JSON object's."""
    click.echo(f"[bench e2e] {message}", err=True)


# ---- processes ---------------------------------------------------------------------------------
@dataclass
class BenchNode:
    """One `orderbook-cluster start` subprocess in its own process group."""

    products: list[str]
    process: subprocess.Popen
    http_port: int
    log_path: Path

    def status(self) -> dict:
        """Per-product status from GET /status ({} while the node is not serving)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/status", timeout=2) as resp:
                return json.loads(resp.read()).get("products", {})
        except (OSError, ValueError):
            return {}

    def check_alive(self) -> None:
        """Fail the benchmark, with the node's log tail, if the node exited."""
        if self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise BenchError(f"node exited with {self.process.returncode}:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after the deadline."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


def start_node(
    bootstrap: str, redis_url: str, products: list[str], work: Path, passthrough: bool
) -> BenchNode:
    """Start a node for `products` with their generated config; logs go to a file in `work`."""
    config = work / f"products-{products[0]}.toml"
    config.write_text("".join(f'[products."{p}"]\nbase_scale = 6\nquote_scale = 2\n\n' for p in products))
    port = free_port()
    node_id = f"bench-{products[0].lower()}"
    argv = [sys.executable, "-m", "cluster", "start", "--products", ",".join(products)]
    argv += ["--kafka", bootstrap, "--redis", redis_url, "--config", str(config), "--node-id", node_id]
    argv += ["--http-port", str(port), "--state-dir", str(work / node_id), "--log-level", "WARNING"]
    argv += ["--passthrough"] if passthrough else []
    log_path = work / f"{node_id}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return BenchNode(products, process, port, log_path)


def wait_for(node: BenchNode, condition, timeout_s: float, what: str) -> dict:
    """Poll /status until `condition(status)` holds for every product; the last status."""
    deadline = time.monotonic() + timeout_s
    while True:
        node.check_alive()
        status = node.status()
        if all(condition(status.get(p, {})) for p in node.products):
            return status
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f}s waiting for {what}: {status}")
        time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far (nan once it is gone: a restarted process has a new pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM: the process's peak resident memory (None once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


# ---- throughput ---------------------------------------------------------------------------------
def preload(bootstrap: str, products: list[str], orders: int, seed: int) -> None:
    """The deterministic stream, M orders per product, into fresh order topics."""
    ensure_topics(bootstrap, {}, [t for p in products for t in product_topics(p)])
    for product in products:
        produce_orders(
            bootstrap, product, (_encoder.encode(o) for o in generate_orders(product, orders, seed))
        )


@dataclass
class OutputCounter:
    """Counts each product's output records as they arrive, with the product process's CPU then.

    Marks are (records so far, producer timestamp ns of the batch's last record, process CPU s),
    one per consumed batch, so the window from the first output record to the last expected one
    can be cut afterwards.
    """

    pids: dict[str, int]
    marks: dict[str, list[tuple[int, int, float]]] = field(default_factory=dict)
    first_stamp: dict[str, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def consume(self, bootstrap: str) -> None:
        """Consumer thread: every output topic from offset 0, until stopped."""
        consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "obc-bench-throughput",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,
            }
        )
        topics = {message_topic(p): p for p in self.pids}
        consumer.assign([TopicPartition(t, 0, 0) for t in topics])
        counts = dict.fromkeys(self.pids, 0)
        try:
            while not self.stop.is_set():
                msgs = consumer.consume(10_000, 0.05)
                arrived = dict.fromkeys(self.pids, 0)
                stamped: dict[str, int] = {}  # producer timestamp (ns) of the batch's last record
                for msg in msgs:
                    if msg.error() is None:
                        product = topics[msg.topic()]
                        arrived[product] += 1
                        stamp_ns = msg.timestamp()[1] * 1_000_000
                        stamped[product] = stamp_ns
                        self.first_stamp.setdefault(product, stamp_ns)
                for product, n in arrived.items():
                    if n:
                        counts[product] += n
                        mark = (counts[product], stamped[product], cpu_seconds(self.pids[product]))
                        self.marks.setdefault(product, []).append(mark)
        finally:
            consumer.close()

    def count(self, product: str) -> int:
        """Output records of `product` seen so far."""
        marks = self.marks.get(product)
        return marks[-1][0] if marks else 0

    def window(self, product: str, records: int) -> tuple[float, float]:
        """(seconds, process CPU s) from the first output record to the `records`-th, by the
        records' producer timestamps (ms): when the product process produced them, not when this
        process read them, so the benchmark's own consumer speed does not count."""
        marks = self.marks[product]
        first = marks[0]
        last = next(m for m in marks if m[0] >= records)
        return max((last[1] - self.first_stamp[product]) / 1e9, 1e-3), last[2] - first[2]


def throughput_phase(node: BenchNode, bootstrap: str, orders: int, passthrough: bool) -> tuple[dict, dict]:
    """Drain the preloaded topics; (per-product figures, status at the end)."""
    started = wait_for(node, lambda s: bool(s.get("pid")), NODE_START_TIMEOUT_S, "product processes")
    counter = OutputCounter({p: started[p]["pid"] for p in node.products})
    thread = threading.Thread(target=counter.consume, args=(bootstrap,), daemon=True)
    thread.start()

    def drained(s: dict) -> bool:
        target = orders if passthrough else s.get("sequence", -1)
        return s.get("offset", 0) >= orders and s.get("delivered_sequence", -1) >= target > 0

    try:
        done = wait_for(node, drained, 30 + orders / 2000, "the preloaded orders to be drained")
        for product in node.products:
            wanted = done[product]["delivered_sequence"]
            deadline = time.monotonic() + 60
            while counter.count(product) < wanted:
                if time.monotonic() > deadline:
                    raise BenchError(f"{product}: read {counter.count(product)} of {wanted} output records")
                time.sleep(0.05)
    finally:
        counter.stop.set()
        thread.join(10)
    figures = {}
    for product in node.products:
        events = done[product]["delivered_sequence"]
        seconds, cpu = counter.window(product, events)
        pid = counter.pids[product]
        figures[product] = {
            "orders_per_s": round(orders / seconds),
            "seconds": round(seconds, 3),
            "events": events,
            "cpu_cores": None if math.isnan(cpu) else round(cpu / seconds, 2),
            "cpu_us_per_order": None if math.isnan(cpu) else round(cpu / orders * 1e6, 1),
            "peak_rss_mb": peak_rss_mb(pid),
            "pid": pid,
            "restarts": done[product].get("restarts", 0),
        }
    return figures, done


# ---- one run and the report ---------------------------------------------------------------------
def run_mode(
    bootstrap: str,
    redis_url: str,
    work: Path,
    n: int,
    orders: int,
    rate: float,
    seconds: float,
    seed: int,
    passthrough: bool,
) -> dict:
    """Preload, start a node, measure throughput then latency, stop the node."""
    mode = "passthrough" if passthrough else "engine"
    tag = secrets.token_hex(3).upper()
    products = [f"BENCH{tag}{'P' if passthrough else 'E'}{i}-USD" for i in range(n)]
    progress(f"{mode}: preloading {orders} orders into each of {', '.join(products)}")
    preload(bootstrap, products, orders, seed)
    node = start_node(bootstrap, redis_url, products, work, passthrough)
    try:
        progress(f"{mode}: draining the preloaded orders")
        per_product, status = throughput_phase(node, bootstrap, orders, passthrough)
        total = sum(f["orders_per_s"] for f in per_product.values())
        progress(
            f"{mode}: {total} orders/s in total; offering {rate:.0f} orders/s per product for {seconds}s"
        )
        latency = latency_phase(node, bootstrap, status, rate, seconds, seed, passthrough)
        progress(f"{mode}: latency p50={latency['p50_ms']}ms p99={latency['p99_ms']}ms")
    finally:
        node.stop()
    return {
        "products": per_product,
        "total_orders_per_s": total,
        "median_product_orders_per_s": round(
            statistics.median(f["orders_per_s"] for f in per_product.values())
        ),
        "latency": latency,
    }


def compare(passthrough: dict, engine: dict) -> dict:
    """Engine against the passthrough limit, and the two targets of the issue."""
    throughput_ratio = engine["total_orders_per_s"] / passthrough["total_orders_per_s"]
    p99_ratio = engine["latency"]["p99_ms"] / max(passthrough["latency"]["p99_ms"], 1e-3)
    return {
        "throughput_engine_over_passthrough": round(throughput_ratio, 3),
        "p99_engine_over_passthrough": round(p99_ratio, 2),
        "throughput_at_least_half_of_passthrough": throughput_ratio >= 0.5,
        "p99_at_most_twice_passthrough": p99_ratio <= 2.0,
    }


def run_bench(
    bootstrap: str, redis_url: str, n: int, orders: int, rate: float, seconds: float, seed: int, broker: str
) -> dict:
    """Both runs on the given servers; the report as one dict."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        args = (bootstrap, redis_url, work, n, orders, rate, seconds, seed)
        passthrough = run_mode(*args, passthrough=True)
        engine = run_mode(*args, passthrough=False)
    return {
        "products": n,
        "orders_per_product": orders,
        "rate_per_product": rate,
        "latency_seconds": seconds,
        "seed": seed,
        "cpus": os.cpu_count(),
        "broker": broker,
        "passthrough": passthrough,
        "engine": engine,
        "comparison": compare(passthrough, engine),
    }


def format_report(report: dict) -> str:
    """A few lines for a terminal: throughput, latency and CPU of both runs, and the ratios."""
    lines = [
        f"{report['products']} product(s), {report['orders_per_product']} orders each, {report['cpus']} CPUs"
    ]
    for mode in ("passthrough", "engine"):
        run = report[mode]
        lat = run["latency"]
        cores = ", ".join(str(f["cpu_cores"]) for f in run["products"].values())
        lines.append(
            f"{mode:>11}: {run['total_orders_per_s']:>9,} orders/s total "
            f"(median product {run['median_product_orders_per_s']:,}), cores/process {cores}; "
            f"at {lat['offered_per_product_per_s']:,}/s: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
            f"p99.9 {lat['p999_ms']} ms"
        )
    cmp = report["comparison"]
    lines.append(
        f"engine/passthrough: throughput {cmp['throughput_engine_over_passthrough']}, "
        f"p99 {cmp['p99_engine_over_passthrough']}"
    )
    return "\n".join(lines)


@click.command()
@click.option(
    "--products",
    "n",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Products, one process each.",
)
@click.option(
    "--orders",
    type=click.IntRange(100),
    default=200_000,
    show_default=True,
    help="Preloaded orders per product (throughput phase).",
)
@click.option(
    "--rate",
    type=click.FloatRange(1),
    default=10_000.0,
    show_default=True,
    help="Offered orders/s per product (latency phase).",
)
@click.option(
    "--seconds",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="Length of the latency phase.",
)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--kafka", default=None, help="Use this broker (with --redis) instead of starting one.")
@click.option("--redis", default=None, help="Use this Redis (with --kafka) instead of starting one.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def e2e(n, orders, rate, seconds, seed, kafka, redis, as_json) -> None:
    """End to end: sustained orders/s, order-to-event latency, CPU and memory, vs the passthrough limit."""
    if bool(kafka) != bool(redis):
        raise click.UsageError("give both --kafka and --redis, or neither for local servers")
    try:
        if kafka:
            report = run_bench(kafka, redis, n, orders, rate, seconds, seed, broker=kafka)
        else:
            with (
                tempfile.TemporaryDirectory(prefix="bench-e2e-servers-") as state,
                embedded_services(Path(state)) as services,
            ):
                progress(f"local Tansu broker at {services.bootstrap}, Redis at {services.redis_url}")
                report = run_bench(
                    services.bootstrap, services.redis_url, n, orders, rate, seconds, seed, "embedded tansu"
                )
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report) if as_json else format_report(report))
