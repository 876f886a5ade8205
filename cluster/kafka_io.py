"""Kafka adapters: topic names, topic creation, and the consumer/producer settings we rely on.

Only guarantees every Kafka-compatible broker gives are relied on: one partition per topic,
in-order idempotent produce within one producer session, fetch by explicit offset. Watermarks,
offsets_for_times and transactions are not used for correctness (the test broker gets them wrong).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

log = logging.getLogger(__name__)


def order_topic(product: str) -> str:
    """Input topic of a product: orders and cancels in matching order."""
    return f"matching_order_{product}"


def message_topic(product: str) -> str:
    """Output topic of a product: events in sequence order."""
    return f"matching_message_{product}"


def dlq_topic(product: str) -> str:
    """Dead letters of a product's input."""
    return f"matching_order_{product}.dlq"


def product_topics(product: str) -> list[str]:
    """Every topic a product uses."""
    return [order_topic(product), message_topic(product), dlq_topic(product)]


class KafkaUnreachable(RuntimeError):
    """No broker answered within the timeout; the message says where, how long, and librdkafka's reason."""


def quiet_librdkafka() -> logging.Logger:
    """A logger that drops librdkafka's own lines: for the command-line tools, which report a broker
    they cannot reach in one line of their own instead of a connection-refused line per retry."""
    quiet = logging.getLogger("cluster.librdkafka.quiet")
    if not quiet.handlers:
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    return quiet


def existing_topics(bootstrap: str, extra: dict[str, str], timeout_s: float) -> set[str]:
    """The broker's topics, asked with a bounded wait (a listing of all topics: asking for one by
    name would make brokers that auto-create topics, such as Tansu, create it)."""
    errors: list = []
    config = base_config(bootstrap, extra)
    config.update({"logger": quiet_librdkafka(), "error_cb": errors.append})
    admin = AdminClient(config)
    try:
        return set(admin.list_topics(timeout=timeout_s).topics)
    except KafkaException as exc:
        admin.poll(0)  # serves the error callbacks: librdkafka's reason (refused, TLS, SASL, ...)
        reasons = [e.str() for e in errors if e.code() != KafkaError._ALL_BROKERS_DOWN] or [str(exc)]
        reason = reasons[-1].split(": ", 1)[-1] if "/bootstrap: " in reasons[-1] else reasons[-1]
        raise KafkaUnreachable(
            f"cannot reach Kafka at {bootstrap} (timeout {timeout_s:g} s): {reason}"
        ) from None


def base_config(bootstrap: str, extra: dict[str, str]) -> dict[str, object]:
    """Common librdkafka settings; operator settings (SASL/TLS, ...) from `extra` win."""
    config: dict[str, object] = {"bootstrap.servers": bootstrap, "socket.keepalive.enable": True}
    config.update(extra)
    return config


def client_config(
    bootstrap: str, extra: dict[str, str], ours: dict[str, object], role: str
) -> dict[str, object]:
    """base_config with the settings this client relies on put over the operator's, naming each
    operator setting that ignores: a key in the properties file that silently did nothing would mislead."""
    for key, value in ours.items():
        if key in extra and str(extra[key]).lower() != str(value).lower():
            log.warning(
                "kafka setting ignored role=%s key=%s given=%s used=%s (set by orderbook-cluster)",
                role,
                key,
                extra[key],
                value,
            )
    config = base_config(bootstrap, extra)
    config.update(ours)
    return config


def ensure_topics(bootstrap: str, extra: dict[str, str], topics: list[str], timeout_s: float = 15.0) -> None:
    """Create the topics (one partition each) that do not exist yet; existing ones are left alone."""
    admin = AdminClient(base_config(bootstrap, extra))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [t for t in topics if t not in existing]
    if not wanted:
        return
    futures = admin.create_topics([NewTopic(t, num_partitions=1, replication_factor=-1) for t in wanted])
    for topic, future in futures.items():
        try:
            future.result(timeout_s)
            log.info("topic created topic=%s", topic)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise


def make_consumer(
    bootstrap: str,
    extra: dict[str, str],
    client_id: str,
    fetch_wait_ms: int = 20,
    more: dict[str, object] | None = None,
) -> Consumer:
    """A consumer for explicit `assign()` reads: no group rebalances, no committed offsets.

    Where to resume is decided by the snapshot in Redis, never by consumer-group state. `more`:
    settings of one use of it (the node's idle reader's small fetches).
    """
    config = client_config(
        bootstrap,
        extra,
        {
            "group.id": f"orderbook-cluster-{client_id}",
            "client.id": client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.wait.max.ms": fetch_wait_ms,
            "fetch.queue.backoff.ms": 10,
            "fetch.min.bytes": 1,
            "queued.max.messages.kbytes": 65536,
            "isolation.level": "read_uncommitted",
            # A position outside the log is an error to report, never a reason to jump (input_log.py).
            "auto.offset.reset": "error",
        }
        | (more or {}),
        "consumer",
    )
    return Consumer(config)


def make_producer(
    bootstrap: str,
    extra: dict[str, str],
    client_id: str,
    on_delivery=None,
    linger_ms: int = 2,
    batch_bytes: int = 1_000_000,
    transactional_id: str | None = None,
) -> Producer:
    """The event producer: idempotent, acks=all, lz4, ordered (max 5 in flight keeps order with idempotence).

    `on_delivery` hears of failed deliveries only.
    """
    config = client_config(
        bootstrap,
        extra,
        {
            "client.id": client_id,
            "enable.idempotence": True,
            "acks": "all",
            "compression.type": "lz4",
            "linger.ms": linger_ms,
            "batch.size": batch_bytes,
            "message.max.bytes": max(batch_bytes + 65536, 1_048_576),
            "max.in.flight.requests.per.connection": 5,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
            "message.timeout.ms": 30_000,
            "allow.auto.create.topics": False,
        },
        "producer",
    )
    if on_delivery is not None:
        # Failures only: a Python call per delivered event costs ~0.25 µs of the loop. Success is
        # read off len(producer) instead (see worker.settle_delivery).
        config["on_delivery"] = on_delivery
        config["delivery.report.only.error"] = True
    if transactional_id is not None:
        # One id per product: a new leader's init_transactions() fences the old one at the broker.
        config["transactional.id"] = transactional_id
        config["transaction.timeout.ms"] = config["message.timeout.ms"]
    return Producer(config)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    idle_s: float | None = 5.0,
    count: int | None = None,
    timeout_s: float | None = None,
    extra: dict | None = None,
) -> Iterator[tuple[int, bytes, int, list]]:
    """(offset, value, timestamp ms, headers) of a one-partition topic from offset 0.

    Reads until `count` records, or nothing arrived for `idle_s`, or `timeout_s` passed (each
    None for no bound). From offset 0 on purpose: the test broker's watermarks are wrong.
    """
    consumer = Consumer(
        client_config(
            bootstrap,
            extra or {},
            {
                "group.id": "orderbook-cluster-reader",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
                "fetch.queue.backoff.ms": 10,
                "logger": quiet_librdkafka(),  # a reader's caller checked the broker answers
            },
            "reader",
        )
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    seen = 0
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    last = time.monotonic()
    try:
        while (count is None or seen < count) and (deadline is None or time.monotonic() < deadline):
            msgs = consumer.consume(5000, 0.1)
            if not msgs:
                if idle_s is not None and time.monotonic() - last > idle_s:
                    return
                continue
            last = time.monotonic()
            for msg in msgs:
                if msg.error() is not None:
                    continue
                seen += 1
                yield msg.offset(), msg.value() or b"", msg.timestamp()[1], msg.headers() or []
                if count is not None and seen >= count:
                    return
    finally:
        consumer.close()
