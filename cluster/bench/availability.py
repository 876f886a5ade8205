"""`orderbook-cluster bench availability`: does a product keep trading with a large book, a busy
machine and a dead leader node?

Two nodes lead and follow one product (or more) on a local broker and Redis. The book is first
loaded with `--resting` orders that rest and never cross (buys far below, sells far above the
flow's prices); then a steady realistic flow runs on top for `--seconds`, optionally with
`--busy` busy-loop processes saturating the cores. Reported: leadership changes during that
window (there should be none that is not a planned handover), the pauses of publishing for late
lease renewals, the largest event-loop stall each product process reported, and
after it the time from SIGKILL of the leader's whole node to the first event of the new leader
(by that event's producer timestamp); last, the whole output against replay of the whole input.
"""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import click
import msgspec

from cluster.bench.e2e import BenchError, BenchNode, _exit_on_sigterm, start_node
from cluster.embedded import embedded_services
from cluster.kafka_io import ensure_topics, order_topic, product_topics
from cluster.options import json_option
from cluster.tools.drill import OrderLoad, OutputWatcher, _wait
from cluster.tools.send import produce_orders
from cluster.tools.verify import check_stream, expected_events, read_records
from engine.config import ProductConfig
from engine.messages import record_time_ns

_encoder = msgspec.json.Encoder()
PRICE_LEVELS = 5_000  # resting orders spread over this many price levels per side
# Well under the busy status cadence (Timing.status_every_ms, 500 ms): every report is seen, and
# a report's stall covers only the time since the one before it.
STATUS_POLL_S = 0.2


def progress(message: str) -> None:
    """Progress to stderr: stdout is the report's."""
    click.echo(f"[bench availability] {message}", err=True)


def resting_orders(product: str, count: int, start_id: int, start_ts_ms: int):
    """`count` GTC limit orders that rest and never cross each other or the realistic flow (its
    prices are around 30,000.00): buys at 1.00-50.00, sells at 1,000,000.00 and above."""
    for i in range(count):
        buy = i % 2 == 0
        level = (i // 2) % PRICE_LEVELS
        cents = 100 + level if buy else 100_000_000 + level
        yield _encoder.encode(
            {
                "id": start_id + i,
                "created_at": start_ts_ms * 1_000_000,
                "product_id": product,
                "user_id": 10_000 + i % 997,
                "client_oid": "",
                "price": f"{cents // 100}.{cents % 100:02d}",
                "size": "0.001",
                "funds": "0",
                "type": "limit",
                "side": "buy" if buy else "sell",
                "time_in_force": "GTC",
                "status": "new",
            }
        )


def lines_between(text: str, start_s: float, end_s: float) -> list[str]:
    """The log lines stamped within [start_s, end_s] (epoch seconds; the logs' local time)."""
    picked = []
    for line in text.splitlines():
        try:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
        except ValueError:
            continue  # a traceback's continuation
        if start_s <= stamp <= end_s:
            picked.append(line)
    return picked


def leader_of(nodes: dict[str, BenchNode], product: str) -> tuple[str, dict] | None:
    """(node id, its status of the product) of the node whose process leads it."""
    for node_id, node in nodes.items():
        status = node.status().get(product, {})
        if status.get("role") == "leader":
            return node_id, status
    return None


def _spin() -> None:
    while True:
        pass


def run_availability(
    bootstrap: str,
    redis_url: str,
    products: list[str],
    resting: int,
    rate: float,
    seconds: float,
    busy: int,
    logs: Path | None = None,
) -> dict:
    """The scenario of the module docstring; the report as one dict."""
    report: dict = {"products": products, "resting_orders": resting, "rate_per_product": rate}
    report |= {"seconds": seconds, "busy_processes": busy, "cpus": os.cpu_count()}
    ensure_topics(bootstrap, {}, [t for p in products for t in product_topics(p)])
    start_ts_ms = time.time_ns() // 1_000_000
    for product in products:
        progress(f"loading {resting} resting orders into {order_topic(product)}")
        produce_orders(bootstrap, product, resting_orders(product, resting, 1, start_ts_ms))
    with tempfile.TemporaryDirectory(prefix="bench-availability-") as tmp:
        work = Path(tmp)
        # INFO: the report counts the nodes' demotion and handover lines
        nodes = {
            n: start_node(bootstrap, redis_url, products, work, False, node_id=n, log_level="INFO")
            for n in ("avail-1", "avail-2")
        }
        spinners: list[multiprocessing.Process] = []
        try:
            for product in products:
                caught_up = _wait(
                    lambda p=product: all(
                        node.status().get(p, {}).get("offset", 0) >= resting
                        and node.status().get(p, {}).get("caught_up")
                        for node in nodes.values()
                    ),
                    600,
                    0.5,
                )
                if not caught_up:
                    raise BenchError(
                        f"{product}: the nodes did not apply the {resting} resting orders in 600 s"
                    )
            # The watchers read the output from 0 for the stream check: the book's own events
            # (1,000,000 "open"s) first, before the window, or that read (most of a core for
            # seconds, in this process) is the host load the window then measures.
            watchers = {p: OutputWatcher(bootstrap, p, {}) for p in products}
            for watcher in watchers.values():
                watcher.start()
            for product, watcher in watchers.items():
                book_events = max(
                    node.status().get(product, {}).get("sequence", 0) for node in nodes.values()
                )
                if not _wait(lambda w=watcher, n=book_events: w.distinct_count() >= n, 600, 0.2):
                    raise BenchError(f"{product}: the book's {book_events} events were not read in 600 s")
            progress("book loaded on both nodes and its events read; steady flow on top")
            loads = [
                OrderLoad(bootstrap, p, rate, resting + 1 + i * 10**12, {}) for i, p in enumerate(products)
            ]
            for load in loads:
                load.start()
            spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(busy)]
            for spinner in spinners:
                spinner.start()
            epochs_before = {p: leader_of(nodes, p) for p in products}
            window = (time.time(), time.time() + seconds)
            stall_max: dict[str, float] = {}
            stalls: list[float] = []  # the leaders' stall of every status window
            waits: list[float | None] = []  # and how much of it the loop waited for a core
            spans: list[tuple[int, int]] = []  # and when (ms since the epoch, between two reports)
            window_start_ms = int(window[0] * 1000)
            reported: dict[str, int] = {}  # product@node -> reported_ms of its latest report seen
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                for node_id, node in nodes.items():
                    node.check_alive()
                    for product, status in node.status().items():
                        process = f"{product}@{node_id}"
                        key = f"{process}:{status.get('role')}"
                        at_ms, previous_ms = status.get("reported_ms", 0), reported.get(process, 0)
                        reported[process] = at_ms
                        # A report's stall is the longest since the process's previous report:
                        # count each report once, and only one whose whole span is in the window
                        # (the first report seen may span the book's loading).
                        if at_ms == previous_ms or previous_ms < window_start_ms:
                            continue
                        stall_max[key] = max(stall_max.get(key, 0.0), status.get("loop_stall_ms") or 0.0)
                        if status.get("role") == "leader":
                            stalls.append(status.get("loop_stall_ms") or 0.0)
                            waits.append(status.get("loop_stall_cpu_wait_ms"))
                            spans.append((previous_ms, at_ms))
                time.sleep(STATUS_POLL_S)
            for spinner in spinners:
                spinner.kill()
            epochs_after = {p: leader_of(nodes, p) for p in products}
            report["leadership_changes"] = {
                p: (epochs_after[p][1]["epoch"] - epochs_before[p][1]["epoch"])
                if epochs_before[p] and epochs_after[p]
                else None
                for p in products
            }
            report["loop_stall_max_ms"] = stall_max
            report["leader_loop_stall_max_ms"] = max(
                (v for k, v in stall_max.items() if k.endswith(":leader")), default=None
            )
            over = [(stall, wait) for stall, wait in zip(stalls, waits, strict=True) if stall > 50]
            largest = max(
                zip(stalls, waits, spans, strict=True), default=(None, None, None), key=lambda sws: sws[0]
            )
            stalls.sort()
            report["leader_loop_stall_windows"] = {
                "count": len(stalls),
                "median_ms": stalls[len(stalls) // 2] if stalls else None,
                "over_50ms": len(over),
                # Of those, the ones the loop spent mostly runnable but without a core: the host's
                # stalls (other processes on its cores), not the product process's own work.
                "over_50ms_mostly_waiting_for_cpu": sum(
                    wait is not None and wait > stall / 2 for stall, wait in over
                ),
                "largest_ms": largest[0],
                "largest_cpu_wait_ms": largest[1],
                "largest_between_ms": largest[2],  # the two status reports it came between
            }
            logs_text = [node.log_path.read_text(errors="replace") for node in nodes.values()]
            report["demotions"] = sum(text.count(" demoted product=") for text in logs_text)
            # Why, by the log line's reason (a demotion logs "demoted product=P epoch=E reason=R").
            reasons = collections.Counter(
                line.partition(" reason=")[2].strip()
                for text in logs_text
                for line in text.splitlines()
                if " demoted product=" in line
            )
            report["demotion_reasons"] = dict(reasons.most_common())
            report["lease_renew_trouble"] = {
                kind: sum(text.count(kind) for text in logs_text)
                for kind in ("lease renew failed", "lease renew slow", "matching loop stalled")
            }
            report["handovers"] = sum(text.count(" handed over product=") for text in logs_text)
            # Planned moves (placement, an operator) are not spontaneous: a change that is neither
            # such a handover in the window nor the kill below is what the issue counts.
            in_window = [line for text in logs_text for line in lines_between(text, *window)]
            handed = sum(" handed over product=" in line for line in in_window)
            changes = sum(c for c in report["leadership_changes"].values() if c)
            report["spontaneous_leadership_changes"] = changes - handed
            # Late renewals ridden out in place (cluster/lease.py): how often and for how long.
            paused_ms = [
                int(line.rpartition("paused_ms=")[2].partition(":")[0])
                for line in in_window
                if "lease renewal confirmed" in line
            ]
            report["lease_pauses"] = {
                "count": sum("publishing paused" in line for line in in_window),
                "resumed": len(paused_ms),
                "max_ms": max(paused_ms, default=0),
                "retaken_after_lapse": sum("lapsed and taken again" in line for line in in_window),
            }
            # The leader's whole node dies: no drain, no release; the standby takes over at the TTL.
            product = products[0]
            leader_node, status = epochs_after[product]
            epoch = status["epoch"]
            killed_ms = int(time.time() * 1000)
            os.killpg(nodes[leader_node].process.pid, signal.SIGKILL)
            nodes[leader_node].process.wait(10)
            seen = _wait(lambda: watchers[product].first_epoch_above(epoch), 60)
            stamp = watchers[product].first_stamp.get(seen[0]) if seen else None
            report["node_kill_takeover_ms"] = (stamp - killed_ms) if stamp else None
            time.sleep(2.0)  # the new leader publishes on under the flow before the check
            for load in loads:
                load.stop_event.set()
                load.join(60)
            report["orders_sent"] = resting + sum(load.sent for load in loads)
            report["stream"] = {}
            for product in products:
                inputs = read_records(bootstrap, order_topic(product), idle_s=3.0)
                config = ProductConfig(product_id=product, base_scale=6, quote_scale=2)
                expected = expected_events(config, [(v, record_time_ns(ts)) for _, v, ts, _ in inputs])
                watcher, wanted = watchers[product], len(expected)
                _wait(lambda w=watcher, n=wanted: w.distinct_count() >= n, 120, 0.2)
                with watcher.lock:
                    output = list(watcher.values)
                checked = check_stream(output, expected)
                report["stream"][product] = {
                    "ok": checked.ok,
                    "events": checked.distinct,
                    "problems": checked.problems,
                }
                watcher.stop_event.set()
        finally:
            for spinner in spinners:
                spinner.kill()
            for node in nodes.values():
                node.stop()
            if logs is not None:
                logs.mkdir(parents=True, exist_ok=True)
                for node_id, node in nodes.items():
                    shutil.copyfile(node.log_path, logs / f"{node_id}.log")
    return report


@click.command()
@click.option(
    "--products",
    "n",
    type=click.IntRange(1, 8),
    default=1,
    show_default=True,
    help="Products, one process each per node.",
)
@click.option(
    "--resting",
    type=click.IntRange(0),
    default=1_000_000,
    show_default=True,
    help="Resting orders loaded per product first.",
)
@click.option(
    "--rate",
    type=click.FloatRange(1),
    default=2_000.0,
    show_default=True,
    help="Orders/s per product of the steady flow on top.",
)
@click.option(
    "--seconds",
    type=click.FloatRange(1),
    default=60.0,
    show_default=True,
    help="How long the flow runs before the leader's node is killed.",
)
@click.option(
    "--busy",
    type=click.IntRange(0, 64),
    default=0,
    show_default=True,
    help="Busy-loop processes saturating the cores during the flow.",
)
@click.option(
    "--logs", type=click.Path(path_type=Path), default=None, help="Keep the nodes' logs in this directory."
)
@json_option()
def availability(n, resting, rate, seconds, busy, logs, as_json) -> None:
    """A large book, a steady flow, optionally busy cores, then the leader's node killed."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    products = [f"AVAIL{i}-{os.getpid()}" for i in range(n)]
    with (
        tempfile.TemporaryDirectory(prefix="bench-availability-servers-") as state,
        embedded_services(Path(state)) as services,
    ):
        progress(f"local Tansu broker at {services.bootstrap}, Redis at {services.redis_url}")
        try:
            report = run_availability(
                services.bootstrap, services.redis_url, products, resting, rate, seconds, busy, logs
            )
        except BenchError as exc:
            raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        click.echo(f"{key}: {value}")
