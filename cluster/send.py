"""Client-side helpers for newcomers and tests: send orders, tail events without duplicates."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import click
import msgspec
from confluent_kafka import KafkaException, Producer

from cluster.kafka_io import message_topic, order_topic, read_topic, topic_exists
from engine.messages import NOT_JSON

_created_at = msgspec.json.Decoder(dict)
TOPIC_LOOKUP_TIMEOUT_S = 10.0


def record_timestamp_ms(raw: bytes) -> int | None:
    """The Kafka timestamp for an order: its created_at (ns) in ms, so events carry that time."""
    try:
        created_at = _created_at.decode(raw).get("created_at")
    except (*NOT_JSON, AttributeError):  # not JSON: sent as is, and dead-lettered by the engine
        return None
    if isinstance(created_at, int) and created_at > 0:
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

        def sent_now(order: dict) -> bytes:
            # A generated order has no creation time of its own: it is stamped as it is sent (in ms,
            # and so is its record), not with the generator's fixed 2023 clock, which made the
            # order-to-event metric (from the record's timestamp) read three years.
            order["created_at"] = time.time_ns() // 1_000_000 * 1_000_000
            return encoder.encode(order)

        lines: Iterable[bytes] = map(sent_now, generate_orders(product, generate, seed, start_id=start_id))
        with click.progressbar(
            lines,
            length=generate,
            label=f"sending to {order_topic(product)}",
            file=click.get_text_stream("stderr"),
        ) as bar:
            return produce_orders(bootstrap, product, bar)
    return produce_orders(bootstrap, product, source)


def require_topic(bootstrap: str, topic: str, product: str, extra: dict | None = None) -> None:
    """Fail at once, in bounded time, rather than wait forever on a topic that does not exist."""
    try:
        exists = topic_exists(bootstrap, topic, extra, TOPIC_LOOKUP_TIMEOUT_S)
    except KafkaException as exc:
        raise click.ClickException(
            f"the broker at {bootstrap} did not answer in {TOPIC_LOOKUP_TIMEOUT_S:.0f} s: {exc}"
        ) from None
    if not exists:
        raise click.ClickException(
            f"no such product topic {topic} at {bootstrap}: check the product name; a node running "
            f"the product (start --products {product}) creates its topics"
        )


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
    """The `tail` command: events as JSON lines, each sequence once; follows the topic until
    `count` events or `idle_timeout` seconds without one (each None: until interrupted)."""
    topic = message_topic(product)
    require_topic(bootstrap, topic, product)
    records = read_topic(bootstrap, topic, idle_s=idle_timeout)
    values = (value for _, value, _, _ in records)
    for n, value in enumerate(dedupe_by_sequence(values), 1):
        yield value.decode()
        if count is not None and n >= count:
            return
