"""The latency phase of `bench e2e`: order-to-event time at a fixed offered rate, on one clock.

A paced producer offers R orders/s per product on warm topics (created_at = send time); a
consumer stamps the first output record of each order (`order_id` or `taker_order_id` for
events; the copied record's `id` for passthrough). Only new orders count: a cancel's `done`
carries the cancelled order's id. A warm-up is excluded: the first second after a producer
connects shows connection and idempotence set-up, which would otherwise own the p99.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster.kafka_io import client_config, message_topic, order_topic
from cluster.tools.workload import generate_orders

if TYPE_CHECKING:
    from cluster.bench.e2e import BenchNode

LATENCY_START_ID = 50_000_000
LATENCY_WARMUP_S = 2.0
_encoder = msgspec.json.Encoder()


class BenchError(RuntimeError):
    """The benchmark could not complete (a node died, output never arrived)."""


class _Probe(msgspec.Struct):
    """The fields that tie an output record to the order that caused it (orders and events)."""

    id: int | None = None
    status: str | None = None
    order_id: int | None = None
    taker_order_id: int | None = None


_probe = msgspec.json.Decoder(_Probe)


@dataclass
class LatencyProbe:
    """Send times of the offered orders and when their first event was consumed (ns, one clock)."""

    sent: dict[tuple[str, int], int] = field(default_factory=dict)
    first_seen: dict[tuple[str, int], int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def consume(self, bootstrap: str, start_offsets: dict[str, int], passthrough: bool) -> None:
        """Consumer thread: the first output record per order id, stamped on arrival."""
        consumer = Consumer(
            client_config(
                bootstrap,
                {},
                {
                    "group.id": "obc-bench-latency",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                    "fetch.queue.backoff.ms": 1,
                },
                "bench-latency",
            )
        )
        topics = {message_topic(p): p for p in start_offsets}
        consumer.assign([TopicPartition(message_topic(p), 0, o) for p, o in start_offsets.items()])
        first_seen = self.first_seen
        try:
            while not self.stop.is_set():
                msgs = consumer.consume(10_000, 0.05)
                now = time.time_ns()
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    probe = _probe.decode(msg.value())
                    if passthrough:
                        oid = probe.id if probe.status != "cancelling" else None
                    else:
                        oid = probe.taker_order_id or probe.order_id
                    key = (topics[msg.topic()], oid)
                    if oid is not None and key not in first_seen:
                        first_seen[key] = now
        finally:
            consumer.close()

    def offer(self, bootstrap: str, streams: dict[str, list[dict]], rate: float, warmup_s: float) -> float:
        """Produce every stream at `rate` orders/s per product (1 ms steps); the achieved rate.

        Orders of the first `warmup_s` are sent but not measured: connection set-up and the
        first fetches of every consumer on the way take about a second.
        """
        producer = Producer(
            client_config(
                bootstrap,
                {},
                {
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": 1,
                    "compression.type": "lz4",
                    "allow.auto.create.topics": False,
                },
                "bench-latency",
            )
        )
        producer.list_topics(timeout=10)
        total = min(len(s) for s in streams.values())
        measured_from = int(warmup_s * rate)
        sent = self.sent
        start = time.monotonic()
        done = 0
        while done < total:
            due = min(total, int((time.monotonic() - start) * rate) + 1)
            for i in range(done, due):
                for product, stream in streams.items():
                    order = stream[i]
                    now = time.time_ns()
                    order["created_at"] = now // 1_000_000 * 1_000_000
                    if order["status"] == "new" and i >= measured_from:
                        sent[(product, order["id"])] = now
                    producer.produce(order_topic(product), _encoder.encode(order), timestamp=now // 1_000_000)
            done = due
            producer.poll(0)
            time.sleep(0.001)
        elapsed = time.monotonic() - start
        if producer.flush(30):
            raise BenchError("latency orders not acknowledged by the broker")
        return total / elapsed

    def unanswered(self) -> int:
        """Measured orders whose first event has not been consumed yet."""
        return sum(1 for k in self.sent if k not in self.first_seen)

    def wait_answered(self, node, timeout_s: float) -> None:
        """Until every measured order has its first event, or timeout_s; fails at once if the node
        exits. What stays unanswered is the caller's to report."""
        deadline = time.monotonic() + timeout_s
        while self.unanswered() and time.monotonic() < deadline:
            node.check_alive()
            time.sleep(0.05)

    def percentiles(self) -> dict:
        """p50/p99/p99.9 in ms over every order whose first event arrived."""
        samples = sorted((self.first_seen[k] - t) / 1e6 for k, t in self.sent.items() if k in self.first_seen)
        if not samples:
            raise BenchError("no order's event was consumed in the latency phase")

        def at(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(len(samples) * q))], 2)

        return {
            "p50_ms": at(0.50),
            "p99_ms": at(0.99),
            "p999_ms": at(0.999),
            "max_ms": round(samples[-1], 2),
            "mean_ms": round(statistics.fmean(samples), 2),
            "orders_measured": len(samples),
            "orders_unanswered": len(self.sent) - len(samples),
        }


def latency_phase(
    node: BenchNode, bootstrap: str, status: dict, rate: float, seconds: float, seed: int, passthrough: bool
) -> dict:
    """Offer `rate` orders/s per product on the warm topics; order-to-event percentiles."""
    count = max(1, int(rate * (LATENCY_WARMUP_S + seconds)))
    streams = {p: list(generate_orders(p, count, seed + 1, start_id=LATENCY_START_ID)) for p in node.products}
    probe = LatencyProbe()
    start_offsets = {p: status[p]["delivered_sequence"] for p in node.products}
    consumer = threading.Thread(
        target=probe.consume, args=(bootstrap, start_offsets, passthrough), daemon=True
    )
    consumer.start()
    try:
        achieved = probe.offer(bootstrap, streams, rate, LATENCY_WARMUP_S)
        probe.wait_answered(node, 15)
    finally:
        probe.stop.set()
        consumer.join(10)
    return {
        "offered_per_product_per_s": round(achieved),
        "warmup_s": LATENCY_WARMUP_S,
        "seconds": seconds,
        **probe.percentiles(),
    }
