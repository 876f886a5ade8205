"""Snapshots captured in a forked child (cluster/snapshots.py) are the state at the fork, to the byte."""

from __future__ import annotations

import concurrent.futures
import os
import signal

import msgspec
import pytest

from cluster import snapshots
from cluster.tools.workload import generate_orders
from engine.api import apply_one
from engine.config import ProductConfig
from engine.native import make_engine
from tests.integration.harness import wait_until

CONFIG = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)


def stage_to(path):
    """A stand-in for staging in Redis (done for real in the cluster tests): the child writes the
    bytes to a file and reports their size."""

    def stage(data: bytes, digest: str) -> int:
        path.write_bytes(data)
        return len(data)

    return stage


@pytest.mark.parametrize("core", ["python", "native"])
def test_a_forked_capture_is_the_state_at_the_fork(core, tmp_path):
    engine = make_engine(CONFIG, core)
    orders = [msgspec.json.encode(o) for o in generate_orders("BTC-USD", 4000, seed=7)]
    for i, raw in enumerate(orders[:3000]):
        apply_one(engine, raw, i)
    assert engine.resting_orders() > 0
    expected = engine.snapshot()
    staged = tmp_path / "staged"
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        captured = snapshots.capture_staged(engine, 1, reader, stage_to(staged))
        hashed = snapshots.capture_hash(engine, 1, reader)
        for i, raw in enumerate(orders[3000:]):  # the loop goes on matching while the children write
            apply_one(engine, raw, 3000 + i)
        assert engine.snapshot() != expected
        digest = snapshots.state_hash(expected)
        # The bytes went where the child staged them, never back to this process.
        assert captured.result(timeout=60) == snapshots.Captured(digest, staged_size=len(expected))
        assert staged.read_bytes() == expected
        assert hashed.result(timeout=60) == digest
        now = engine.snapshot()
        in_place = snapshots.capture_staged(engine, engine.resting_orders() + 1, reader, stage_to(staged))
        assert in_place.done() and in_place.result() == snapshots.Captured(
            snapshots.state_hash(now), data=now
        )
        assert snapshots.capture_hash(
            engine, engine.resting_orders() + 1, reader
        ).result() == snapshots.state_hash(now)


def test_a_failed_child_is_an_error_not_a_snapshot():
    class Broken:
        def resting_orders(self) -> int:
            return 10

        def snapshot(self) -> bytes:
            raise RuntimeError("cannot")

    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        with pytest.raises(OSError, match="failed"):
            snapshots.capture_hash(Broken(), 1, reader).result(timeout=60)


def test_a_child_that_hangs_is_killed_at_the_deadline(monkeypatch):
    """A hung child (a Redis that stopped answering, a lock held at the fork) fails its capture
    instead of stopping the product's snapshots for good."""

    class Hangs:
        def resting_orders(self) -> int:
            return 10

        def snapshot(self) -> bytes:
            signal.pause()
            return b""

    monkeypatch.setattr(snapshots, "CHILD_DEADLINE_S", 0.5)
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        with pytest.raises(OSError, match="did not finish"):
            snapshots.capture_hash(Hangs(), 1, reader).result(timeout=60)


class WhereAmI:
    """An engine whose snapshot is a description of the process that wrote it."""

    def resting_orders(self) -> int:
        return 10

    def snapshot(self) -> bytes:
        try:
            with open("/proc/self/autogroup") as file:
                autogroup = file.read().split()[-1]  # "/autogroup-123 nice 19" -> "19"
        except OSError:
            autogroup = "none"
        facts = {
            "own_session": os.getsid(0) == os.getpid(),
            "nice": os.getpriority(os.PRIO_PROCESS, 0),
            "autogroup_nice": autogroup,
        }
        return msgspec.json.encode(facts)


def test_the_capturing_child_yields_the_cpu_to_everything_else(tmp_path):
    """nice 19 in a session of its own (so autogroup cannot lift it to a whole session's share)."""
    with concurrent.futures.ThreadPoolExecutor(1) as reader:
        snapshots.capture_staged(WhereAmI(), 1, reader, stage_to(tmp_path / "facts")).result(timeout=60)
    facts = msgspec.json.decode((tmp_path / "facts").read_bytes())
    assert facts["nice"] == 19
    assert facts["own_session"] is True
    assert facts["autogroup_nice"] in ("19", "none")  # "none": a kernel without autogroup


def test_the_capturing_child_dies_with_its_parent(tmp_path):
    """Out of the parent's process group, the child must not outlive a SIGKILLed product process."""
    child_pid_file = tmp_path / "child"
    parent = os.fork()
    if parent == 0:  # the product process stand-in
        code = 1
        try:

            class Hangs:
                def resting_orders(self) -> int:
                    return 10

                def snapshot(self) -> bytes:
                    child_pid_file.write_text(str(os.getpid()))
                    signal.pause()
                    return b""

            reader = concurrent.futures.ThreadPoolExecutor(1)
            snapshots.capture_hash(Hangs(), 1, reader)
            signal.pause()
        finally:
            os._exit(code)
    child = int(wait_until(lambda: child_pid_file.exists() and child_pid_file.read_text(), 30, "the child"))
    os.kill(parent, signal.SIGKILL)
    os.waitpid(parent, 0)
    wait_until(lambda: not _alive(child), 30, f"snapshot child {child} to die with its parent")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False
