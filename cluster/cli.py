"""The `orderbook-cluster` command line: thin click commands over engine/ and cluster/.

Every option is also an environment variable (prefix ORDERBOOK_CLUSTER_<COMMAND>_, e.g.
ORDERBOOK_CLUSTER_START_KAFKA), so containers configure it without flags. Without --kafka and
--redis, `start` runs the embedded default and records where it runs in <state-dir>/embedded.json,
which `send`, `tail`, `status` and `drill` read when they too are given no addresses. The
connection options are declared once, in cluster/connection.py.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path

import click

from cluster.bench.availability import availability as bench_availability
from cluster.bench.core import core as bench_core
from cluster.bench.e2e import e2e as bench_e2e
from cluster.bench.idle import idle as bench_idle
from cluster.bench.ids import ids as bench_ids
from cluster.bench.replay import replay as bench_replay
from cluster.bench.snapshot import snapshot as bench_snapshot
from cluster.connection import DEFAULT_STATE_DIR, Connection, check_redis, connection_options, kafka_topics
from cluster.options import config_option, core_option, json_option, seed_option
from cluster.settings import NodeSettings, SettingsError, parse_timing, redact_url
from cluster.tools.drill import ROUND_FAULTS, round_faults_help
from cluster.tools.replay import replay
from cluster.tools.rolling import ROLLING_HELP, ROLLING_RESTART


def setup_logging(level: str) -> None:
    """One line per event, key=value context, to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s",
    )


def service_address(given: str | None, service: str, state_dir: Path) -> str:
    """The address given for `service` ("kafka" or "redis"), else the running embedded default's."""
    return Connection(given, given, None, state_dir).address(service)


def package_version() -> str:
    """The installed distribution's version ("unknown" when run from a source tree not installed)."""
    try:
        return importlib.metadata.version("orderbook-cluster")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@click.group(
    context_settings={"auto_envvar_prefix": "ORDERBOOK_CLUSTER", "help_option_names": ["-h", "--help"]}
)
@click.version_option(package_version(), "--version", prog_name="orderbook-cluster")
def cli() -> None:
    """orderbook-cluster: a highly available matching engine, Kafka in and Kafka out."""


@cli.command()
@click.option("--products", required=True, help="Comma-separated products, e.g. BTC-USD,ETH-USD.")
@config_option()
@click.option("--node-id", default=socket.gethostname, help="This node's name (a StatefulSet pod name).")
@click.option("--http-host", default=NodeSettings.http_host, help="Address of the health/metrics endpoints.")
@click.option(
    "--http-port", type=int, default=NodeSettings.http_port, help="Port of the health/metrics endpoints."
)
@click.option(
    "--advertise-host", default=None, help="Host at which drills and other nodes reach this node's HTTP."
)
@click.option(
    "--admin-token",
    default=None,
    help="Bearer token of the admin (fault-injection) endpoint; unset: off (embedded default: generated).",
)
@click.option(
    "--tune",
    multiple=True,
    metavar="NAME=VALUE",
    help="Override a timing knob, e.g. snapshot_every_orders=50000, lease_ttl_ms=1000, consume_batch=5000 "
    "(see cluster/settings.py Timing; an unknown name is an error).",
)
@click.option(
    "--kafka-transactions",
    is_flag=True,
    help="Publish each batch in a Kafka transaction (transactional.id per product), so the broker "
    "fences a zombie leader too. Needs a broker with transactions; consumers read_committed.",
)
@core_option
@click.option("--passthrough", is_flag=True, hidden=True, help="Benchmarks only: copy input to output.")
@click.option(
    "--passthrough-copies",
    type=click.FloatRange(1, 10),
    default=1.0,
    hidden=True,
    help="Benchmarks only: output records per input record on average, with --passthrough.",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
    help="Least severe log level written to stderr.",
)
@connection_options
def start(
    conn,
    products,
    config,
    node_id,
    http_host,
    http_port,
    advertise_host,
    admin_token,
    tune,
    kafka_transactions,
    core,
    passthrough,
    passthrough_copies,
    log_level,
) -> None:
    """Run one matching process per product on this node (leader or hot standby)."""
    from cluster.embedded import EmbeddedServerError, embedded_services
    from cluster.kafka_io import ensure_topics, product_topics
    from cluster.node import Node, prepare_metrics_dir
    from cluster.settings import build_settings
    from cluster.state_dir import AlreadyRunning, embedded_lock, run_directory, write_embedded

    setup_logging(log_level)
    kafka, redis, state_dir = conn.kafka_given, conn.redis_given, conn.state_dir
    if bool(kafka) != bool(redis):
        raise click.UsageError("give both --kafka and --redis, or neither for the embedded default")
    try:
        settings = build_settings(
            products=products,
            config_path=config,
            node_id=node_id,
            kafka=kafka,
            redis_url=redis,
            kafka_config=conn.kafka_config,
            http_host=http_host,
            http_port=http_port,
            state_dir=state_dir,
            advertise_host=advertise_host,
            passthrough=passthrough,
            passthrough_copies=passthrough_copies,
            kafka_transactions=kafka_transactions,
            core=core,
            timing=parse_timing(tune),
            admin_token=admin_token or (None if kafka and redis else secrets.token_urlsafe(24)),
        )
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc
    if kafka and redis:  # fail in one line now rather than in every product process
        check_redis(redis)
        kafka_topics(kafka, settings.kafka_extra)

    def run(node_settings, embedded=None) -> int:
        topics = [t for p in node_settings.products for t in product_topics(p)]
        ensure_topics(node_settings.kafka_bootstrap, node_settings.kafka_extra, topics)
        logging.getLogger("cluster.cli").info("starting settings=%s", node_settings.redacted())
        return Node(node_settings, embedded).run()

    with contextlib.ExitStack() as held:
        if not kafka:
            try:
                held.enter_context(embedded_lock(state_dir))  # one embedded default per state dir
            except AlreadyRunning as exc:
                raise click.ClickException(str(exc)) from None
        run_dir = held.enter_context(run_directory(state_dir))
        held.callback(shutil.rmtree, prepare_metrics_dir(run_dir), ignore_errors=True)
        if kafka:
            sys.exit(run(settings))
        try:
            services = held.enter_context(embedded_services(run_dir))
        except EmbeddedServerError as exc:
            raise click.ClickException(str(exc)) from None
        state_file = write_embedded(
            state_dir,
            {
                "kafka": services.bootstrap,
                "redis": services.redis_url,
                "start_pid": os.getpid(),
                "pids": {"broker": services.broker.pid, "redis": services.redis.pid},
                "admin_token": settings.admin_token,  # hence mode 600
            },
        )
        held.callback(state_file.unlink, missing_ok=True)
        click.echo(
            f"embedded default: Kafka at {services.bootstrap}, Redis at {services.redis_url} "
            f"(logs in {run_dir}/); health and metrics at http://{http_host}:{http_port}/",
            err=True,
        )
        code = run(settings.with_services(services.bootstrap, services.redis_url), services)
    sys.exit(code)


@cli.command()
@click.option("--products", default=None, help="Products to show (default: every product found in Redis).")
@json_option("One JSON object instead of a table.")
@connection_options
def status(conn, products, as_json) -> None:
    """Per product: leader, standbys, epoch, offsets, sequence, snapshot age, events/s."""
    from cluster.tools.status import collect_status, format_status

    redis_url = conn.redis()
    doc = collect_status(redis_url, products.split(",") if products else None)
    click.echo(json.dumps(doc, indent=2, sort_keys=True) if as_json else format_status(doc))


@cli.command()
@click.option("--product", required=True, help="Product whose order topic gets the orders, e.g. BTC-USD.")
@click.option(
    "--generate", type=int, default=None, help="Send N generated realistic orders instead of a file."
)
@seed_option
@click.option("--start-id", type=int, default=1, help="First order id of generated orders.")
@click.argument("source", required=False, type=click.File("rb"))
@connection_options
def send(conn, product, generate, seed, start_id, source) -> None:
    """Send orders (JSON lines from SOURCE or -, or --generate N) to the product's order topic.

    Exits non-zero, saying how many orders were not delivered and why, unless the broker
    acknowledged every one.
    """
    from cluster.kafka_io import order_topic
    from cluster.tools.send import send_orders

    if (source is None) == (generate is None):
        raise click.UsageError("give a SOURCE file (or -) or --generate N")
    bootstrap = conn.kafka(order_topic(product))
    delivered = send_orders(
        bootstrap,
        product,
        source=source,
        generate=generate,
        seed=seed,
        start_id=start_id,
        extra=conn.kafka_extra,
    )
    click.echo(f"sent {delivered} orders to {order_topic(product)}, every one acknowledged", err=True)


@cli.command()
@click.option("--product", required=True, help="Product whose events to print, e.g. BTC-USD.")
@click.option("--count", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--idle-timeout", type=float, default=None, help="Stop when no event came for this many seconds."
)
@connection_options
def tail(conn, product, count, idle_timeout) -> None:
    """Print a product's events from the start, dropping redelivered sequences.

    Follows the topic like `tail -f`: it runs until --count events (or --idle-timeout seconds
    without one) or Ctrl-C. A product without topics is an error at once.
    """
    from cluster.kafka_io import message_topic
    from cluster.tools.send import tail_events

    bootstrap = conn.kafka(message_topic(product))
    for line in tail_events(
        bootstrap, product, count=count, idle_timeout=idle_timeout, extra=conn.kafka_extra
    ):
        click.echo(line)


@cli.command()
@click.option("--product", required=True, help="Product whose dead letters to print, e.g. BTC-USD.")
@click.option("--count", type=int, default=None, help="Stop after this many dead letters.")
@click.option(
    "--idle-timeout",
    type=float,
    default=2.0,
    show_default=True,
    help="Stop when no dead letter came for this many seconds (0: follow until Ctrl-C).",
)
@json_option("One JSON object per dead letter.")
@connection_options
def dlq(conn, product, count, idle_timeout, as_json) -> None:
    """Print a product's dead letters: reason, source offset, and the record's first 120 bytes."""
    from cluster.kafka_io import dlq_topic
    from cluster.tools.dlq import dead_letters, format_letter

    bootstrap = conn.kafka(dlq_topic(product))
    letters = dead_letters(bootstrap, product, count=count, idle_timeout=idle_timeout or None)
    for letter in letters:
        click.echo(json.dumps(letter) if as_json else format_letter(letter))


@cli.command()
@click.option("--product", required=True, help="The product whose leadership moves.")
@click.option(
    "--to", "to_node", default=None, help="The node to lead it (default: the preferred caught-up standby)."
)
@click.option("--timeout-s", type=float, default=15.0, show_default=True, help="How long to wait for it.")
@connection_options
def handover(conn, product, to_node, timeout_s) -> None:
    """Hand a product's leadership to a caught-up standby: everything is delivered first, no kill."""
    from cluster.tools.handover import HandoverError, request_handover

    try:
        done = request_handover(conn.redis(), product, to_node, timeout_s)
    except HandoverError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{product}: {done.old_node} (epoch {done.old_epoch}) -> {done.new_node} (epoch {done.new_epoch}) "
        f"in {done.took_ms:.0f} ms"
    )


@cli.command()
@config_option("Product settings (TOML): the drill product's, for the stream check.")
@click.option(
    "--product",
    required=True,
    help="A drill product: its topics are read whole to check the stream (rolling-restart: one or "
    "more, comma-separated).",
)
@click.option(
    "--fault",
    type=click.Choice([*ROUND_FAULTS, ROLLING_RESTART]),
    required=True,
    help=f"At the product's leader: {round_faults_help()}; {ROLLING_RESTART}: {ROLLING_HELP}.",
)
@click.option("--rounds", type=int, default=5, show_default=True, help="Faults injected, one per round.")
@click.option("--rate", type=float, default=500.0, show_default=True, help="Offered orders per second.")
@click.option(
    "--pause-s",
    type=float,
    default=None,
    help="How long `pause` stops the leader (default: past the stall limit and a lease TTL).",
)
@click.option(
    "--admin-token", default=None, help="The nodes' admin token (embedded default: found by itself)."
)
@json_option("The report as one JSON object, no progress lines.")
@connection_options
def drill(conn, config, product, fault, rounds, rate, pause_s, admin_token, as_json) -> None:
    """Fault drill: steady load, inject a fault at the leader, time the takeover, check the stream."""
    from cluster.kafka_io import message_topic, order_topic
    from cluster.tools.drill import DrillError, format_report, run_drill
    from engine.config import load_products

    names = [p for p in product.split(",") if p]
    bootstrap = conn.kafka(*(t for p in names for t in (order_topic(p), message_topic(p))))
    redis_url = conn.redis()
    admin_token = admin_token or conn.embedded_admin_token()
    if not admin_token:
        raise click.UsageError("give --admin-token (the nodes' ORDERBOOK_CLUSTER_START_ADMIN_TOKEN)")
    configs = load_products(config)
    missing = [p for p in names if p not in configs]
    if missing:
        raise click.UsageError(f"{config} has no settings for {', '.join(missing)}")
    if len(names) != 1 and fault != ROLLING_RESTART:
        raise click.UsageError(f"--fault {fault} drills one product")
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
    if fault == ROLLING_RESTART:
        from cluster.tools.rolling import format_rolling, run_rolling_restart

        try:
            rolling = run_rolling_restart(
                bootstrap,
                redis_url,
                {p: configs[p] for p in names},
                rate,
                admin_token,
                kafka_extra=conn.kafka_extra,
                log=log,
            )
        except DrillError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(rolling.as_dict(), indent=2) if as_json else format_rolling(rolling))
        sys.exit(0 if rolling.ok() else 1)
    try:
        report = run_drill(
            bootstrap=bootstrap,
            redis_url=redis_url,
            product=product,
            config=configs[product],
            fault=fault,
            rounds=rounds,
            rate=rate,
            admin_token=admin_token,
            pause_s=pause_s,
            kafka_extra=conn.kafka_extra,
            log=log,
        )
    except DrillError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else format_report(report))
    if not report.stream.get("ok") or any(r.error for r in report.rounds):
        sys.exit(1)


@cli.group()
def bench() -> None:
    """Benchmarks: figures, never pass/fail tests."""


bench.add_command(bench_core, "core")
bench.add_command(bench_e2e, "e2e")
bench.add_command(bench_replay, "replay")
bench.add_command(bench_snapshot, "snapshot")
bench.add_command(bench_availability, "availability")
bench.add_command(bench_ids, "ids")
bench.add_command(bench_idle, "idle")
cli.add_command(replay)

__all__ = ["DEFAULT_STATE_DIR", "cli", "main", "redact_url", "service_address"]


def main() -> None:
    """Console-script entry point."""
    cli()
