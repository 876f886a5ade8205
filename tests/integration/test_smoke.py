"""Smoke: the real servers the fixtures start answer (a round trip through the broker and through
Redis), and the README's set-up and walkthrough, run as written, match the worked example."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from cluster.kafka_io import ensure_topics, order_topic
from tests.integration.test_cluster import embedded_start

ROOT = Path(__file__).resolve().parents[2]

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
    topics = AdminClient({"bootstrap.servers": services.bootstrap}).list_topics(timeout=10).topics
    assert topic in topics and len(topics[topic].partitions) == 1, "one partition, created once"


def readme_commands() -> list[list[str]]:
    """The README's `orderbook-cluster ...` commands, in order, without comments or the program name."""
    found = re.findall(
        r"orderbook-cluster ((?:start|send|tail) [^#\n`\\]*)", (ROOT / "README.md").read_text()
    )
    return [shlex.split(command) for command in found]


def test_the_readme_set_up_matches_the_worked_example(tmp_path):
    commands = readme_commands()
    start = commands[0]
    assert start[:2] == ["start", "--products"], start
    send = next(c for c in commands if c[0] == "send" and c[-1].endswith(".jsonl"))
    tail = next(c for c in commands if c[0] == "tail")
    expected = (ROOT / "tests/unit/golden/worked_example.out.jsonl").read_text().splitlines()
    assert tail[tail.index("--count") + 1] == str(len(expected)), "the README's tail counts other events"
    with embedded_start(tmp_path, start[2]) as (_, state, _):

        def run(argv: list[str]) -> subprocess.CompletedProcess:
            return subprocess.run(
                [sys.executable, "-m", "cluster", *argv, "--state-dir", str(state)],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )

        sent = run(send)
        assert sent.returncode == 0, sent.stderr
        tailed = run(tail)
        assert tailed.returncode == 0, tailed.stderr
    assert list(map(same_up_to_scale_and_ms, tailed.stdout.splitlines())) == list(
        map(same_up_to_scale_and_ms, expected)
    )


def same_up_to_scale_and_ms(line: str) -> dict:
    """An event with amounts as numbers and its time in ms: the golden file has the worked example's
    own scale and time stamps in ns, the README's run the shipped config's scale and the record's
    timestamp, which Kafka keeps in ms."""
    event = json.loads(line)
    for key, value in event.items():
        if isinstance(value, str):
            with contextlib.suppress(ArithmeticError):
                event[key] = Decimal(value)
    event["time"] //= 1_000_000
    return event
