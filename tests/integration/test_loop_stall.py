"""The loop-stall split (cluster/worker.cpu_wait_s): time a thread was runnable but had no core,
which tells a host's stall (other processes on the cores) from the product process's own work."""

from __future__ import annotations

import os
import threading
import time

import pytest

from cluster.worker import cpu_wait_s

pytestmark = pytest.mark.skipif(cpu_wait_s() is None, reason="the kernel keeps no schedstat")


def _spin(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_thread_sharing_its_core_with_a_busy_process_waits_for_it():
    cpu = min(os.sched_getaffinity(0))
    competitor = os.fork()
    if competitor == 0:  # a busy loop on the same core
        try:
            os.sched_setaffinity(0, {cpu})
            _spin(30)
        finally:
            os._exit(0)
    waited: list[float] = []

    def measured() -> None:  # a thread of its own: pinning it leaves pytest's threads alone
        os.sched_setaffinity(0, {cpu})
        before = cpu_wait_s()
        _spin(0.6)
        waited.append(cpu_wait_s() - before)

    try:
        thread = threading.Thread(target=measured)
        thread.start()
        thread.join(30)
    finally:
        os.kill(competitor, 9)
        os.waitpid(competitor, 0)
    # Two busy tasks on one core: about half the time each; a quarter leaves a wide margin.
    assert waited and waited[0] > 0.15, f"waited {waited} s for the core in 0.6 s of spinning"


def test_a_sleeping_thread_waits_for_no_core():
    before = cpu_wait_s()
    time.sleep(0.3)
    assert cpu_wait_s() - before < 0.05
