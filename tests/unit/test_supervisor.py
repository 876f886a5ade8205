"""The supervisor's own logic, without processes: liveness and restart policy."""

from __future__ import annotations

import time

import supervisor


def test_liveness_follows_the_loop():
    sup = supervisor.Supervisor([], "n1")
    assert sup.alive()
    sup.last_loop_at = time.monotonic() - 60
    assert not sup.alive()


def test_drain_timeout_is_within_the_promised_10_seconds():
    assert supervisor.DRAIN_TIMEOUT_S <= 10
