"""The supervisor's own logic: liveness, the drain deadline, and stopping a stopped child."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import supervisor


def test_liveness_follows_the_loop():
    sup = supervisor.Supervisor([], "n1")
    assert sup.alive()
    sup.last_loop_at = time.monotonic() - 60
    assert not sup.alive()


def test_drain_timeout_is_within_the_promised_10_seconds():
    assert supervisor.DRAIN_TIMEOUT_S <= 10


def _exit_on_sigterm(ready: str, token: str, status_conn) -> int:
    """A child that exits 0 on SIGTERM, after saying it is ready."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    Path(ready).write_text(token)
    while True:
        time.sleep(1)


def test_drain_stops_a_child_paused_with_sigstop_cleanly(tmp_path):
    """A SIGSTOPped child (a pause drill) gets SIGCONT after SIGTERM, so it drains instead of
    being SIGKILLed at the deadline."""
    ready = tmp_path / "ready"
    spec = supervisor.ChildSpec("paused", _exit_on_sigterm, (str(ready),))
    sup = supervisor.Supervisor([spec], "n1")
    child = sup.children["paused"]
    sup.start_child(child)
    process = child.process  # drain() reaps the child and forgets its process
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "child never started"
            assert process.is_alive()
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGSTOP)
        assert sup.drain() == 0, "the paused child was killed instead of stopping on SIGTERM"
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)
