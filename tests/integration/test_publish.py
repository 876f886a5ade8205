"""A leader's publish path against a real broker when the producer's queue is full.

The queue-full branch (BufferError) is rare in production but decides ordering when it happens:
every event must still be sent once, in order, with the leadership headers on the first only.
"""

from __future__ import annotations

import collections
import types

import pytest
from confluent_kafka import Producer

from cluster.kafka_io import ensure_topics, message_topic, read_topic
from cluster.publisher import Publisher

pytestmark = pytest.mark.integration


def test_publish_keeps_order_when_the_producer_queue_is_full(services, product):
    topic = message_topic(product)
    ensure_topics(services.bootstrap, {}, [topic])
    # A queue of 8 messages: publishing 3,000 events must wait for room hundreds of times.
    producer = Producer(
        {
            "bootstrap.servers": services.bootstrap,
            "enable.idempotence": True,
            "queue.buffering.max.messages": 8,
            "linger.ms": 1,
            "allow.auto.create.topics": False,
        }
    )
    worker = types.SimpleNamespace(
        producer=producer, message_topic=topic, handed=0, batch_ends=collections.deque()
    )
    waits = []

    def produce_when_room(topic, value, headers):
        waits.append(value)
        Publisher._produce_when_room(worker, topic, value, headers)

    worker._produce_when_room = produce_when_room
    headers = [("epoch", b"7"), ("node", b"n1")]
    events = [b'{"sequence":%d}' % i for i in range(1, 3001)]

    Publisher.publish(worker, events[:1500], headers)
    Publisher.publish(worker, [], headers)  # a batch whose events were all published before
    Publisher.publish(worker, events[1500:], headers)
    assert producer.flush(30) == 0
    assert len(waits) > 10  # the queue-full branch really ran

    records = list(read_topic(services.bootstrap, topic, count=len(events), idle_s=10))
    assert [value for _offset, value, _ts, _headers in records] == events
    marked = [i for i, (_offset, _value, _ts, got) in enumerate(records) if got]
    assert marked == [0, 1500]
    assert records[0][3] == headers
