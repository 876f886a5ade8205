"""Client-side helpers for newcomers and tests: send orders, tail events without duplicates."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

import click
import msgspec
from confluent_kafka import KafkaException, Producer

from cluster.kafka_io import client_config, message_topic, order_topic, quiet_librdkafka, read_topic
from engine.messages import NOT_JSON

_created_at = msgspec.json.Decoder(dict)
PROGRESS_EVERY_S = 1.0


def record_timestamp_ms(raw: bytes) -> int | None:
    """The Kafka timestamp for an order: its created_at (ns) in ms, so events carry that time."""
    try:
        created_at = _created_at.decode(raw).get("created_at")
    except (*NOT_JSON, RecursionError, AttributeError):  # not JSON, too deep: sent as is, dead-lettered
        return None
    if isinstance(created_at, int) and 0 < created_at < 2**63:  # beyond int64, produce() would raise
        return created_at // 1_000_000
    return None


class Deliveries:
    """Delivery reports of one send: how many the broker acknowledged, and why the others failed."""

    def __init__(self) -> None:
        self.delivered = 0
        self.failed: Counter[str] = Counter()

    def report(self, error, _message) -> None:
        """librdkafka's delivery callback, once per produced message (called from poll/flush)."""
        if error is None:
            self.delivered += 1
        else:
            self.failed[error.str()] += 1


def produce_orders(
    bootstrap: str,
    product: str,
    lines: Iterable[bytes],
    extra: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    message_timeout_ms: int = 30_000,
) -> int:
    """Produce raw order lines in order (idempotent, one partition); returns how many were delivered.

    Every order gets a delivery report; unless the broker acknowledged every one this raises
    click.ClickException naming how many were not delivered and why. `progress(sent, delivered)`
    is called about once a second.
    """
    deliveries = Deliveries()
    producer = Producer(
        client_config(
            bootstrap,
            extra or {},
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": "lz4",
                "allow.auto.create.topics": False,
                "message.timeout.ms": message_timeout_ms,
                "on_delivery": deliveries.report,
                "logger": quiet_librdkafka(),  # failures are counted and reported, not logged per retry
            },
            "send",
        )
    )
    topic = order_topic(product)
    sent = 0
    next_progress = time.monotonic() + PROGRESS_EVERY_S
    for raw in lines:
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        ts = record_timestamp_ms(raw)
        sent += 1
        while True:
            try:
                if ts is None:
                    producer.produce(topic, raw)
                else:
                    producer.produce(topic, raw, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.05)
            except KafkaException as exc:  # refused before it left, e.g. larger than message.max.bytes
                deliveries.failed[exc.args[0].str()] += 1
                break
        if sent % 1000 == 0:
            producer.poll(0)
        if progress is not None and time.monotonic() >= next_progress:  # also for a slow source (-)
            producer.poll(0)
            progress(sent, deliveries.delivered)
            next_progress = time.monotonic() + PROGRESS_EVERY_S
    # Every message gets its report within message.timeout.ms, so this bound is never the one hit.
    deadline = time.monotonic() + message_timeout_ms / 1000 + 10
    while len(producer) and time.monotonic() < deadline:
        producer.flush(PROGRESS_EVERY_S)
        if progress is not None and len(producer):
            progress(sent, deliveries.delivered)
    missing = sent - deliveries.delivered
    if missing:
        reasons = dict(deliveries.failed)
        if len(producer):
            reasons["no delivery report"] = len(producer)
        why = "; ".join(f"{reason} ({count})" for reason, count in reasons.items())
        raise click.ClickException(f"{missing} of {sent} orders not delivered to {topic}: {why or 'unknown'}")
    return deliveries.delivered


def send_orders(
    bootstrap: str,
    product: str,
    *,
    source: BinaryIO | None,
    generate: int | None,
    seed: int,
    start_id: int,
    extra: dict | None = None,
) -> int:
    """The `send` command: a file of JSON lines, or a generated stream, with progress on stderr."""
    if generate is not None:
        from cluster.tools.workload import generate_orders

        encoder = msgspec.json.Encoder()

        def sent_now(order: dict) -> bytes:
            # A generated order has no creation time of its own: it is stamped as it is sent (in ms,
            # and so is its record), not with the generator's fixed 2023 clock, which made the
            # order-to-event metric (from the record's timestamp) read three years.
            order["created_at"] = time.time_ns() // 1_000_000 * 1_000_000
            return encoder.encode(order)

        lines: Iterable[bytes] = map(sent_now, generate_orders(product, generate, seed, start_id=start_id))
    else:
        lines = source

    def progress(sent: int, delivered: int) -> None:
        of = f" of {generate}" if generate is not None else ""
        click.echo(f"{order_topic(product)}: {sent}{of} sent, {delivered} delivered", err=True)

    return produce_orders(bootstrap, product, lines, extra, progress=progress)


_sequence = msgspec.json.Decoder(dict)


def dedupe_by_sequence(values: Iterable[bytes]) -> Iterator[bytes]:
    """Drop every event whose sequence is not above the last one kept (the consumer's rule)."""
    last = 0
    for value in values:
        seq = _sequence.decode(value)["sequence"]
        if seq > last:
            last = seq
            yield value


def tail_events(
    bootstrap: str,
    product: str,
    *,
    count: int | None,
    idle_timeout: float | None,
    extra: dict | None = None,
) -> Iterator[str]:
    """The `tail` command: events as JSON lines, each sequence once; follows the topic until
    `count` events or `idle_timeout` seconds without one (each None: until interrupted)."""
    records = read_topic(bootstrap, message_topic(product), idle_s=idle_timeout, extra=extra)
    values = (value for _, value, _, _ in records)
    for n, value in enumerate(dedupe_by_sequence(values), 1):
        yield value.decode()
        if count is not None and n >= count:
            return
