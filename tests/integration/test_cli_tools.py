"""The operator's read-only commands against the real broker: `tail` and `dlq`."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from cluster.cli import cli
from cluster.kafka_io import ensure_topics, message_topic, product_topics

pytestmark = pytest.mark.integration


def produce(bootstrap: str, topic: str, values: list[bytes], headers=None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "allow.auto.create.topics": False})
    for value in values:
        producer.produce(topic, value, headers=headers)
    assert producer.flush(10) == 0


def test_tail_of_a_product_without_topics_fails_at_once(services, product):
    began = time.monotonic()
    result = CliRunner().invoke(cli, ["tail", "--kafka", services.bootstrap, "--product", product])
    assert result.exit_code == 1, result.output
    assert f"no such product topic {message_topic(product)}" in result.output
    assert time.monotonic() - began < 15


def test_tail_stops_after_count_distinct_sequences(services, product):
    ensure_topics(services.bootstrap, {}, product_topics(product))
    events = [
        json.dumps({"type": "open", "sequence": s, "product_id": product}).encode() for s in (1, 2, 2, 3)
    ]
    produce(services.bootstrap, message_topic(product), events)
    result = CliRunner().invoke(
        cli, ["tail", "--kafka", services.bootstrap, "--product", product, "--count", "3"]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["sequence"] for line in result.stdout.splitlines()] == [1, 2, 3]
