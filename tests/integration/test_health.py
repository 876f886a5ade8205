"""The supervisor's HTTP endpoints, against real nodes: what Kubernetes probes and scrapes."""

from __future__ import annotations

import os
import signal

import pytest

from cluster import http_api
from tests.integration.harness import Cluster, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster(services, tmp_path, product):
    made = Cluster(services, tmp_path, [product])
    yield made
    made.stop_all()


def test_ready_only_while_every_product_is_served(cluster, product):
    node = cluster.start_node("n1")
    cluster.wait_leader(product)
    code, body = wait_until(lambda: (r := node.get(http_api.READINESS_PATH))[0] == 200 and r, 30, "readiness")
    assert body["ready"] is True and body["products"][product]["role"] == "leader"
    assert node.get(http_api.LIVENESS_PATH) == (200, {"alive": True})

    _, pid = cluster.wait_leader(product)
    os.kill(pid, signal.SIGKILL)
    code, body = wait_until(
        lambda: (r := node.get(http_api.READINESS_PATH))[0] == 503 and r, 10, "not ready after the kill"
    )
    assert body["products"][product]["ok"] is False
    wait_until(lambda: node.get(http_api.READINESS_PATH)[0] == 200, 30, "ready again after the restart")
    assert node.get(http_api.LIVENESS_PATH)[0] == 200, "a product restart is not a liveness failure"


def test_metrics_and_status_are_served(cluster, product, services):
    from cluster.send import produce_orders
    from tests.unit.golden_paths import worked_example_lines

    node = cluster.start_node("n1")
    cluster.wait_leader(product)
    produce_orders(services.bootstrap, product, worked_example_lines(product))
    wait_until(lambda: node.product_status(product).get("sequence") == 13, 30, "13 events")
    code, text = wait_until(
        lambda: (
            (r := node.get(http_api.METRICS_PATH))[0] == 200
            and f'obc_orders_in_total{{node="n1",product="{product}"}} 5.0' in r[1]
            and r
        ),
        10,
        "metrics of the 5 orders",
    )
    assert "obc_order_to_event_seconds_bucket" in text and "obc_is_leader" in text
    _, status = node.get(http_api.STATUS_PATH)
    assert status["node"] == "n1" and status["products"][product]["role"] == "leader"
    assert node.get("/nope")[0] == 404
