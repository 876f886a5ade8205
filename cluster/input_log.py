"""Whether the order topic still holds every offset a product process counts on.

A product's state is a function of its input log, so a log that went backwards (the broker lost
the topic's data, or someone deleted and recreated it) cannot be followed: resetting to offset 0
or waiting at the old position both invent state, the first at once, the second as soon as new
records reach the old position, and neither says anything. The process instead raises an alarm
(ERROR log line, `obc_input_behind_position` = 1, /readyz false) and stops applying input until an
operator restores the topic or resets the product (docs/exactly-once.md, "When the input log goes
backwards").

Two signals. On Kafka, a fetch below the log's end answers OFFSET_OUT_OF_RANGE; the order
consumer has `auto.offset.reset=error`, so `ProductWorker.fetch` sees that. Tansu (the test broker)
answers such a fetch with nothing at all, so this module also looks every `input_check_ms`: when
the high watermark is below the position it reads the log's tail to find its real end, because
Tansu's watermark is the first offset of the last batch plus one, not the log end (measured), and a
lagging watermark alone would be a false alarm for every caught-up leader.

The position is the larger of the offset this process applied up to and the leader's recorded
progress offset: a healthy log holds both, since both were read from it.

What it cannot see: if the log regrows past the position between two checks, the records there
are new ones at old offsets, which no offset arithmetic can tell apart; a check runs every second
(every status_idle_every_ms while the product is quiet, and its tail is read once per (watermark,
position): a log that regrew to the very same watermark is that case too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cluster import kafka_io

if TYPE_CHECKING:
    from cluster.worker import ProductWorker

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0  # reading the log's tail; nothing in that time is no answer, not an alarm
PROBE_QUIET_S = 0.3  # the tail is read when nothing more arrived for this long
# What a consumer with auto.offset.reset=error reports for a fetch outside the log.
OUT_OF_RANGE = (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET)


class InputLogWatch:
    """The periodic check of one product process; `run()` is one of its tasks."""

    def __init__(self, worker: ProductWorker) -> None:
        self.worker = worker
        self.topic = kafka_io.order_topic(worker.product)
        # A consumer of its own, made at the first check: the worker's consumer is held by its poll
        # (the client serializes calls on a consumer), and a query waiting behind poll after poll
        # could answer seconds late, for an old position.
        self.probe = None
        # (watermark, position) whose tail was last read and found to reach the position: a quiet
        # product's next checks see the same pair and need not read it again every second.
        self.verified: tuple[int, int] | None = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"input-{worker.product}")

    async def run(self) -> None:
        """Check at once and then every input_check_ms, until the process stops or the alarm is up."""
        w = self.worker
        loop = asyncio.get_running_loop()
        try:
            while not w.stopping and w.input_behind is None:
                position = max(w.next_offset, w.progress_seen[1])
                if position > 0:
                    end = await loop.run_in_executor(self.executor, self.log_end_below, position)
                    if end is not None and w.input_behind is None:
                        w.input_went_back(end, position, "log end below position")
                # A quiet product checks as often as it reports its status (every few seconds).
                await asyncio.sleep(
                    max(w.timing.input_check_ms / 1000, w.timing.status_cadence_s(w.quiet_for_s()))
                )
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)

    def log_end_below(self, position: int) -> int | None:
        """The order topic's log end if it is below `position`, else None (also when unsure)."""
        try:
            _, high = self.probe_consumer().get_watermark_offsets(
                TopicPartition(self.topic, 0), timeout=PROBE_TIMEOUT_S, cached=False
            )
        except KafkaException as exc:
            log.warning("input log end unknown product=%s error=%s", self.worker.product, exc)
            return None
        if high >= position or (high, position) == self.verified:
            return None
        if high <= 0:
            return 0  # an empty log (Tansu too: one record makes its watermark 1)
        end = self.read_tail(high - 1, position)
        if end is not None and end < position:
            return end
        if end is not None:
            self.verified = (high, position)
        return None

    def read_tail(self, start: int, position: int) -> int | None:
        """One past the last offset readable from `start` on, or None if nothing came in time.

        Stops early, at `position` - 1: what matters is only whether the log reaches there.
        """
        probe = self.probe_consumer()
        probe.assign([TopicPartition(self.topic, 0, start)])
        last = None
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        quiet_until = deadline
        while time.monotonic() < min(deadline, quiet_until):
            msgs = probe.consume(10_000, 0.05)
            if any(m.error() is not None and m.error().code() in OUT_OF_RANGE for m in msgs):
                last = start - 1 if last is None else last  # the log does not reach `start` either
                break
            offsets = [m.offset() for m in msgs if m.error() is None]
            if offsets:
                last = max(offsets) if last is None else max(last, *offsets)
                if last >= position - 1:
                    break
                quiet_until = time.monotonic() + PROBE_QUIET_S
        probe.unassign()
        return None if last is None else last + 1

    def probe_consumer(self):
        """The check's own consumer, made at its first use."""
        if self.probe is None:
            w = self.worker
            self.probe = kafka_io.make_consumer(
                w.settings.kafka_bootstrap,
                w.settings.kafka_extra,
                f"obc-{w.product}-{w.settings.node_id}-probe",
                fetch_wait_ms=w.timing.fetch_wait_ms,
            )
        return self.probe
