"""One reader of every quiet product's input, per node (issue #20).

A product process that had no input for `idle_after_ms` stops reading its order topic itself: it
unassigns its consumer, tells the node the offset it waits for, and its loop sleeps without a
thread polling. The node's idle reader, a child process of the node's supervisor with one
consumer, reads all those topics from those offsets in one fetch request per `idle_fetch_wait_ms`,
and the first record (or error) it sees for a product wakes that product, which reads from its own
consumer again.

The reader only says *that* input arrived: what it fetched is dropped and the product reads the
records itself, from the offset it applied up to, so a late, lost or repeated wake-up can delay
input but never skip, reorder or double it. Each idle spell has a round number, and a wake-up
names the round it answers, so a stale one cannot end a later spell. If the reader process exits
(a crash: librdkafka can fall over when a broker recreates a topic), the node wakes every product
it read for and starts a new one; the supervisor process itself runs no Kafka client.

Per idle product this replaces a consumer thread waking every 200 ms (confluent-kafka's poll
chunks), a second consumer's five fetches a second and its librdkafka threads; 48 quiet products
are one fetch request of 48 partitions twenty times a second.

Messages on the pipe to the node: in ("watch", product, round, offset) and ("forget", product);
out ("input", product, round), and a status dict every REPORT_EVERY_S while it reads.
"""

from __future__ import annotations

import logging
import signal
import time

from confluent_kafka import KafkaError, TopicPartition

from cluster import kafka_io
from cluster.settings import NodeSettings

log = logging.getLogger(__name__)

# The child's name in the node's supervisor: not a possible product name (cluster/settings.py).
IDLE_READER = "idle reader"
# How long one poll waits: a watch change is taken in after at most this long (a record that
# arrives meanwhile is still read: the reader starts at the spell's offset), and it is the reader's
# wake-up rate while some product is idle. With none idle it waits on the pipe alone.
POLL_S = 0.1
# While it reads for some product the reader reports at least this often; a node that has not heard
# from it for READER_SILENT_S then kills it as hung (cluster/node.py), which wakes every product it
# read for: a stuck librdkafka call must not leave quiet markets asleep.
REPORT_EVERY_S = 1.0
READER_SILENT_S = 5.0
# The reader drops what it fetches: a small fetch per partition keeps that waste small.
SMALL_FETCH = {"max.partition.fetch.bytes": 65536, "queued.max.messages.kbytes": 1024}


class IdleReader:
    """Reads for the products the node says are idle and tells the node when input arrived."""

    def __init__(self, settings: NodeSettings, conn) -> None:
        self.settings = settings
        self.conn = conn
        self.watching: dict[str, int] = {}  # product -> round of its idle spell
        self.product_of_topic = {kafka_io.order_topic(p): p for p in settings.products}
        self.consumer = kafka_io.make_consumer(
            settings.kafka_bootstrap,
            settings.kafka_extra,
            f"obc-{settings.node_id}-idle-reader",
            fetch_wait_ms=settings.timing.idle_fetch_wait_ms,
            more=SMALL_FETCH,
        )

    def serve(self) -> None:
        """Until the node closes the pipe: take watch changes, read, tell."""
        reported = 0.0
        try:
            while True:
                if not self.watching:
                    self.take(self.conn.recv())  # nothing to read: sleep on the pipe alone
                while self.conn.poll():
                    self.take(self.conn.recv())
                if self.watching:
                    self.read()
                    if time.monotonic() - reported >= REPORT_EVERY_S:
                        reported = time.monotonic()
                        self.conn.send(
                            {"reported_ms": int(time.time() * 1000), "reading_for": len(self.watching)}
                        )
        except EOFError:
            return
        finally:
            self.consumer.close()

    def take(self, message: tuple) -> None:
        """A watch change from the node, into the consumer's assignment."""
        product = message[1]
        if product not in self.settings.products:
            log.warning("idle reader: unknown product in message=%r", message)
            return
        partition = TopicPartition(kafka_io.order_topic(product), 0)
        if product in self.watching:
            self.consumer.incremental_unassign([partition])
            del self.watching[product]
        if message[0] == "watch":
            _, _, spell, offset = message
            partition.offset = offset
            self.consumer.incremental_assign([partition])
            self.watching[product] = spell

    def read(self) -> None:
        """One poll; the first record or error of a watched product ends its spell."""
        woken = []
        for msg in self.consumer.consume(1000, POLL_S):
            err = msg.error()
            if err is not None and err.code() == KafkaError._PARTITION_EOF:
                continue
            product = self.product_of_topic.get(msg.topic())
            if product is None:
                log.warning("idle reader error=%s", err)
            elif product in self.watching:
                # A record, or an error the product's own consumer must meet (cluster/input_log.py).
                self.conn.send(("input", product, self.watching.pop(product)))
                woken.append(TopicPartition(msg.topic(), 0))
        if woken:
            self.consumer.incremental_unassign(woken)


def run_idle_reader(settings: NodeSettings, token: str, status_conn) -> int:
    """Entry point of the node's idle reader process (started by the supervisor, like a product)."""
    del token  # it holds no lease

    def stop(_signum, _frame) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        IdleReader(settings, status_conn).serve()
    except SystemExit:
        pass
    return 0
