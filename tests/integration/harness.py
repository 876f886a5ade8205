"""Run real nodes (`orderbook-cluster start` subprocesses) against the session's servers.

Every process a test starts here is in its own session (process group) and is killed at the end
of the test, whatever happened. Waiting is on conditions with deadlines, never on bare sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cluster.embedded import free_port
from cluster.kafka_io import message_topic, read_topic
from cluster.tools import verify
from cluster.tools.verify import expected_events, read_records
from engine.config import ProductConfig
from engine.messages import record_time_ns


def wait_until(condition: Callable[[], object], timeout_s: float, what: str, interval_s: float = 0.05):
    """Poll `condition` until it returns something truthy; fail with `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def write_config(path: Path, products: Iterable[str], base_scale: int = 6, quote_scale: int = 2) -> Path:
    """A products.toml for the test's fresh product names."""
    body = "".join(
        f'[products."{p}"]\nbase_scale = {base_scale}\nquote_scale = {quote_scale}\n\n' for p in products
    )
    path.write_text(body)
    return path


@dataclass
class NodeProcess:
    """One `orderbook-cluster start` process and its HTTP port."""

    node_id: str
    process: subprocess.Popen
    http_port: int
    log_path: Path

    def get(self, path: str):
        """GET an endpoint; (status code, parsed JSON or text)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as resp:
                body = resp.read()
                code = resp.status
        except urllib.error.HTTPError as exc:
            body, code = exc.read(), exc.code
        except OSError:
            return None, None
        try:
            return code, json.loads(body)
        except ValueError:
            return code, body.decode()

    def product_status(self, product: str) -> dict:
        """The node's view of one product process ({} until it reported)."""
        _, doc = self.get("/status")
        if not isinstance(doc, dict):
            return {}
        return doc.get("products", {}).get(product, {})

    def product_pid(self, product: str, role: str | None = None) -> int | None:
        """The pid of the product's process, if it runs (and has the role)."""
        status = self.product_status(product)
        if not status.get("pid") or (role and status.get("role") != role):
            return None
        return status["pid"]

    def log_text(self) -> str:
        """What the node logged so far."""
        return self.log_path.read_text(errors="replace")


class Cluster:
    """Starts nodes for a test and guarantees they are gone afterwards."""

    def __init__(self, services, tmp_path: Path, products: list[str]) -> None:
        self.services = services
        self.tmp_path = tmp_path
        self.products = products
        self.config = write_config(tmp_path / "products.toml", products)
        self.nodes: list[NodeProcess] = []

    def start_node(
        self, node_id: str, extra_env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> NodeProcess:
        """Start `orderbook-cluster start` for every product, as node `node_id` (`python -m cluster`
        run in `cwd`, default the current directory, imports the source tree there)."""
        port = free_port()
        log_path = self.tmp_path / f"{node_id}.log"
        argv = [
            sys.executable,
            "-m",
            "cluster",
            "start",
            "--products",
            ",".join(self.products),
            "--kafka",
            self.services.bootstrap,
            "--redis",
            self.services.redis_url,
            "--config",
            str(self.config),
            "--node-id",
            node_id,
            "--http-port",
            str(port),
            "--state-dir",
            str(self.tmp_path / node_id),
        ]
        with open(log_path, "ab") as log_file:
            proc = subprocess.Popen(
                argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(extra_env or {})},
                cwd=cwd,
            )
        node = NodeProcess(node_id, proc, port, log_path)
        self.nodes.append(node)
        return node

    def wait_leader(self, product: str, timeout_s: float = 30.0) -> tuple[NodeProcess, int]:
        """The node whose process leads `product`, and that process's pid."""

        def find():
            for node in self.nodes:
                if node.process.poll() is None:
                    pid = node.product_pid(product, role="leader")
                    if pid:
                        return node, pid
            return None

        return wait_until(find, timeout_s, f"a leader for {product}")

    def stop_all(self) -> None:
        """SIGTERM every node's process group, then SIGKILL what is left."""
        for node in self.nodes:
            if node.process.poll() is None:
                os.killpg(node.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in self.nodes:
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(node.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if node.process.poll() is None:
                node.process.wait(5)


def read_input(bootstrap: str, topic: str, count: int) -> list[tuple[bytes, int]]:
    """The order topic as the cluster saw it: (raw, record time ns) in offset order."""
    records = read_records(bootstrap, topic, until_count=count, idle_s=20)
    assert len(records) == count, f"{topic}: read {len(records)} of {count} records"
    return [(value, record_time_ns(ts)) for _, value, ts, _ in records]


def output_values(bootstrap: str, product: str, count: int, timeout_s: float = 60) -> list[bytes]:
    """The output topic, duplicates kept, read until `count` distinct sequences have arrived."""
    values: list[bytes] = []
    distinct: set[int] = set()
    if count <= 0:
        return values
    records = read_topic(bootstrap, message_topic(product), idle_s=None, timeout_s=timeout_s)
    with contextlib.closing(records):
        for _, value, _, _ in records:
            values.append(value)
            distinct.add(json.loads(value)["sequence"])
            if len(distinct) >= count:
                return values
    raise AssertionError(f"{product}: {len(distinct)} of {count} events after {timeout_s:.0f}s")


def oracle_events(config: ProductConfig, records: list[tuple[bytes, int]]) -> list[bytes]:
    """What `replay` publishes for the same input: the expected output, event by event."""
    return expected_events(config, records)


def check_stream(output: list[bytes], expected: list[bytes]) -> None:
    """The output, redelivered sequences dropped, equals the oracle; every duplicate is identical."""
    report = verify.check_stream(output, expected)
    assert report.ok, "stream invariants broken:\n" + "\n".join(report.problems)


class NodeRestarter:
    """Plays the StatefulSet controller: a node process that died is started again, same id."""

    def __init__(self, cluster: Cluster, env: dict[str, str] | None = None) -> None:
        self.cluster = cluster
        self.env = env
        self.restarts = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop_event.wait(0.2):
            for node in list(self.cluster.nodes):
                if node.process.poll() is not None and not any(
                    n.node_id == node.node_id and n.process.poll() is None for n in self.cluster.nodes
                ):
                    self.cluster.start_node(node.node_id, self.env)
                    self.restarts += 1

    def __enter__(self) -> NodeRestarter:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(5)


def drill_argv(
    services, cluster: Cluster, product: str, fault: str, admin_token: str, rounds: int = 5
) -> list[str]:
    """The command line of `orderbook-cluster drill ... --json` against the cluster."""
    return [
        sys.executable,
        "-m",
        "cluster",
        "drill",
        "--kafka",
        services.bootstrap,
        "--redis",
        services.redis_url,
        "--config",
        str(cluster.config),
        "--product",
        product,
        "--fault",
        fault,
        "--rounds",
        str(rounds),
        "--rate",
        "300",
        "--admin-token",
        admin_token,
        "--json",
    ]


def run_drill_cli(
    services, cluster: Cluster, product: str, fault: str, admin_token: str, rounds: int = 5
) -> dict:
    """`orderbook-cluster drill ... --json` against the cluster; its report, after it succeeded."""
    argv = drill_argv(services, cluster, product, fault, admin_token, rounds)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = json.loads(result.stdout)
    assert report["stream"]["ok"], report["stream"]
    assert report["takeover"]["rounds_ok"] == rounds
    return report
