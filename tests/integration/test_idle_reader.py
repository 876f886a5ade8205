"""The node's idle reader (cluster/idle_reader.py) against the real broker: it says input arrived for
an idle product when a record reaches the offset the product waits for, once per idle spell, and
not for records before that offset or for a product it no longer reads for. And the node: a
product is never left waiting on a reader that is gone."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import pytest

from cluster.idle_reader import IdleReader
from cluster.kafka_io import ensure_topics, product_topics
from cluster.settings import NodeSettings
from cluster.tools.send import produce_orders

pytestmark = pytest.mark.integration

WAKE_TIMEOUT_S = 15.0
# Long enough for several of the reader's fetches (idle_fetch_wait_ms, 200 ms): no wake-up may come.
QUIET_S = 2.0


def test_the_idle_reader_wakes_a_product_when_its_awaited_offset_arrives(services):
    products = [f"R{uuid.uuid4().hex[:8].upper()}-USD" for _ in range(3)]
    for product in products:
        ensure_topics(services.bootstrap, {}, product_topics(product))
    busy, quiet, forgotten = products
    produce_orders(services.bootstrap, busy, [b"one", b"two"])  # offsets 0 and 1
    node_end, reader_end = multiprocessing.Pipe()
    settings = NodeSettings("reader-test", tuple(products), {}, services.bootstrap, services.redis_url)
    reader = threading.Thread(target=IdleReader(settings, reader_end).serve, daemon=True)
    reader.start()

    def told(timeout_s: float):
        """The reader's next message other than its status reports (dicts), or None."""
        deadline = time.monotonic() + timeout_s
        while node_end.poll(max(0.0, deadline - time.monotonic())):
            message = node_end.recv()
            if not isinstance(message, dict):
                return message
        return None

    try:
        # Waits for offset 2: the records before it are what the product already read.
        node_end.send(("watch", busy, 1, 2))
        node_end.send(("watch", quiet, 1, 0))
        node_end.send(("watch", forgotten, 1, 0))
        node_end.send(("forget", forgotten))
        assert told(QUIET_S) is None

        produce_orders(services.bootstrap, forgotten, [b"nobody waits for this"])
        produce_orders(services.bootstrap, busy, [b"three"])
        assert told(WAKE_TIMEOUT_S) == ("input", busy, 1)
        assert told(QUIET_S) is None  # once per spell, and nothing for the forgotten product

        # A second spell of the same product, from where it read up to: told with that spell.
        node_end.send(("watch", busy, 2, 3))
        produce_orders(services.bootstrap, quiet, [b"first"])
        produce_orders(services.bootstrap, busy, [b"four"])
        assert {told(WAKE_TIMEOUT_S) for _ in range(2)} == {("input", busy, 2), ("input", quiet, 1)}
    finally:
        node_end.close()  # the node gone: the reader ends
        reader.join(10)
    assert not reader.is_alive()
