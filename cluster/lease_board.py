"""One lease renewer per node: the product processes' leases renewed by a thread of the node.

A leader's lease must be renewed whether the product trades or not, and apart from its matching
loop (a long batch, a snapshot or a GC pause must not cost it). A renewer thread in every product
process did that, but it cost each idle leader ten wake-ups and ten fsynced Redis writes a second,
and on a busy node it fought the matching loop for its process's GIL. Here the node (supervisor
process) renews the leases of all its leaders with one Redis round trip per `lease_renew_ms`.

The node and its product processes share a small file mapped into memory, the lease board: one
slot per product (in the node's product order). The product process writes what it holds and
when its loop last turned; the node's renewer writes back until when the lease may be trusted,
or that it is lost. Nothing else is shared: a product's process decides alone when to publish.

Guarantees, as with a renewer in the product process (cluster/lease.py has the rest):
- A lease is renewed only while its process's matching loop turned within
  `Timing.loop_stall_limit_ms`: a hung loop, or a stopped (SIGSTOP) process, loses it.
- A renewal sent at monotonic time t lets the leader publish until t + TTL - safety, on the same
  host-wide monotonic clock (CLOCK_MONOTONIC) in both processes.
- A dead product process's slot is cleared by the node before its lease is released
  (cluster/node.py), so the renewer never keeps a dead leader's lease alive.
- A lease that lapsed while Redis or this node was held up (a Redis fsync stalled by a busy disk
  for longer than the TTL) is taken again with the same value if nobody can have held it since
  (redis_state.RENEW_MANY): its leader, paused at its deadline, resumes at the same epoch.

Slot layout (SLOT_BYTES each, 64-bit words in the host's byte order: the file never leaves the
host); each field has one writer:
  word 0  epoch           product  the leadership to renew, 0 for none; written after the value
  word 1  beat_ns         product  monotonic ns of the matching loop's last turn
  word 2  renewed_epoch   node     the epoch the last successful renewal was for; written after:
  word 3  valid_until_ns  node     until when that renewal lets the leader publish
  word 4  lost_epoch      node     an epoch Redis said is not ours any more
  word 5  value_len       product  the lease value `<epoch>|<token>`, in UTF-8, from byte 48
A torn read can only pair an epoch with an older renewal time (a smaller valid_until) or another
epoch (ignored): never with a later one.
"""

from __future__ import annotations

import logging
import mmap
import os
import queue
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cluster.log_limit import RateLimitedWarning
from cluster.redis_state import LeaseRenewals
from supervisor import pid_alive

log = logging.getLogger(__name__)

SLOT_BYTES = 512
SLOT_WORDS = SLOT_BYTES // 8
EPOCH, BEAT, RENEWED_EPOCH, VALID_UNTIL, LOST_EPOCH, VALUE_LEN = range(6)  # word of the slot
VALUE = 48  # byte of the slot
VALUE_MAX = SLOT_BYTES - VALUE


BOARD_PREFIX = "obc-leases-"


def remove_orphans() -> None:
    """Delete the boards of nodes that are gone (named by their pid)."""
    for path in Path(board_dir()).glob(f"{BOARD_PREFIX}*"):
        pid = path.name[len(BOARD_PREFIX) :].partition("-")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            path.unlink(missing_ok=True)


def board_dir() -> str:
    """Memory-backed when the host has /dev/shm (the file is never meant to reach a disk)."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class LeaseBoard:
    """The mapped file: created by the node, opened by each product process."""

    def __init__(self, path: Path, slots: int) -> None:
        self.path = path
        self.slots = slots
        with open(path, "r+b") as file:
            self.memory = mmap.mmap(file.fileno(), slots * SLOT_BYTES)
        self.words = memoryview(self.memory).cast("Q")
        self.values: dict[int, tuple[int, str]] = {}  # slot -> (epoch, lease value) last read

    @classmethod
    def create(cls, slots: int) -> LeaseBoard:
        """A zeroed board for `slots` products (the node); remove() deletes its file, and a node
        that was killed leaves one that the next node on the host deletes."""
        remove_orphans()
        fd, name = tempfile.mkstemp(prefix=f"{BOARD_PREFIX}{os.getpid()}-", dir=board_dir())
        with os.fdopen(fd, "wb") as file:
            file.truncate(slots * SLOT_BYTES)
        return cls(Path(name), slots)

    def slot(self, index: int) -> LeaseSlot:
        """The product process's side of slot `index`."""
        if not 0 <= index < self.slots:
            raise IndexError(f"lease board has {self.slots} slots, not {index + 1}")
        return LeaseSlot(self.memory, self.words, index)

    def remove(self) -> None:
        """The node stops: the file goes (its product processes have stopped)."""
        self.path.unlink(missing_ok=True)

    # ---- the node's side ------------------------------------------------------------------
    def read(self, index: int) -> tuple[int, str, int] | None:
        """(epoch, lease value, loop beat ns) of a slot that holds a lease, or None. A value is
        read once per epoch (an epoch names one lease value); the epoch is read again after it: a
        slot changing meanwhile is skipped this round."""
        words, at = self.words, index * SLOT_WORDS
        epoch = words[at + EPOCH]
        if not epoch:
            return None
        known = self.values.get(index)
        if known is None or known[0] != epoch:
            start = index * SLOT_BYTES + VALUE
            size = min(words[at + VALUE_LEN], VALUE_MAX)
            value = bytes(self.memory[start : start + size]).decode(errors="replace")
            if words[at + EPOCH] != epoch or not value.startswith(f"{epoch}|"):
                return None
            known = self.values[index] = (epoch, value)
        return epoch, known[1], words[at + BEAT]

    def renewed(self, index: int, epoch: int, valid_until_ns: int) -> None:
        """A renewal of `epoch` succeeded: its leader may publish until valid_until_ns (never
        earlier than an answer already written: rounds can answer out of order)."""
        at = index * SLOT_WORDS
        if self.words[at + RENEWED_EPOCH] == epoch and self.words[at + VALID_UNTIL] >= valid_until_ns:
            return
        self.words[at + VALID_UNTIL] = valid_until_ns
        self.words[at + RENEWED_EPOCH] = epoch

    def lost(self, index: int, epoch: int) -> None:
        """Redis says the lease of `epoch` is not this leader's any more."""
        self.words[index * SLOT_WORDS + LOST_EPOCH] = epoch

    def clear(self, index: int) -> None:
        """The slot's process died: renew nothing for it from now on."""
        self.words[index * SLOT_WORDS + EPOCH] = 0


class LeaseSlot:
    """A product process's slot: what it holds, that its loop is alive, and what the node says."""

    def __init__(self, memory: mmap.mmap, words: memoryview, index: int) -> None:
        self.memory = memory
        self.words = words
        self.at = index * SLOT_WORDS
        self.value_at = index * SLOT_BYTES + VALUE

    def hold(self, epoch: int, lease_value: str) -> None:
        """Have the node renew this lease from now on."""
        value = lease_value.encode()
        if len(value) > VALUE_MAX:
            raise ValueError(f"lease value of {len(value)} bytes; the board holds {VALUE_MAX}")
        words, at = self.words, self.at
        words[at + EPOCH] = 0
        self.memory[self.value_at : self.value_at + len(value)] = value
        words[at + VALUE_LEN] = len(value)
        self.beat()
        words[at + EPOCH] = epoch

    def drop(self) -> None:
        """Stop renewing (stepped down, handed over, stopping)."""
        self.words[self.at + EPOCH] = 0

    def beat(self) -> None:
        """The matching loop turned: it is alive."""
        self.words[self.at + BEAT] = time.monotonic_ns()

    def valid_until(self, epoch: int) -> float | None:
        """Until when (monotonic s) the node's last renewal of `epoch` lets it publish; None if
        there was none yet."""
        words, at = self.words, self.at
        if words[at + RENEWED_EPOCH] != epoch:
            return None
        return words[at + VALID_UNTIL] / 1e9

    def lost(self, epoch: int) -> bool:
        """Whether the node found the lease of `epoch` gone or taken."""
        return self.words[self.at + LOST_EPOCH] == epoch


class NodeRenewer:
    """The node's renewer: every `lease_renew_ms`, one Redis round trip renews every lease on the
    board whose loop is alive (see the module docstring).

    A round does not wait for the one before it. With `appendfsync always` Redis answers a write
    only after its fsync, and a disk shared with a busy broker can hold that for longer than the
    TTL; a renewer that waits for each answer before it sends the next lets the lease lapse while
    Redis could have extended it, and a standby that only reads (answered at once) takes it. So
    each round goes out on time on a free connection of its own (up to ROUNDS_IN_FLIGHT): read at
    once when Redis answers within half a period (the usual case, one thread), else by a pool
    thread, and written back as they come: queued in Redis, the next round extends the lease, or
    takes it again if it lapsed (redis_state.RENEW_MANY), before a standby's acquisition."""

    ROUNDS_IN_FLIGHT = 4

    def __init__(self, board: LeaseBoard, products: tuple[str, ...], redis_url: str, timing) -> None:
        self.board = board
        self.products = products
        self.timing = timing
        self.trusted_ns = timing.lease_trust_ms() * 1_000_000
        # A late answer still counts (a paused leader waits out its grace for one): give up on a
        # round only past the grace.
        reply_timeout_s = (timing.lease_ttl_ms + timing.lease_overdue_grace_ms) / 1000
        self.connections = [LeaseRenewals(redis_url, reply_timeout_s) for _ in range(self.ROUNDS_IN_FLIGHT)]
        self.idle: queue.SimpleQueue[LeaseRenewals] = queue.SimpleQueue()
        for connection in self.connections:
            self.idle.put(connection)
        self.rounds = ThreadPoolExecutor(
            self.ROUNDS_IN_FLIGHT, thread_name_prefix="lease-round", initializer=prefer_this_thread
        )
        self.write_back = threading.Lock()  # rounds answer from several threads
        self.warn = RateLimitedWarning(log, interval_s=5.0)
        self.stalled: set[tuple[int, int]] = set()  # (slot, epoch) whose stall was logged
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="lease-renewer", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(2.0)
        self.rounds.shutdown(wait=False, cancel_futures=True)
        for connection in self.connections:
            connection.close()

    def run(self) -> None:
        """Thread: start a round every lease_renew_ms until stopped; nothing it meets may end it.
        At a fixed rate, whatever the rounds in flight take."""
        prefer_this_thread()
        period_s = self.timing.lease_renew_ms / 1000
        next_round = time.monotonic()
        while not self.stopped.is_set():
            try:
                self.start_round()
            except Exception as exc:  # noqa: BLE001 - a dead renewer would lose every lease
                self.warn.warn("round", "lease renewer round failed error=%r", exc)
            now = time.monotonic()
            next_round = max(next_round + period_s, now)
            self.stopped.wait(next_round - now)

    def start_round(self) -> None:
        """Send a renewal of the leases whose loops are alive, on a free connection."""
        sent = time.monotonic_ns()
        held = []
        for index in range(self.board.slots):
            slot = self.board.read(index)
            if slot is None:
                continue
            epoch, value, beat_ns = slot
            if self.alive(index, epoch, sent - beat_ns):
                held.append((index, epoch, value))
        if not held:
            return
        try:
            connection = self.idle.get_nowait()
        except queue.Empty:
            self.warn.warn("busy", "lease renew skipped: %d rounds still unanswered", self.ROUNDS_IN_FLIGHT)
            return
        try:
            connection.send([(self.products[i], value) for i, _, value in held], self.timing.lease_ttl_ms)
            # Usually answered within a millisecond: read it here. If not, a pool thread waits
            # for it while the next round goes out on time.
            answered = connection.answered(self.timing.lease_renew_ms / 2000)
        except Exception as exc:  # noqa: BLE001 - Redis unreachable: the clock decides
            self.idle.put(connection)
            self.warn.warn("renew", "lease renew failed leaders=%d error=%s", len(held), exc)
            return
        if answered:
            self.finish_round(connection, sent, held)
        else:
            self.rounds.submit(self.finish_round, connection, sent, held)

    def finish_round(self, connection: LeaseRenewals, sent: int, held: list[tuple[int, int, str]]) -> None:
        """Read a round's answer and write back what Redis said."""
        try:
            lost, retaken = connection.receive()
        except Exception as exc:  # noqa: BLE001 - Redis unreachable or slow: the clock decides
            self.warn.warn("renew", "lease renew failed leaders=%d error=%s", len(held), exc)
            return
        finally:
            self.idle.put(connection)
        took_ms = (time.monotonic_ns() - sent) / 1e6
        if took_ms > self.timing.lease_ttl_ms / 4:
            self.warn.warn("slow", "lease renew slow leaders=%d took_ms=%d", len(held), took_ms)
        for position in retaken:
            index, epoch, _ = held[position]
            log.warning(
                "lease lapsed and taken again product=%s epoch=%d: nobody held it meanwhile",
                self.products[index],
                epoch,
            )
        valid_until = sent + self.trusted_ns
        with self.write_back:
            for position, (index, epoch, _) in enumerate(held):
                if position in lost:
                    self.board.lost(index, epoch)
                else:
                    self.board.renewed(index, epoch, valid_until)

    def alive(self, index: int, epoch: int, stalled_ns: int) -> bool:
        """Whether the slot's loop turned within the stall limit (logged once per stall)."""
        key = (index, epoch)
        if stalled_ns <= self.timing.loop_stall_limit_ms * 1_000_000:
            self.stalled.discard(key)
            return True
        if key not in self.stalled:
            self.stalled.add(key)
            log.error(
                "matching loop stalled product=%s epoch=%d stalled_ms=%d limit_ms=%d: "
                "no longer renewing the lease",
                self.products[index],
                epoch,
                stalled_ns / 1e6,
                self.timing.loop_stall_limit_ms,
            )
        return False


def prefer_this_thread() -> None:
    """Run the renewer ahead of the node's matching loops when the cores are saturated: a lower
    nice value for this thread alone (Linux: a thread id is a process id to setpriority). Needs
    CAP_SYS_NICE; without it the thread keeps the process's priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), -10)
    except (OSError, AttributeError) as exc:
        log.debug("lease renewer keeps its priority: %s", exc)
