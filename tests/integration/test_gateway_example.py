"""The README's "Connecting an order gateway" holds: examples/gateway.py (plain confluent-kafka)
runs against a real node, its events agree with `replay` of what it sent, and kafka-python reads
the lz4-compressed events once `lz4` is installed (and cannot without it)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka import KafkaConsumer, TopicPartition

from cluster.kafka_io import message_topic, order_topic, read_topic
from cluster.tools.replay import replay

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
WORKED_EXAMPLE_KINDS = [
    ("open", 1),
    ("open", 2),
    ("open", 3),
    ("match", (4, 1)),
    ("done", 1),
    ("match", (4, 2)),
    ("done", 2),
    ("match", (4, 3)),
    ("done", 3),
    ("open", 4),
    ("match", (5, 4)),
    ("done", 4),
    ("done", 5),
]


def kind(event: dict):
    return event["type"], event.get("order_id") or (event.get("taker_order_id"), event.get("maker_order_id"))


def read_with_kafka_python(bootstrap: str, topic: str, count: int) -> list[bytes]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=20_000
    )
    partition = TopicPartition(topic, 0)
    consumer.assign([partition])
    consumer.seek_to_beginning(partition)
    values = []
    try:
        for record in consumer:
            values.append(record.value)
            if len(values) >= count:
                break
    finally:
        consumer.close()
    return values


def test_gateway_example_against_a_node(services, cluster_factory, product, tmp_path):
    cluster = cluster_factory([product])
    cluster.start_node("n1")
    cluster.wait_leader(product)
    argv = [sys.executable, str(ROOT / "examples" / "gateway.py"), "--bootstrap", services.bootstrap]
    result = subprocess.run(argv + ["--product", product], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["sequence"] for e in events] == list(range(1, 14))
    assert [kind(e) for e in events] == WORKED_EXAMPLE_KINDS
    assert events[9]["remaining_size"] == "2.000000", "sizes are printed at base_scale"
    assert "traded 5.000000 in 13 events" in result.stderr

    # the record timestamp was created_at in ms, so `replay` of the orders sent gives the same events
    orders = [value for _, value, _, _ in read_topic(services.bootstrap, order_topic(product), count=5)]
    (tmp_path / "orders.jsonl").write_bytes(b"\n".join(orders) + b"\n")
    replayed = CliRunner().invoke(
        replay, ["--product", product, "--config", str(cluster.config), str(tmp_path / "orders.jsonl")]
    )
    assert replayed.exit_code == 0, replayed.output
    assert [json.loads(line) for line in replayed.stdout_bytes.splitlines()] == events

    # kafka-python with lz4 installed reads the same events
    values = read_with_kafka_python(services.bootstrap, message_topic(product), 13)
    assert [json.loads(v) for v in values] == events


def test_kafka_python_without_lz4_cannot_read_the_events(services, cluster_factory, product):
    """Why the README tells kafka-python users to install lz4: the node's producer compresses with it."""
    cluster = cluster_factory([product])
    cluster.start_node("n1")
    cluster.wait_leader(product)
    argv = [sys.executable, str(ROOT / "examples" / "gateway.py"), "--bootstrap", services.bootstrap]
    subprocess.run(argv + ["--product", product], capture_output=True, check=True, timeout=120)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["lz4"] = sys.modules["lz4.frame"] = None  # as if lz4 were not installed
        from tests.integration.test_gateway_example import read_with_kafka_python
        read_with_kafka_python({services.bootstrap!r}, {message_topic(product)!r}, 13)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert result.returncode != 0 and "UnsupportedCodecError" in result.stderr, result.stderr[-2000:]
