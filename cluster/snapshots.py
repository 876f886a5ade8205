"""Capturing an engine's snapshot without holding up the matching loop.

A snapshot is the whole book: about 27 MB and ~170 ms of C for 1,000,000 resting orders, far too
long to stop matching for. Above `Timing.snapshot_fork_above_orders` resting orders the state is
captured the way Redis's BGSAVE does it: fork() gives a child a copy-on-write image of the
process at this instant; the child writes the snapshot and exits. The loop pays only for the fork
(~10-20 ms at 600 MB resident) and goes on matching; the bytes are exactly what engine.snapshot()
would have returned at the fork. A leader's child stages them in Redis itself and hands back only
their hash and size (the leader commits them once their events are delivered); a standby's child,
checking its state against the leader's, hands back only the hash.
Smaller books are captured in place, which is faster than a fork.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import select
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from cluster.redis_state import SNAPSHOT_FORMAT, SnapshotEnvelope, stage_snapshot, sync_client
from supervisor import die_with_parent

# The child only runs the engine's snapshot and writes; any failure is its exit code.
_CHILD_FAILED = 1
DIGEST_CHARS = 16  # state_hash: 8 bytes, in hex
# A leader's child stages a large snapshot in Redis at nice 19: on a saturated host it may wait
# long for a core, and a failed child only means the next snapshot is taken when due.
CHILD_REDIS_TIMEOUT_S = 30.0
# A child that has not exited by then is killed and its capture fails (the next is taken when
# due): one that hangs (a Redis that stopped answering, a lock another thread of the parent held
# at the fork) must not stop a product's snapshots for good. As long as staged bytes live.
CHILD_DEADLINE_S = 120.0


def state_hash(snapshot: bytes) -> str:
    """The live state hash: of the snapshot bytes, which both cores write identically for one state
    (the book in priority order, sequence, trade_seq, the id window)."""
    return hashlib.blake2b(snapshot, digest_size=8).hexdigest()


@dataclass(frozen=True)
class Captured:
    """A leader's captured snapshot: its state hash, and either its bytes (captured in place) or
    the size of the envelope that the capturing child staged in Redis itself."""

    state_hash: str
    data: bytes | None = None
    staged_size: int | None = None


def capture_bytes(engine, reader: concurrent.futures.Executor) -> concurrent.futures.Future:
    """A future of (bytes, state hash) read back from a forked child: how leaders and standbys
    captured before the child staged the bytes or sent only the hash (`bench snapshot` compares)."""
    return _capture(
        engine,
        0,
        reader,
        in_place=None,
        in_child=lambda data, digest: data,
        collected=lambda sent, digest: (sent, digest),
    )


def capture_hash(
    engine, fork_above_orders: int, reader: concurrent.futures.Executor
) -> concurrent.futures.Future:
    """A future of the state hash as of now. A standby's state check needs nothing else, so a
    forked child sends back the 16 hex characters and the process never reads the bytes."""
    return _capture(
        engine,
        fork_above_orders,
        reader,
        in_place=lambda data, digest: digest,
        in_child=lambda data, digest: b"",
        collected=lambda sent, digest: digest,
    )


def capture_staged(
    engine,
    fork_above_orders: int,
    reader: concurrent.futures.Executor,
    stage: Callable[[bytes, str], int],
) -> concurrent.futures.Future:
    """A future of a leader's Captured snapshot as of now. A forked child also stages the bytes in
    Redis itself (`stage(data, state_hash)` returns the staged size), at its own low priority:
    the product process then neither copies the 27 MB of a 1,000,000-order book back from the
    child nor sends them to Redis from its loop; it only commits them (O(1)) once delivered."""
    return _capture(
        engine,
        fork_above_orders,
        reader,
        in_place=lambda data, digest: Captured(digest, data=data),
        in_child=lambda data, digest: str(stage(data, digest)).encode(),
        collected=lambda sent, digest: Captured(digest, staged_size=int(sent)),
    )


def _capture(
    engine, fork_above_orders: int, reader, in_place, in_child, collected
) -> concurrent.futures.Future:
    """Small books in place: in_place(bytes, hash). Large ones in a forked child, which writes
    the hash and in_child(bytes, hash) to a file in memory; a reader thread gives
    collected(what the child wrote after the hash, hash) once the child exited cleanly."""
    if engine.resting_orders() < fork_above_orders:
        done: concurrent.futures.Future = concurrent.futures.Future()
        data = engine.snapshot()
        done.set_result(in_place(data, state_hash(data)))
        return done
    out = _anonymous_file()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: never returns to the caller's code
        code = _CHILD_FAILED
        try:
            _background(parent)
            data = engine.snapshot()
            digest = state_hash(data)
            _write_all(out, digest.encode())
            _write_all(out, in_child(data, digest))
            code = 0
        finally:
            os._exit(code)
    return reader.submit(lambda: collected(*_collect(pid, out)))


def _background(parent: int) -> None:
    """Make the calling (child) process yield the CPU to everything else on the host, best effort.

    nice 19 alone is not enough where the kernel groups tasks by session (autogroup, the default
    on desktop and many server kernels outside containers): there a nice value ranks a task only
    against its own session, and the session competes as a whole. A child in a node's session then
    takes a full session's share of the cores from the broker, Redis and the other nodes' leaders.
    So the child also becomes a session of its own at the lowest autogroup priority (nice 19
    host-wide: still a little CPU on a saturated host, so snapshots slow down but do not stop), and
    dies with its parent (PR_SET_PDEATHSIG), as it did with the parent's process group."""
    os.nice(19)
    if not die_with_parent(signal.SIGKILL, parent):
        return  # it could outlive its parent: it stays in the parent's process group instead
    try:
        os.setsid()
        with open("/proc/self/autogroup", "w") as file:
            file.write("19")
    except OSError:  # no autogroup (containers, other kernels), or its rate limit: nice is what counts
        pass


def _anonymous_file() -> int:
    """A file in memory that no path names: gone with its last descriptor, even after a crash."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("obc-snapshot", os.MFD_CLOEXEC)
    with tempfile.TemporaryFile() as file:
        return os.dup(file.fileno())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _collect(pid: int, fd: int) -> tuple[bytes, str]:
    """Thread: the child's bytes and their hash, once it exited cleanly; OSError otherwise.

    The child writes both to a file in memory and the thread reads them once it exited: the thread
    takes the GIL from the matching loop twice per snapshot, where reading a pipe took it once per
    chunk (27 for 1,000,000 resting orders) and joining the chunks copied the whole snapshot."""
    try:
        status = _wait_child(pid, CHILD_DEADLINE_S)
        if os.waitstatus_to_exitcode(status) != 0:
            raise OSError(f"snapshot child {pid} failed (status {status})")
        size = os.fstat(fd).st_size
        digest = os.pread(fd, DIGEST_CHARS, 0).decode()
        return os.pread(fd, size - DIGEST_CHARS, DIGEST_CHARS), digest
    finally:
        os.close(fd)


def _wait_child(pid: int, deadline_s: float) -> int:
    """The child's wait status, once it exited; past `deadline_s` it is killed and OSError raised."""
    try:
        exited = os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux 5.3+: wait without a deadline
        return os.waitpid(pid, 0)[1]
    try:
        ready, _, _ = select.select([exited], [], [], deadline_s)
    finally:
        os.close(exited)
    if not ready:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise OSError(f"snapshot child {pid} did not finish within {deadline_s:.0f} s: killed")
    return os.waitpid(pid, 0)[1]


@dataclass
class PendingSnapshot:
    """A snapshot captured at a batch boundary, written once its events are delivered."""

    epoch: int
    next_offset: int
    sequence: int
    engine: concurrent.futures.Future  # of its Captured snapshot
    announced: bool = False  # its offset was written as the standbys' checkpoint


class Snapshotter:
    """A product process's snapshots: when one is due, capturing it, and the one captured
    snapshot that waits until its events are delivered (snapshots hold delivered state only)."""

    def __init__(self, timing, product: str, fingerprint: str, redis_url: str) -> None:
        self.timing = timing
        self.product = product
        self.fingerprint = fingerprint
        self.redis_url = redis_url
        self.reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"snapshot-{product}")
        self.pending: PendingSnapshot | None = None
        self.orders_since = 0
        self.taken_at = time.monotonic()
        self.written_at: float | None = None

    def capture_hash(self, engine) -> concurrent.futures.Future:
        """A future of the state hash of `engine` now (a standby's state check)."""
        return capture_hash(engine, self.timing.snapshot_fork_above_orders, self.reader)

    def due(self) -> bool:
        """Whether a leader should capture one now (Timing.snapshot_due; none while one waits)."""
        return self.pending is None and self.timing.snapshot_due(
            self.orders_since, time.monotonic() - self.taken_at
        )

    def take(self, engine, epoch: int, next_offset: int, lease_value: str) -> PendingSnapshot:
        """Capture the engine's state now, as the snapshot waiting for its events' delivery (a
        forked capture stages its bytes in Redis under the leader's `lease_value`)."""
        sequence = engine.sequence

        def stage(data: bytes, digest: str) -> int:  # in the child
            client = sync_client(self.redis_url, CHILD_REDIS_TIMEOUT_S)
            envelope = self.envelope(epoch, next_offset, sequence, data, digest)
            return stage_snapshot(client, self.product, lease_value, envelope)

        captured = capture_staged(engine, self.timing.snapshot_fork_above_orders, self.reader, stage)
        self.pending = PendingSnapshot(epoch, next_offset, sequence, captured)
        self.orders_since = 0
        self.taken_at = time.monotonic()
        return self.pending

    def writable(self, delivered_seq: int, progress_offset: int) -> PendingSnapshot | None:
        """The waiting snapshot, once captured and every event it covers is delivered."""
        snap = self.pending
        if (
            snap is not None
            and snap.engine.done()
            and snap.sequence <= delivered_seq
            and snap.next_offset <= progress_offset
        ):
            return snap
        return None

    def envelope(
        self, epoch: int, next_offset: int, sequence: int, data: bytes, digest: str
    ) -> SnapshotEnvelope:
        """The stored form of a snapshot."""
        return SnapshotEnvelope(
            format=SNAPSHOT_FORMAT,
            product=self.product,
            epoch=epoch,
            next_offset=next_offset,
            sequence=sequence,
            fingerprint=self.fingerprint,
            engine=data,
            state_hash=digest,
        )

    def dropped(self) -> None:
        """The waiting snapshot will not be stored (its capture failed, or its staged bytes are
        gone): the next is taken when due."""
        self.pending = None

    def written(self) -> None:
        """The waiting snapshot is stored."""
        self.pending = None
        self.written_at = time.monotonic()

    def age_s(self) -> float | None:
        """Seconds since the last snapshot this process stored (None: none yet)."""
        return None if self.written_at is None else round(time.monotonic() - self.written_at, 1)

    def close(self) -> None:
        """Wait for a capture under way (its child is reaped)."""
        self.reader.shutdown(wait=True, cancel_futures=False)
