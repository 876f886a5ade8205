"""`orderbook-cluster drill --fault rolling-restart`: restart every node in turn under load.

Each node is asked (over its authenticated admin endpoint) to restart: it stops as on SIGTERM,
so each product it leads is handed over to a caught-up standby first, and starts again with the
same command line. The next node goes only once the restarted one is back with every product
caught up and the leaders have settled. Reported per product: the largest pause in its output
(the longest time between consecutive events, by producer timestamps) during the restarts,
beside the largest pause in a quiet window before them and in one as long as the restarts after
them (the host's own figure over as long a time); the same windows by the longest delay from an
order's send to its event (a gap in the input is not the cluster's pause, a late answer is); each
handover's own gap, from the old leader's last event to the new leader's first; and the stream
check against replay.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field

from cluster import faults
from cluster.redis_state import NODE_ADDRESSES_KEY, NODES_KEY, sync_client
from cluster.tools.drill import (
    DrillError,
    OrderLoad,
    OutputWatcher,
    _wait,
    current_lease,
    final_check,
    post_fault,
)

ROLLING_RESTART = "rolling-restart"  # the drill's --fault choice
ROLLING_HELP = "restart every node in turn and report each product's largest output pause"
# The fault asked of each node in turn (the registry's rolling one: `restart`).
ROLLED_FAULT = next(name for name, fault in faults.FAULTS.items() if fault.drill is faults.Drill.ROLLING)
BASELINE_S = 3.0


@dataclass
class RollingReport:
    """What a rolling restart did to each product."""

    products: list[str]
    nodes: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    restart_ms: dict[str, int] = field(default_factory=dict)  # when each node was asked to restart
    orders_sent: int = 0
    # product -> {"baseline_pause_ms", "restart_pause_ms", "epochs", "stream"}
    per_product: dict[str, dict] = field(default_factory=dict)
    error: str | None = None

    def ok(self) -> bool:
        """Every node restarted and every stream equals replay."""
        return self.error is None and all(p["stream"]["ok"] for p in self.per_product.values())

    def as_dict(self) -> dict:
        """JSON for --json."""
        return {
            "fault": ROLLING_RESTART,
            "products": self.products,
            "nodes": self.nodes,
            "restarted": self.restarted,
            "restart_ms": self.restart_ms,
            "orders_sent": self.orders_sent,
            "per_product": self.per_product,
            "error": self.error,
        }


def live_nodes(client, fresh_ms: int = 3000) -> dict[str, str]:
    """node -> admin address of the nodes that heartbeated recently."""
    cutoff = int(time.time() * 1000) - fresh_ms
    live = [n.decode() for n in client.zrangebyscore(NODES_KEY, cutoff, "+inf")]
    addresses = client.hgetall(NODE_ADDRESSES_KEY)
    return {n: addresses[n.encode()].decode() for n in sorted(live) if addresses.get(n.encode())}


def node_products(address: str) -> dict | None:
    """The node's view of its product processes, or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{address}/status", timeout=2) as resp:
            return json.loads(resp.read())["products"]
    except (OSError, ValueError, KeyError):
        return None


def back_and_caught_up(address: str, old_pids: dict[str, int]) -> bool:
    """The restarted node answers with new processes for its products, each leading or caught up."""
    products = node_products(address)
    if not products:
        return False
    return all(
        p.get("pid") and p.get("pid") != old_pids.get(name) and p.get("caught_up")
        for name, p in products.items()
    )


def run_rolling_restart(
    bootstrap: str,
    redis_url: str,
    configs: dict,
    rate: float,
    admin_token: str,
    settle_s: float = 3.0,
    kafka_extra: dict | None = None,
    log=print,
) -> RollingReport:
    """Restart every live node in turn under load on every product in `configs`; never raises for
    a product that suffered (it is reported), only for a drill that cannot run."""
    extra = kafka_extra or {}
    products = sorted(configs)
    client = sync_client(redis_url)
    for product in products:
        if not _wait(lambda p=product: current_lease(client, p), 10):
            raise DrillError(f"no leader holds {product}; is the cluster running it?")
    nodes = live_nodes(client)
    if len(nodes) < 2:
        raise DrillError(f"a rolling restart needs two or more nodes; live: {', '.join(nodes) or 'none'}")
    report = RollingReport(products, nodes=list(nodes))
    watchers = {p: OutputWatcher(bootstrap, p, extra) for p in products}
    start_id = time.time_ns() // 1000
    loads = [OrderLoad(bootstrap, p, rate, start_id + i * 10**12, extra) for i, p in enumerate(products)]
    for thread in (*watchers.values(), *loads):
        thread.start()
    try:
        time.sleep(BASELINE_S)  # a quiet window under the same load, for the baseline pause
        began_ms = int(time.time() * 1000)
        for node, address in nodes.items():
            before = node_products(address) or {}
            old_pids = {name: p.get("pid") for name, p in before.items()}
            log(f"restarting {node} ({address})")
            report.restart_ms[node] = int(time.time() * 1000)
            try:
                post_fault(address, admin_token, ROLLED_FAULT, products[0], None)
            except (DrillError, OSError) as exc:
                report.error = f"{node}: {exc}"
                break
            if not _wait(lambda a=address, o=old_pids: back_and_caught_up(a, o), 120, 0.1):
                report.error = f"{node} did not come back with its products caught up within 120 s"
                break
            report.restarted.append(node)
            time.sleep(settle_s)  # placement hands leaders back; let it settle before the next node
        ended_ms = int(time.time() * 1000)
        if report.error is None:
            # As long a window again with no restart: the host's own largest pause over as long a
            # time, which is what the restarts' figure must be told apart from.
            time.sleep((ended_ms - began_ms) / 1000)
        quiet_until_ms = int(time.time() * 1000)
    finally:
        for load in loads:
            load.stop_event.set()
        for load in loads:
            load.join(60)
        report.orders_sent = sum(load.sent for load in loads)
    for product in products:
        watcher = watchers[product]
        checked = final_check(bootstrap, product, configs[product], watcher, extra, log)
        pause_ms, pause_at = watcher.largest_pause(began_ms, ended_ms)
        baseline_from_ms = began_ms - int(BASELINE_S * 1000)
        report.per_product[product] = {
            "baseline_pause_ms": watcher.largest_pause(baseline_from_ms, began_ms)[0],
            "restart_pause_ms": pause_ms,
            # The same windows by the longest send-to-event delay of an order (see largest_delay).
            "baseline_delay_ms": watcher.largest_delay(baseline_from_ms, began_ms),
            "restart_delay_ms": watcher.largest_delay(began_ms, ended_ms),
            # A window as long as the restarts, right after them, with none.
            "quiet_pause_ms": watcher.largest_pause(ended_ms, quiet_until_ms)[0],
            "quiet_delay_ms": watcher.largest_delay(ended_ms, quiet_until_ms),
            # from each old leader's last event to its successor's first: the handovers' own cost
            "handover_gaps_ms": watcher.handover_gaps(began_ms, ended_ms),
            # when the largest pause began, in ms after the first node's restart request
            "restart_pause_at_ms": None if pause_at is None else pause_at - began_ms,
            "epochs": sorted(watcher.first_seen),
            "stream": {"ok": checked.ok, "distinct": checked.distinct, "problems": checked.problems},
        }
        watcher.stop_event.set()
        watcher.join(10)
    return report


def format_rolling(report: RollingReport) -> str:
    """The operator's table."""
    lines = [
        f"rolling restart of {', '.join(report.restarted)} ({len(report.restarted)} of {len(report.nodes)} nodes), "
        f"{report.orders_sent} orders",
        "largest output pause and send-to-event delay, ms: during the restarts, and in as long a window after them;",
        "largest handover: from the old leader's last event to the new leader's first",
        f"{'PRODUCT':<16} {'PAUSE':>7} {'QUIET':>7} {'DELAY':>7} {'QUIET':>7} {'HANDOVER':>9} {'EPOCHS':>7}  STREAM",
    ]
    for product, p in report.per_product.items():
        stream = "OK" if p["stream"]["ok"] else "BROKEN: " + "; ".join(p["stream"]["problems"])
        handover = max(p["handover_gaps_ms"], default="-")
        lines.append(
            f"{product:<16} {p['restart_pause_ms']:>7} {p['quiet_pause_ms']:>7} "
            f"{p['restart_delay_ms']:>7} {p['quiet_delay_ms']:>7} {handover:>9} {len(p['epochs']):>7}  {stream}"
        )
    if report.error:
        lines.append(f"error: {report.error}")
    return "\n".join(lines)
