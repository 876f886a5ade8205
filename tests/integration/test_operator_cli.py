"""What an operator sees from the commands when something is wrong: one clear line and a non-zero
exit, never a silent loss, a traceback or a flood of librdkafka lines. Real broker and Redis."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid

import click
import pytest

from cluster.embedded import tansu_server
from cluster.kafka_io import ensure_topics, existing_topics, order_topic, product_topics
from cluster.redis_state import progress_key, sync_client
from cluster.tools.send import produce_orders
from cluster.tools.status import collect_status, format_status
from tests.integration.harness import wait_until
from tests.integration.test_cluster import embedded_start
from tests.unit.golden_paths import worked_example_lines

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "cluster"]


def run_cli(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """One command as an operator runs it: its own process, stdout and stderr apart."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, **kwargs)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The command failed with exactly one line on stderr, and nothing on stdout; that line."""
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr[-3000:]
    assert result.stdout == ""
    return lines[0]


def worked_example_file(tmp_path, product: str):
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join(worked_example_lines(product)) + b"\n")
    return path


def test_send_to_a_missing_product_topic_fails_naming_it(services, tmp_path):
    product = f"X{uuid.uuid4().hex[:8].upper()}-USD"
    began = time.monotonic()
    result = run_cli("send", "--kafka", services.bootstrap, "--product", product, str(tmp_path / "x"))
    assert result.returncode == 2  # the missing file: click's usage error
    result = run_cli(
        "send",
        "--kafka",
        services.bootstrap,
        "--product",
        product,
        str(worked_example_file(tmp_path, product)),
    )
    line = one_error_line(result)
    assert line == f"Error: no such product topic matching_order_{product} at {services.bootstrap}"
    assert time.monotonic() - began < 20
    assert order_topic(product) not in existing_topics(services.bootstrap, {}, 5), "send created the topic"


def test_send_names_how_many_orders_were_not_delivered_and_why(services, product, tmp_path):
    ensure_topics(services.bootstrap, {}, product_topics(product))
    lines = worked_example_lines(product)
    too_large = b'{"padding":"' + b"x" * 2_000_000 + b'"}'  # above the producer's message.max.bytes
    path = tmp_path / "orders.jsonl"
    path.write_bytes(b"\n".join([lines[0], too_large, *lines[1:]]) + b"\n")
    result = run_cli("send", "--kafka", services.bootstrap, "--product", product, str(path))
    line = one_error_line(result)
    assert line.startswith(f"Error: 1 of 6 orders not delivered to matching_order_{product}: "), line
    assert "too large (1)" in line, line
    from cluster.tools.verify import read_records

    delivered = read_records(services.bootstrap, order_topic(product), until_count=5, idle_s=5)
    assert [value for _, value, _, _ in delivered] == lines


def test_orders_a_broker_never_acknowledges_are_counted_not_lost_silently(tmp_path, product, start_local):
    broker = start_local(tansu_server(tmp_path))
    bootstrap = f"127.0.0.1:{broker.port}"
    ensure_topics(bootstrap, {}, product_topics(product))
    broker.stop()
    with pytest.raises(click.ClickException) as failed:
        produce_orders(bootstrap, product, worked_example_lines(product), message_timeout_ms=1500)
    assert failed.value.message.startswith(f"5 of 5 orders not delivered to matching_order_{product}: ")
    assert "timed out (5)" in failed.value.message


def test_send_reports_progress_while_a_slow_source_streams(services, product):
    ensure_topics(services.bootstrap, {}, product_topics(product))
    proc = subprocess.Popen(
        [*CLI, "send", "--kafka", services.bootstrap, "--product", product, "-"],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    stderr = b""
    try:
        deadline = time.monotonic() + 30
        for order in worked_example_lines(product) * 200:  # a gateway's trickle: ~10 orders a second
            proc.stdin.write(order + b"\n")
            proc.stdin.flush()
            if selector.select(timeout=0.1):
                stderr += os.read(proc.stderr.fileno(), 4096)
            if b" sent, " in stderr or time.monotonic() > deadline:
                break
        assert f"matching_order_{product}: ".encode() in stderr and b" delivered" in stderr, stderr
        proc.stdin.close()
        assert proc.wait(30) == 0
        stderr += proc.stderr.read()
        assert b"every one acknowledged" in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_the_tools_build_their_kafka_settings_from_the_operators_file(services, product, tmp_path):
    ensure_topics(services.bootstrap, {}, product_topics(product))
    props = tmp_path / "kafka.properties"
    props.write_text("# connection settings\nclient.id=ops-test\nacks=0\n")
    result = run_cli(
        "send",
        "--kafka",
        services.bootstrap,
        "--kafka-config",
        str(props),
        "--product",
        product,
        str(worked_example_file(tmp_path, product)),
    )
    assert result.returncode == 0, result.stderr
    assert "kafka setting ignored role=send key=acks given=0 used=all" in result.stderr

    props.write_text(
        "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=u\nsasl.password=p\n"
    )
    result = run_cli(
        "tail",
        "--kafka",
        services.bootstrap,
        "--kafka-config",
        str(props),
        "--product",
        product,
        "--count",
        "1",
    )
    assert one_error_line(result).startswith(
        f"Error: cannot reach Kafka at {services.bootstrap} (timeout 5 s)"
    )
    assert "u:p" not in result.stderr and "password" not in result.stderr


KAFKA_DOWN = "Error: cannot reach Kafka at 127.0.0.1:1 (timeout 5 s): "
REDIS_DOWN = "Error: cannot reach Redis at redis://"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("status --redis redis://127.0.0.1:1/0", REDIS_DOWN),
        ("send --kafka 127.0.0.1:1 --product BTC-USD --generate 1", KAFKA_DOWN),
        ("tail --kafka 127.0.0.1:1 --product BTC-USD", KAFKA_DOWN),
        (
            "drill --kafka 127.0.0.1:1 --redis {redis} --product BTC-USD --fault kill --admin-token t",
            KAFKA_DOWN,
        ),
        ("start --kafka 127.0.0.1:1 --redis {redis} --products BTC-USD --state-dir {tmp}", KAFKA_DOWN),
        (
            "start --kafka {kafka} --redis redis://:secret@127.0.0.1:1/0 --products BTC-USD --state-dir {tmp}",
            REDIS_DOWN,
        ),
    ],
)
def test_an_unreachable_server_is_one_line_and_a_non_zero_exit(services, tmp_path, command, expected):
    argv = command.format(kafka=services.bootstrap, redis=services.redis_url, tmp=tmp_path).split()
    began = time.monotonic()
    line = one_error_line(run_cli(*argv))
    assert time.monotonic() - began < 15
    assert line.startswith(expected), line
    assert "secret" not in line
    assert not list(tmp_path.glob("run-*")), "start left files behind for a run that never started"


def test_status_without_a_lease_shows_no_leader(services, product):
    sync_client(services.redis_url).hset(progress_key(product), mapping={"offset": 7, "sequence": 12})
    doc = collect_status(services.redis_url, [product])
    assert doc["products"][product]["leader_node"] is None
    row = format_status(doc).splitlines()[1].split()
    assert row[:4] == [product, "-", "-", "0"], row
    result = run_cli("status", "--redis", services.redis_url, "--products", product)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:4] == row[:4] and "|" not in result.stdout


def test_a_second_start_in_the_same_state_dir_touches_nothing(tmp_path):
    with embedded_start(tmp_path, "BTC-USD") as (proc, state, _):
        record = (state / "embedded.json").read_bytes()
        assert oct((state / "embedded.json").stat().st_mode & 0o777) == oct(0o600)
        runs = sorted(state.glob("run-*"))
        began = time.monotonic()
        second = run_cli("start", "--products", "BTC-USD", "--http-port", "0", "--state-dir", str(state))
        assert time.monotonic() - began < 15
        assert one_error_line(second) == f"Error: already running (pid {proc.pid}) with state dir {state}"
        assert (state / "embedded.json").read_bytes() == record
        assert sorted(state.glob("run-*")) == runs
        status = run_cli("status", "--state-dir", str(state), "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["products"]["BTC-USD"]["leader_node"], "the first stopped leading"
        assert proc.poll() is None


def test_a_sigkilled_start_takes_its_servers_along_and_leaves_a_record_known_stale(tmp_path):
    with embedded_start(tmp_path, "BTC-USD") as (proc, state, log_path):
        record = json.loads((state / "embedded.json").read_text())
        servers = record["pids"]
        product_pid = int(log_path.read_text().split("child started name=BTC-USD pid=")[1].split()[0])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        for name, pid in [*servers.items(), ("product process", product_pid)]:
            wait_until(lambda pid=pid: is_gone(pid), 15, f"the {name} (pid {pid}) to die with start")
    line = one_error_line(run_cli("status", "--state-dir", str(state)))
    assert line.startswith(
        f"Error: removed a stale {state}/embedded.json (its start pid {proc.pid} is not running)"
    )
    assert not (state / "embedded.json").exists()
    with embedded_start(tmp_path, "BTC-USD") as (again, _, _):  # the next start comes up there
        assert again.poll() is None
    assert not list(state.glob("run-*/metrics")), "a stopped node left its metrics files"


def is_gone(pid: int) -> bool:
    """The process no longer runs (exited, or a zombie its new parent has not reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
