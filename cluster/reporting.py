"""What a product process tells others about itself: the supervisor (pipe), the cluster (Redis)
and Prometheus. Best effort and off the hot path: nothing here may stop matching.

The Redis hash `matching_status_P` (node -> JSON) feeds `orderbook-cluster status` and placement
(cluster/lease.py); entries carry `reported_ms`, and readers ignore stale ones
(Timing.status_fresh_ms). Reports come every status_every_ms while input comes in, every
status_idle_every_ms when the product is idle, and at once on a role change (wake()).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Protocol

from cluster.aio import cancelling, until_tick
from cluster.redis_state import status_key
from cluster.settings import Timing


class StatusSource(Protocol):
    """What a product process tells the reporter; the reporter knows nothing else of it."""

    def status(self, events_per_s: float) -> dict:
        """The status document (role, offsets, sequence, caught_up, ...; see ProductWorker.status)."""

    def counts(self) -> tuple[int, int, int, int]:
        """(events delivered, rejects, duplicate orders, unknown cancels) since the process started."""

    def supervisor_gone(self) -> None:
        """The pipe to the supervisor broke: the process should stop as on SIGTERM."""

    def quiet_for_s(self) -> float:
        """Seconds since input last came in: an idle product reports less often."""


class StatusReporter:
    """The status task of a product process, and the bulk move of counts into Prometheus."""

    def __init__(
        self,
        source: StatusSource,
        metric,
        redis_client,
        status_conn,
        node_id: str,
        product: str,
        timing: Timing,
    ) -> None:
        self.source = source
        self.metric = metric
        self.redis_client = redis_client
        self.status_conn = status_conn
        self.node_id = node_id
        self.product = product
        self.timing = timing
        self.counted = (0, 0, 0, 0)
        self.woken = asyncio.Event()

    def wake(self) -> None:
        """Report now, not at the next turn of the cadence: the role changed."""
        self.woken.set()

    async def run(self) -> None:
        """Tell the supervisor (pipe) and the cluster (Redis hash) how this process is doing; the
        task is cancelled when the process stops."""
        last_events, last_t = 0, time.monotonic()
        while True:
            self.woken.clear()
            now = time.monotonic()
            counts = self.source.counts()
            rate = (counts[0] - last_events) / max(now - last_t, 1e-6)
            last_events, last_t = counts[0], now
            status = self.source.status(rate)
            self.sync_counters(counts)
            if self.status_conn is not None:
                try:
                    self.status_conn.send(status)
                except (BrokenPipeError, OSError):
                    self.source.supervisor_gone()
            if status["snapshot_age_s"] is not None:
                self.metric.snapshot_age.set(status["snapshot_age_s"])
            self.metric.input_lag.set(status["read_ahead"])
            self.metric.state_checks.set(status["state_checks"])
            try:
                await self.redis_client.hset(status_key(self.product), self.node_id, _status_json(status))
            except Exception:  # noqa: BLE001 - status is best effort
                if cancelling():
                    raise
            if cancelling():
                # The client swallowed the cancellation (redis-py's asyncio connection can): a task
                # that went on would keep the process from ever finishing its stop.
                raise asyncio.CancelledError
            try:
                cadence_s = self.timing.status_cadence_s(self.source.quiet_for_s())
                async with asyncio.timeout(until_tick(cadence_s, self.product)):
                    await self.woken.wait()
            except TimeoutError:
                pass

    def sync_counters(self, now: tuple[int, int, int, int]) -> None:
        """Move the core's and the delivery counts into Prometheus in bulk, off the hot path."""
        metric = self.metric
        for counter, delta in zip(
            (metric.events_out, metric.rejects, metric.duplicates, metric.unknown_cancels),
            (a - b for a, b in zip(now, self.counted, strict=True)),
            strict=True,
        ):
            if delta > 0:
                counter.inc(delta)
        self.counted = now


def _status_json(status: dict) -> bytes:
    return json.dumps(status, separators=(",", ":")).encode()
