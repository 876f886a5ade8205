"""The fault registry: what the drill offers is registered, what is registered is reachable, and
the admin endpoint's answers (status, fields, refusals, log line) with real processes as targets."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import click
import pytest

from cluster import faults, http_api
from cluster.cli import cli
from cluster.settings import NodeSettings
from cluster.tools import rolling
from cluster.tools.drill import ROUND_FAULTS, DrillError, run_drill
from tests.integration.harness import wait_until

TOKEN = "t0ken"
# A stand-in product process: says which drill signal it got, then goes on sleeping.
SIGNAL_ECHO = (
    "import signal, sys, time\n"
    "for s in (signal.SIGUSR1, signal.SIGUSR2):\n"
    "    signal.signal(s, lambda n, _f: print(signal.Signals(n).name, flush=True))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    time.sleep(60)\n"
)


class ProductProcess:
    """A real OS process in the place of a product process (the supervisor's Child.process)."""

    def __init__(self) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", SIGNAL_ECHO], stdout=subprocess.PIPE, text=True)
        assert self.popen.stdout.readline().strip() == "ready"
        self.pid = self.popen.pid

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def state(self) -> str:
        """The kernel's one-letter state: S sleeping, T stopped."""
        return Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def node_site(embedded=None, **processes) -> SimpleNamespace:
    """What a Node offers the faults: its settings, embedded servers and children."""
    settings = NodeSettings("n1", tuple(processes), {}, "127.0.0.1:1", "redis://127.0.0.1:1/0")
    children = {name: SimpleNamespace(process=p) for name, p in processes.items()}
    return SimpleNamespace(
        settings=settings,
        embedded=embedded,
        supervisor=SimpleNamespace(children=children),
        restart_requested=False,
        on_main_thread=lambda work: work(),
    )


@pytest.fixture
def product_process():
    process = ProductProcess()
    yield process
    if process.is_alive():
        process.popen.kill()
    process.popen.wait(5)


@pytest.fixture
def admin():
    """POST a fault to a real admin endpoint served for `site`: (status, answer)."""
    servers = []

    def post(site, body: dict) -> tuple[int, dict]:
        source = http_api.HealthSource(
            alive=lambda: True,
            ready=lambda: (True, {}),
            status=dict,
            metrics=lambda: (b"", "text/plain"),
            admin=lambda request: faults.inject(site, request),
            admin_token=TOKEN,
        )
        server = http_api.serve_http("127.0.0.1", 0, source)
        servers.append(server)
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.server_address[1]}{http_api.ADMIN_FAULT_PATH}",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    yield post
    for server in servers:
        server.shutdown()


def drill_fault_choices() -> list[str]:
    option = next(p for p in cli.commands["drill"].params if p.name == "fault")
    assert isinstance(option.type, click.Choice)
    return list(option.type.choices)


def test_every_fault_the_drill_offers_is_registered_and_every_drill_fault_is_offered():
    choices = drill_fault_choices()
    rounds = [name for name, f in faults.FAULTS.items() if f.drill is faults.Drill.ROUND]
    assert choices == [*rounds, rolling.ROLLING_RESTART]
    assert list(ROUND_FAULTS) == rounds
    rolled = [name for name, f in faults.FAULTS.items() if f.drill is faults.Drill.ROLLING]
    assert rolled == [rolling.ROLLED_FAULT], "the rolling restart asks each node for the rolling fault"
    unreachable = {name for name, f in faults.FAULTS.items() if f.drill is faults.Drill.ADMIN_ONLY}
    assert set(faults.FAULTS) == set(rounds) | set(rolled) | unreachable
    assert not unreachable & set(choices)


def test_every_offered_fault_is_described_in_the_drill_help():
    option = next(p for p in cli.commands["drill"].params if p.name == "fault")
    for name in drill_fault_choices():
        assert f"{name}: " in option.help, name


def test_the_drill_refuses_a_fault_it_does_not_inject_per_round():
    for name in ("corrupt", "restart", "nope"):
        with pytest.raises(DrillError, match="unknown fault"):
            run_drill(
                bootstrap="127.0.0.1:1",
                redis_url="redis://127.0.0.1:1/0",
                product="P",
                config=None,
                fault=name,
                rounds=1,
                rate=1.0,
                admin_token=TOKEN,
            )


@pytest.mark.parametrize("fault", ["nope", "", None, ["kill"], {"kill": 1}])
def test_an_unknown_fault_is_refused_with_400(admin, product_process, fault):
    status, answer = admin(node_site(P=product_process), {"fault": fault, "product": "P"})
    assert (status, answer) == (400, {"error": f"unknown fault {fault!r}"})
    assert product_process.is_alive() and product_process.state() == "S"


EMBEDDED = SimpleNamespace(redis=None)
REFUSALS = {
    "kill": (None, "no running process for product 'P' on n1"),
    "pause": (None, "no running process for product 'P' on n1"),
    "stall": (None, "no running process for product 'P' on n1"),
    "corrupt": (None, "no running process for product 'P' on n1"),
    "node-kill": (EMBEDDED, "this node runs the embedded broker and Redis; killing it kills the cluster"),
    "restart": (EMBEDDED, "this node runs the embedded broker and Redis; restarting it restarts the cluster"),
    "redis-restart": (None, "n1 does not run the embedded Redis"),
}


@pytest.mark.parametrize("fault", sorted(faults.FAULTS))
def test_a_fault_whose_precondition_fails_is_refused_with_409(admin, fault):
    embedded, error = REFUSALS[fault]
    site = node_site(embedded)
    assert admin(site, {"fault": fault, "product": "P"}) == (409, {"error": error})
    assert site.restart_requested is False


def test_a_fault_at_a_product_whose_process_exited_is_refused(admin, product_process):
    product_process.popen.kill()
    product_process.popen.wait(5)
    status, answer = admin(node_site(P=product_process), {"fault": "kill", "product": "P"})
    assert (status, answer["error"]) == (409, "no running process for product 'P' on n1")


def test_kill_answers_with_the_pid_and_logs_the_injection(admin, product_process, caplog):
    caplog.set_level(logging.WARNING, logger="cluster.faults")
    status, answer = admin(node_site(P=product_process), {"fault": "kill", "product": "P"})
    assert status == 200
    assert answer | {"at_ms": 0} == {
        "ok": True,
        "fault": "kill",
        "pid": product_process.pid,
        "node": "n1",
        "at_ms": 0,
        "stall_s": 0.0,
    }
    assert product_process.popen.wait(5) == -signal.SIGKILL
    assert f"fault injected fault=kill product=P pid={product_process.pid}" in caplog.text


@pytest.mark.parametrize(("fault", "received"), [("stall", "SIGUSR1"), ("corrupt", "SIGUSR2")])
def test_stall_and_corrupt_signal_the_product_process(admin, product_process, fault, received):
    site = node_site(P=product_process)
    status, answer = admin(site, {"fault": fault, "product": "P"})
    assert status == 200 and answer["pid"] == product_process.pid
    assert answer["stall_s"] == (faults.stall_s(site.settings.timing) if fault == "stall" else 0.0)
    assert product_process.popen.stdout.readline().strip() == received
    assert product_process.is_alive()


def test_pause_stops_the_product_process_and_continues_it(admin, product_process):
    status, _ = admin(node_site(P=product_process), {"fault": "pause", "product": "P", "pause_s": 0.3})
    assert status == 200
    assert product_process.state() == "T", "paused at once"
    wait_until(lambda: product_process.state() == "S", 10, "the paused process to be continued")
