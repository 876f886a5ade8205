"""Prometheus metrics of product processes, aggregated by the supervisor (multiprocess mode).

The supervisor sets PROMETHEUS_MULTIPROC_DIR before it spawns children, so each child writes
its samples to files there and the supervisor's /metrics serves the sum over live processes.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ("product", "node")

orders_in = Counter("obc_orders_in", "Input records applied to the matching core", LABELS)
events_out = Counter("obc_events_out", "Events delivered to the output topic", LABELS)
rejects = Counter("obc_rejects", "Orders ended with done/rejected", LABELS)
dead_letters = Counter("obc_dead_letters", "Input records sent to the dead-letter topic", LABELS)
duplicates = Counter("obc_duplicate_orders", "New orders dropped as duplicate ids", LABELS)
unknown_cancels = Counter("obc_unknown_cancels", "Cancels of unknown or finished orders", LABELS)
batch_size = Histogram(
    "obc_batch_size",
    "Input records per consumed batch",
    LABELS,
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
order_to_event_seconds = Histogram(
    "obc_order_to_event_seconds",
    "From the input record's timestamp to its events being produced",
    LABELS,
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
order_time_unmeasurable = Counter(
    "obc_order_time_unmeasurable",
    "Batches whose last input record was stamped over an hour from this node's clock (old or replayed orders), left out of obc_order_to_event_seconds",
    LABELS,
)
input_lag = Gauge(
    "obc_input_lag_records", "Records read but not yet applied", LABELS, multiprocess_mode="liveall"
)
last_sequence = Gauge(
    "obc_last_sequence", "Last event sequence delivered", LABELS, multiprocess_mode="liveall"
)
snapshot_age = Gauge(
    "obc_snapshot_age_seconds", "Age of the last snapshot written", LABELS, multiprocess_mode="liveall"
)
is_leader = Gauge(
    "obc_is_leader", "1 while this process holds the product's lease", LABELS, multiprocess_mode="liveall"
)
producer_waits = Counter(
    "obc_producer_waits",
    "Loop turns spent waiting for the broker: more undelivered events than producer_max_outstanding",
    LABELS,
)
demotions = Counter(
    "obc_demotions", "Times this product's leader stepped down to standby without restarting", LABELS
)
lease_overdue = Counter(
    "obc_lease_overdue",
    "Times this product's leader paused publishing for a late lease renewal (resumed at the same "
    "epoch when the renewal was confirmed within lease_overdue_grace_ms, else stepped down)",
    LABELS,
)
loop_stall_seconds = Histogram(
    "obc_loop_stall_seconds",
    "How long the product process's event loop was held up (a batch, a snapshot, a GC pause)",
    LABELS,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
state_diverged = Gauge(
    "obc_state_diverged",
    "1 when this standby's state hash differed from the leader's at a checkpoint (it will not lead)",
    LABELS,
    multiprocess_mode="liveall",
)
state_checks = Gauge(
    "obc_state_checks",
    "Checkpoints at which this standby compared its state hash with the leader's",
    LABELS,
    multiprocess_mode="liveall",
)
input_behind = Gauge(
    "obc_input_behind_position",
    "1 while the input topic's log ends below this process's position (the log went backwards; "
    "input is not applied until an operator acts, see docs/exactly-once.md)",
    LABELS,
    multiprocess_mode="liveall",
)
epoch = Gauge("obc_epoch", "Lease epoch of this process (0 as standby)", LABELS, multiprocess_mode="liveall")


class Bound:
    """One product process's children of every metric, bound once (labels() is not free)."""

    def __init__(self, product: str, node: str) -> None:
        labels = {"product": product, "node": node}
        self.orders_in = orders_in.labels(**labels)
        self.events_out = events_out.labels(**labels)
        self.dead_letters = dead_letters.labels(**labels)
        self.batch_size = batch_size.labels(**labels)
        self.order_to_event = order_to_event_seconds.labels(**labels)
        self.order_time_unmeasurable = order_time_unmeasurable.labels(**labels)
        self.input_lag = input_lag.labels(**labels)
        self.last_sequence = last_sequence.labels(**labels)
        self.snapshot_age = snapshot_age.labels(**labels)
        self.is_leader = is_leader.labels(**labels)
        self.epoch = epoch.labels(**labels)
        self.rejects = rejects.labels(**labels)
        self.duplicates = duplicates.labels(**labels)
        self.unknown_cancels = unknown_cancels.labels(**labels)
        self.producer_waits = producer_waits.labels(**labels)
        self.demotions = demotions.labels(**labels)
        self.lease_overdue = lease_overdue.labels(**labels)
        self.state_diverged = state_diverged.labels(**labels)
        self.state_checks = state_checks.labels(**labels)
        self.loop_stall = loop_stall_seconds.labels(**labels)
        self.input_behind = input_behind.labels(**labels)


def bind(product: str, node: str) -> Bound:
    """The metrics of one product process."""
    return Bound(product, node)
