"""The live state hash: a hot standby compares its state with the leader's at every snapshot
checkpoint; agreeing replicas say so, and a deliberately corrupted one is caught, refuses to
lead, and rebuilds itself from the snapshot."""

from __future__ import annotations

import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster import http_api
from tests.integration.harness import wait_until
from tests.integration.test_failover import ADMIN_TOKEN, Load, leader_and_hot_standby, verify

pytestmark = pytest.mark.integration

ENV = {
    "ORDERBOOK_CLUSTER_START_ADMIN_TOKEN": ADMIN_TOKEN,
    # a checkpoint about every second under the test's load
    # (and no planned handover meanwhile: this test is about the check, not about placement)
    "ORDERBOOK_CLUSTER_START_TUNE": "snapshot_every_s=1 snapshot_min_interval_s=0.5 snapshot_every_orders=500 "
    "rebalance_after_s=3600",
}


def post_fault(node, product: str, fault: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{node.http_port}{http_api.ADMIN_FAULT_PATH}",
        data=json.dumps({"fault": fault, "product": product}).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as resp:
        return json.loads(resp.read())


# In place (a small book), and forked: the leader's child stages the snapshot in Redis and the
# standby's child hands back only its hash, as for a large book.
@pytest.mark.parametrize("fork_above_orders", [100_000, 1])
def test_a_corrupted_standby_is_caught_and_rebuilds_itself(
    services, cluster_factory, product, fork_above_orders
):
    cluster = cluster_factory([product])
    env = {
        **ENV,
        "ORDERBOOK_CLUSTER_START_TUNE": f"{ENV['ORDERBOOK_CLUSTER_START_TUNE']} "
        f"snapshot_fork_above_orders={fork_above_orders}",
    }
    leader, _, standby = leader_and_hot_standby(cluster, product, env)
    load = Load(services.bootstrap, product, 30_000, chunk=200)
    load.start()
    wait_until(lambda: standby.product_status(product).get("state_checks", 0) >= 2, 60, "two agreeing checks")
    assert standby.product_status(product)["state_diverged"] is False
    corrupted_pid = standby.product_pid(product)
    assert post_fault(standby, product, "corrupt")["ok"]

    wait_until(lambda: standby.product_status(product).get("state_diverged"), 60, "the divergence to be seen")
    status = standby.product_status(product)
    assert status["pid"] == corrupted_pid and not status["caught_up"], status
    _, metrics = standby.get(http_api.METRICS_PATH)
    diverged = [
        sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "obc_state_diverged"
        for sample in family.samples
        if sample.labels["product"] == product and sample.labels["pid"] == str(corrupted_pid)
    ]
    assert diverged == [1.0], diverged
    assert "state diverged from the leader" in standby.log_text()

    # It rebuilds from the snapshot in a new process, and agrees with the leader again.
    wait_until(lambda: standby.product_pid(product) not in (None, corrupted_pid), 60, "the rebuild")
    wait_until(
        lambda: (
            (s := standby.product_status(product)).get("state_checks", 0) >= 1 and not s["state_diverged"]
        ),
        60,
        "an agreeing check after the rebuild",
    )
    assert leader.product_status(product)["role"] == "leader", "the leader never moved"
    verify(services, cluster, product, load.finish())
