"""The output side of a product process: producing events and dead letters, and knowing what the
broker has acknowledged.

Guarantees (the argument is in docs/exactly-once.md):
- Events are produced in sequence order on the one partition of the product's message topic by an
  idempotent producer; the epoch/node headers go on the first event of each batch.
- What is counted delivered is a delivered prefix: `len(producer)` (queued, in flight, and
  failure reports not yet served) is read before poll() serves the reports, and a leader's failed
  delivery makes the process fatal, so a hole is never counted past.
- Progress (delivered sequence, next input offset) advances past a batch only when every event and
  dead letter of it is delivered.
A standby publishes nothing; after a leadership ends, its producer is retired for a fresh one
(its idempotence sequence has a gap where purged messages were).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from confluent_kafka import KafkaException

from cluster import kafka_io
from cluster.lease import Leadership
from cluster.log_limit import RateLimitedWarning
from engine.messages import MAX_RECORD_BYTES

log = logging.getLogger(__name__)

# librdkafka's idempotent producer busy-loops, a whole core per producer, while it has its 5
# requests in flight (max.in.flight.requests.per.connection) unanswered and more messages queued:
# measured at 0.99 cores for as long as the broker does not answer, against 0.00 with 5 messages
# in flight and none queued. A broker slow for a moment then takes a core from every leader, and
# on a shared host from the broker itself, which makes the moment longer. So a leader hands its
# producer at most this many batches that the broker has not answered: fewer than 5 requests.
BATCHES_IN_FLIGHT = 4


class Publisher:
    """Producing and delivery accounting for one product; `leadership` is None as a standby."""

    def __init__(self, settings, product: str) -> None:
        self.settings = settings
        self.timing = settings.timing
        self.product = product
        self.message_topic = kafka_io.message_topic(product)
        self.dlq_topic = kafka_io.dlq_topic(product)
        self.client_id = f"obc-{product}-{settings.node_id}"
        self.leadership: Leadership | None = None
        self.fatal: str | None = None
        self.events_delivered = 0  # over the process's life, for the status rate
        self.dead_letter_log = RateLimitedWarning(log, 10.0)  # a line per reason per 10 s at most
        self.producer = self.new_producer()
        self.handed = 0  # messages handed to this producer
        self.batch_ends: deque[int] = deque()  # `handed` after each batch the broker has not answered

    def new_producer(self):
        """An idempotent producer for events and dead letters (transactional with --kafka-transactions)."""
        s = self.settings
        return kafka_io.make_producer(
            s.kafka_bootstrap,
            s.kafka_extra,
            self.client_id,
            self._on_delivery,
            self.timing.producer_linger_ms,
            self.timing.producer_batch_bytes,
            transactional_id=f"orderbook-cluster-{self.product}" if s.kafka_transactions else None,
        )

    def warm(self) -> None:
        """Fetch the output topics' metadata now, while still a standby.

        A cold producer's first send waits for that lookup: on Tansu nothing was delivered for the
        first 0.4-1.1 s, so a new leader's first events were late by that much after a takeover.
        Best effort: on failure the producer simply looks the topics up on its first send.
        """
        for topic in (self.message_topic, self.dlq_topic):
            try:
                self.producer.list_topics(topic, timeout=self.timing.lease_ttl_ms / 1000)
            except KafkaException as exc:
                log.warning("producer warm-up failed product=%s topic=%s error=%s", self.product, topic, exc)

    def retire(self) -> None:
        """Leadership ended without delivering everything: a fresh producer, the old one purged
        and closed off the loop (what it still had in flight is byte-identical to the successor's)."""
        retired, self.producer = self.producer, self.new_producer()
        self.handed = 0
        self.batch_ends.clear()
        asyncio.get_running_loop().run_in_executor(None, self._retire, retired)

    def _retire(self, producer) -> None:
        producer.purge(in_queue=True, in_flight=False)
        producer.flush(self.timing.lease_ttl_ms / 1000)  # in-flight ones end either way
        self.warm()

    # ---- producing ---------------------------------------------------------------------------
    def publish(self, events: list, headers) -> None:
        """Produce a batch's events in order. The epoch/node headers go on the first event only:
        they cost more than the rest of produce(), and a batch has one leader."""
        produce = self.producer.produce
        topic = self.message_topic
        remaining = iter(events)
        value = next(remaining, None)
        if value is None:
            return
        self.handed += len(events)
        self.batch_ends.append(self.handed)
        try:
            produce(topic, value, headers=headers)
        except BufferError:
            self._produce_when_room(topic, value, headers)
        while True:  # the plain loop per event; a full queue resumes it after the event that waited
            try:
                for value in remaining:
                    produce(topic, value)
                return
            except BufferError:
                self._produce_when_room(topic, value, None)

    def broker_behind(self) -> bool:
        """Whether BATCHES_IN_FLIGHT batches wait for the broker's answer: then the leader hands
        the producer nothing more until one is answered (see BATCHES_IN_FLIGHT). With transactions
        each batch's commit waits for its answer anyway."""
        ends = self.batch_ends
        if self.settings.kafka_transactions:
            ends.clear()
            return False
        if len(ends) < BATCHES_IN_FLIGHT:
            return False
        answered = self.handed - len(self.producer)  # a prefix: len() also holds unserved failures
        while ends and ends[0] <= answered:
            ends.popleft()
        return len(ends) >= BATCHES_IN_FLIGHT

    def dead_letter(self, offset: int, raw: bytes, reason: str) -> None:
        """The record at `offset` to the DLQ topic, with its reason in headers."""
        self.dead_letter_log.warn(
            reason, "dead letter product=%s reason=%s source_offset=%d", self.product, reason, offset
        )
        headers = [
            ("reason", reason.encode()),
            ("source_offset", str(offset).encode()),
            ("product_id", self.product.encode()),
        ]
        if len(raw) > MAX_RECORD_BYTES:
            # Only record_too_large letters are longer. A copy of any size could be refused by the
            # broker, which would end this process on every replay of the record: the DLQ keeps the
            # first MAX_RECORD_BYTES, and the whole record stays in the order topic at source_offset.
            headers.append(("source_size", str(len(raw)).encode()))
            raw = raw[:MAX_RECORD_BYTES]
        self.leadership.dlq_produced += 1
        self.handed += 1
        try:
            self.producer.produce(self.dlq_topic, raw, headers=headers)
        except BufferError:
            self._produce_when_room(self.dlq_topic, raw, headers)

    def _produce_when_room(self, topic: str, value: bytes, headers) -> None:
        """The producer queue is full: serve delivery reports until it takes the message."""
        while True:
            self.producer.poll(0.01)
            try:
                self.producer.produce(topic, value, headers=headers)
                return
            except BufferError:
                continue

    def _on_delivery(self, err, msg) -> None:
        """The producer reports failed deliveries only (delivery.report.only.error).

        A leader's failure ends the process: publishing on past a hole would break the sequence,
        and the restart republishes from the recorded progress. A standby publishes nothing, so
        what an old leadership's producer reports after stepping down does not matter.
        """
        if err is not None and self.leadership is not None:
            self.fatal = f"delivery to {msg.topic()} failed: {err}"

    # ---- delivery accounting -----------------------------------------------------------------
    def outstanding(self) -> int:
        """Messages the producer holds: queued, in flight, or failure reports not yet served."""
        return len(self.producer)

    def settle_delivery(self) -> None:
        """Count as delivered what was produced and is no longer held by the producer.

        len(producer) counts messages queued, in flight, and failure reports not yet served.
        It is read *before* poll() serves those reports, so a failure either is still counted
        there or has made the process fatal, and then the count is not used. With idempotence a
        message is never acknowledged before an earlier one of its partition fails, so what
        is not outstanding is a delivered prefix of each topic; counting all outstanding
        messages against each topic only under-counts, the safe direction.
        """
        outstanding = len(self.producer)
        self.producer.poll(0)
        leader = self.leadership
        if self.fatal or leader is None or self.settings.kafka_transactions:
            return  # with transactions, counted when the batch's transaction commits
        delivered = leader.produced_seq - outstanding
        if delivered > leader.delivered_seq:
            self.events_delivered += delivered - leader.delivered_seq
            leader.delivered_seq = delivered
        dlq_delivered = leader.dlq_produced - outstanding
        if dlq_delivered > leader.dlq_delivered:
            leader.dlq_delivered = dlq_delivered

    def settle_progress(self) -> None:
        """Advance (delivered sequence, next offset) past every batch fully delivered."""
        self.settle_delivery()
        leader = self.leadership
        marks = leader.batch_marks
        offset = leader.progress[1]
        while marks and marks[0][1] <= leader.delivered_seq and marks[0][2] <= leader.dlq_delivered:
            offset = marks.popleft()[0]
        leader.progress = (leader.delivered_seq, offset)

    def committed(self, sequence: int, dlq_produced_before: int) -> None:
        """With transactions: a batch's transaction committed, everything up to `sequence` is delivered."""
        leader = self.leadership
        if sequence > leader.delivered_seq:
            self.events_delivered += sequence - leader.delivered_seq
            leader.delivered_seq = sequence
        leader.dlq_delivered += leader.dlq_produced - dlq_produced_before
