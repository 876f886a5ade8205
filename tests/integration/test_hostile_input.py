"""Hostile records through a live product process: dead letters, no restart, trading goes on (#17).

A 1 KB record of `[` once raised RecursionError in the product process on every node (both cores),
so it crash-looped and never matched another order. Here the whole hostile corpus of the unit
tests (nesting to 50,000 levels, 5,000-digit numbers, ...) goes through a real broker to a live
leader, followed by two orders that must trade.
"""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer

from cluster.kafka_io import dlq_topic, order_topic, read_topic
from cluster.tools.send import record_timestamp_ms
from engine.config import load_products
from engine.messages import MAX_RECORD_BYTES
from engine.native import native_available
from tests.integration.harness import check_stream, oracle_events, output_values, read_input
from tests.unit.hostile_corpus import hostile_corpus

pytestmark = pytest.mark.integration


def _produce_raw(bootstrap: str, topic: str, raws: list[bytes]) -> None:
    """Each record exactly as given (`send` would skip the empty and the blank ones), stamped as
    `send` stamps them."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for raw in raws:
        ts = record_timestamp_ms(raw)
        producer.produce(topic, raw, **({} if ts is None else {"timestamp": ts}))
    assert producer.flush(30) == 0


@pytest.mark.parametrize("core", ["native", "python"])
def test_hostile_records_are_dead_letters_and_the_leader_keeps_trading(
    services, cluster_factory, product, core
):
    if core == "native" and not native_available():
        pytest.skip("the C core is not built")
    cluster = cluster_factory([product])
    node = cluster.start_node("n1", {"ORDERBOOK_CLUSTER_START_CORE": core})
    _, leader_pid = cluster.wait_leader(product)

    corpus = hostile_corpus(product)
    assert any(len(h.raw) >= 50_000 and h.expect == "dlq:too_deep" for h in corpus)
    assert any(b"9" * 5000 in h.raw and h.expect == "dlq:number_too_long" for h in corpus)
    maker, taker = 900_001, 900_002
    trade = [
        json.dumps(
            {"id": oid, "product_id": product, "type": "limit", "side": side, "price": "10.00", "size": "1"}
        )
        for oid, side in ((maker, "sell"), (taker, "buy"))
    ]
    raws = [h.raw for h in corpus] + [line.encode() for line in trade]
    _produce_raw(services.bootstrap, order_topic(product), raws)

    records = read_input(services.bootstrap, order_topic(product), len(raws))
    assert [raw for raw, _ in records] == raws
    expected = oracle_events(load_products(cluster.config)[product], records)
    output = output_values(services.bootstrap, product, len(expected))
    check_stream(output, expected)  # the output stream == replay of the input topic
    matches = [e for e in map(json.loads, expected) if e["type"] == "match"]
    assert [(m["taker_order_id"], m["maker_order_id"]) for m in matches] == [(taker, maker)]

    want = [(offset, h) for offset, h in enumerate(corpus) if h.expect.startswith("dlq:")]
    letters = list(read_topic(services.bootstrap, dlq_topic(product), idle_s=10, count=len(want)))
    got = [
        (dict(headers)["source_offset"], dict(headers)["reason"], value) for _, value, _, headers in letters
    ]
    assert got == [
        (str(offset).encode(), h.expect[4:].encode(), h.raw[:MAX_RECORD_BYTES]) for offset, h in want
    ]

    status = node.product_status(product)
    assert (status["pid"], status["restarts"], status["role"]) == (leader_pid, 0, "leader"), status
    assert cluster.wait_leader(product)[1] == leader_pid  # the same process: it never crashed
    assert status["core"] == core  # the core asked for is the one that read the corpus
    assert "RecursionError" not in node.log_text() and "Traceback" not in node.log_text()
