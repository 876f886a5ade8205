"""Many quiet products on one node (#20): forked from a preloaded forkserver they share memory, an
idle node keeps every lease, the first order after idleness is matched, the forkserver and its
children go when the node is killed, and a role change is reported at once, not at the idle cadence."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
import redis

from cluster.bench.idle import acquisitions, memory_kb
from cluster.tools.send import produce_orders
from tests.integration.harness import output_values, wait_until

pytestmark = pytest.mark.integration

PRODUCTS = 6
# Idle reading (worker.go_idle) starts after half a second here, so the window below covers it.
TUNE = {"ORDERBOOK_CLUSTER_START_TUNE": "idle_after_ms=500"}
IDLE_WINDOW_TTLS = 8  # lease TTLs of idleness in which no lease may be lost


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"


def _order(product: str, order_id: int = 7) -> bytes:
    return json.dumps(
        {
            "id": order_id,
            "created_at": 1_700_000_000_000_000_000,
            "product_id": product,
            "user_id": 1,
            "client_oid": "",
            "price": "100.00",
            "size": "1.5",
            "funds": "0",
            "type": "limit",
            "side": "buy",
            "time_in_force": "GTC",
            "status": "new",
        }
    ).encode()


def test_idle_products_share_memory_keep_their_leases_and_match_after_idleness(services, cluster_factory):
    products = [f"I{uuid.uuid4().hex[:8].upper()}-USD" for _ in range(PRODUCTS)]
    cluster = cluster_factory(products)
    node = cluster.start_node("idle-1", TUNE)
    pids = {p: cluster.wait_leader(p, timeout_s=120)[1] for p in products}
    client = redis.Redis.from_url(services.redis_url)
    assert acquisitions(client, products) == PRODUCTS

    forkservers = {_ppid(pid) for pid in pids.values()}
    assert len(forkservers) == 1 and node.process.pid not in forkservers, (
        f"product processes {pids} should be children of one forkserver, not of the node"
    )
    forkserver = forkservers.pop()
    assert b"forkserver" in Path(f"/proc/{forkserver}/cmdline").read_bytes()
    for product, pid in pids.items():
        memory = memory_kb(pid)
        assert memory["uss"] < memory["rss"] / 2, (
            f"{product}: unique {memory['uss']} kB of {memory['rss']} kB resident: preloaded code is not shared"
        )

    # Idle for several lease TTLs (not a wait for a condition: nothing may happen in it).
    time.sleep(IDLE_WINDOW_TTLS * 0.5)
    assert acquisitions(client, products) == PRODUCTS, "an idle product lost and re-took its lease"
    assert {p: node.product_pid(p, role="leader") for p in products} == pids

    # Quiet, each product leaves reading its topic to the node's idle reader (cluster/idle_reader.py),
    # which wakes it for its next order. Three idle spells: the reader as it is, then killed (a
    # librdkafka crash, say), then hung (stopped): no product may sleep on through either.
    spells = {1: ([7], None), 2: ([8, 9], signal.SIGKILL), 3: ([10], signal.SIGSTOP)}
    sent = []
    for spell, (order_ids, fault) in spells.items():
        wait_until(
            lambda: all(node.product_status(p).get("idle_read") for p in products),
            30,
            "every product to leave its input to the node's idle reader",
        )
        if fault is not None:
            reader = wait_until(
                lambda: (r := node.get("/status")[1]["idle_reader"])["reading_for"] == PRODUCTS and r,
                30,
                "the idle reader to read for every product",
            )
            os.kill(reader["pid"], fault)
        for product in products:
            produce_orders(services.bootstrap, product, [_order(product, i) for i in order_ids])
        sent += order_ids
        wanted = [("open", order_id, sequence) for sequence, order_id in enumerate(sent, 1)]
        for product in products:
            events = [json.loads(v) for v in output_values(services.bootstrap, product, len(sent))]
            seen = [(e["type"], e["order_id"], e["sequence"]) for e in events]
            assert seen == wanted, f"{product} after idle spell {spell}: {seen}"
        if fault is not None:
            wait_until(
                lambda r=reader: node.get("/status")[1]["idle_reader"]["pid"] not in (None, r["pid"]),
                30,
                "the node to start a new idle reader",
            )
    assert "idle reader silent" in node.log_text(), "the stopped reader was not found hung"
    assert node.get("/status")[1]["idle_reader"]["restarts"] == 2

    os.kill(node.process.pid, signal.SIGKILL)  # no drain: the forkserver and children must follow
    wait_until(
        lambda: all(_gone(pid) for pid in (forkserver, *pids.values())),
        30,
        "the forkserver and product processes to exit after the node was killed",
    )


def _lease_looks(client: redis.Redis) -> int:
    """BLPOP calls so far: a standby's look ends in one (cluster/lease.py LeaseKeeper.run)."""
    return int(client.info("commandstats").get("cmdstat_blpop", {}).get("calls", 0))


def test_an_idle_standby_looks_at_the_lease_at_its_expiry_not_every_poll(services, cluster_factory, product):
    from tests.integration.test_failover import leader_and_hot_standby

    cluster = cluster_factory([product])
    leader, _, standby = leader_and_hot_standby(cluster, product)
    client = redis.Redis.from_url(services.redis_url)
    window_s = 3.0
    before = _lease_looks(client)
    time.sleep(window_s)  # the measurement window: an idle product, nothing to wait for
    looks = _lease_looks(client) - before
    # Polling every standby_poll_ms (50 ms) would be ~60 looks; at the lease's expiry (renewed to
    # 500 ms every 100 ms), capped by status_every_ms, about 2-3 a second.
    assert 0 < looks <= 4 * window_s, f"{looks} looks in {window_s} s by the idle standby of {product}"
    os.killpg(leader.process.pid, signal.SIGKILL)
    wait_until(lambda: standby.product_pid(product, role="leader"), 10, "the standby to take over")


def test_a_takeover_is_reported_at_once_not_at_the_idle_status_cadence(services, cluster_factory, product):
    """An idle standby reports every status_idle_every_ms, here far beyond the test's waits; its
    becoming the leader is reported at once (StatusReporter.wake)."""
    idle_cadence_ms = 120_000
    env = {"ORDERBOOK_CLUSTER_START_TUNE": f"idle_after_ms=500 status_idle_every_ms={idle_cadence_ms}"}
    cluster = cluster_factory([product])
    first = cluster.start_node("n1", env)
    wait_until(lambda: first.product_pid(product, role="leader"), 30, f"n1 to lead {product}")
    second = cluster.start_node("n2", env)
    wait_until(lambda: second.product_pid(product, role="standby"), 30, f"n2's standby of {product}")
    # Past the busy cadence (status_every_ms, 500 ms) without a report: n2 reports at the idle one.
    wait_until(
        lambda: time.time() * 1000 - second.product_status(product)["reported_ms"] > 2000,
        30,
        f"n2's standby of {product} to fall silent",
    )
    os.killpg(first.process.pid, signal.SIGKILL)
    wait_until(lambda: second.product_pid(product, role="leader"), 20, f"n2 to report leading {product}")
