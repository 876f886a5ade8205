"""`orderbook-cluster status`: the cluster as Redis sees it, from any machine that reaches Redis."""

from __future__ import annotations

import json
import time

from cluster.redis_state import lease_holder, progress_key, snapshot_key, status_key, sync_client
from cluster.settings import Timing

# Processes whose last report is older are left out (gone or stuck); this command, run from any
# machine, knows no node's tuning: it takes the default cadences.
STATUS_FRESH_MS = Timing().status_fresh_ms()


def _products_in(client) -> list[str]:
    found = set()
    for pattern, prefix in (
        ("matching_progress_*", "matching_progress_"),
        ("matching_status_*", "matching_status_"),
    ):
        for key in client.scan_iter(match=pattern, count=500):
            name = key.decode()[len(prefix) :]
            found.add(name.split(":", 1)[0])
    return sorted(found)


def collect_status(redis_url: str, products: list[str] | None = None) -> dict:
    """Leader, standbys, epoch, progress, snapshot age and rates per product."""
    client = sync_client(redis_url)
    now_ms = int(time.time() * 1000)
    doc: dict = {"products": {}}
    for product in products or _products_in(client):
        epoch, leader_node = lease_holder(client, product) or (0, None)  # no lease: no leader, epoch 0
        progress = client.hgetall(progress_key(product))
        snap = client.hmget(snapshot_key(product), "sequence", "offset", "created_ms")
        processes = [
            status
            for raw in client.hgetall(status_key(product)).values()
            if now_ms - (status := json.loads(raw)).get("reported_ms", 0) <= STATUS_FRESH_MS
        ]
        processes.sort(key=lambda p: (p["role"] != "leader", p["node"]))
        leader = next((p for p in processes if p["role"] == "leader"), None)
        doc["products"][product] = {
            "leader_node": leader_node,
            "leader_pid": leader["pid"] if leader else None,
            "epoch": epoch,
            "input_offset_processed": int(progress.get(b"offset", 0)),
            "last_sequence_published": int(progress.get(b"sequence", 0)),
            "lag": leader["read_ahead"] if leader else None,
            "events_per_s": leader["events_per_s"] if leader else 0.0,
            "snapshot_sequence": int(snap[0]) if snap[0] else None,
            "snapshot_age_s": round((now_ms - int(snap[2])) / 1000, 1) if snap[2] else None,
            # The largest event-loop stall of any of its processes since they started (ms).
            "loop_stall_max_ms": max((p.get("loop_stall_max_ms") or 0.0 for p in processes), default=None),
            "processes": [
                {
                    k: p.get(k)
                    for k in (
                        "node",
                        "pid",
                        "role",
                        "core",
                        "epoch",
                        "offset",
                        "sequence",
                        "behind",
                        "caught_up",
                        "input_behind",
                        "events_per_s",
                        "loop_stall_ms",
                        "loop_stall_max_ms",
                        "loop_stall_cpu_wait_ms",
                        "state_checks",
                        "state_diverged",
                    )
                }
                for p in processes
            ],
        }
    return doc


def format_status(doc: dict) -> str:
    """A table an operator reads at a glance; a standby whose state hash differed from the
    leader's at a checkpoint is marked DIVERGED."""
    lines = []
    header = (
        f"{'PRODUCT':<12} {'LEADER':<16} {'PID':>7} {'EPOCH':>6} {'OFFSET':>10} {'SEQUENCE':>10} "
        f"{'LAG':>6} {'SNAP AGE':>8} {'EV/S':>9} {'STALL MS':>8}  STANDBYS (behind)"
    )
    lines.append(header)
    for product, p in doc["products"].items():
        standbys = ", ".join(
            f"{s['node']}({s['behind']}{', DIVERGED' if s.get('state_diverged') else ''})"
            for s in p["processes"]
            if s["role"] == "standby"
        )
        lines.append(
            f"{product:<12} {p['leader_node'] or '-':<16} {p['leader_pid'] or '-':>7} {p['epoch']:>6} "
            f"{p['input_offset_processed']:>10} {p['last_sequence_published']:>10} {p['lag'] if p['lag'] is not None else '-':>6} "
            f"{p['snapshot_age_s'] if p['snapshot_age_s'] is not None else '-':>8} {p['events_per_s']:>9} "
            f"{p['loop_stall_max_ms'] if p['loop_stall_max_ms'] is not None else '-':>8}  {standbys or '-'}"
        )
    return "\n".join(lines)
