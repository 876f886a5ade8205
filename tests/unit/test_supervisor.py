"""The supervisor's own logic, with trivial children: restart with backoff, no restart of a
configuration failure, SIGTERM stopping every child, the drain deadline, stopping a stopped child,
and a loop that waits for events (an exit, a wake-up, a signal) rather than for its next tick."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

import supervisor


def test_liveness_follows_the_loop():
    sup = supervisor.Supervisor([], "n1")
    assert sup.alive()
    sup.last_loop_at = time.monotonic() - 60
    assert not sup.alive()


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


def _exit_with(starts: str, code: int, token: str, status_conn) -> int:
    """A child that notes its token and exits with `code` at once: a crash on every start."""
    with open(starts, "a") as fh:
        fh.write(token + "\n")
    return code


def _ignore_sigterm(ready: str, token: str, status_conn) -> int:
    """A child that ignores SIGTERM (a hung drain), after saying it is ready."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Path(ready).write_text(token)
    while True:
        time.sleep(1)


@pytest.fixture
def own_signal_handlers():
    """Supervisor.run() installs SIGTERM/SIGINT handlers in this process: put pytest's back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_until(sup: supervisor.Supervisor, done, timeout_s: float = 30.0) -> int:
    """Run the supervisor until `done(sup)` holds (then it stops as on SIGTERM) or the timeout passes."""
    deadline = time.monotonic() + timeout_s

    def tick(s: supervisor.Supervisor) -> None:
        if done(s) or time.monotonic() > deadline:
            s.request_stop(signal.SIGTERM)

    sup.on_tick = tick
    code = sup.run()
    assert time.monotonic() <= deadline, "the supervisor never got where the test waited for"
    return code


def test_a_crashing_child_is_restarted_with_doubling_backoff(tmp_path, own_signal_handlers):
    starts = tmp_path / "starts"
    exits: list[tuple[str, int | None, float]] = []
    sup = supervisor.Supervisor(
        [supervisor.ChildSpec("crashy", _exit_with, (str(starts), 1))],
        "n1",
        on_exit=lambda name, token, code: exits.append((token, code, sup.children[name].backoff_s)),
    )
    began = time.monotonic()
    assert run_until(sup, lambda s: len(exits) >= 4) == 0
    tokens = [token for token, _, _ in exits]
    assert starts.read_text().split() == tokens and len(set(tokens)) == 4, "each start is a new incarnation"
    assert [code for _, code, _ in exits] == [1, 1, 1, 1]
    delays = [backoff for _, _, backoff in exits]
    assert delays == [supervisor.BACKOFF_INITIAL_S * 2**n for n in range(4)]
    assert time.monotonic() - began >= sum(delays[:3]), "a restart came before its backoff"
    assert sup.children["crashy"].restarts == 4


def test_a_child_exiting_for_its_configuration_is_not_restarted(tmp_path, own_signal_handlers):
    starts = tmp_path / "starts"
    spec = supervisor.ChildSpec("misconfigured", _exit_with, (str(starts), supervisor.EXIT_DO_NOT_RESTART))
    sup = supervisor.Supervisor([spec], "n1")
    assert run_until(sup, lambda s: s.children["misconfigured"].failed) == 0
    assert len(starts.read_text().split()) == 1
    assert sup.children["misconfigured"].restarts == 0


def test_sigterm_stops_every_child(tmp_path, own_signal_handlers):
    specs = [
        supervisor.ChildSpec(f"c{i}", _exit_on_sigterm, (str(tmp_path / f"ready{i}"),)) for i in range(2)
    ]
    sup = supervisor.Supervisor(specs, "n1")
    processes = []

    def all_ready_then_sigterm(s: supervisor.Supervisor) -> bool:
        if not processes and all((tmp_path / f"ready{i}").exists() for i in range(2)):
            processes.extend(c.process for c in s.children.values())
            os.kill(os.getpid(), signal.SIGTERM)  # the real signal, to the supervisor's own handler
        return False

    assert run_until(sup, all_ready_then_sigterm) == 0
    assert sup.stop_requested == signal.SIGTERM
    assert len(processes) == 2 and all(p.exitcode == 0 for p in processes), "a child did not drain"
    assert all(c.restarts == 0 and c.process is None for c in sup.children.values())


def test_drain_kills_a_child_that_ignores_sigterm_before_the_deadline(tmp_path, monkeypatch):
    assert supervisor.DRAIN_TIMEOUT_S <= 10, "the README promises a stop within 10 s"
    monkeypatch.setattr(supervisor, "DRAIN_TIMEOUT_S", 2.0)
    ready = tmp_path / "ready"
    sup = supervisor.Supervisor([supervisor.ChildSpec("stubborn", _ignore_sigterm, (str(ready),))], "n1")
    child = sup.children["stubborn"]
    sup.start_child(child)
    process = child.process
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert time.monotonic() < deadline, "child never started"
            time.sleep(0.02)
        began = time.monotonic()
        assert sup.drain() == 1, "a killed child is not a clean stop"
        assert time.monotonic() - began < supervisor.DRAIN_TIMEOUT_S
        assert process.exitcode == -signal.SIGKILL
    finally:
        if process.is_alive():
            process.kill()
            process.join(5)


# Far longer than the tests below wait: what they see happen came from an event, not from a tick.
LONG_TICK_S = 60.0


def test_a_child_exit_is_handled_at_once_not_at_the_next_tick(tmp_path, own_signal_handlers):
    starts = tmp_path / "starts"
    exits: list[int | None] = []
    spec = supervisor.ChildSpec("crashy", _exit_with, (str(starts), supervisor.EXIT_DO_NOT_RESTART))
    sup = supervisor.Supervisor(
        [spec], "n1", on_exit=lambda name, token, code: exits.append(code), tick_s=LONG_TICK_S
    )
    assert run_until(sup, lambda s: bool(exits), timeout_s=20.0) == 0
    assert exits == [supervisor.EXIT_DO_NOT_RESTART]


def test_a_restart_comes_when_its_backoff_ends_not_at_the_next_tick(tmp_path, own_signal_handlers):
    starts = tmp_path / "starts"
    sup = supervisor.Supervisor(
        [supervisor.ChildSpec("crashy", _exit_with, (str(starts), 1))], "n1", tick_s=LONG_TICK_S
    )
    assert run_until(sup, lambda s: s.children["crashy"].restarts >= 2, timeout_s=20.0) == 0
    assert len(starts.read_text().split()) >= 2


def test_wake_from_another_thread_ends_the_wait(own_signal_handlers):
    ticks: list[float] = []

    def woken_once(s: supervisor.Supervisor) -> bool:
        ticks.append(time.monotonic())
        if len(ticks) == 1:
            threading.Thread(target=s.wake).start()
        return len(ticks) >= 2

    sup = supervisor.Supervisor([], "n1", tick_s=LONG_TICK_S)
    assert run_until(sup, woken_once, timeout_s=20.0) == 0


def _main_thread_waits_in_poll() -> bool:
    wchan = Path(f"/proc/self/task/{threading.main_thread().native_id}/wchan")
    return "poll" in wchan.read_text()


def test_a_signal_another_thread_receives_while_the_loop_waits_stops_it_at_once(own_signal_handlers):
    """As when an HTTP handler thread takes the node's SIGTERM: the main thread, blocked in its
    wait, runs no Python signal handler until something wakes it."""
    sup = supervisor.Supervisor([], "n1", tick_s=LONG_TICK_S)
    began = time.monotonic()

    def sigterm_once_the_loop_waits() -> None:
        deadline = time.monotonic() + 20
        while not _main_thread_waits_in_poll() and time.monotonic() < deadline:
            time.sleep(0.01)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)

    threading.Thread(target=sigterm_once_the_loop_waits).start()
    assert sup.run() == 0
    assert sup.stop_requested == signal.SIGTERM
    assert time.monotonic() - began < LONG_TICK_S / 2, "the signal waited for the next tick"


def _say_hello(token: str, status_conn) -> int:
    """A child that sends one message other than a status, then waits to exit 0 on SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    status_conn.send(("hello", token))
    while True:
        time.sleep(1)


def test_a_failing_hook_is_logged_and_the_loop_goes_on(own_signal_handlers, caplog):
    """A node's hook that raises (on_message, and on_tick at every turn) must not take the
    supervisor, and with it the children's supervision, down."""
    heard = []

    def on_message(name, message):
        heard.append(message)
        raise RuntimeError("a node bug")

    sup = supervisor.Supervisor([supervisor.ChildSpec("talker", _say_hello)], "n1", on_message=on_message)
    ticks = []
    deadline = time.monotonic() + 30

    def tick(s: supervisor.Supervisor) -> None:
        ticks.append(1)
        if heard and len(ticks) > 3 or time.monotonic() > deadline:
            s.request_stop(signal.SIGTERM)
        raise RuntimeError("a tick bug")

    sup.on_tick = tick
    assert sup.run() == 0, "the child was not stopped cleanly"
    assert time.monotonic() <= deadline, "the message never came"
    assert heard[0][0] == "hello" and len(ticks) > 3
    assert "message hook failed" in caplog.text and "tick hook failed" in caplog.text
