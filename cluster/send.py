"""Client-side helpers for newcomers and tests: send orders, tail events without duplicates."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import BinaryIO

import click
import msgspec
from confluent_kafka import Producer

from cluster.kafka_io import message_topic, order_topic, read_topic
from engine.messages import NOT_JSON

_created_at = msgspec.json.Decoder(dict)


def record_timestamp_ms(raw: bytes) -> int | None:
    """The Kafka timestamp for an order: its created_at (ns) in ms, so events carry that time."""
    try:
        created_at = _created_at.decode(raw).get("created_at")
    except (*NOT_JSON, RecursionError, AttributeError):  # not JSON, too deep: sent as is, dead-lettered
        return None
    if isinstance(created_at, int) and 0 < created_at < 2**63:  # beyond int64, produce() would raise
        return created_at // 1_000_000
    return None


def produce_orders(bootstrap: str, product: str, lines: Iterable[bytes], extra: dict | None = None) -> int:
    """Produce raw order lines in order (idempotent, one partition); returns how many."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "allow.auto.create.topics": False,
            **(extra or {}),
        }
    )
    topic = order_topic(product)
    sent = 0
    for raw in lines:
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        ts = record_timestamp_ms(raw)
        while True:
            try:
                if ts is None:
                    producer.produce(topic, raw)
                else:
                    producer.produce(topic, raw, timestamp=ts)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(30)
    if remaining:
        raise click.ClickException(f"{remaining} orders not acknowledged by the broker")
    return sent


def send_orders(
    bootstrap: str,
    product: str,
    *,
    source: BinaryIO | None,
    generate: int | None,
    seed: int,
    start_id: int,
) -> int:
    """The `send` command: a file of JSON lines, or a generated stream, with a progress bar."""
    if generate is not None:
        from cluster.workload import generate_orders

        encoder = msgspec.json.Encoder()
        lines: Iterable[bytes] = (
            encoder.encode(o) for o in generate_orders(product, generate, seed, start_id=start_id)
        )
        with click.progressbar(
            lines,
            length=generate,
            label=f"sending to {order_topic(product)}",
            file=click.get_text_stream("stderr"),
        ) as bar:
            return produce_orders(bootstrap, product, bar)
    return produce_orders(bootstrap, product, source)


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
    bootstrap: str, product: str, *, count: int | None, idle_timeout: float | None
) -> Iterator[str]:
    """The `tail` command: events as JSON lines, each sequence once."""
    records = read_topic(bootstrap, message_topic(product), idle_s=idle_timeout)
    values = (value for _, value, _, _ in records)
    for n, value in enumerate(dedupe_by_sequence(values), 1):
        yield value.decode()
        if count is not None and n >= count:
            return
