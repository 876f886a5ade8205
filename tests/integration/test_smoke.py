"""The real servers the fixtures start answer: a round trip through the broker and through Redis."""

from __future__ import annotations

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster.kafka_io import ensure_topics, order_topic

pytestmark = pytest.mark.integration


def test_broker_round_trip(services, product):
    topic = order_topic(product)
    ensure_topics(services.bootstrap, {}, [topic])
    producer = Producer(
        {
            "bootstrap.servers": services.bootstrap,
            "enable.idempotence": True,
            "allow.auto.create.topics": False,
        }
    )
    payloads = [f"order-{i}".encode() for i in range(100)]
    for payload in payloads:
        producer.produce(topic, payload)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {"bootstrap.servers": services.bootstrap, "group.id": "smoke", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic, 0, 0)])
    received = []
    for _ in range(200):
        received += [m.value() for m in consumer.consume(100, 0.1) if not m.error()]
        if len(received) >= len(payloads):
            break
    consumer.close()
    assert received == payloads


def test_redis_round_trip(services, product):
    client = redis.Redis.from_url(services.redis_url)
    client.set(f"smoke_{product}", b"\x00\xffbytes")
    assert client.get(f"smoke_{product}") == b"\x00\xffbytes"
    assert client.config_get("appendonly")["appendonly"] == "yes"


def test_ensure_topics_is_idempotent(services, product):
    topic = order_topic(product)
    ensure_topics(services.bootstrap, {}, [topic])
    ensure_topics(services.bootstrap, {}, [topic])
