"""The supervisor: start one child process per spec, reap, restart with backoff, forward signals.

It knows nothing of matching: a child is a picklable target called as
`target(*args, token=..., status_conn=...)` in a fresh process. Each incarnation gets a fresh
token (its identity, e.g. as a lease owner) and a two-way pipe: the child reports its status (a
dict) and may send other messages, which an `on_message` hook hears; `send()` answers. A hook
hears of every exit, so the node can release what a killed child held without waiting for a TTL.

The loop sleeps until something happens: a child exits (its process sentinel), a child reports
(its status pipe), a restart or the `on_tick` hook is due (at most `tick_s` apart), a signal
arrives or another thread calls `wake()` (the supervisor's own wake-up pipe). It turns when
there is something to do and then looks only at the children concerned, instead of going over
every child 20 times a second; and a child's exit is handled at once, not at the next turn. The
waits go through one epoll set that children join when started and leave when reaped: ~2 us a
wait, where multiprocessing.connection.wait() registers every pipe anew (~300 us for 48 children).

Children are forked by multiprocessing's forkserver: a clean single-threaded process, started
once, that imports the `preload` modules and forks a child per request. The children share the
code and import-time objects of those modules copy-on-write (a spawned child imported its own
copy: ~15 MB each of a product process's unique memory) and start without importing them again.
The forkserver exits when the supervisor does (its end of a pipe closes, even on SIGKILL), and
its children with it (die_with_parent).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import multiprocessing
import os
import secrets
import selectors
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("supervisor")

DRAIN_TIMEOUT_S = 10.0
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 5.0
HEALTHY_AFTER_S = 30.0
EXIT_RESTART_AT_ONCE = 75  # the child lost its role and wants to come back fresh
EXIT_DO_NOT_RESTART = 78  # a configuration problem: restarting would fail the same way
# What the loop's wait found ready: a child's status report, a child's exit, or a wake-up.
REPORTED, EXITED = "reported", "exited"


@dataclass
class ChildSpec:
    """What to run for one named child."""

    name: str
    target: Callable[..., int]
    args: tuple = ()


@dataclass
class Child:
    """One child's current incarnation and its restart bookkeeping."""

    spec: ChildSpec
    process: multiprocessing.process.BaseProcess | None = None
    conn: Any = None
    token: str = ""
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_INITIAL_S
    restart_at: float | None = None
    failed: bool = False
    status: dict = field(default_factory=dict)


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with_parent(signum: int, parent_pid: int) -> bool:
    """In a child, first thing: the kernel sends `signum` when the parent dies (Linux), so a
    SIGKILLed or OOM-killed parent leaves no orphans behind. A child whose parent died before this
    ran gets the signal at once. Returns whether the kernel took the request.

    The kernel fires it when the *thread* that forked the child exits, so fork from a thread that
    lives as long as the parent (the main thread). Elsewhere than Linux: no-op (False).
    """
    if _libc is None:
        return False
    armed = _libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signum)
    return armed


def _child_entry(
    target: Callable[..., int], args: tuple, token: str, conn: Any, log_level: int, supervisor_pid: int
) -> None:
    """Runs in the forked child: its own logging, then the target; its return is the exit code."""
    # Objects the forkserver imported stay out of collections: a collection writes to every object
    # it scans, which would copy the shared pages into this process.
    gc.freeze()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the forkserver may ignore it (cluster/forkserver_init.py)
    # The supervisor gone (SIGKILL, OOM) means nobody reaps, restarts or releases leases: stop as
    # on the supervisor's own SIGTERM (drain, release the lease) rather than lead on as an orphan.
    # The parent is the forkserver, which exits when the supervisor does; a supervisor that died
    # before this ran is caught by the check after.
    die_with_parent(signal.SIGTERM, os.getppid())
    if not pid_alive(supervisor_pid):
        os.kill(os.getpid(), signal.SIGTERM)
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s"
    )
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; it sends SIGTERM
    code = target(*args, token=token, status_conn=conn)
    os._exit(int(code or 0))


def pid_alive(pid: object) -> bool:
    """Whether `pid` names a running process (another user's process counts too); False for no pid."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    """A small loop: start children, reap them, restart with backoff, stop on a signal."""

    def __init__(
        self,
        specs: list[ChildSpec],
        node_id: str,
        on_exit: Callable[[str, str, int | None], None] | None = None,
        on_tick: Callable[[Supervisor], None] | None = None,
        on_message: Callable[[str, Any], None] | None = None,
        tick_s: float = 0.25,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.children = {spec.name: Child(spec) for spec in specs}
        self.node_id = node_id
        self.on_exit = on_exit
        self.on_tick = on_tick
        self.on_message = on_message
        self.tick_s = tick_s  # the longest wait: on_tick runs at least this often, and alive() holds
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(preload))
        self.stop_requested: int | None = None
        self.last_loop_at = time.monotonic()
        # Written to end the loop's wait early (wake(), a signal). Made here, not in run(), so that
        # threads started before run() can wake it; it lives as long as the process.
        self.wake_fd, self.wake_write_fd = os.pipe()
        os.set_blocking(self.wake_fd, False)
        os.set_blocking(self.wake_write_fd, False)
        self.waiting = selectors.DefaultSelector()
        self.waiting.register(self.wake_fd, selectors.EVENT_READ, None)

    def request_stop(self, signum: int, _frame: object = None) -> None:
        """Signal handler: only record; the loop acts (woken at once)."""
        self.stop_requested = signum
        self.wake()

    def wake(self) -> None:
        """End the loop's current wait: it turns (and calls on_tick) at once. Safe from any thread
        and from a signal handler."""
        try:
            os.write(self.wake_write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups the loop has not read yet: it wakes anyway

    def start_child(self, child: Child) -> None:
        """Spawn a new incarnation with a fresh token."""
        parent_conn, child_conn = self.context.Pipe(duplex=True)
        child.token = f"{self.node_id}:{child.spec.name}:{secrets.token_hex(6)}"
        child.process = self.context.Process(
            target=_child_entry,
            name=f"obc-{child.spec.name}",
            args=(
                child.spec.target,
                child.spec.args,
                child.token,
                child_conn,
                logging.getLogger().level,
                os.getpid(),
            ),
        )
        child.process.start()
        child_conn.close()
        child.conn = parent_conn
        self.waiting.register(child.process.sentinel, selectors.EVENT_READ, (EXITED, child))
        self.waiting.register(parent_conn, selectors.EVENT_READ, (REPORTED, child))
        child.started_at = time.monotonic()
        child.restart_at = None
        child.status = {}
        log.info(
            "child started name=%s pid=%d restarts=%d", child.spec.name, child.process.pid, child.restarts
        )

    def reap(self, child: Child) -> None:
        """Notice an exit, tell the hook, and schedule the restart the exit code calls for."""
        proc = child.process
        if proc is None or proc.is_alive():
            return
        code = proc.exitcode
        self.waiting.unregister(proc.sentinel)
        proc.join()
        child.process = None
        if child.conn is not None:
            self.waiting.unregister(child.conn)
            child.conn.close()
            child.conn = None
        log.info("child exited name=%s pid=%s code=%s", child.spec.name, proc.pid, code)
        if self.on_exit is not None:
            self.hook("exit", self.on_exit, child.spec.name, child.token, code)
        if self.stop_requested is not None:
            return
        if code == EXIT_DO_NOT_RESTART:
            child.failed = True
            log.error(
                "child will not be restarted name=%s (configuration problem, see its log)", child.spec.name
            )
            return
        if time.monotonic() - child.started_at > HEALTHY_AFTER_S:
            child.backoff_s = BACKOFF_INITIAL_S
        delay = 0.0 if code == EXIT_RESTART_AT_ONCE else child.backoff_s
        if code != EXIT_RESTART_AT_ONCE:
            child.backoff_s = min(child.backoff_s * 2, BACKOFF_MAX_S)
        child.restarts += 1
        child.restart_at = time.monotonic() + delay
        log.info("child restart scheduled name=%s in_s=%.2f", child.spec.name, delay)

    def read_status(self, child: Child) -> None:
        """Take the newest status report from the child's pipe, and hand its other messages to
        on_message. A pipe at its end (the child is exiting) is closed at once, so that waiting on
        it does not return at once until the reap."""
        conn = child.conn
        try:
            while conn is not None and conn.poll():
                message = conn.recv()
                if isinstance(message, dict):
                    child.status = message
                elif self.on_message is not None:
                    self.hook("message", self.on_message, child.spec.name, message)
        except (EOFError, OSError):
            self.waiting.unregister(conn)
            conn.close()
            child.conn = None

    def send(self, name: str, message: Any) -> bool:
        """Send a message to child `name`'s current incarnation; False if there is none (or it is
        exiting: its reap follows)."""
        conn = self.children[name].conn
        if conn is None:
            return False
        try:
            conn.send(message)
        except OSError:
            return False
        return True

    def run(self) -> int:
        """Supervise until a stop signal, then drain; returns 0 when every child stopped cleanly."""
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        # A signal that another thread receives (an HTTP handler's) must still end the wait.
        previous_wakeup_fd = signal.set_wakeup_fd(self.wake_write_fd, warn_on_full_buffer=False)
        try:
            for child in self.children.values():
                self.start_child(child)
            while self.stop_requested is None:
                self.last_loop_at = now = time.monotonic()
                for child in self.children.values():
                    if child.process is None and child.restart_at is not None and now >= child.restart_at:
                        self.start_child(child)
                if self.on_tick is not None:
                    self.hook("tick", self.on_tick, self)
                if self.stop_requested is None:
                    self.wait_and_handle()
        except Exception:
            # Never leave the children running unsupervised (no restarts, no lease renewal): stop
            # them as on SIGTERM.
            log.exception("supervisor loop failed; stopping the children")
            self.stop_requested = signal.SIGTERM
        finally:
            signal.set_wakeup_fd(previous_wakeup_fd)
        return self.drain()

    @staticmethod
    def hook(what: str, hook: Callable, *args) -> None:
        """Call a hook of the node; its failure is logged, and the supervisor goes on."""
        try:
            hook(*args)
        except Exception:  # noqa: BLE001 - a hook must not take the supervisor down
            log.exception("%s hook failed", what)

    def wait_and_handle(self) -> None:
        """Sleep until a child exits or reports, a wake-up, or the next due restart or tick; then
        read the reports that came in and reap the children that exited, and only those."""
        ready = [key.data for key, _ in self.waiting.select(self.next_wait_s())]
        if None in ready:
            try:
                while os.read(self.wake_fd, 4096):
                    pass
            except BlockingIOError:
                pass
        # Reports first: a child's last report, then its exit.
        for what, child in filter(None, ready):
            if what == REPORTED and child.conn is not None:
                self.read_status(child)
        for what, child in filter(None, ready):
            if what == EXITED:
                self.reap(child)

    def next_wait_s(self) -> float:
        """Until the next scheduled restart, and no longer than tick_s."""
        now = time.monotonic()
        restarts = (c.restart_at - now for c in self.children.values() if c.restart_at is not None)
        return max(0.0, min([self.tick_s, *restarts]))

    def drain(self) -> int:
        """Forward SIGTERM, wait up to DRAIN_TIMEOUT_S, then SIGKILL whatever is left."""
        log.info("stopping signal=%s children=%d", self.stop_requested, len(self.children))
        for child in self.children.values():
            if child.process is not None and child.process.is_alive():
                # A child that exits at once on the SIGTERM (the node's idle reader) may be reaped by
                # the forkserver before the SIGCONT: gone is what was asked for.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)
                    # A stopped child (a pause drill, a debugger) would hold the SIGTERM until continued.
                    os.kill(child.process.pid, signal.SIGCONT)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S - 1.0
        clean = True
        for child in self.children.values():
            proc = child.process
            if proc is None:
                continue
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                log.warning("child did not stop in time, killing name=%s pid=%d", child.spec.name, proc.pid)
                proc.kill()
                proc.join(1.0)
                clean = False
            elif proc.exitcode != 0:
                clean = False
            self.reap(child)
        log.info("stopped clean=%s", clean)
        return 0 if clean else 1

    def alive(self) -> bool:
        """Liveness: the loop turned recently."""
        return time.monotonic() - self.last_loop_at < 5.0
