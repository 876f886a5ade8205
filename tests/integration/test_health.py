"""The supervisor's HTTP endpoints, against real nodes: what Kubernetes probes and scrapes."""

from __future__ import annotations

import os
import resource
import signal
import socket
import time
import urllib.error
import urllib.request

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
    from cluster.tools.send import produce_orders
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
    assert "loop_stall_cpu_wait_ms" in status["products"][product]  # None where the kernel does not say
    assert node.get("/nope")[0] == 404


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _open_files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as fh:
        return next(int(line.split()[3]) for line in fh if line.startswith("Max open files"))


def _timed_get(port: int, path: str) -> tuple[int, float]:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as resp:
            code = resp.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    return code, time.monotonic() - started


IDLE_CONNECTIONS = 2000


def test_probes_are_answered_under_2000_idle_connections(cluster, product):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = IDLE_CONNECTIONS + 500  # the test's own sockets
    assert hard == resource.RLIM_INFINITY or hard >= wanted, f"this test needs {wanted} open files"
    # The node runs with the common default of 1024 open files (it inherits the limit at start):
    # fewer than the idle connections, so it must not hold one descriptor per connection.
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 1024), hard))
    try:
        node = cluster.start_node("n1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    cluster.wait_leader(product)
    wait_until(lambda: node.get(http_api.READINESS_PATH)[0] == 200, 30, "readiness")
    supervisor = node.process.pid  # `start` runs the supervisor and its HTTP server in-process
    assert _open_files_limit(supervisor) <= 1024
    threads_before, rss_before = _threads(supervisor), _rss_kb(supervisor)

    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE_CONNECTIONS):  # no token needed: anyone who reaches the port can do this
            idle.append(socket.create_connection(("127.0.0.1", node.http_port), timeout=5))
        for _ in range(3):
            for path in (http_api.LIVENESS_PATH, http_api.READINESS_PATH):
                code, took = _timed_get(node.http_port, path)
                assert (code, took < 1.0) == (200, True), f"{path}: {code} after {took:.2f}s"
        threads, rss = _threads(supervisor), _rss_kb(supervisor)
        assert threads <= threads_before + http_api.HANDLER_THREADS, (threads_before, threads)
        assert rss - rss_before < 32_000, f"supervisor RSS grew by {rss - rss_before} kB"
        # The newest idle connections are still open; the server closes them after its request timeout.
        newest = idle[-1]
        newest.settimeout(http_api.REQUEST_TIMEOUT_S + 5)
        started = time.monotonic()
        assert newest.recv(1) == b"", "the server closes a connection that sends no request"
        assert time.monotonic() - started < http_api.REQUEST_TIMEOUT_S + 5
    finally:
        for sock in idle:
            sock.close()
    assert _threads(supervisor) <= threads_before + http_api.HANDLER_THREADS
    assert node.get(http_api.LIVENESS_PATH) == (200, {"alive": True})
