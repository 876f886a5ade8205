"""Product processes match from Kafka to Kafka: the worked example, crashes, bad input, shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from cluster.bench.e2e import preload
from cluster.kafka_io import dlq_topic, order_topic, read_topic
from cluster.tools.send import produce_orders
from cluster.tools.workload import generate_orders
from engine.config import load_products
from engine.messages import MAX_RECORD_BYTES
from engine.native import native_available
from tests.integration.harness import check_stream, oracle_events, output_values, read_input, wait_until

pytestmark = pytest.mark.integration

GOLDEN = Path(__file__).parents[1] / "unit" / "golden"


def test_worked_example_through_kafka(services, cluster_factory):
    cluster = cluster_factory(["BTC-USD", "ETH-USD"])
    node = cluster.start_node("n1")
    cluster.wait_leader("BTC-USD")
    cluster.wait_leader("ETH-USD")
    assert node.product_pid("BTC-USD") != node.product_pid("ETH-USD"), (
        "products must run in their own processes"
    )
    lines = (GOLDEN / "worked_example.in.jsonl").read_bytes().splitlines()
    assert produce_orders(services.bootstrap, "BTC-USD", lines) == 5
    eth_order = (
        b'{"id":1,"created_at":1695783003020000000,"product_id":"ETH-USD","user_id":7,"client_oid":"",'
        b'"price":"2000.00","size":"1.5","funds":"0","type":"limit","side":"buy","time_in_force":"GTC",'
        b'"status":"new"}'
    )
    produce_orders(services.bootstrap, "ETH-USD", [eth_order])

    events = [json.loads(v) for v in output_values(services.bootstrap, "BTC-USD", 13)]
    assert [e["sequence"] for e in events] == list(range(1, 14))
    kinds = [
        (e["type"], e.get("order_id") or (e.get("taker_order_id"), e.get("maker_order_id"))) for e in events
    ]
    assert kinds == [
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
    assert [e["trade_seq"] for e in events if e["type"] == "match"] == [1, 2, 3, 4]
    assert Decimal(events[9]["remaining_size"]) == 2 and events[9]["side"] == "buy"
    assert events[10]["side"] == "buy" and Decimal(events[10]["size"]) == 2
    assert all(e["time"] % 1_000_000 == 0 and e["time"] > 0 for e in events), "time is the record's timestamp"

    config = load_products(cluster.config)["BTC-USD"]
    expected = oracle_events(config, read_input(services.bootstrap, order_topic("BTC-USD"), 5))
    check_stream(output_values(services.bootstrap, "BTC-USD", 13), expected)
    eth = [json.loads(v) for v in output_values(services.bootstrap, "ETH-USD", 1)]
    assert eth[0]["type"] == "open" and eth[0]["product_id"] == "ETH-USD"
    if native_available():  # auto runs the C core when it is built
        assert node.product_status("BTC-USD")["core"] == "native"


def kill_leader_while_matching(services, cluster, product, total, chunks, kills_wanted, env=None) -> int:
    """Send `total` orders in chunks, SIGKILLing the leading product process at random moments."""
    rng = random.Random(20261125)
    node = cluster.start_node("n1", env)
    cluster.wait_leader(product)
    encoder = msgspec.json.Encoder()
    orders = [encoder.encode(o) for o in generate_orders(product, total, seed=7)]
    kills = 0
    per_chunk = total // chunks
    for i in range(chunks):
        produce_orders(services.bootstrap, product, orders[i * per_chunk : (i + 1) * per_chunk])
        if kills < kills_wanted and i >= 1:
            time.sleep(rng.uniform(0.0, 0.4))  # a random moment inside the matching of this chunk
            _, pid = cluster.wait_leader(product)
            os.kill(pid, signal.SIGKILL)
            kills += 1
            wait_until(
                lambda old=pid: (p := node.product_pid(product, "leader")) and p != old,
                30,
                "a restarted leader after SIGKILL",
            )
    records = read_input(services.bootstrap, order_topic(product), total)
    expected = oracle_events(load_products(cluster.config)[product], records)
    output = output_values(services.bootstrap, product, len(expected), timeout_s=180)
    check_stream(output, expected)
    assert node.log_text().count("child exited") >= kills
    return kills


def test_sigkills_under_load_lose_nothing_and_double_nothing(services, cluster_factory, product):
    """>= 50,000 orders, the product process SIGKILLed at random moments: output == replay."""
    kills = kill_leader_while_matching(services, cluster_factory([product]), product, 50_000, 10, 6)
    assert kills >= 5


def test_sigkills_with_kafka_transactions(services, cluster_factory, product):
    """The same with --kafka-transactions: each batch a transaction, leaders fenced at the broker.

    The test broker shows aborted transactions to read_committed consumers, so this checks that
    the transactional path keeps every invariant, not the broker's hiding of zombie writes.
    """
    env = {"ORDERBOOK_CLUSTER_START_KAFKA_TRANSACTIONS": "1"}
    kills = kill_leader_while_matching(services, cluster_factory([product]), product, 20_000, 5, 4, env)
    assert kills >= 3


def test_a_leader_draining_a_backlog_keeps_its_lease(services, cluster_factory, product):
    """300,000 orders are waiting when the leader starts: it matches them flat out for seconds,
    yet renews its lease between batches, so it is never demoted on the way."""
    backlog = 300_000
    cluster = cluster_factory([product])
    preload(services.bootstrap, [product], backlog, seed=17)
    node = cluster.start_node("n1")
    _, leader_pid = cluster.wait_leader(product)
    wait_until(lambda: node.product_status(product).get("offset", 0) >= backlog, 120, "the backlog drained")
    status = node.product_status(product)
    assert status["pid"] == leader_pid and status["role"] == "leader", "the leader kept its lease"
    assert "demoted" not in node.log_text()


def test_backpressure_waits_for_a_stalled_broker_without_losing_the_lease(services, cluster_factory, product):
    """The broker stops answering for longer than the lease TTL while events are queued: the loop
    stops applying (producer_max_outstanding) but keeps renewing, so the leader neither blocks nor
    is demoted, and nothing is lost or doubled once the broker answers again."""
    cluster = cluster_factory([product])
    tune = "producer_max_outstanding=50 consume_batch=100"  # a delivery round trip per 100 orders
    node, leader_pid, orders = matching_a_backlog(services, cluster, product, tune, 30_000, seed=11)
    broker = services.broker.process.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        # The stall under test: 2.5x the lease TTL with events waiting for the broker. /status is
        # reported every 500 ms, so the first reading is taken once it reflects the stall.
        time.sleep(0.8)
        applied_at_stall = node.product_status(product)["offset"]
        time.sleep(1.2)
        applied_after_stall = node.product_status(product)["offset"]
    finally:
        os.kill(broker, signal.SIGCONT)
    assert applied_at_stall < len(orders), "the stall must come while there is input left to match"
    assert applied_after_stall - applied_at_stall <= 200, "no more than a batch or two applied while stalled"
    records = read_input(services.bootstrap, order_topic(product), len(orders))
    expected = oracle_events(load_products(cluster.config)[product], records)
    check_stream(output_values(services.bootstrap, product, len(expected)), expected)
    status = node.product_status(product)
    assert status["pid"] == leader_pid and status["role"] == "leader", "the leader kept its lease"
    assert "demoted" not in node.log_text()
    _, metrics = node.get("/metrics")
    waits = [line for line in metrics.splitlines() if line.startswith("obc_producer_waits_total{")]
    assert waits and float(waits[0].rsplit(" ", 1)[1]) > 100, "the loop waited for the broker"


def test_a_stalled_broker_does_not_make_the_leader_spin(services, cluster_factory, product):
    """librdkafka's idempotent producer busy-loops a core while 5 requests wait for the broker and
    more messages are queued. The leader hands it at most publisher.BATCHES_IN_FLIGHT unanswered
    batches, so while the broker is stopped with input left to match, the leader's process sleeps;
    and once the broker answers, nothing is lost or doubled."""
    cluster = cluster_factory([product])
    tune = "consume_batch=50"  # many batches
    node, leader_pid, orders = matching_a_backlog(services, cluster, product, tune, 300_000, seed=13)
    broker = services.broker.process.pid
    os.kill(broker, signal.SIGSTOP)
    try:
        time.sleep(0.3)  # the batches already on their way to the broker
        cpu_before, began = process_cpu_s(leader_pid), time.monotonic()
        time.sleep(1.5)  # the stall under test
        cores = (process_cpu_s(leader_pid) - cpu_before) / (time.monotonic() - began)
        applied_in_stall = node.product_status(product)["offset"]
    finally:
        os.kill(broker, signal.SIGCONT)
    assert cores < 0.5, f"the leader's process used {cores:.2f} cores while the broker did not answer"
    assert applied_in_stall < len(orders), "the leader stopped handing the producer batches"
    records = read_input(services.bootstrap, order_topic(product), len(orders))
    expected = oracle_events(load_products(cluster.config)[product], records)
    check_stream(output_values(services.bootstrap, product, len(expected)), expected)
    status = node.product_status(product)
    assert status["pid"] == leader_pid and status["role"] == "leader", "the leader kept its lease"


def matching_a_backlog(services, cluster, product: str, tune: str, count: int, seed: int):
    """One node leading `product`, tuned, with `count` generated orders sent and matching begun:
    (node, leader pid, the orders' bytes)."""
    node = cluster.start_node("n1", {"ORDERBOOK_CLUSTER_START_TUNE": tune})
    _, leader_pid = cluster.wait_leader(product)
    encoder = msgspec.json.Encoder()
    orders = [encoder.encode(o) for o in generate_orders(product, count, seed=seed)]
    produce_orders(services.bootstrap, product, orders)
    wait_until(lambda: node.product_status(product).get("offset", 0) >= 1000, 30, "matching to start")
    return node, leader_pid, orders


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process (all its threads) has used, from /proc."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_bad_input_goes_to_dlq_or_rejected_and_nothing_else_changes(services, cluster_factory, product):
    cluster = cluster_factory([product])
    cluster.start_node("n1")
    cluster.wait_leader(product)

    def order(oid: int, **fields) -> bytes:
        base = {
            "id": oid,
            "created_at": 1_700_000_000_000_000_000 + oid * 1_000_000,
            "product_id": product,
            "user_id": 1,
            "client_oid": "",
            "price": "10.00",
            "size": "1",
            "funds": "0",
            "type": "limit",
            "side": "buy",
            "time_in_force": "GTC",
            "status": "new",
        }
        base.update(fields)
        return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()

    lines = [
        order(1),  # rests: open
        b"not json at all",  # dlq
        b'{"created_at": 1}',  # dlq: no id
        order(2, side="sideways"),  # dlq: bad side
        order(3, price="NaN"),  # rejected
        order(4, price="-1"),  # rejected
        order(5, size="0"),  # rejected
        order(6, price="10.001"),  # rejected: off tick/scale
        order(7, product_id="OTHER-USD"),  # rejected: product mismatch
        order(8, type="market", side="buy", funds="0"),  # rejected: market buy without funds
        order(1),  # duplicate id: nothing
        order(9, status="cancelling"),  # unknown cancel: nothing
        order(10, side="sell", price="10.00"),  # matches order 1
        order(11, client_oid="\udcff").replace(b'"\\udcff"', b'"\xff"'),  # dlq: not UTF-8
        order(12, side="sell", price="11.00"),  # rests: the leader got past the poison record
    ]
    produce_orders(services.bootstrap, product, lines)
    records = read_input(services.bootstrap, order_topic(product), len(lines))
    expected = oracle_events(load_products(cluster.config)[product], records)
    output = output_values(services.bootstrap, product, len(expected))
    check_stream(output, expected)
    events = [json.loads(v) for v in expected]
    rejected = {e["order_id"]: e["reject_reason"] for e in events if e.get("reason") == "rejected"}
    assert set(rejected) == {3, 4, 5, 6, 7, 8}
    assert [e["type"] for e in events if e.get("reason") != "rejected"] == [
        "open",
        "match",
        "done",
        "done",
        "open",
    ]

    dlq = list(read_topic(services.bootstrap, dlq_topic(product), idle_s=10, count=4))
    assert [value for _, value, _, _ in dlq] == [lines[1], lines[2], lines[3], lines[13]]
    assert dict(dlq[3][3])["reason"] == b"not_json"
    headers = dict(dlq[0][3])
    assert headers["reason"] == b"not_json" and headers["source_offset"] == b"1"


def test_an_oversized_record_is_a_dead_letter_and_the_leader_survives(services, cluster_factory, product):
    """A 2 MB record once crashed the leader on every replay: its DLQ copy was too large to publish.
    Now it is a record_too_large dead letter whose DLQ copy is cut to MAX_RECORD_BYTES."""
    cluster = cluster_factory([product])
    cluster.start_node("n1")
    _node, leader_pid = cluster.wait_leader(product)
    order = {"id": 1, "product_id": product, "user_id": 1, "price": "10.00", "size": "1", "type": "limit"}
    huge = json.dumps({**order, "side": "buy", "time_in_force": "X" * 2_000_000}).encode()
    after = json.dumps({**order, "id": 2, "side": "sell", "price": "11.00"}).encode()
    produce_orders(services.bootstrap, product, [huge, after], extra={"message.max.bytes": 10_000_000})

    output = output_values(services.bootstrap, product, 1)
    assert [(e["type"], e["order_id"]) for e in map(json.loads, output)] == [("open", 2)]
    (letter,) = list(read_topic(services.bootstrap, dlq_topic(product), idle_s=10, count=1))
    _offset, value, _ts, headers = letter
    headers = dict(headers)
    assert headers["reason"] == b"record_too_large" and headers["source_offset"] == b"0"
    assert headers["source_size"] == str(len(huge)).encode() and value == huge[:MAX_RECORD_BYTES]
    assert cluster.wait_leader(product)[1] == leader_pid  # the same process: it never crashed


def session_members(session_id: int) -> list[int]:
    """Live processes of a session, from /proc (zombies count as gone)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == session_id and fields[0] != "Z":
            members.append(int(entry.name))
    return members


@contextlib.contextmanager
def embedded_start(tmp_path: Path, products: str):
    """`orderbook-cluster start --products ...` on the embedded default, leaders up; always stopped."""
    state = tmp_path / "state"
    log_path = tmp_path / "start.log"
    with open(log_path, "wb") as log:
        argv = [
            sys.executable,
            "-m",
            "cluster",
            "start",
            "--products",
            products,
            "--http-port",
            "0",
            "--state-dir",
            str(state),
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    try:
        wait_until(lambda: (state / "embedded.json").exists(), 60, "the embedded servers")
        for product in products.split(","):
            wait_until(
                lambda p=product: f"leader product={p}" in log_path.read_text(), 60, f"a {product} leader"
            )
        yield proc, state, log_path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


def test_sigterm_of_embedded_start_stops_everything_within_10s(tmp_path):
    """The README's main command: `start` on the embedded default, then SIGTERM."""
    with embedded_start(tmp_path, "BTC-USD,ETH-USD") as (proc, state, _):
        servers = json.loads((state / "embedded.json").read_text())["pids"]
        children = session_members(proc.pid)
        assert len(children) >= 3, f"expected start and 2 product processes; got {children}"
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert time.monotonic() - began < 10

        def session_empty() -> bool:
            return not session_members(proc.pid)

        # multiprocessing's resource tracker leaves when its pipe closes, a moment after start itself
        wait_until(session_empty, 3, "every process of start's session to exit")
        for pid in servers.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        assert not (state / "embedded.json").exists()


def test_drill_redis_restart_on_the_embedded_default(tmp_path):
    """The newcomer's path: `start` on the embedded default, then a drill that restarts its Redis."""
    with embedded_start(tmp_path, "DRILL-USD") as (_, state, log_path):
        argv = [
            sys.executable,
            "-m",
            "cluster",
            "drill",
            "--state-dir",
            str(state),
            "--product",
            "DRILL-USD",
            "--fault",
            "redis-restart",
            "--rounds",
            "2",
            "--rate",
            "300",
            "--json",
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
        report = json.loads(result.stdout)
        assert report["stream"]["ok"] and report["stream"]["distinct"] > 0, report["stream"]
        assert report["takeover"]["rounds_ok"] == 2
        assert log_path.read_text().count("fault: server restarted name=redis") == 2
