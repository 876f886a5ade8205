"""What a product process tells others about itself: the supervisor (pipe), the cluster (Redis)
and Prometheus. Best effort and off the hot path: nothing here may stop matching.

The Redis hash `matching_status_P` (node -> JSON) feeds `orderbook-cluster status` and placement
(cluster/lease.py); entries carry `reported_ms`, and readers ignore stale ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import TYPE_CHECKING

from cluster.redis_state import status_key
from engine.native import NativeEngine

if TYPE_CHECKING:
    from cluster.worker import ProductWorker


class StatusReporter:
    """The status task of a product process, and the bulk move of counts into Prometheus."""

    def __init__(self, worker: ProductWorker) -> None:
        self.worker = worker
        self.counted = (0, 0, 0, 0)

    async def run(self) -> None:
        """Tell the supervisor (pipe) and the cluster (Redis hash) how this process is doing."""
        w = self.worker
        last_events, last_t = 0, time.monotonic()
        while not w.stopping:
            now = time.monotonic()
            rate = (w.events_delivered - last_events) / max(now - last_t, 1e-6)
            last_events, last_t = w.events_delivered, now
            status = self.status(rate)
            w.loop_stall_window = 0.0
            self.sync_counters()
            if w.status_conn is not None:
                try:
                    w.status_conn.send(status)
                except (BrokenPipeError, OSError):
                    w.stopping = True  # the supervisor is gone: stop like on SIGTERM
            if w.snapshot_written_at is not None:
                w.metric.snapshot_age.set(now - w.snapshot_written_at)
            w.metric.input_lag.set(len(w.pending))
            w.metric.state_checks.set(w.state_check.checks)
            try:
                await w.redis.client.hset(status_key(w.product), w.settings.node_id, _status_json(status))
            except Exception:  # noqa: BLE001 - status is best effort
                pass
            await asyncio.sleep(w.timing.status_every_ms / 1000)

    def sync_counters(self) -> None:
        """Move the core's and the delivery counts into Prometheus in bulk, off the hot path."""
        w = self.worker
        counts = w.engine.counters
        now = (w.events_delivered, counts.rejected, counts.duplicates, counts.unknown_cancels)
        before = self.counted
        metric = w.metric
        for counter, delta in zip(
            (metric.events_out, metric.rejects, metric.duplicates, metric.unknown_cancels),
            (a - b for a, b in zip(now, before, strict=True)),
            strict=True,
        ):
            if delta > 0:
                counter.inc(delta)
        self.counted = now

    def status(self, events_per_s: float) -> dict:
        """A plain dict for the supervisor, `status` and readiness."""
        w = self.worker
        leader = w.leader
        behind = max(0, w.progress_seen[1] - w.next_offset) if leader is None else 0
        return {
            "product": w.product,
            "node": w.settings.node_id,
            "pid": os.getpid(),
            "role": "leader" if leader else "standby",
            # the core this process runs (not the one asked for): what benchmarks and operators must see
            "core": "native" if isinstance(w.engine, NativeEngine) else "python",
            "epoch": leader.epoch if leader else 0,
            "offset": w.next_offset,
            "sequence": w.engine.sequence,
            "delivered_sequence": leader.delivered_seq if leader else w.progress_seen[0],
            "behind": behind,
            "caught_up": leader is not None or w.caught_up(),
            "input_behind": w.input_behind,
            "read_ahead": len(w.pending),
            "events_per_s": round(events_per_s, 1),
            # The live state check of a standby: checkpoints compared, and whether it diverged.
            "state_checks": w.state_check.checks,
            "state_diverged": w.state_check.diverged,
            # The longest event-loop stall since the last report, and since the process started.
            "loop_stall_ms": round(w.loop_stall_window * 1000, 1),
            "loop_stall_max_ms": round(w.loop_stall_max * 1000, 1),
            "snapshot_age_s": None
            if w.snapshot_written_at is None
            else round(time.monotonic() - w.snapshot_written_at, 1),
            "reported_ms": int(time.time() * 1000),
        }


def _status_json(status: dict) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()
