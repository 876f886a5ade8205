"""The input log goes backwards under a running node: it says so and stops, it does not invent state."""

from __future__ import annotations

import re
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from cluster import http_api
from cluster.embedded import EmbeddedServices, tansu_server
from cluster.kafka_io import ensure_topics, order_topic, product_topics
from cluster.tools.send import produce_orders
from tests.integration.harness import wait_until
from tests.unit.golden_paths import worked_example_lines

pytestmark = pytest.mark.integration


def _high_watermark(bootstrap: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-watermark"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5, cached=False)[1]
    finally:
        consumer.close()


ALARM = "input log does not hold the position"


def test_a_broker_that_lost_the_input_topic_is_an_alarm_not_a_reset(
    services, start_local, cluster_factory, tmp_path, product
):
    # A broker of its own (in memory, like the embedded default): restarting it loses every topic.
    broker = start_local(tansu_server(tmp_path / "broker"))
    own = EmbeddedServices(broker, services.redis)
    cluster = cluster_factory([product], own)
    leader = cluster.start_node("n1")
    cluster.wait_leader(product)
    standby = cluster.start_node("n2")
    nodes = (leader, standby)
    orders = worked_example_lines(product)  # 5 orders, 13 events
    for _ in range(4):
        produce_orders(own.bootstrap, product, orders)
    for node in nodes:
        wait_until(lambda n=node: n.product_status(product).get("offset") == 20, 30, f"{node.node_id} at 20")
    assert [n.product_status(product)["role"] for n in nodes] == ["leader", "standby"]
    # Tansu's high watermark lags the log end by its last batch (here 5 orders): the check must
    # find the real end, not take the watermark for it, or every caught-up process would be an alarm.
    watermark = _high_watermark(own.bootstrap, order_topic(product))
    assert watermark < 20, f"the watermark ({watermark}) no longer lags: this test no longer covers that"
    checked_from_ms = time.time() * 1000 + 2000  # two checks (input_check_ms) from now
    for node in nodes:
        wait_until(
            lambda n=node: n.product_status(product).get("reported_ms", 0) > checked_from_ms, 10, "checks"
        )
        assert node.get(http_api.READINESS_PATH)[0] == 200, f"{node.node_id}: a lagging watermark is no alarm"
        assert ALARM not in node.log_text()
    sequences = [n.product_status(product)["sequence"] for n in nodes]

    broker.kill()  # no clean stop: the topic's 20 records are gone
    broker.start()
    ensure_topics(own.bootstrap, {}, product_topics(product))  # what `start` does for a new topic
    produce_orders(own.bootstrap, product, orders[:3])  # the new log: offsets 0..2

    for node in nodes:  # the leader and the standby, each by itself
        code, body = wait_until(
            lambda n=node: (r := n.get(http_api.READINESS_PATH))[0] == 503 and r,
            20,
            f"{node.node_id} not ready",
        )
        alarm = body["products"][product]
        assert alarm["ok"] is False and alarm["input_behind"]["position"] == 20, body
        log_end = alarm["input_behind"]["log_end"]
        assert log_end in (0, 3), body  # the log as the check found it: recreated, then 3 orders
        line = wait_until(
            lambda n=node: next((x for x in n.log_text().splitlines() if ALARM in x), None),
            10,
            "the ERROR line",
        )
        assert "ERROR" in line and f"product={product}" in line and f"log_end={log_end} position=20" in line
        _, metrics = node.get(http_api.METRICS_PATH)
        gauge = re.search(
            rf'obc_input_behind_position{{node="{node.node_id}",pid="\d+",product="{product}"}} (\S+)',
            metrics,
        )
        assert gauge and gauge[1] == "1.0", metrics

    # They did not invent state: no reset to offset 0, no skipping; the nodes themselves stay alive.
    produce_orders(own.bootstrap, product, orders * 5)  # the new log grows past the old position
    produced_ms = time.time() * 1000
    for node, sequence in zip(nodes, sequences, strict=True):
        wait_until(
            lambda n=node: n.product_status(product).get("reported_ms", 0) > produced_ms + 1000,
            10,
            "status reports for a second after the new log passed offset 20",
        )
        status = node.product_status(product)
        assert (status["offset"], status["sequence"]) == (20, sequence), (node.node_id, status)
        assert node.get(http_api.READINESS_PATH)[0] == 503
        assert node.get(http_api.LIVENESS_PATH) == (200, {"alive": True})
