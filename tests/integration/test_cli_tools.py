"""The operator's read-only commands against the real broker: `tail` and `dlq`."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer

from cluster.cli import cli
from cluster.kafka_io import ensure_topics, message_topic, product_topics
from cluster.tools.send import produce_orders

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


def test_dlq_shows_reason_offset_and_an_escaped_preview(services, cluster_factory, product):
    cluster = cluster_factory([product])
    node = cluster.start_node("n1")
    cluster.wait_leader(product)
    good = {"id": 1, "product_id": product, "user_id": 1, "price": "10.00", "size": "1", "type": "limit"}
    long_garbage = b"x" * 200
    lines = [
        b"not json at all",
        json.dumps({**good, "side": "buy"}).encode(),
        b"\x00\x01bin\\\xff",
        b'{"created_at": 1}',
        long_garbage,
    ]
    produce_orders(services.bootstrap, product, lines)
    result = CliRunner().invoke(
        cli, ["dlq", "--kafka", services.bootstrap, "--product", product, "--json", "--count", "4"]
    )
    assert result.exit_code == 0, result.output
    letters = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["source_offset"], d["reason"]) for d in letters] == [
        (0, "not_json"),
        (2, "not_json"),
        (3, "missing_id"),
        (4, "not_json"),
    ]
    assert letters[0]["preview"] == "not json at all" and letters[0]["product_id"] == product
    assert letters[1]["preview"] == "\\x00\\x01bin\\\\\\xff" and letters[1]["size"] == 7
    assert letters[3]["preview"] == "x" * 120 + "..." and letters[3]["size"] == 200

    text = CliRunner().invoke(
        cli, ["dlq", "--kafka", services.bootstrap, "--product", product, "--count", "1"]
    )
    assert text.exit_code == 0 and text.stdout.startswith(
        "source_offset=0 reason=not_json size=15 preview=not json"
    )
    # the product process said so in its log: one line per reason within 10 s, not one per record
    log_lines = node.log_text().splitlines()
    assert sum(f"dead letter product={product} reason=not_json" in line for line in log_lines) == 1
    assert sum(f"dead letter product={product} reason=missing_id" in line for line in log_lines) == 1


def test_dlq_of_a_product_without_topics_fails_at_once(services, product):
    result = CliRunner().invoke(cli, ["dlq", "--kafka", services.bootstrap, "--product", product])
    assert result.exit_code == 1 and "no such product topic" in result.output


def test_tail_without_a_broker_fails_in_bounded_time():
    from cluster.embedded import free_port

    began = time.monotonic()
    result = CliRunner().invoke(cli, ["tail", "--kafka", f"127.0.0.1:{free_port()}", "--product", "X-USD"])
    assert result.exit_code == 1 and "cannot reach Kafka" in result.output, result.output
    assert time.monotonic() - began < 20
