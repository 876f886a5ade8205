"""One typed settings object for a node, built once from CLI options and passed down explicitly.

Secrets (SASL passwords, Redis AUTH) live here but never in logs: `redacted()` is what is logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cluster.http_api import DEFAULT_HTTP_PORT
from cluster.kafka_io import dlq_topic, product_topics
from engine.config import ProductConfig, load_products
from engine.native import resolve_core

# Where `start` keeps the embedded default's record, logs and metrics, and other commands look for it.
DEFAULT_STATE_DIR = Path(".orderbook-cluster")


class SettingsError(ValueError):
    """A configuration mistake an operator must fix; the message says which."""


@dataclass(frozen=True)
class Timing:
    """Lease, snapshot and batching knobs. Defaults aim at sub-second failover on a LAN."""

    # A dead leader is replaced within about a TTL. The node renews its leaders' leases on its own
    # thread (cluster/lease_board.py), so the TTL only has to cover Redis round trips and
    # scheduling delays, not the matching loop's longest batch or snapshot; docs/exactly-once.md
    # explains the numbers.
    lease_ttl_ms: int = 450
    lease_renew_ms: int = 100
    # A leader stops publishing this long before its lease could expire (clock drift, GC pauses).
    lease_safety_ms: int = 100
    # A leader whose renewals stop being confirmed (a Redis fsync held up by a busy disk, a starved
    # renewer) pauses publishing at its trust deadline and waits this long past it for a late
    # confirmation before it steps down. A renewal that succeeds proves nobody else held the lease
    # meanwhile (its exact value was still in Redis, or it lapsed and nobody took it since:
    # redis_state.RENEW_MANY), so the leader resumes at the same epoch: a pause of output instead
    # of a leadership change. It bounds the halt when renewals reach Redis but their answers do
    # not come back in time (grace + TTL); a dead or cut-off leader's product moves at the TTL
    # whatever this is.
    lease_overdue_grace_ms: int = 1000
    # The renewer renews only while the matching loop has turned within this limit, so a hung
    # loop loses the lease while a slow one (a large book's snapshot, a busy core) keeps it. It
    # is far above any healthy turn (a batch is ~1 ms, an idle wait 1 s) and short enough that
    # a hung leader's product stops trading for seconds, not for good.
    loop_stall_limit_ms: int = 3000
    standby_poll_ms: int = 50
    placement_defer_ms: int = 200
    # A leader hands over to the preferred node (see cluster/lease.py) only after leading this
    # long, so that placement settles once after nodes join instead of moving leaders back and forth.
    rebalance_after_s: float = 10.0
    startup_grace_ms: int = 700
    caught_up_slack: int = 1000
    node_heartbeat_ms: int = 250
    # A snapshot is due every snapshot_every_orders orders, but not sooner than
    # snapshot_min_interval_s after the last, and after snapshot_every_s if any order came in. A
    # snapshot costs the same at any rate (it is the whole book: ~2 ms and 200 kB for 3,000
    # resting orders), so at 400k orders/s one per 20,000 orders would be 20 a second for a
    # replay of 50 ms; the floor keeps it to one a second and the replay to a second of input.
    snapshot_every_orders: int = 20_000
    snapshot_min_interval_s: float = 1.0
    snapshot_every_s: float = 5.0
    # From this many resting orders on, a snapshot is captured in a forked child (copy-on-write,
    # like Redis's BGSAVE; cluster/snapshots.py) instead of on the loop: the fork costs ~10-20 ms
    # whatever the book, writing 1,000,000 orders in place ~170 ms.
    snapshot_fork_above_orders: int = 100_000
    progress_every_ms: int = 20
    consume_batch: int = 2000
    # How long the consumer thread waits for a first record when there is none. It returns as
    # soon as one arrives, and the loop is woken early for whatever it must act on (a stop, a
    # handover, a standby's new limit), so this sets only the idle wake-up rate: once a second.
    # Not on the shared ticks of cluster/aio.until_tick: with this wait (and the input-log check)
    # on them, librdkafka's metadata cache crashed (SIGSEGV) in tests/integration/test_input_log.py
    # when a restarted broker recreated the topic under a new topic id (librdkafka issue 4964).
    consume_timeout_ms: int = 1000
    fetch_wait_ms: int = 20
    # After idle_after_ms without input a product stops reading its topic and the node's idle
    # reader (cluster/idle_reader.py) watches it: one fetch of all quiet topics, waiting up to
    # idle_fetch_wait_ms, 20 a second for the node instead of 50 per product. On a broker that
    # answers a waiting fetch when data arrives (Kafka) the wait costs no latency; on Tansu, which
    # mostly answers at its end, the first order after idleness waits up to about this long
    # (measured with 48 idle products: 100 ms gave a first-order p99 of 1.1-2.1x the busy p99,
    # 50 ms 1.1-1.4x, for 0.17 cores of the broker's instead of 0.11).
    idle_fetch_wait_ms: int = 50
    idle_after_ms: int = 3000
    producer_linger_ms: int = 2
    producer_batch_bytes: int = 1_000_000
    # Past this many undelivered messages the loop stops applying (and keeps renewing) until
    # the broker catches up: backpressure that never blocks the event loop.
    producer_max_outstanding: int = 200_000
    # A product process reports its status (to the supervisor's pipe and the Redis hash that
    # placement, readiness and `status` read) every status_every_ms while input came in within
    # idle_after_ms, and every status_idle_every_ms otherwise: an idle product's status changes
    # only when input arrives or its role changes, and a role change is reported at once
    # (cluster/reporting.py). 4 s keeps 48 idle products to 12 reports a second (each report and
    # the leader's placement look with it cost an idle process about 1 ms of CPU: half its idle
    # cost at 2 s); readers count a report fresh for three of these (status_fresh_ms), and
    # placement also drops a node whose heartbeat stopped, so a dead node leaves within a second.
    status_every_ms: int = 500
    status_idle_every_ms: int = 4000
    # How often a product process checks that its input log still reaches its position.
    input_check_ms: int = 1000

    def __post_init__(self) -> None:
        if self.lease_renew_ms * 3 > self.lease_ttl_ms:
            raise SettingsError("lease_renew_ms must be at most a third of lease_ttl_ms")
        if self.lease_safety_ms + self.lease_renew_ms >= self.lease_ttl_ms:
            raise SettingsError("lease_safety_ms + lease_renew_ms must be below lease_ttl_ms")
        if self.loop_stall_limit_ms < 2 * self.consume_timeout_ms + self.lease_renew_ms:
            raise SettingsError(
                "loop_stall_limit_ms must be at least 2 x consume_timeout_ms + lease_renew_ms"
            )
        if self.snapshot_min_interval_s > self.snapshot_every_s:
            raise SettingsError("snapshot_min_interval_s must be at most snapshot_every_s")
        if self.status_idle_every_ms < self.status_every_ms:
            raise SettingsError("status_idle_every_ms must be at least status_every_ms")

    def status_cadence_s(self, quiet_for_s: float) -> float:
        """How long a product process waits for its next status report, `quiet_for_s` after input
        last came in."""
        busy = quiet_for_s * 1000 < self.idle_after_ms
        return (self.status_every_ms if busy else self.status_idle_every_ms) / 1000

    def lease_trust_ms(self) -> int:
        """How long after sending an acquisition or a renewal that succeeded its leader may publish."""
        return self.lease_ttl_ms - self.lease_safety_ms

    def node_fresh_ms(self) -> int:
        """A node whose last heartbeat is older than this is gone: it missed three."""
        return 3 * self.node_heartbeat_ms

    def status_fresh_ms(self) -> int:
        """A status report older than this is stale: its process missed three reports at its
        slowest (idle) cadence, so it is gone or stuck."""
        return 3 * max(self.status_every_ms, self.status_idle_every_ms)

    def snapshot_due(self, orders_since: int, seconds_since: float) -> bool:
        """Whether a snapshot is due, `orders_since` orders and `seconds_since` s after the last."""
        if not orders_since:
            return False
        if seconds_since >= self.snapshot_every_s:
            return True
        return orders_since >= self.snapshot_every_orders and seconds_since >= self.snapshot_min_interval_s


def parse_timing(overrides: tuple[str, ...] | list[str]) -> Timing:
    """Timing with `name=value` overrides; unknown names and bad values are errors."""
    known = {f.name: f.type for f in fields(Timing)}
    values: dict[str, int | float] = {}
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise SettingsError(
                f"--tune {item!r}: expected NAME=VALUE with NAME one of {', '.join(sorted(known))}"
            )
        try:
            values[name] = float(text) if known[name] in (float, "float") else int(text)
        except ValueError as exc:
            raise SettingsError(f"--tune {item!r}: {text!r} is not a number") from exc
        if values[name] <= 0:
            raise SettingsError(f"--tune {item!r}: must be positive")
    return Timing(**values)


@dataclass(frozen=True)
class NodeSettings:
    """Everything a supervisor and its product processes need to run.

    Its defaults are the only declaration of a node's defaults: `start`'s options read theirs from
    here and build_settings passes the rest through.
    """

    node_id: str
    products: tuple[str, ...]
    product_configs: dict[str, ProductConfig]
    kafka_bootstrap: str
    redis_url: str
    kafka_extra: dict[str, str] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    state_dir: Path = DEFAULT_STATE_DIR
    admin_token: str | None = None
    advertise_host: str | None = None
    # Benchmarks only: copy input to output instead of matching, to measure the Kafka loop's limit.
    passthrough: bool = False
    # Passthrough copies per 1000 input records: above 1000, the output volume of the engine (its
    # events per order), to measure the loop's limit at the contract's output volume.
    passthrough_copies_per_mille: int = 1000
    # Publish each batch in a Kafka transaction (transactional.id per product): fencing at the broker.
    kafka_transactions: bool = False
    # The matching core: auto (C when built), native (C, or refuse to start) or python (the oracle).
    core: str = "auto"

    def product_config(self, product: str) -> ProductConfig:
        """The product's matching settings; every product here was checked at load time."""
        return self.product_configs[product]

    def redacted(self) -> dict[str, object]:
        """A loggable view: no passwords, tokens or keys."""
        return {
            "node_id": self.node_id,
            "products": ",".join(self.products),
            "kafka": self.kafka_bootstrap,
            "kafka_extra": {k: ("***" if _is_secret_key(k) else v) for k, v in self.kafka_extra.items()},
            "redis": redact_url(self.redis_url),
            "http": f"{self.http_host}:{self.http_port}",
        }

    def with_services(self, kafka_bootstrap: str, redis_url: str) -> NodeSettings:
        """The same settings pointed at other servers (the embedded default)."""
        return replace(self, kafka_bootstrap=kafka_bootstrap, redis_url=redis_url)


_SECRET_WORDS = ("password", "secret", "token", "key", "credential")


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS) and not lowered.endswith(".location")


def redact_url(url: str) -> str:
    """A URL with its password replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# Kafka's limit on a topic name, and the characters it allows.
MAX_TOPIC_NAME = 249
TOPIC_CHARS = re.compile(r"[A-Za-z0-9._-]+")
# The product's longest topic is its dead-letter topic: matching_order_<P>.dlq.
MAX_PRODUCT_NAME = MAX_TOPIC_NAME - max(len(t) for t in product_topics(""))
DLQ_SUFFIX = dlq_topic("")[len(product_topics("")[0]) :]


def product_name_problem(product: str) -> str | None:
    """Why `product` cannot name a product's topics, or None when it can."""
    if not TOPIC_CHARS.fullmatch(product):
        return f"product name {product!r} is not usable in a topic name (allowed: A-Z a-z 0-9 . _ -)"
    if len(product) > MAX_PRODUCT_NAME:
        return (
            f"product name {product[:20]!r}... has {len(product)} characters; at most {MAX_PRODUCT_NAME} "
            f"fit Kafka's {MAX_TOPIC_NAME}-character topic names"
        )
    if product.endswith(DLQ_SUFFIX):
        stem = product[: -len(DLQ_SUFFIX)]
        return (
            f"product name {product!r} ends with {DLQ_SUFFIX!r}: its input topic would be "
            f"{stem!r}'s dead-letter topic {dlq_topic(stem)!r}"
        )
    return None


def topic_collisions(products) -> list[str]:
    """Pairs of products whose topics would be the same Kafka topic.

    Kafka refuses a topic whose name equals another's once '.' and '_' are taken as the same
    character (they are one in its metric names), so names are compared that way.
    """
    owner: dict[str, tuple[str, str]] = {}
    problems = []
    for product in products:
        for topic in product_topics(product):
            key = topic.replace(".", "_")
            if key in owner and owner[key][0] != product:
                other, other_topic = owner[key]
                problems.append(
                    f"products {other!r} and {product!r} collide: topic {topic!r} "
                    f"is {other_topic!r} to Kafka ('.' and '_' are one there)"
                )
            owner.setdefault(key, (product, topic))
    return problems


def check_product_names(products) -> None:
    """Every name usable in topic names, and no two products sharing a topic; else SettingsError."""
    problems = [p for p in map(product_name_problem, products) if p]
    problems += topic_collisions(products)
    if problems:
        raise SettingsError("; ".join(problems))


def parse_products(text: str) -> tuple[str, ...]:
    """`BTC-USD,ETH-USD` -> ("BTC-USD", "ETH-USD"), rejecting names Kafka topics can't carry."""
    products = tuple(p.strip() for p in text.split(",") if p.strip())
    if not products:
        raise SettingsError("--products names no product")
    if len(set(products)) != len(products):
        raise SettingsError("--products names a product twice")
    check_product_names(products)
    return products


def load_kafka_properties(path: Path | None) -> dict[str, str]:
    """librdkafka settings (SASL, TLS, ...) from a Java-style `key=value` properties file."""
    if path is None:
        return {}
    props: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "!")):
            continue
        key, sep, value = stripped.partition("=")
        if not sep:
            raise SettingsError(f"{path}:{number}: expected key=value")
        props[key.strip()] = value.strip()
    return props


def build_settings(
    *,
    products: str,
    config_path: Path,
    kafka: str | None,
    redis_url: str | None,
    kafka_config: Path | None = None,
    timing: Timing | None = None,
    passthrough_copies: float = 1.0,
    **node: object,
) -> NodeSettings:
    """Validate the CLI's options into one NodeSettings (unknown products are an error).

    `node` holds NodeSettings fields taken as given (node_id, http_port, core, ...); what is not
    given keeps NodeSettings' default.
    """
    names = parse_products(products)
    configs = load_products(config_path)
    try:
        # The whole file, not just this node's products: other nodes may run the others.
        check_product_names(configs)
    except SettingsError as exc:
        raise SettingsError(f"{config_path}: {exc}") from None
    missing = [p for p in names if p not in configs]
    if missing:
        raise SettingsError(f"{config_path} has no settings for {', '.join(missing)}")
    try:
        resolve_core(str(node.get("core", NodeSettings.core)))
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return NodeSettings(
        products=names,
        product_configs={p: configs[p] for p in names},
        kafka_bootstrap=kafka or "",
        redis_url=redis_url or "",
        kafka_extra=load_kafka_properties(kafka_config),
        timing=timing or Timing(),
        passthrough_copies_per_mille=round(passthrough_copies * 1000),
        **node,
    )
