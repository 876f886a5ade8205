"""`orderbook-cluster bench e2e`: the whole loop (broker, product process, broker) end to end.

Rounds of two runs in one invocation, on the same broker and Redis, each run on fresh products
(so fresh topics and Redis keys): the passthrough limit (`start --passthrough`: the same consumer,
loop and producer, with matching replaced by copying each input record to the output topic), then
the engine (`start`). Single runs on a small shared box vary by up to a third, in both modes, so
the rounds alternate the two and the report compares medians. Each run has two phases on one
node with N products on N processes:

- Throughput: M orders per product are preloaded (the deterministic stream of
  cluster/tools/workload.py), then the node starts and drains them. Orders/s = M / (producer timestamp
  of the last output record - that of the first), read back from the output topic once /status
  shows every input applied and every output delivered. So start-up is excluded, and the
  benchmark's own consumer does not compete with the node while it works.
- Latency: a paced producer offers R orders/s per product for a few seconds on the same, now warm,
  topics and books (created_at = send time). Order-to-event latency = when this process consumed
  the first event of an order - when it called produce() for it, on one clock. Only new orders
  count (a cancel's `done` carries the cancelled order's id); passthrough measures the same
  orders, by the copied record's `id`.

With --volume-matched, each round also runs the passthrough at the engine's output volume: each
input record copied as many times on average as the engine wrote events per order in that round
(the contract publishes one record per event, ~1.8 per order for this stream). That run is the
limit of any core, even a free one, under the contract; it has no latency phase.

CPU is utime+stime of each product process (/proc/<pid>/stat) over the throughput phase, peak
memory its VmHWM at the end. Every node started here is SIGTERMed by process group (SIGKILL after
a deadline); the embedded broker and Redis stop with their context manager.
"""

from __future__ import annotations

import collections
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

from cluster.bench.latency import BenchError, latency_phase
from cluster.embedded import embedded_services, free_port
from cluster.kafka_io import ensure_topics, message_topic, product_topics, read_topic
from cluster.options import core_option, json_option, seed_option
from cluster.tools.send import produce_orders
from cluster.tools.workload import generate_orders
from engine.native import resolve_core

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
NODE_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
CPU_SAMPLE_S = 0.005
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
    bootstrap: str,
    redis_url: str,
    products: list[str],
    work: Path,
    passthrough: bool,
    core: str = "auto",
    copies_per_mille: int = 1000,
    node_id: str | None = None,
    log_level: str = "WARNING",
) -> BenchNode:
    """Start a node for `products` with their generated config; logs go to a file in `work`."""
    config = work / f"products-{products[0]}.toml"
    config.write_text("".join(f'[products."{p}"]\nbase_scale = 6\nquote_scale = 2\n\n' for p in products))
    port = free_port()
    node_id = node_id or f"bench-{products[0].lower()}"
    argv = [sys.executable, "-m", "cluster", "start", "--products", ",".join(products)]
    argv += ["--kafka", bootstrap, "--redis", redis_url, "--config", str(config), "--node-id", node_id]
    argv += ["--http-port", str(port), "--state-dir", str(work / node_id), "--log-level", log_level]
    if passthrough:
        argv += ["--passthrough", "--passthrough-copies", str(copies_per_mille / 1000)]
    else:
        argv += ["--core", core]
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
class CpuSampler:
    """Samples each product process's CPU seconds on the wall clock (ms), every few ms.

    Reading /proc costs the benchmark a few µs per sample and the node nothing, so the CPU of a
    window cut afterwards by the output records' producer timestamps can be read off these samples.
    """

    pids: dict[str, int]
    samples: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        """Sampler thread: until stopped."""
        while not self.stop.wait(CPU_SAMPLE_S):
            self.sample()

    def sample(self) -> None:
        """One reading of every process, stamped with the wall clock."""
        now_ms = time.time() * 1000.0
        for product, pid in self.pids.items():
            self.samples.setdefault(product, []).append((now_ms, cpu_seconds(pid)))

    def cpu_between(self, product: str, start_ms: float, end_ms: float) -> float:
        """CPU seconds the process used from the last sample at or before start_ms to the first
        sample at or after end_ms (so the window is covered, give or take one sample period)."""
        samples = self.samples.get(product, [])
        before = [cpu for t, cpu in samples if t <= start_ms]
        after = [cpu for t, cpu in samples if t >= end_ms]
        if not before or not after:
            return float("nan")
        return after[0] - before[-1]


def output_window(bootstrap: str, product: str, records: int) -> tuple[int, int]:
    """(producer timestamp ms of the first output record, of the `records`-th), read back after the run."""
    first = last = None
    seen = 0
    for _offset, _value, stamp_ms, _headers in read_topic(
        bootstrap, message_topic(product), count=records, idle_s=30.0
    ):
        seen += 1
        if first is None:
            first = stamp_ms
        last = stamp_ms
    if seen < records or first is None or last is None:
        raise BenchError(f"{product}: read {seen} of {records} output records")
    return first, last


def throughput_phase(
    node: BenchNode, bootstrap: str, orders: int, passthrough: bool, copies_per_mille: int = 1000
) -> tuple[dict, dict]:
    """Drain the preloaded topics; (per-product figures, status at the end)."""
    started = wait_for(node, lambda s: bool(s.get("pid")), NODE_START_TIMEOUT_S, "product processes")
    sampler = CpuSampler({p: started[p]["pid"] for p in node.products})
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()

    def drained(s: dict) -> bool:
        target = orders * copies_per_mille // 1000 if passthrough else s.get("sequence", -1)
        return s.get("offset", 0) >= orders and s.get("delivered_sequence", -1) >= target > 0

    try:
        done = wait_for(node, drained, 30 + orders / 2000, "the preloaded orders to be drained")
    finally:
        sampler.stop.set()
        thread.join(10)
    sampler.sample()  # a reading after the last record, which closes every window
    figures = {}
    for product in node.products:
        events = done[product]["delivered_sequence"]
        first_ms, last_ms = output_window(bootstrap, product, events)
        seconds = max((last_ms - first_ms) / 1000, 1e-3)
        cpu = sampler.cpu_between(product, first_ms, last_ms)
        pid = sampler.pids[product]
        figures[product] = {
            "orders_per_s": round(orders / seconds),
            "seconds": round(seconds, 3),
            "events": events,
            "cpu_cores": None if math.isnan(cpu) else round(cpu / seconds, 2),
            "cpu_us_per_order": None if math.isnan(cpu) else round(cpu / orders * 1e6, 1),
            "peak_rss_mb": peak_rss_mb(pid),
            "pid": pid,
            "restarts": done[product].get("restarts", 0),
            "core": done[product].get("core"),  # as the product process reported it in /status
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
    core: str = "auto",
    copies_per_mille: int = 1000,
) -> dict:
    """Preload, start a node, measure throughput then latency (not for a copy volume other than
    one per record), stop the node."""
    if not passthrough:
        mode, letter = "engine", "E"
    elif copies_per_mille == 1000:
        mode, letter = "passthrough", "P"
    else:
        mode, letter = "volume passthrough", "V"
    tag = secrets.token_hex(3).upper()
    products = [f"BENCH{tag}{letter}{i}-USD" for i in range(n)]
    progress(f"{mode}: preloading {orders} orders into each of {', '.join(products)}")
    preload(bootstrap, products, orders, seed)
    node = start_node(bootstrap, redis_url, products, work, passthrough, core, copies_per_mille)
    latency = None
    try:
        progress(f"{mode}: draining the preloaded orders")
        per_product, status = throughput_phase(node, bootstrap, orders, passthrough, copies_per_mille)
        total = sum(f["orders_per_s"] for f in per_product.values())
        progress(f"{mode}: {total} orders/s in total")
        if copies_per_mille == 1000:
            progress(f"{mode}: offering {rate:.0f} orders/s per product for {seconds}s")
            pids = {p: status[p]["pid"] for p in node.products}
            started_at, cpu_before = time.monotonic(), {p: cpu_seconds(pid) for p, pid in pids.items()}
            latency = latency_phase(node, bootstrap, status, rate, seconds, seed, passthrough)
            wall = time.monotonic() - started_at
            # CPU of each product process at the offered rate (warm-up included), as cores; None
            # for a process that restarted meanwhile
            used = {p: (cpu_seconds(pid) - cpu_before[p]) / wall for p, pid in pids.items()}
            latency["cpu_cores_per_process"] = {
                p: None if math.isnan(c) else round(c, 3) for p, c in used.items()
            }
            progress(f"{mode}: latency p50={latency['p50_ms']}ms p99={latency['p99_ms']}ms")
    finally:
        node.stop()
    return {
        "restart_reasons": restart_reasons(node.log_path.read_text(errors="replace")),
        "products": per_product,
        "total_orders_per_s": total,
        "median_product_orders_per_s": round(
            statistics.median(f["orders_per_s"] for f in per_product.values())
        ),
        "latency": latency,
    }


def restart_reasons(log_text: str) -> dict[str, int]:
    """Why product processes restarted during a run, from the node's log: reason -> count."""
    reasons: collections.Counter[str] = collections.Counter()
    for line in log_text.splitlines():
        if " demoted " in line:
            reasons[line.partition(" reason=")[2].strip() or "demoted"] += 1
        elif " child exited " in line and not line.rstrip().endswith(("code=0", "code=75")):
            reasons[f"exit {line.rpartition('code=')[2].strip()}"] += 1
    return dict(reasons)


def compare(passthrough: dict, engine: dict) -> dict:
    """Engine against the passthrough limit (medians over the rounds), and the issue's two targets."""
    throughput_ratio = engine["total_orders_per_s"] / passthrough["total_orders_per_s"]
    p99_ratio = engine["latency"]["p99_ms"] / max(passthrough["latency"]["p99_ms"], 1e-3)
    return {
        "throughput_engine_over_passthrough": round(throughput_ratio, 3),
        "p99_engine_over_passthrough": round(p99_ratio, 2),
        "throughput_at_least_half_of_passthrough": throughput_ratio >= 0.5,
        "p99_at_most_twice_passthrough": p99_ratio <= 2.0,
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median total throughput (the lower middle one of an even count)."""
    ranked = sorted(runs, key=lambda run: run["total_orders_per_s"])
    return ranked[(len(ranked) - 1) // 2]


def summarize(runs: list[dict]) -> dict:
    """One mode over the rounds: the median run's figures, its latency percentiles replaced by
    their medians over the rounds (lower medians: always a measured value)."""
    summary = dict(median_run(runs))
    summary["total_orders_per_s_by_round"] = [r["total_orders_per_s"] for r in runs]
    if summary["latency"] is not None:
        summary["latency"] = dict(summary["latency"])
        for key in ("p50_ms", "p99_ms", "p999_ms"):
            summary["latency"][key] = statistics.median_low(r["latency"][key] for r in runs)
        summary["p99_ms_by_round"] = [r["latency"]["p99_ms"] for r in runs]
    restarts: collections.Counter[str] = collections.Counter()
    for run in runs:
        restarts.update(run["restart_reasons"])
    summary["restart_reasons"] = dict(restarts)
    return summary


def ran_cores(engine_runs: list[dict]) -> str:
    """The core every engine product process reported running ("native", "python"; both joined
    by "+" if they differed): what the figures are of, whatever was asked for."""
    cores = {f.get("core") or "unknown" for run in engine_runs for f in run["products"].values()}
    return "+".join(sorted(cores))


def run_bench(
    bootstrap: str,
    redis_url: str,
    n: int,
    orders: int,
    rate: float,
    seconds: float,
    seed: int,
    broker: str,
    core: str = "auto",
    rounds: int = 1,
    volume_matched: bool = False,
) -> dict:
    """`rounds` x (passthrough run, engine run[, volume-matched passthrough run]) on the given
    servers; the report as one dict."""
    runs: dict[str, list[dict]] = {"passthrough": [], "engine": [], "volume": []}
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        work = Path(tmp)
        args = (bootstrap, redis_url, work, n, orders, rate, seconds, seed)
        for number in range(1, rounds + 1):
            if rounds > 1:
                progress(f"round {number} of {rounds}")
            runs["passthrough"].append(run_mode(*args, passthrough=True))
            engine_run = run_mode(*args, passthrough=False, core=core)
            runs["engine"].append(engine_run)
            if volume_matched:
                events = sum(f["events"] for f in engine_run["products"].values())
                per_mille = max(1000, round(1000 * events / (orders * n)))
                runs["volume"].append(run_mode(*args, passthrough=True, copies_per_mille=per_mille))
    passthrough, engine = summarize(runs["passthrough"]), summarize(runs["engine"])
    ran = ran_cores(runs["engine"])
    if ran != resolve_core(core):
        progress(
            f"the engine's product processes ran the {ran} core, not the {resolve_core(core)} core found here"
        )
    volume = {}
    if volume_matched:
        limit = summarize(runs["volume"])
        volume = {
            "passthrough_at_engine_volume": limit,
            "throughput_engine_over_volume_matched_passthrough": round(
                engine["total_orders_per_s"] / limit["total_orders_per_s"], 3
            ),
        }
    return {
        "products": n,
        "orders_per_product": orders,
        "rate_per_product": rate,
        "latency_seconds": seconds,
        "seed": seed,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "broker": broker,
        "core": ran,
        "core_asked": core,
        "passthrough": passthrough,
        "engine": engine,
        "comparison": compare(passthrough, engine),
        "throughput_ratio_by_round": [
            round(e["total_orders_per_s"] / p["total_orders_per_s"], 3)
            for p, e in zip(runs["passthrough"], runs["engine"], strict=True)
        ],
        **volume,
    }


def format_report(report: dict) -> str:
    """A few lines for a terminal: throughput, latency and CPU of both runs, and the ratios."""
    lines = [
        f"{report['products']} product(s), {report['orders_per_product']} orders each, {report['cpus']} CPUs,"
        f" {report['core']} core, median of {report['rounds']} round(s)"
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
        if run["restart_reasons"]:
            lines.append(f"{'':>11}  restarts: {run['restart_reasons']}")
    cmp = report["comparison"]
    lines.append(
        f"engine/passthrough: throughput {cmp['throughput_engine_over_passthrough']}, "
        f"p99 {cmp['p99_engine_over_passthrough']}; throughput by round {report['throughput_ratio_by_round']}"
    )
    if "passthrough_at_engine_volume" in report:
        limit = report["passthrough_at_engine_volume"]
        lines.append(
            f"passthrough at the engine's output volume: {limit['total_orders_per_s']:,} orders/s total; "
            f"engine/that: {report['throughput_engine_over_volume_matched_passthrough']}"
        )
    return "\n".join(lines)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


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
    default=1_000_000,
    show_default=True,
    help="Preloaded orders per product (throughput phase). Keep it well above the producer's "
    "outstanding limit (200,000): a shorter drain fits in the client's queue and measures produce() "
    "calls, not a sustained rate.",
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
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Passthrough and engine runs, alternating; figures are medians over the rounds.",
)
@click.option(
    "--volume-matched",
    is_flag=True,
    help="Also run the passthrough at the engine's output volume (as many records out per order as "
    "the engine's events): the limit of any core under this contract's one record per event.",
)
@seed_option
@click.option("--kafka", default=None, help="Use this broker (with --redis) instead of starting one.")
@click.option("--redis", default=None, help="Use this Redis (with --kafka) instead of starting one.")
@core_option
@json_option()
def e2e(n, orders, rate, seconds, rounds, volume_matched, seed, kafka, redis, core, as_json) -> None:
    """End to end: sustained orders/s, order-to-event latency, CPU and memory, vs the passthrough limit."""
    if bool(kafka) != bool(redis):
        raise click.UsageError("give both --kafka and --redis, or neither for local servers")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)  # so the nodes and local servers are stopped
    try:
        if kafka:
            report = run_bench(
                kafka,
                redis,
                n,
                orders,
                rate,
                seconds,
                seed,
                broker=kafka,
                core=core,
                rounds=rounds,
                volume_matched=volume_matched,
            )
        else:
            with (
                tempfile.TemporaryDirectory(prefix="bench-e2e-servers-") as state,
                embedded_services(Path(state)) as services,
            ):
                progress(f"local Tansu broker at {services.bootstrap}, Redis at {services.redis_url}")
                report = run_bench(
                    services.bootstrap,
                    services.redis_url,
                    n,
                    orders,
                    rate,
                    seconds,
                    seed,
                    "embedded tansu",
                    core,
                    rounds,
                    volume_matched,
                )
    except BenchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report) if as_json else format_report(report))
