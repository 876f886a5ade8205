"""A product whose stored snapshot is unusable stops with the configuration-error code, once.

Restarting cannot help (the snapshot fails the same way each time), so the process exits with
EXIT_CONFIG (= supervisor.EXIT_DO_NOT_RESTART): the supervisor marks the product failed in
/status and does not restart it, and the node's log names the product and the reason. The same
holds for a product whose sequence is exhausted (2^63-1) when its next order arrives.
"""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest

from cluster.redis_state import SnapshotEnvelope, encode_envelope, snapshot_key, sync_client
from cluster.tools.send import produce_orders
from engine.config import load_products
from engine.matching import MatchingEngine
from tests.integration.harness import wait_until

pytestmark = pytest.mark.integration


def test_an_unusable_snapshot_stops_the_product_without_a_restart_loop(services, cluster_factory):
    products = [f"T{uuid.uuid4().hex[:10].upper()}-USD" for _ in range(3)]
    cluster = cluster_factory(products)
    configs = load_products(cluster.config)
    unknown_format, impossible, exhausted = products
    # a valid engine snapshot of an empty book, made impossible: a resting IOC order at price 0
    snap = msgspec.msgpack.decode(MatchingEngine(configs[impossible]).snapshot())
    snap.update(sequence=1, id_window_max=1, orders=[[1, 7, "buy", 0, 100, "IOC"]])
    bits = bytearray(snap["id_window_bits"])
    bits[0] |= 2
    snap["id_window_bits"] = bytes(bits)
    last = msgspec.msgpack.decode(MatchingEngine(configs[exhausted]).snapshot())
    last["sequence"] = 2**63 - 1  # possible, but no event fits after it
    stored = {
        unknown_format: dict(format=2, engine=MatchingEngine(configs[unknown_format]).snapshot()),
        impossible: dict(format=1, engine=msgspec.msgpack.encode(snap)),
        exhausted: dict(format=1, engine=msgspec.msgpack.encode(last)),
    }
    client = sync_client(services.redis_url)
    for product, fields in stored.items():
        envelope = SnapshotEnvelope(
            product=product,
            epoch=1,
            next_offset=0,
            sequence=1,
            fingerprint=configs[product].fingerprint(),
            **fields,
        )
        client.hset(
            snapshot_key(product), mapping={"sequence": 1, "offset": 0, "envelope": encode_envelope(envelope)}
        )
    client.close()

    node = cluster.start_node("n1")
    cluster.wait_leader(exhausted)
    order = {"id": 1, "product_id": exhausted, "type": "limit", "side": "buy", "price": "1.00", "size": "1"}
    produce_orders(services.bootstrap, exhausted, [msgspec.json.encode(order)])
    for product in products:
        wait_until(lambda p=product: node.product_status(p).get("failed"), 60, f"{product} marked failed")
    time.sleep(1.0)  # a restart loop would have started it again by now (backoff starts at 0.1 s)
    log = node.log_text()
    for product, reason in (
        (unknown_format, "format_mismatch: "),
        (impossible, "corrupt: "),
        (exhausted, "product=" + exhausted + " sequence=9223372036854775807 resting=0: "),
    ):
        status = node.product_status(product)
        assert status["restarts"] == 0 and status["pid"] is None, status
        assert f"refusing to run product={product} reason={reason}" in log
        assert log.count(f"refusing to run product={product} ") == 1
        assert f"child will not be restarted name={product}" in log
    assert "snapshot envelope format 2, this release reads 1" in log
    assert "time_in_force='IOC' cannot rest" in log or "price=0 not in" in log
    assert node.process.poll() is None, "the node keeps running (and serving /status)"
