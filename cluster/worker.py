"""One product's process: Kafka orders in, the pure core, Kafka events out, exactly once in effect.

Invariants (the argument is in docs/exactly-once.md):
- The core is deterministic, so whoever applies input offsets 0..n computes the same events with
  the same sequences; a redelivered event is byte-identical to the first copy.
- Start-up and crash recovery are one path (crash-only): restore the latest snapshot, read the
  order topic from its offset, trail the recorded progress as a standby, take the lease when it
  is free, then publish only events whose sequence is above the progress read with the lease.
- Progress (last delivered sequence, next input offset) is written only for events the broker
  acknowledged, and only while holding exactly our lease value; snapshots are of delivered state only.
- A leader stops publishing before its lease can expire by its own monotonic clock. Losing the
  lease makes it a hot standby in the same process: it purges what it had not yet delivered and
  keeps applying input (the new leader publishes the same events). It leads again from memory
  only once the recorded progress has passed everything it computed; otherwise (and with Kafka
  transactions) it restarts (exit 75) through the one recovery path.
- The lease is renewed on its own thread (cluster/lease.py) while this loop keeps turning.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import gc
import json
import logging
import os
import signal
import time
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cluster import input_log, kafka_io, snapshots
from cluster import metrics as m
from cluster.aio import cancelling, until_tick
from cluster.faults import CORRUPT_SIGNAL, STALL_SIGNAL, stall_s
from cluster.lease import Demoted, Leadership, LeaseKeeper, LeaseLapsed
from cluster.lease_board import LeaseBoard, LeaseSlot
from cluster.publisher import Publisher
from cluster.redis_state import ProductRedis, async_client
from cluster.reporting import StatusReporter
from cluster.settings import NodeSettings
from cluster.state_check import DIVERGED_RESTART_S, StateCheck
from engine.api import Engine, SequenceExhausted, apply_one
from engine.config import ProductConfig
from engine.native import make_engine, restore_engine
from engine.passthrough import PassthroughEngine
from engine.snapshot import SnapshotError
from supervisor import EXIT_DO_NOT_RESTART, EXIT_RESTART_AT_ONCE

log = logging.getLogger(__name__)

EXIT_OK = 0
# The exit codes are the supervisor's protocol: come back as standby at once / do not restart.
EXIT_DEMOTED = EXIT_RESTART_AT_ONCE
EXIT_CONFIG = EXIT_DO_NOT_RESTART

STANDBY_READ_AHEAD = 200_000  # records a standby holds ahead of the leader's recorded progress
READ_AHEAD_FULL_WAIT_S = 0.02  # then it waits this long before looking again
# Records stamped further than this from the node's clock are not timed (see observe_order_to_event).
LATENCY_MEASURABLE_S = 3600.0
CORRUPT_ORDER_ID = 2**62
LOOP_WATCH_PERIOD_S = 0.1  # how often the stall watch wakes; it sees stalls of any length
# With no input for LOOP_WATCH_BUSY_S the watch wakes only as often as status is reported
# (Timing.status_cadence_s): an idle loop has no order to delay, and 48 idle products waking ten
# times a second each cost a tenth of a core between them.
LOOP_WATCH_BUSY_S = 1.0


def cpu_wait_s() -> float | None:
    """Seconds the calling thread has spent runnable but waiting for a CPU (Linux schedstat), or
    None where the kernel does not say. A stall this covers was the host's, not the loop's work."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as file:
            return int(file.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def new_engine(settings: NodeSettings, config: ProductConfig, snapshot: bytes | None = None) -> Engine:
    """The product's core as the node is set: the chosen matching core, or the benchmark's
    passthrough; fresh, or in the state of `snapshot` (raises SnapshotError)."""
    if settings.passthrough:
        copies = settings.passthrough_copies_per_mille
        if snapshot is None:
            return PassthroughEngine(config, copies)
        return PassthroughEngine.restore(config, snapshot, copies)
    if snapshot is None:
        return make_engine(config, settings.core)
    return restore_engine(config, snapshot, settings.core)


class ConfigMismatch(Exception):
    """State in Redis was made under other product settings: refuse to lead from it."""


def fenced(rc: int, what: str) -> None:
    """Raise for a fenced write Redis did not make: the lease is another's (Demoted), or nobody
    holds it (LeaseLapsed: the node may take it again, so no reason to step down)."""
    if rc == -1:
        raise Demoted("not the lease holder")
    if rc == -4:
        raise LeaseLapsed(f"{what} not written")


class ProductWorker:
    """The loop of one product process; `run()` returns the process's exit code."""

    def __init__(
        self, settings: NodeSettings, product: str, lease_slot: LeaseSlot, token: str, status_conn=None
    ) -> None:
        self.settings = settings
        self.timing = settings.timing
        self.product = product
        self.token = token
        self.status_conn = status_conn
        self.lease_slot = lease_slot
        self.config = settings.product_config(product)
        self.fingerprint = self.config.fingerprint()
        self.metric = m.bind(product, settings.node_id)
        self.engine = new_engine(settings, self.config)
        self.next_offset = 0
        self.pending: collections.deque = collections.deque()
        self.progress_seen = (0, 0)  # (sequence, offset) of the leader, as last read
        self.leader: Leadership | None = None
        self.stopping = False
        self.snapshots = snapshots.Snapshotter(self.timing, product, self.fingerprint, settings.redis_url)
        self.demotion: str | None = None
        self.restart_reason: str | None = None
        # A planned handover the leader should make at its next turn: a node, or '' for any.
        self.handover_wanted: str | None = None
        # The longest time the event loop was held up since the last status report, and ever (s).
        self.loop_stall_max = 0.0
        self.loop_stall_window = 0.0
        self.loop_stall_cpu_wait: float | None = None  # of the window's largest stall (Linux)
        # True after stepping down with computed events that may never have been delivered; the
        # process may then lead again from memory only once the recorded progress covers them.
        self.undelivered_state = False
        self.state_check = StateCheck(product)
        self.diverged_since: float | None = None
        self.input_behind: dict | None = None  # set when the input log went backwards (cluster/input_log.py)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"consume-{product}")
        # The consumer thread's wait for input (up to consume_timeout_ms), kept across wake-ups:
        # the loop may stop waiting for it (wake()) without a second poll being started.
        self.input_wait: asyncio.Future | None = None
        self.woken: asyncio.Future | None = None
        # Set when the progress task has something to write (a batch, a snapshot, a new leadership);
        # an idle leader's progress task sleeps on it instead of waking every progress_every_ms.
        self.progress_due = asyncio.Event()
        self.last_input_at = time.monotonic()  # when records last came in (idle reading, stall watch)
        # While quiet the node's idle reader watches the order topic (go_idle): the number of the
        # current idle spell, None while this process reads the topic itself.
        self.idle_spell: int | None = None
        self.idle_spells_begun = 0

    # ---- start-up: the one recovery path -------------------------------------------------
    async def restore(self) -> None:
        """Load the latest snapshot (if any) and position the consumer after it."""
        snapshot = await self.redis.read_snapshot()
        if snapshot is not None:
            if snapshot.fingerprint != self.fingerprint:
                raise ConfigMismatch(
                    f"snapshot of {self.product} was made with other product settings "
                    f"({snapshot.fingerprint} != {self.fingerprint})"
                )
            self.engine = new_engine(self.settings, self.config, snapshot.engine)
            self.next_offset = snapshot.next_offset
        seq, offset, fingerprint = await self.redis.read_progress()
        if fingerprint is not None and fingerprint != self.fingerprint:
            raise ConfigMismatch(f"progress of {self.product} was recorded with other product settings")
        self.progress_seen = (seq, offset)
        log.info(
            "restored product=%s offset=%d sequence=%d snapshot=%s progress_sequence=%d progress_offset=%d",
            self.product,
            self.next_offset,
            self.engine.sequence,
            snapshot is not None,
            seq,
            offset,
        )

    def open_kafka(self) -> None:
        """The consumer of the order topic and the producer for events and dead letters."""
        s = self.settings
        self.publisher = Publisher(s, self.product)
        self.consumer = kafka_io.make_consumer(
            s.kafka_bootstrap,
            s.kafka_extra,
            self.publisher.client_id,
            fetch_wait_ms=self.timing.fetch_wait_ms,
        )
        self.consumer.assign([self.order_partition(self.next_offset)])

    def order_partition(self, offset: int) -> TopicPartition:
        return TopicPartition(kafka_io.order_topic(self.product), 0, offset)

    def go_idle(self) -> None:
        """No input for idle_after_ms: stop reading the order topic and let the node's idle reader
        (cluster/idle_reader.py) watch it from next_offset, so that a quiet product neither asks
        the broker for its topic 50 times a second nor keeps a thread polling. Called with nothing
        pending and no wait in flight, so next_offset is where reading goes on."""
        if self.status_conn is None:
            return  # no node to wake us: keep reading
        self.consumer.unassign()
        self.idle_spells_begun += 1
        self.idle_spell = self.idle_spells_begun
        try:
            self.status_conn.send(("idle", self.idle_spell, self.next_offset))
        except OSError:
            self.read_again()
            self.supervisor_gone()
        self.reporter.wake()  # status says so (idle_read)

    def read_again(self) -> None:
        """Input arrived for the idle spell (or the node is gone): read the topic ourselves again,
        from next_offset, whatever the idle reader saw."""
        self.idle_spell = None
        if self.input_behind is None:  # else the consumer stays idle (input_went_back)
            self.consumer.assign([self.order_partition(self.next_offset)])
        self.wake()

    def node_said(self) -> None:
        """The node's messages on the status pipe: ("input", round) when the idle reader saw input
        for idle spell `round`; a wake-up for an earlier spell is stale and dropped."""
        conn = self.status_conn
        try:
            while conn.poll():
                message = conn.recv()
                if message[0] == "input" and message[1] == self.idle_spell:
                    self.read_again()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(conn.fileno())
            if self.idle_spell is not None:
                self.read_again()
            self.supervisor_gone()

    # ---- the hot loop --------------------------------------------------------------------
    def apply(self, records: list) -> None:
        """Feed records to the core in offset order; publish what a leader must publish."""
        leader = self.leader
        publisher = self.publisher
        engine = self.engine
        first_sequence = engine.sequence + 1
        events, dead_letters = engine.apply(records)
        for index, letter in dead_letters:
            self.metric.dead_letters.inc()
            msg = records[index]
            offset = msg.offset()
            if leader is not None and offset >= leader.dlq_from_offset:
                publisher.dead_letter(offset, msg.value() or b"", letter.reason)
        if leader is not None and events:
            # Events up to suppress_upto were published by an earlier leader (right after a
            # takeover only); the batch's events are consecutive from first_sequence.
            published = leader.suppress_upto - first_sequence + 1
            if published > 0:
                events = events[published:]
            publisher.publish(events, leader.headers)
        count = len(records)
        self.next_offset = records[-1].offset() + 1
        self.snapshots.orders_since += count
        self.metric.orders_in.inc(count)
        self.metric.batch_size.observe(count)
        if leader is not None:
            if self.engine.sequence > leader.produced_seq:
                leader.produced_seq = self.engine.sequence
            leader.batch_marks.append((self.next_offset, leader.produced_seq, leader.dlq_produced))
            self.observe_order_to_event(records[-1].timestamp()[1])

    def observe_order_to_event(self, record_ms: int) -> None:
        """Latency from the input record's timestamp (its created_at, as gateways set it) to now.

        A record stamped over an hour away from this clock is an old or replayed order (the
        walkthrough's 2023 example), not a measure of this engine: it is counted apart, so the
        histogram stays a latency and the operator still sees such records exist."""
        age_s = (time.time() * 1000.0 - record_ms) / 1000
        if abs(age_s) > LATENCY_MEASURABLE_S:
            self.metric.order_time_unmeasurable.inc()
        else:
            self.metric.order_to_event.observe(max(0.0, age_s))

    def maybe_take_snapshot(self) -> None:
        """Capture state at a batch boundary when due; it is written once its events are delivered."""
        if self.leader is not None and self.snapshots.due():
            self.snapshots.take(self.engine, self.leader.epoch, self.next_offset, self.leader.lease_value)

    async def fetch(self) -> None:
        """Read a batch into `pending` without blocking the loop: at once what is there, else wait
        in the consumer thread."""
        if len(self.pending) >= STANDBY_READ_AHEAD or self.input_behind is not None:
            await asyncio.sleep(READ_AHEAD_FULL_WAIT_S)
            return
        # What librdkafka has already fetched is taken here, without a thread hop: a second Python
        # thread building Message objects would fight this one for the GIL on every poll().
        # Not while the consumer thread still waits (woken early): two readers of one consumer
        # could take records out of order.
        if self.idle_spell is not None:
            await self.wait_for_wake(self.timing.consume_timeout_ms / 1000)  # the node reads for us
            return
        msgs = self.consumer.consume(self.timing.consume_batch, 0) if self.input_wait is None else []
        if msgs:
            await asyncio.sleep(0)  # still yield once per batch: lease renewals must run
        else:
            msgs = await self.wait_for_input()
        if msgs:
            self.last_input_at = time.monotonic()
        elif (
            self.input_wait is None
            and not self.pending
            and time.monotonic() - self.last_input_at > self.timing.idle_after_ms / 1000
        ):
            self.go_idle()
        append = self.pending.append
        for msg in msgs:
            err = msg.error()
            if err is None:
                append(msg)  # the Message itself: a tuple per record would cost more than it saves
            elif err.code() in input_log.OUT_OF_RANGE:
                self.input_went_back(None, self.next_offset, f"fetch at offset {self.next_offset}: {err}")
                return
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error product=%s error=%s", self.product, err)

    def input_went_back(self, log_end: int | None, position: int, reason: str) -> None:
        """The order topic lost offsets this process counts on: stop applying input, say so, stay
        up. Neither resetting to 0 nor waiting for the log to regrow is safe (cluster/input_log.py)."""
        if self.input_behind is None:
            log.error(
                "input log does not hold the position product=%s log_end=%s position=%d applied_offset=%d "
                "recorded_offset=%d reason=%s: not applying input until the topic is restored or the "
                "product reset (docs/exactly-once.md)",
                self.product,
                "unknown" if log_end is None else log_end,
                position,
                self.next_offset,
                self.leader.progress[1] if self.leader else self.progress_seen[1],
                reason,
            )
            self.metric.input_behind.set(1)
        self.input_behind = {"log_end": log_end, "position": position}
        self.pending.clear()  # read from the log as it is now: not this product's history
        self.consumer.pause(self.consumer.assignment())  # and librdkafka fetches no more of it

    async def wait_for_input(self) -> list:
        """Wait in the consumer thread for records, or less if wake() is called; [] then.

        The wait returns as soon as a record arrives, so its length (consume_timeout_ms) sets how
        often an idle process wakes, not latency; whatever the loop must act on sooner (a stop,
        a handover, a restart, a standby's new limit) wakes it.
        """
        loop = asyncio.get_running_loop()
        if self.input_wait is None:
            self.input_wait = loop.run_in_executor(self.executor, self._wait_for_records)
        self.woken = loop.create_future()
        try:
            await asyncio.wait((self.input_wait, self.woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.woken = None
        if not self.input_wait.done():
            return []
        waited, self.input_wait = self.input_wait, None
        return waited.result()

    async def wait_for_wake(self, timeout_s: float) -> None:
        """An idle turn: sleep on the loop, with no thread polling, until wake() or `timeout_s`."""
        self.woken = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait((self.woken,), timeout=timeout_s)
        finally:
            self.woken = None

    def wake(self) -> None:
        """Make the loop turn now instead of at the end of its wait for input."""
        if self.woken is not None and not self.woken.done():
            self.woken.set_result(None)

    def _wait_for_records(self) -> list:
        """Consumer thread: wait for the first record, then take what else is there.

        Not consume(n, timeout): that waits for n records or the whole timeout, which at a low
        rate adds the timeout to every order's latency.
        """
        consumer = self.consumer
        first = consumer.poll(self.timing.consume_timeout_ms / 1000)
        if first is None:
            return []
        return [first, *consumer.consume(self.timing.consume_batch - 1, 0)]

    def take_applicable(self) -> list:
        """The next pending records this process may apply: as leader all, as standby those below
        the recorded progress; never more than a batch, so lease renewal is never starved."""
        pending = self.pending
        limit = self.standby_limit()
        batch: list = []
        take = min(len(pending), self.timing.consume_batch)
        popleft = pending.popleft
        while take and (limit is None or pending[0].offset() < limit):
            batch.append(popleft())
            take -= 1
        return batch

    def standby_limit(self) -> int | None:
        """The first offset a standby may not apply yet: the recorded progress, or the leader's
        announced checkpoint where it hashes its state first (None as leader)."""
        if self.leader is not None:
            return None
        stop = self.state_check.stop_offset(self.next_offset)
        return self.progress_seen[1] if stop is None else min(stop, self.progress_seen[1])

    def applicable(self) -> bool:
        """Whether the oldest pending record may be applied now."""
        limit = self.standby_limit()
        return bool(self.pending) and (limit is None or self.pending[0].offset() < limit)

    async def main_loop(self) -> None:
        """Fetch, apply, publish, until asked to stop or something fatal happens."""
        max_outstanding = self.timing.producer_max_outstanding
        beat = self.lease.beat  # the node renews the lease only while the loop turns
        while not self.stopping:
            beat()
            if self.publisher.fatal:
                raise RuntimeError(self.publisher.fatal)
            if self.restart_reason:
                raise Demoted(self.restart_reason)
            if self.handover_wanted is not None and self.leader is not None:
                wanted, self.handover_wanted = self.handover_wanted, None
                await self.hand_over(wanted)
                continue
            if self.leader is not None and (
                self.publisher.outstanding() >= max_outstanding or self.publisher.broker_behind()
            ):
                # The broker is behind: wait for it here, where the lease keeps being renewed.
                self.metric.producer_waits.inc()
                await asyncio.sleep(0.001)
                self.check_lease_clock()
                self.publisher.settle_progress()
                continue
            if self.publishing_paused():
                # Waiting for the node to confirm a late renewal (a round every lease_renew_ms):
                # not in the input wait, which could outlast the confirmation by a second.
                await asyncio.sleep(self.timing.lease_renew_ms / 10000)
                self.check_lease_clock()
                if self.leader is not None:  # not stepped down meanwhile
                    self.publisher.settle_progress()
                continue
            if len(self.pending) < self.timing.consume_batch or self.leader is None and not self.applicable():
                await self.fetch()
            else:
                await asyncio.sleep(0)  # let renewals and progress writes run between batches
            self.check_lease_clock()
            if self.publishing_paused():
                continue
            batch = self.take_applicable()
            if batch:
                if self.leader is not None and self.settings.kafka_transactions:
                    await self.apply_in_transaction(batch)
                else:
                    self.apply(batch)
            self.maybe_take_snapshot()  # also when idle: the last orders get their snapshot too
            if self.leader is not None:
                self.publisher.settle_progress()
                if batch or self.snapshots.pending is not None:
                    self.progress_due.set()
            else:
                self.publisher.producer.poll(0)
                self.check_state()

    async def apply_in_transaction(self, batch: list) -> None:
        """One batch, one transaction: committed as a whole, or the process restarts (fenced or failed)."""
        producer = self.publisher.producer
        produced_before = self.leader.dlq_produced
        try:
            producer.begin_transaction()
            self.apply(batch)
            await asyncio.get_running_loop().run_in_executor(None, producer.commit_transaction, 10.0)
        except KafkaException as exc:
            raise Demoted(f"transaction failed: {exc}") from exc
        self.publisher.committed(self.engine.sequence, produced_before)

    async def promote(self, acquired, valid_until: float) -> None:
        """Called with the lease just acquired; with transactions, fence the previous leader first."""
        if self.settings.kafka_transactions:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self.publisher.producer.init_transactions, 10.0)
            except KafkaException as exc:
                raise Demoted(f"init_transactions failed: {exc}") from exc
        self.become_leader(acquired, valid_until)

    def check_lease_clock(self) -> None:
        """A leader whose lease is gone steps down. One whose last confirmed renewal is too old
        pauses publishing before it could overlap a successor, and steps down only if no renewal
        is confirmed within lease_overdue_grace_ms (see cluster/lease.py)."""
        leader = self.leader
        if leader is None:
            return
        self.lease.sync(leader)
        if leader.lost:
            self.step_down(leader.lost)
        elif self.demotion:
            self.step_down(self.demotion)
        else:
            now = time.monotonic()
            if now <= leader.valid_until:
                if leader.overdue_since is not None:
                    log.info(
                        "lease renewal confirmed product=%s epoch=%d paused_ms=%d: publishing again",
                        self.product,
                        leader.epoch,
                        (now - leader.overdue_since) * 1000,
                    )
                    leader.overdue_since = None
            elif (now - leader.valid_until) * 1000 > self.timing.lease_overdue_grace_ms:
                self.step_down("lease renewal overdue")
            elif leader.overdue_since is None:
                leader.overdue_since = now
                self.metric.lease_overdue.inc()
                log.warning(
                    "lease renewal overdue product=%s epoch=%d: publishing paused until the node "
                    "confirms the lease (grace %d ms)",
                    self.product,
                    leader.epoch,
                    self.timing.lease_overdue_grace_ms,
                )

    def publishing_paused(self) -> bool:
        """Whether this leader waits for a late renewal (check_lease_clock): it applies nothing,
        since what it applies it must publish."""
        return self.leader is not None and self.leader.overdue_since is not None

    def check_state(self) -> None:
        """A standby's live state check (cluster/state_check.py); a diverged replica restarts."""
        check = self.state_check
        check.turn(self.engine, self.next_offset, self.snapshots.capture_hash)
        if check.diverged:
            self.metric.state_diverged.set(1)
            if self.diverged_since is None:
                self.diverged_since = time.monotonic()
            elif time.monotonic() - self.diverged_since > DIVERGED_RESTART_S:
                raise Demoted(f"state diverged from the leader's at offset {check.diverged_at}")

    def caught_up(self) -> bool:
        """A standby is caught up when it applied input up to the leader's recorded progress, and
        can lead from memory: a stepped-down leader whose computed events nobody has delivered
        yet is not (it would have to restart to lead, see become_leader)."""
        return (
            not self.must_restart_to_lead()
            and not self.state_check.diverged
            and self.progress_seen[1] - self.next_offset <= self.timing.caught_up_slack
        )

    def step_down(self, reason: str) -> None:
        """Stop publishing and go on as a hot standby in this process (no restart, no replay).

        What was produced and not yet acknowledged is purged: the successor publishes the same
        events from the recorded progress (they are byte-identical), so a copy that still arrives
        is a redelivery consumers drop by sequence. With transactions the producer's transaction
        state cannot be carried over: the process restarts instead.
        """
        leader = self.leader
        log.warning("demoted product=%s epoch=%d reason=%s", self.product, leader.epoch, reason)
        if self.settings.kafka_transactions:
            raise Demoted(reason)
        self.publisher.retire()
        self.undelivered_state = self.engine.sequence > leader.delivered_seq
        self.become_standby(leader)
        self.metric.demotions.inc()

    def become_standby(self, leader: Leadership) -> None:
        """Stop leading (the lease is gone or given away); the loop goes on applying input."""
        self.lease.drop()
        self.leader = None
        self.publisher.leadership = None
        self.demotion = None
        self.handover_wanted = None
        self.snapshots.dropped()
        self.progress_seen = leader.progress
        self.metric.is_leader.set(0)
        self.metric.epoch.set(0)
        self.reporter.wake()

    async def hand_over(self, wanted: str) -> bool:
        """Planned handover to a caught-up standby (`wanted`, or the preferred one if ''): stop
        taking input, deliver and record everything, then release the lease and wake the target
        in one step; it takes over at once from its own in-memory state. False when no standby
        was fit or the lease went meanwhile (nothing changes then; the caller carries on)."""
        leader = self.leader
        target = await self.lease.handover_target(wanted)
        if target is None:
            log.warning(
                "handover skipped product=%s wanted=%s: no caught-up standby", self.product, wanted or "any"
            )
            return False
        loop = asyncio.get_running_loop()
        remaining = await loop.run_in_executor(
            None, self.publisher.producer.flush, self.timing.lease_ttl_ms / 1000
        )
        self.lease.sync(leader)
        if remaining or self.leader is not leader or time.monotonic() > leader.valid_until:
            return False
        # The successor snapshots soon; writing one now would lengthen the pause.
        self.snapshots.dropped()
        try:
            await self.write_progress()
        except Demoted as exc:
            self.demote(str(exc), leader)
            return False
        except LeaseLapsed:
            return False
        if leader.progress[0] != self.engine.sequence or leader.progress[1] != self.next_offset:
            return False  # not all recorded: the target would publish what we may have published
        self.lease.drop()
        if not await self.redis.hand_over(leader.lease_value, target, leader.epoch, self.timing.lease_ttl_ms):
            return False
        log.info(
            "handed over product=%s epoch=%d to=%s sequence=%d offset=%d",
            self.product,
            leader.epoch,
            target,
            self.engine.sequence,
            self.next_offset,
        )
        self.become_standby(leader)
        return True

    def become_leader(self, acquired, valid_until: float) -> None:
        """Switch to publishing: everything up to the recorded progress was already delivered."""
        if self.undelivered_state and self.engine.sequence > acquired.progress_sequence:
            # Events this process computed as an earlier leader were purged and nobody has
            # delivered them since: they can only be rebuilt from a snapshot and the input.
            raise Demoted(
                f"leading from memory would skip undelivered events {acquired.progress_sequence + 1}.."
                f"{self.engine.sequence}"
            )
        self.undelivered_state = False
        if self.engine.sequence > acquired.progress_sequence:
            # Only possible if Redis lost the progress record: state we restored was delivered.
            log.warning(
                "progress behind engine product=%s progress=%d engine=%d",
                self.product,
                acquired.progress_sequence,
                self.engine.sequence,
            )
        start_seq = max(acquired.progress_sequence, self.engine.sequence)
        self.leader = Leadership(
            epoch=acquired.epoch,
            lease_value=acquired.lease_value,
            suppress_upto=start_seq,
            dlq_from_offset=acquired.progress_offset,
            valid_until=valid_until,
            delivered_seq=start_seq,
            produced_seq=start_seq,
            progress=(start_seq, self.next_offset),
            # Not part of the event: tells drills and operators which leadership published a copy.
            headers=[("epoch", str(acquired.epoch).encode()), ("node", self.settings.node_id.encode())],
        )
        self.progress_seen = (acquired.progress_sequence, acquired.progress_offset)
        # No snapshot is forced here: the next one is due by the usual rule (at most
        # snapshot_every_s away), so a new leader of a large book starts by matching.
        self.publisher.leadership = self.leader
        self.lease.hold(self.leader)
        self.progress_due.set()
        self.reporter.wake()
        self.metric.is_leader.set(1)
        self.metric.epoch.set(acquired.epoch)
        log.info(
            "leader product=%s epoch=%d resume_sequence=%d engine_sequence=%d offset=%d",
            self.product,
            acquired.epoch,
            acquired.progress_sequence,
            self.engine.sequence,
            self.next_offset,
        )

    async def progress_task(self) -> None:
        """Write delivered progress and due snapshots, guarded by our lease value; every
        progress_every_ms while there is something to write, else asleep until there is."""
        while not self.stopping:
            await asyncio.sleep(self.timing.progress_every_ms / 1000)
            leader = self.leader
            if leader is None or self.progress_settled(leader):
                self.progress_due.clear()
                await self.progress_due.wait()
                continue
            try:
                await self.write_progress()
            except Demoted:
                self.demote("progress write refused", leader)
            except LeaseLapsed:
                pass  # written again at the next turn, once the node took the lease again (or not at all)
            except Exception as exc:  # noqa: BLE001 - Redis down: retry; the lease clock fences us
                if cancelling():
                    raise
                log.warning("progress write failed product=%s error=%s", self.product, exc)

    def progress_settled(self, leader: Leadership) -> bool:
        """Whether every batch is delivered and recorded, and no snapshot waits to be written."""
        return (
            not leader.batch_marks
            and leader.progress == leader.written_progress
            and self.snapshots.pending is None
        )

    async def write_progress(self) -> None:
        """Record progress, then a snapshot whose events are all delivered."""
        leader = self.leader
        self.publisher.settle_progress()
        if self.publisher.fatal:
            return  # a failed delivery: the loop ends the process; record nothing past it
        snap = self.snapshots.pending
        announce = snap is not None and not snap.announced
        if leader.progress != leader.written_progress or announce:
            seq, offset = leader.progress
            rc = await self.redis.write_progress(
                leader.lease_value,
                leader.epoch,
                seq,
                offset,
                self.fingerprint,
                checkpoint=snap.next_offset if announce else None,
            )
            fenced(rc, "progress")
            leader.written_progress = (seq, offset)
            if announce:
                snap.announced = True
            self.metric.last_sequence.set(seq)
        snap = self.snapshots.writable(leader.delivered_seq, leader.progress[1])
        if snap is not None:
            try:
                captured = snap.engine.result()
            except OSError as exc:
                log.warning("snapshot capture failed product=%s error=%s", self.product, exc)
                self.snapshots.dropped()
                return
            if captured.staged_size is None:  # captured in place: this process stages the bytes
                envelope = self.snapshots.envelope(
                    snap.epoch, snap.next_offset, snap.sequence, captured.data, captured.state_hash
                )
                rc = await self.redis.write_snapshot(leader.lease_value, envelope)
            else:  # its child staged them
                rc = await self.redis.commit_snapshot(
                    leader.lease_value,
                    snap.sequence,
                    snap.next_offset,
                    captured.state_hash,
                    captured.staged_size,
                )
            fenced(rc, "snapshot")
            if rc == -3:
                log.warning("snapshot staged bytes gone product=%s: the next is taken when due", self.product)
                self.snapshots.dropped()
                return
            self.snapshots.written()

    # ---- lifecycle ---------------------------------------------------------------------------
    async def run(self) -> int:
        """Recover, follow or lead, and stop cleanly on SIGTERM. Returns the exit code."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(STALL_SIGNAL, self.stall_for_drill)
        loop.add_signal_handler(CORRUPT_SIGNAL, self.corrupt_for_drill)
        self.redis = ProductRedis(async_client(self.settings.redis_url), self.product)
        try:
            await self.wait_for_redis()
            await self.restore()
        except (ConfigMismatch, SnapshotError) as exc:
            # An unusable snapshot fails the same way on every restart: stop, do not loop.
            log.error("refusing to run product=%s reason=%s", self.product, exc)
            return EXIT_CONFIG
        self.open_kafka()
        if self.status_conn is not None:
            loop.add_reader(self.status_conn.fileno(), self.node_said)
        await loop.run_in_executor(self.executor, self.publisher.warm)
        s = self.settings
        self.lease = lease = LeaseKeeper(self.redis, s, self.product, self.token, self, self.lease_slot)
        self.reporter = reporter = StatusReporter(
            self, self.metric, self.redis.client, self.status_conn, s.node_id, self.product, self.timing
        )
        watch = input_log.InputLogWatch(self)
        coroutines = (
            lease.run(),
            self.progress_task(),
            reporter.run(),
            self.watch_loop_stalls(),
            watch.run(),
        )
        tasks = [asyncio.create_task(c) for c in coroutines]
        code = EXIT_OK
        try:
            await self.main_loop()
        except Demoted as exc:
            log.warning("demoted product=%s reason=%s", self.product, exc)
            # Queued events are byte-identical to the successor's, but a demoted process sends nothing more.
            self.publisher.producer.purge(in_queue=True, in_flight=False)
            code = EXIT_DEMOTED
        except SequenceExhausted as exc:
            log.error("refusing to run product=%s reason=%s", self.product, exc)
            self.publisher.producer.purge(in_queue=True, in_flight=False)
            code = EXIT_CONFIG
        finally:
            self.stopping = True
            self.lease.stopped = True  # whatever happens to the cancellation, it takes no lease now
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.input_wait is not None:
            await asyncio.wait((self.input_wait,))  # the consumer thread's poll ends before close()
        if code == EXIT_OK:
            await self.drain()
        self.lease.stop()
        if self.status_conn is not None:
            loop.remove_reader(self.status_conn.fileno())
        self.consumer.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.snapshots.close()  # reaps a snapshot child
        return code

    async def wait_for_redis(self) -> None:
        """Crash-only start: wait for Redis (it may be restarting), or stop if asked to."""
        delay = 0.05
        while True:
            try:
                await self.redis.client.ping()
                return
            except Exception as exc:  # noqa: BLE001
                if self.stopping:
                    raise
                log.warning("redis not reachable product=%s error=%s", self.product, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def drain(self) -> None:
        """SIGTERM: hand the product over to a caught-up standby; without one, flush events,
        record progress and a final snapshot, and give the lease up."""
        loop = asyncio.get_running_loop()
        if self.leader is not None:
            try:
                if await self.hand_over(""):
                    return
            except Exception as exc:  # noqa: BLE001 - Redis trouble: the plain release below
                log.warning("handover failed product=%s error=%s", self.product, exc)
        remaining = await loop.run_in_executor(None, self.publisher.producer.flush, 5.0)
        if self.leader is None:
            return
        try:
            self.lease.sync(self.leader)
            if remaining == 0 and time.monotonic() < self.leader.valid_until:
                taken = self.snapshots.take(  # newer
                    self.engine, self.leader.epoch, self.next_offset, self.leader.lease_value
                )
                await asyncio.wrap_future(taken.engine)
                await self.write_progress()
            self.lease.drop()
            await self.redis.release(self.token)
            log.info("released lease product=%s epoch=%d", self.product, self.leader.epoch)
        except Exception as exc:  # noqa: BLE001 - the lease expires by itself
            log.warning("drain incomplete product=%s error=%s", self.product, exc)

    # ---- what the lease keeper and the status reporter see of this process --------------------
    def leadership(self) -> Leadership | None:
        """The current leadership, or None as a standby."""
        return self.leader

    def follow(self, progress: tuple[int, int], checkpoint: int | None, leader_snapshot) -> None:
        """The leader's recorded progress, its announced checkpoint and its stored snapshot's hash."""
        self.progress_seen = progress
        self.state_check.follow(checkpoint, leader_snapshot, self.next_offset)
        if self.applicable():
            self.wake()  # records it holds became applicable: apply them now, not after the wait

    def must_restart_to_lead(self) -> bool:
        """Whether winning the lease would make this process restart (see become_leader): it
        stepped down with computed events, and the recorded progress does not cover them yet."""
        if self.undelivered_state and self.progress_seen[0] >= self.engine.sequence:
            self.undelivered_state = False  # the new leader has delivered all it had computed
        return self.undelivered_state

    def want_handover(self, target: str) -> None:
        """Hand the product over at the next turn of the loop (to `target`, or '' for any)."""
        self.handover_wanted = target
        self.wake()

    def supervisor_gone(self) -> None:
        """The status pipe broke: stop like on SIGTERM."""
        self.request_stop()

    def quiet_for_s(self) -> float:
        """Seconds since input last came in (the status reporter's cadence)."""
        return time.monotonic() - self.last_input_at

    def counts(self) -> tuple[int, int, int, int]:
        """(events delivered, rejects, duplicate orders, unknown cancels) since the process started."""
        counters = self.engine.counters
        return (
            self.publisher.events_delivered,
            counters.rejected,
            counters.duplicates,
            counters.unknown_cancels,
        )

    def status(self, events_per_s: float) -> dict:
        """A plain dict for the supervisor, `status`, placement and readiness."""
        leader = self.leader
        status = {
            "product": self.product,
            "node": self.settings.node_id,
            "pid": os.getpid(),
            "role": "leader" if leader else "standby",
            # the core this process runs (not the one asked for): what benchmarks and operators must see
            "core": self.engine.core,
            "epoch": leader.epoch if leader else 0,
            "offset": self.next_offset,
            "sequence": self.engine.sequence,
            "delivered_sequence": leader.delivered_seq if leader else self.progress_seen[0],
            "behind": max(0, self.progress_seen[1] - self.next_offset) if leader is None else 0,
            "caught_up": leader is not None or self.caught_up(),
            # A leader waiting for a late lease renewal to be confirmed publishes nothing meanwhile.
            "publishing_paused": self.publishing_paused(),
            "input_behind": self.input_behind,
            "read_ahead": len(self.pending),
            # Quiet: the node's idle reader watches the order topic for this process.
            "idle_read": self.idle_spell is not None,
            "events_per_s": round(events_per_s, 1),
            # The live state check of a standby: checkpoints compared, and whether it diverged.
            "state_checks": self.state_check.checks,
            "state_diverged": self.state_check.diverged,
            # The longest event-loop stall since the last report, and since the process started.
            "loop_stall_ms": round(self.loop_stall_window * 1000, 1),
            "loop_stall_max_ms": round(self.loop_stall_max * 1000, 1),
            # How much of loop_stall_ms the loop's thread was runnable but waiting for a core: a
            # busy host's share, not this process's work (None: no stall in this window, or a
            # kernel that does not say).
            "loop_stall_cpu_wait_ms": None
            if self.loop_stall_cpu_wait is None
            else round(self.loop_stall_cpu_wait * 1000, 1),
            "snapshot_age_s": self.snapshots.age_s(),
            "reported_ms": int(time.time() * 1000),
        }
        self.loop_stall_window = 0.0  # the next report's window starts now
        self.loop_stall_cpu_wait = None
        return status

    def restart(self, reason: str) -> None:
        """Leave the loop and exit for a restart through the recovery path (exit 75)."""
        self.restart_reason = reason
        self.wake()

    def demote(self, reason: str, leadership: Leadership) -> None:
        """The lease of `leadership` is not ours any more (a fenced write was refused): the loop
        steps down. A refusal that arrives after that leadership ended (a write in flight through a
        stall) is about the past: it must not end a later leadership."""
        if self.leader is leadership:
            self.demotion = reason

    async def watch_loop_stalls(self) -> None:
        """Measure how long the event loop is held up: a timer's lateness is the stall it waited
        behind (a batch, a snapshot, a GC pause). Published as obc_loop_stall_seconds and in status."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            quiet_for_s = self.quiet_for_s()
            period = (
                LOOP_WATCH_PERIOD_S
                if quiet_for_s < LOOP_WATCH_BUSY_S
                else until_tick(self.timing.status_cadence_s(quiet_for_s), self.product)
            )
            due = loop.time() + period
            waited_before = cpu_wait_s()
            await asyncio.sleep(period)
            stall = max(0.0, loop.time() - due)
            self.metric.loop_stall.observe(stall)
            if stall > self.loop_stall_window:
                self.loop_stall_window = stall
                self.loop_stall_max = max(self.loop_stall_max, stall)
                waited_after = cpu_wait_s()
                if waited_before is not None and waited_after is not None:
                    self.loop_stall_cpu_wait = min(stall, waited_after - waited_before)

    def stall_for_drill(self) -> None:
        """Fault injection: hold the loop past the stall limit and a lease TTL, then go on."""
        log.warning("stalling the matching loop for a drill product=%s", self.product)
        time.sleep(stall_s(self.timing))

    def corrupt_for_drill(self) -> None:
        """Fault injection on a standby: rest an order no input carried (its events go nowhere)."""
        if self.leader is not None:
            log.warning("corrupt drill ignored product=%s: this process leads", self.product)
            return
        order = {"id": CORRUPT_ORDER_ID, "product_id": self.product, "user_id": 0, "price": "1", "size": "1"}
        order |= {"type": "limit", "side": "buy", "time_in_force": "GTC"}
        apply_one(self.engine, json.dumps(order).encode(), 0)
        log.warning("corrupted this standby's book for a drill product=%s", self.product)

    def request_stop(self) -> None:
        """Signal handler: only record the request; the loop acts on it."""
        self.stopping = True
        self.wake()


# The hot loop allocates GC-tracked objects by the thousand (consumed Message objects, one event
# list per order) that die by reference counting. At CPython's default gen0 threshold (700) the
# collector re-scanned the live batch every few hundred allocations: ~5% of a draining process
# (py-spy). Collections still run, less often; gc.freeze() keeps start-up objects out of them.
GC_THRESHOLDS = (50_000, 20, 20)


def run_product(settings: NodeSettings, product: str, lease_board: str, token: str, status_conn=None) -> int:
    """Entry point of a product process (spawned by the supervisor); `lease_board` is the path of
    the node's lease board (cluster/lease_board.py), where this product has the slot of its
    position in the node's products."""
    import uvloop

    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    slot = LeaseBoard(Path(lease_board), len(settings.products)).slot(settings.products.index(product))
    return uvloop.run(ProductWorker(settings, product, slot, token, status_conn).run())
