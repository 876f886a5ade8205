"""`orderbook-cluster drill`: inject a fault under steady load, time the takeover, check the stream.

Run it against a drill product (its whole input and output are read from offset 0 to check that
the output equals `replay` of the input). Faults reach the leader's node through its
authenticated admin endpoint (address and node found in Redis), so drills work across hosts.
Takeover is measured from just before the fault request (this host's clock; for a node-kill, from
the moment the node said it would die, a fixed delay after its answer) to the producer
timestamp of the first event published under a new epoch (the `epoch` header of the event
record), or, for server restarts that need not move the lease, of the first event produced after
the restarted server was back (so it includes the restart itself: ~5 s for the test broker's clean
stop). With the leader on another host that mixes two clocks (NTP keeps them within a few ms);
`seen_ms` is the same moment as this drill's consumer saw it, on one clock.
"""

from __future__ import annotations

import itertools
import json
import statistics
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import msgspec
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster import faults
from cluster.kafka_io import client_config, message_topic, order_topic, quiet_librdkafka
from cluster.redis_state import NODE_ADDRESSES_KEY, lease_holder, sync_client
from cluster.tools.send import record_timestamp_ms
from cluster.tools.verify import StreamReport, check_stream, expected_events, read_records
from cluster.tools.workload import generate_orders
from engine.config import ProductConfig
from engine.messages import record_time_ns

# The faults a drill injects once per round, at the leader (`rolling-restart` is rolling.py's).
ROUND_FAULTS = tuple(name for name, fault in faults.FAULTS.items() if fault.drill is faults.Drill.ROUND)
_sequence_of = msgspec.json.Decoder(dict)
NS_PER_MS = 1_000_000


def round_faults_help() -> str:
    """`name: what it does` of each round fault, for the drill's --fault help."""
    return "; ".join(f"{name}: {faults.FAULTS[name].help}" for name in ROUND_FAULTS)


class DrillError(RuntimeError):
    """The drill could not run (no leader, no admin access, a fault refused)."""


@dataclass
class Round:
    """One fault and what followed it."""

    round: int
    fault: str
    old_node: str
    old_epoch: int
    new_node: str | None = None
    new_epoch: int | None = None
    # From the fault to the new leader's first event, by that event's producer timestamp.
    takeover_ms: float | None = None
    # From the fault to this drill's consumer seeing that event (adds fetch and consumer delay).
    seen_ms: float | None = None
    error: str | None = None


@dataclass
class DrillReport:
    """Every round, the takeover figures, and the stream check."""

    product: str
    fault: str
    rounds: list[Round] = field(default_factory=list)
    orders_sent: int = 0
    stream: dict = field(default_factory=dict)

    def takeover_summary(self) -> dict:
        """min/median/max takeover over the rounds that completed, in ms."""
        values = [r.takeover_ms for r in self.rounds if r.takeover_ms is not None]
        if not values:
            return {"min_ms": None, "median_ms": None, "max_ms": None, "rounds_ok": 0}
        return {
            "min_ms": round(min(values), 1),
            "median_ms": round(statistics.median(values), 1),
            "max_ms": round(max(values), 1),
            "rounds_ok": len(values),
        }

    def as_dict(self) -> dict:
        """The --json document."""
        return {
            "product": self.product,
            "fault": self.fault,
            "rounds": [asdict(r) for r in self.rounds],
            "takeover": self.takeover_summary(),
            "orders_sent": self.orders_sent,
            "stream": self.stream,
        }


class OrderLoad(threading.Thread):
    """Steady realistic order flow at `rate` per second until stopped."""

    def __init__(self, bootstrap: str, product: str, rate: float, start_id: int, extra: dict) -> None:
        super().__init__(name="drill-load", daemon=True)
        self.producer = Producer(
            client_config(
                bootstrap,
                extra,
                {
                    # Not idempotent, one request in flight: order kept, and an order a retry
                    # doubles is the engine's duplicate to drop (its id window). An idempotent
                    # producer spins a core in librdkafka whenever it has 5 requests in flight
                    # and more queued (a broker that is slow for a moment): on a shared host that
                    # took the broker's CPU and made the pauses it then measured.
                    "enable.idempotence": False,
                    "max.in.flight.requests.per.connection": 1,
                    "acks": "all",
                    "linger.ms": 5,
                    "allow.auto.create.topics": False,
                    "logger": quiet_librdkafka(),
                },
                "drill-load",
            )
        )
        self.topic = order_topic(product)
        self.product = product
        self.rate = rate
        self.start_id = start_id
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        encoder = msgspec.json.Encoder()
        began = time.monotonic()
        start_ts = time.time_ns() // 1_000_000 * 1_000_000
        for order in generate_orders(
            self.product, 10**9, seed=self.start_id, start_id=self.start_id, start_ts=start_ts
        ):
            if self.stop_event.is_set():
                break
            # Stamped with the time it is sent, as a gateway stamps what it accepts: each event
            # then carries it ("time"), and the watcher sees how late the cluster answered.
            order["created_at"] = time.time_ns() // NS_PER_MS * NS_PER_MS
            raw = encoder.encode(order)
            while True:
                try:
                    self.producer.produce(self.topic, raw, timestamp=record_timestamp_ms(raw) or 0)
                    break
                except BufferError:
                    self.producer.poll(0.05)
            self.sent += 1
            self.producer.poll(0)
            ahead = self.sent / self.rate - (time.monotonic() - began)
            if ahead > 0:
                self.stop_event.wait(ahead)  # pacing the offered load, not waiting for a result
        self.producer.flush(30)


class OutputWatcher(threading.Thread):
    """Reads the output topic from 0: every value, and when each epoch was first seen."""

    def __init__(self, bootstrap: str, product: str, extra: dict) -> None:
        super().__init__(name="drill-watch", daemon=True)
        self.consumer = Consumer(
            client_config(
                bootstrap,
                extra,
                {
                    "group.id": "orderbook-cluster-drill",
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                    "fetch.queue.backoff.ms": 5,
                    "logger": quiet_librdkafka(),
                },
                "drill-watch",
            )
        )
        self.consumer.assign([TopicPartition(message_topic(product), 0, 0)])
        self.values: list[bytes] = []
        self.first_seen: dict[int, tuple[float, str]] = {}
        self.first_stamp: dict[int, int] = {}
        self.last_stamp: dict[int, int] = {}  # epoch -> producer timestamp (ms) of its latest new event
        self.epoch = 0  # of the latest record that carried an epoch header  # epoch -> broker timestamp (ms) of its first event
        self.max_sequence = 0
        self.last_arrival: float = 0.0
        self.produced_after: list[tuple[float, int]] = []  # (arrival, record timestamp ms)
        self.stamp_of_sequence: dict[int, int] = {}  # producer timestamp (ms) of each sequence's first copy
        # ms from its order's send to the event's production (first copy): the cluster's own delay
        self.delay_of_sequence: dict[int, int] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            msgs = self.consumer.consume(5000, 0.05)
            now = time.monotonic()
            with self.lock:
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    value = msg.value() or b""
                    self.values.append(value)
                    headers = dict(msg.headers() or [])
                    if "epoch" in headers:  # on the first event of each leader batch
                        self.epoch = int(headers["epoch"])
                    epoch = self.epoch
                    if epoch not in self.first_seen:
                        self.first_seen[epoch] = (now, headers.get("node", b"").decode())
                        self.first_stamp[epoch] = msg.timestamp()[1]
                    event = _sequence_of.decode(value)
                    seq = event.get("sequence", 0)
                    self.max_sequence = max(self.max_sequence, seq)
                    if seq not in self.stamp_of_sequence:
                        stamp = msg.timestamp()[1]
                        self.stamp_of_sequence[seq] = stamp
                        self.last_stamp[epoch] = stamp
                        if isinstance(event.get("time"), int):  # its order's send time (OrderLoad)
                            self.delay_of_sequence[seq] = stamp - event["time"] // NS_PER_MS
                    self.last_arrival = now
                    self.produced_after.append((now, msg.timestamp()[1]))
                    if len(self.produced_after) > 100_000:
                        del self.produced_after[:50_000]
        self.consumer.close()

    def first_epoch_above(self, epoch: int) -> tuple[int, float, str] | None:
        """The first epoch greater than `epoch` seen, with when and from which node."""
        with self.lock:
            later = sorted((e, t, n) for e, (t, n) in self.first_seen.items() if e > epoch)
        return later[0] if later else None

    def first_produced_after(self, wall_ms: int) -> tuple[float, int] | None:
        """(arrival, producer timestamp ms) of the first event produced after `wall_ms`."""
        with self.lock:
            return next(((arrival, ts) for arrival, ts in self.produced_after if ts > wall_ms), None)

    def largest_pause(self, from_ms: int, to_ms: int) -> tuple[int, int | None]:
        """The longest time between consecutive events (by sequence, producer timestamps) in a
        window, and when it began (ms since the epoch)."""
        with self.lock:
            stamps = [self.stamp_of_sequence[s] for s in sorted(self.stamp_of_sequence)]
        inside = [t for t in stamps if from_ms <= t <= to_ms]
        return max(((b - a, a) for a, b in itertools.pairwise(inside)), default=(0, None))

    def largest_delay(self, from_ms: int, to_ms: int) -> int:
        """The longest time from an order's send to its event's production, over the events
        produced in a window: a pause of the cluster's, where an output pause may also be a gap
        in the input (the load generator or the broker in front of the cluster)."""
        with self.lock:
            return max(
                (
                    self.delay_of_sequence[seq]
                    for seq, stamp in self.stamp_of_sequence.items()
                    if from_ms <= stamp <= to_ms and seq in self.delay_of_sequence
                ),
                default=0,
            )

    def handover_gaps(self, from_ms: int, to_ms: int) -> list[int]:
        """ms from each leader's last event to its successor's first (producer timestamps), for the
        successors that began in a window: what a change of leader itself cost, where an output
        pause also holds the gaps of the input and of the broker in front of the cluster."""
        with self.lock:
            epochs = sorted(self.first_stamp)
            return [
                self.first_stamp[new] - self.last_stamp[old]
                for old, new in itertools.pairwise(epochs)
                if old in self.last_stamp and from_ms <= self.first_stamp[new] <= to_ms
            ]

    def distinct_count(self) -> int:
        """Distinct sequences seen (events arrive in order per leader; duplicates repeat old ones)."""
        return self.max_sequence


def _wait(condition, timeout_s: float, interval_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    return None


def current_lease(redis_client, product: str) -> tuple[int, str] | None:
    """(epoch, node) of the product's leader, from its lease; None while nobody holds it."""
    try:
        return lease_holder(redis_client, product)
    except Exception:  # noqa: BLE001 - Redis may be the thing being restarted
        return None


def post_fault(address: str, token: str, fault: str, product: str, pause_s: float | None) -> dict:
    """Ask a node's admin endpoint for a fault."""
    body = json.dumps({"fault": fault, "product": product, "pause_s": pause_s}).encode()
    request = urllib.request.Request(
        f"http://{address}/admin/fault",
        data=body,
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as resp:  # a server restart answers when done
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DrillError(
            f"{address} refused the fault: {exc.code} {exc.read().decode(errors='replace')}"
        ) from exc


def run_drill(
    *,
    bootstrap: str,
    redis_url: str,
    product: str,
    config: ProductConfig,
    fault: str,
    rounds: int,
    rate: float,
    admin_token: str,
    pause_s: float | None = None,
    settle_s: float = 2.0,
    start_id: int | None = None,
    kafka_extra: dict | None = None,
    log=print,
) -> DrillReport:
    """Run the drill; never raises for a failed round (it is reported), only for a drill that can't run."""
    if fault not in ROUND_FAULTS:
        raise DrillError(f"unknown fault {fault!r}; one of {', '.join(ROUND_FAULTS)}")
    extra = kafka_extra or {}
    redis_client = sync_client(redis_url)
    if current_lease(redis_client, product) is None and not _wait(
        lambda: current_lease(redis_client, product), 10
    ):
        raise DrillError(f"no leader holds {product}; is the cluster running it?")
    report = DrillReport(product, fault)
    watcher = OutputWatcher(bootstrap, product, extra)
    load = OrderLoad(bootstrap, product, rate, start_id or time.time_ns() // 1000, extra)
    watcher.start()
    load.start()
    try:
        for number in range(1, rounds + 1):
            report.rounds.append(
                one_round(number, fault, product, redis_client, watcher, admin_token, pause_s, settle_s, log)
            )
    finally:
        load.stop_event.set()
        load.join(60)
        report.orders_sent = load.sent
    checked = final_check(bootstrap, product, config, watcher, extra, log)
    report.stream = {**asdict(checked), "ok": checked.ok}
    watcher.stop_event.set()
    watcher.join(10)
    return report


def one_round(number, fault, product, redis_client, watcher, admin_token, pause_s, settle_s, log) -> Round:
    """Wait for a steady leader, inject the fault at it, time the takeover."""
    lease = _wait(lambda: current_lease(redis_client, product), 30)
    if lease is None:
        return Round(number, fault, "?", 0, error="no leader before the fault")
    epoch, node = lease
    steady = _wait(lambda: watcher.first_epoch_above(epoch - 1), 30)
    if steady is None:
        return Round(number, fault, node, epoch, error="the leader published nothing before the fault")
    address = redis_client.hget(NODE_ADDRESSES_KEY, node)
    if not address:
        return Round(number, fault, node, epoch, error=f"no admin address registered for node {node}")
    result = Round(number, fault, node, epoch)
    began = time.monotonic()
    began_wall_ms = int(time.time() * 1000)
    try:
        answer = post_fault(address.decode(), admin_token, fault, product, pause_s)
    except (DrillError, OSError) as exc:
        result.error = str(exc)
        return result
    if faults.FAULTS[fault].moves_lease:
        seen = _wait(lambda: watcher.first_epoch_above(epoch), 60)
        if seen is None:
            result.error = "no new leader published within 60 s"
            return result
        result.new_epoch, arrival, result.new_node = seen
        stamp = watcher.first_stamp.get(result.new_epoch)
        # A node fault acts a moment after its answer (faults.NODE_FAULT_DELAY_S): from then on.
        fault_ms = max(began_wall_ms, int(answer.get("acts_at_ms") or 0))
        if stamp:
            result.takeover_ms = float(max(0, stamp - fault_ms))
    else:
        back_ms = int(answer.get("back_ms") or began_wall_ms)  # events before it are the old server's
        seen = _wait(lambda: watcher.first_produced_after(back_ms), 60)
        if seen is None:
            result.error = "no event published within 60 s of the restart"
            return result
        arrival, stamp = seen
        result.takeover_ms = float(max(0, stamp - began_wall_ms))  # includes the restart itself
        lease_after = current_lease(redis_client, product)
        if lease_after:
            result.new_epoch, result.new_node = lease_after
    result.seen_ms = round((arrival - began) * 1000, 1)
    if result.takeover_ms is None:
        result.takeover_ms = result.seen_ms
    log(
        f"round {number}: {fault} of {node} (epoch {epoch}) -> {result.new_node} (epoch {result.new_epoch}) "
        f"in {result.takeover_ms} ms (seen by the drill's consumer at +{result.seen_ms} ms)"
    )
    # Let a paused ex-leader wake and demote, and the restarted process rejoin, before the next round.
    time.sleep(settle_s + float(answer.get("stall_s") or 0.0))
    return result


def final_check(bootstrap, product, config, watcher, extra, log) -> StreamReport:
    """All input read from offset 0 through the oracle; the output must match it exactly."""
    inputs = read_records(bootstrap, order_topic(product), idle_s=3.0, extra=extra)
    expected = expected_events(config, [(value, record_time_ns(ts)) for _, value, ts, _ in inputs])
    _wait(lambda: watcher.distinct_count() >= len(expected), 120, 0.1)
    with watcher.lock:
        output = list(watcher.values)
    report = check_stream(output, expected)
    log(
        f"stream: {report.distinct} distinct events of {report.expected} expected, {report.duplicates} "
        f"byte-identical duplicates dropped, {'OK' if report.ok else 'BROKEN: ' + '; '.join(report.problems)}"
    )
    return report


def format_report(report: DrillReport) -> str:
    """The operator's table."""
    lines = [
        f"drill {report.fault} on {report.product}: {len(report.rounds)} rounds, {report.orders_sent} orders",
        f"{'ROUND':>5} {'OLD LEADER':<20} {'EPOCH':>6} {'NEW LEADER':<20} {'EPOCH':>6} {'TAKEOVER ms':>12} {'SEEN ms':>9}  ERROR",
    ]
    for r in report.rounds:
        lines.append(
            f"{r.round:>5} {r.old_node:<20} {r.old_epoch:>6} {r.new_node or '-':<20} "
            f"{r.new_epoch if r.new_epoch is not None else '-':>6} "
            f"{r.takeover_ms if r.takeover_ms is not None else '-':>12} "
            f"{r.seen_ms if r.seen_ms is not None else '-':>9}  {r.error or ''}"
        )
    s = report.takeover_summary()
    lines.append(
        f"takeover min/median/max: {s['min_ms']} / {s['median_ms']} / {s['max_ms']} ms "
        f"({s['rounds_ok']} of {len(report.rounds)} rounds)"
    )
    stream = report.stream
    lines.append(
        f"stream: {'OK' if not stream.get('problems') else 'BROKEN'} — {stream.get('distinct')} events, "
        f"{stream.get('duplicates')} duplicates (byte-identical), expected {stream.get('expected')}"
    )
    for problem in stream.get("problems", []):
        lines.append(f"  {problem}")
    return "\n".join(lines)
