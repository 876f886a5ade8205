"""obc_order_to_event_seconds is measured from the input record's Kafka timestamp, never from the
order's created_at; `send --generate` stamps orders as they are sent (the walkthrough's metric
once read three years: every record carried a 2023 created_at as its timestamp)."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from cluster import http_api
from cluster.cli import cli
from cluster.kafka_io import ensure_topics, order_topic, product_topics, read_topic
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration

CREATED_2023_NS = 1_695_783_003_020_000_000


def latency_samples(node, product: str) -> dict[str, float]:
    """The product's order-to-event histogram: {'count': n, 'sum': s, '<le>': cumulative count}."""
    code, text = node.get(http_api.METRICS_PATH)
    assert code == 200
    samples = {}
    for family in text_string_to_metric_families(text):
        if family.name != "obc_order_to_event_seconds":
            continue
        for sample in family.samples:
            if sample.labels.get("product") != product:
                continue
            if sample.name.endswith("_bucket"):
                samples[sample.labels["le"]] = sample.value
            else:
                samples[sample.name.rsplit("_", 1)[1]] = sample.value
    return samples


def unmeasurable(node, product: str) -> float:
    """obc_order_time_unmeasurable of the product: batches stamped too far from the node's clock."""
    _, text = node.get(http_api.METRICS_PATH)
    for family in text_string_to_metric_families(text):
        if family.name == "obc_order_time_unmeasurable":
            return sum(
                s.value
                for s in family.samples
                if s.labels.get("product") == product and s.name.endswith("_total")
            )
    return 0.0


def test_latency_is_measured_from_the_record_timestamp(services, cluster_factory, product):
    cluster = cluster_factory([product])
    node = cluster.start_node("n1")
    cluster.wait_leader(product)
    producer = Producer({"bootstrap.servers": services.bootstrap, "allow.auto.create.topics": False})
    order = {"product_id": product, "user_id": 1, "price": "10.00", "size": "1", "type": "limit"}
    order |= {"side": "buy", "created_at": CREATED_2023_NS}
    # an order created in 2023 but sent now: its record carries the producer's (send) time
    producer.produce(order_topic(product), json.dumps({**order, "id": 1}).encode())
    assert producer.flush(10) == 0
    wait_until(lambda: latency_samples(node, product).get("count") == 1, 30, "the first observation")
    first = latency_samples(node, product)
    assert first["sum"] < 5 and first["5.0"] == 1, first
    # the same order whose record timestamp is its created_at (the replay rule): years old, so it
    producer.produce(
        order_topic(product),
        json.dumps({**order, "id": 2}).encode(),
        timestamp=CREATED_2023_NS // 1_000_000,
    )
    assert producer.flush(10) == 0
    # is not a latency of this engine: counted apart, and the histogram keeps its one observation
    wait_until(lambda: unmeasurable(node, product) == 1, 30, "the old record to be counted apart")
    assert latency_samples(node, product) == first


def test_send_generate_stamps_orders_as_sent(services, product):
    ensure_topics(services.bootstrap, {}, product_topics(product))
    before_ms = time.time_ns() // 1_000_000
    result = CliRunner().invoke(
        cli, ["send", "--kafka", services.bootstrap, "--product", product, "--generate", "200"]
    )
    assert result.exit_code == 0, result.output
    after_ms = time.time_ns() // 1_000_000
    records = list(read_topic(services.bootstrap, order_topic(product), count=200, timeout_s=30))
    assert len(records) == 200
    for _offset, value, stamp_ms, _headers in records:
        created_at = json.loads(value)["created_at"]
        assert before_ms <= stamp_ms <= after_ms and created_at == stamp_ms * 1_000_000, (stamp_ms, value)
