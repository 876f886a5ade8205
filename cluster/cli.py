"""The `orderbook-cluster` command line: thin click commands over engine/ and cluster/.

Every option is also an environment variable (prefix ORDERBOOK_CLUSTER_<COMMAND>_, e.g.
ORDERBOOK_CLUSTER_START_KAFKA), so containers configure it without flags. Without --kafka and
--redis, `start` runs the embedded default and records where it runs in <state-dir>/embedded.json,
which `send`, `tail` and `status` read when they too are given no addresses.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import sys
from pathlib import Path

import click

from cluster.bench_core import core as bench_core
from cluster.bench_e2e import e2e as bench_e2e
from cluster.bench_ids import ids as bench_ids
from cluster.http_api import DEFAULT_HTTP_PORT
from cluster.replay import replay
from cluster.settings import SettingsError, parse_timing, redact_url

DEFAULT_STATE_DIR = Path(".orderbook-cluster")
PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "products.toml"


def default_config() -> Path:
    """configs/products.toml in the working directory, else the one shipped with the package."""
    local = Path("configs/products.toml")
    return local if local.exists() else PACKAGED_CONFIG


def setup_logging(level: str) -> None:
    """One line per event, key=value context, to stderr."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s pid=%(process)d %(message)s",
    )


def service_address(given: str | None, service: str, state_dir: Path) -> str:
    """The address given for `service` ("kafka" or "redis"), else the running embedded default's."""
    if given:
        return given
    embedded = embedded_state(state_dir)
    if not embedded:
        raise click.UsageError(f"give --{service}, or run `orderbook-cluster start` here first")
    return embedded[service]


def embedded_state(state_dir: Path) -> dict:
    """What a running embedded default recorded about itself ({} if none runs here)."""
    state_file = state_dir / "embedded.json"
    return json.loads(state_file.read_text()) if state_file.exists() else {}


@click.group(
    context_settings={"auto_envvar_prefix": "ORDERBOOK_CLUSTER", "help_option_names": ["-h", "--help"]}
)
def cli() -> None:
    """orderbook-cluster: a highly available matching engine, Kafka in and Kafka out."""


@cli.command()
@click.option("--products", required=True, help="Comma-separated products, e.g. BTC-USD,ETH-USD.")
@click.option(
    "--kafka", default=None, help="Kafka bootstrap servers. Omit (with --redis) for the embedded default."
)
@click.option("--redis", default=None, help="Redis URL (redis:// or rediss://, AUTH in the URL).")
@click.option(
    "--config",
    type=click.Path(path_type=Path, exists=True),
    default=default_config,
    help="Product settings (TOML).",
)
@click.option(
    "--kafka-config",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="librdkafka properties file (key=value), e.g. SASL/TLS settings.",
)
@click.option("--node-id", default=socket.gethostname, help="This node's name (a StatefulSet pod name).")
@click.option("--http-host", default="127.0.0.1", help="Address of the health/metrics endpoints.")
@click.option(
    "--http-port", type=int, default=DEFAULT_HTTP_PORT, help="Port of the health/metrics endpoints."
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=DEFAULT_STATE_DIR,
    help="Logs and state of the embedded default, metrics files.",
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
@click.option(
    "--core",
    type=click.Choice(["auto", "native", "python"]),
    default="auto",
    show_default=True,
    help="Matching core: native (C, engine/_native.c), python (engine/matching.py, the reference) or "
    "auto (native when built). Both give byte-identical events and snapshots.",
)
@click.option("--passthrough", is_flag=True, hidden=True, help="Benchmarks only: copy input to output.")
@click.option(
    "--passthrough-copies",
    type=click.FloatRange(1, 10),
    default=1.0,
    hidden=True,
    help="Benchmarks only: output records per input record on average, with --passthrough.",
)
@click.option("--log-level", default="INFO")
def start(
    products,
    kafka,
    redis,
    config,
    kafka_config,
    node_id,
    http_host,
    http_port,
    state_dir,
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
    from cluster.embedded import embedded_services
    from cluster.kafka_io import ensure_topics, product_topics
    from cluster.node import Node, prepare_metrics_dir
    from cluster.settings import build_settings

    setup_logging(log_level)
    try:
        settings = build_settings(
            products=products,
            config_path=config,
            node_id=node_id,
            kafka=kafka,
            redis_url=redis,
            kafka_config=kafka_config,
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
    prepare_metrics_dir(state_dir)

    def run(node_settings, embedded=None) -> int:
        topics = [t for p in node_settings.products for t in product_topics(p)]
        ensure_topics(node_settings.kafka_bootstrap, node_settings.kafka_extra, topics)
        logging.getLogger("cluster.cli").info("starting settings=%s", node_settings.redacted())
        return Node(node_settings, embedded).run()

    if kafka and redis:
        sys.exit(run(settings))
    if kafka or redis:
        raise click.UsageError("give both --kafka and --redis, or neither for the embedded default")
    with embedded_services(state_dir) as services:
        state_file = state_dir / "embedded.json"
        state_file.touch(mode=0o600)  # holds the generated admin token
        state_file.write_text(
            json.dumps(
                {
                    "kafka": services.bootstrap,
                    "redis": services.redis_url,
                    "pids": {"broker": services.broker.pid, "redis": services.redis.pid},
                    "admin_token": settings.admin_token,
                }
            )
        )
        click.echo(
            f"embedded default: Kafka at {services.bootstrap}, Redis at {services.redis_url} "
            f"(logs in {state_dir}/); health and metrics at http://{http_host}:{http_port}/",
            err=True,
        )
        try:
            code = run(settings.with_services(services.bootstrap, services.redis_url), services)
        finally:
            state_file.unlink(missing_ok=True)
    sys.exit(code)


@cli.command()
@click.option("--redis", default=None)
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR)
@click.option("--products", default=None, help="Products to show (default: every product found in Redis).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of a table.")
def status(redis, state_dir, products, as_json) -> None:
    """Per product: leader, standbys, epoch, offsets, sequence, snapshot age, events/s."""
    from cluster.status import collect_status, format_status

    redis_url = service_address(redis, "redis", state_dir)
    doc = collect_status(redis_url, products.split(",") if products else None)
    click.echo(json.dumps(doc, indent=2, sort_keys=True) if as_json else format_status(doc))


@cli.command()
@click.option("--kafka", default=None)
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR)
@click.option("--product", required=True)
@click.option(
    "--generate", type=int, default=None, help="Send N generated realistic orders instead of a file."
)
@click.option("--seed", type=int, default=1)
@click.option("--start-id", type=int, default=1, help="First order id of generated orders.")
@click.argument("source", required=False, type=click.File("rb"))
def send(kafka, state_dir, product, generate, seed, start_id, source) -> None:
    """Send orders (JSON lines from SOURCE or -, or --generate N) to the product's order topic."""
    from cluster.send import send_orders

    bootstrap = service_address(kafka, "kafka", state_dir)
    if (source is None) == (generate is None):
        raise click.UsageError("give a SOURCE file (or -) or --generate N")
    sent = send_orders(bootstrap, product, source=source, generate=generate, seed=seed, start_id=start_id)
    click.echo(f"sent {sent} orders to matching_order_{product}", err=True)


@cli.command()
@click.option("--kafka", default=None)
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR)
@click.option("--product", required=True)
@click.option("--count", type=int, default=None, help="Stop after this many events.")
@click.option(
    "--idle-timeout", type=float, default=None, help="Stop when no event came for this many seconds."
)
def tail(kafka, state_dir, product, count, idle_timeout) -> None:
    """Print a product's events from the start, dropping redelivered sequences."""
    from cluster.send import tail_events

    bootstrap = service_address(kafka, "kafka", state_dir)
    for line in tail_events(bootstrap, product, count=count, idle_timeout=idle_timeout):
        click.echo(line)


@cli.command()
@click.option("--kafka", default=None)
@click.option("--redis", default=None)
@click.option("--kafka-config", type=click.Path(path_type=Path, exists=True), default=None)
@click.option("--state-dir", type=click.Path(path_type=Path), default=DEFAULT_STATE_DIR)
@click.option("--config", type=click.Path(path_type=Path, exists=True), default=default_config)
@click.option(
    "--product", required=True, help="A drill product: its topics are read whole to check the stream."
)
@click.option(
    "--fault",
    type=click.Choice(["kill", "pause", "node-kill", "redis-restart"]),
    required=True,
)
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--rate", type=float, default=500.0, show_default=True, help="Offered orders per second.")
@click.option(
    "--pause-s", type=float, default=None, help="How long `pause` stops the leader (default 2x lease TTL)."
)
@click.option(
    "--admin-token", default=None, help="The nodes' admin token (embedded default: found by itself)."
)
@click.option("--json", "as_json", is_flag=True)
def drill(
    kafka, redis, kafka_config, state_dir, config, product, fault, rounds, rate, pause_s, admin_token, as_json
) -> None:
    """Fault drill: steady load, inject a fault at the leader, time the takeover, check the stream."""
    from cluster.drill import DrillError, format_report, run_drill
    from cluster.settings import load_kafka_properties
    from engine.config import load_products

    bootstrap = service_address(kafka, "kafka", state_dir)
    redis_url = service_address(redis, "redis", state_dir)
    admin_token = admin_token or embedded_state(state_dir).get("admin_token")
    if not admin_token:
        raise click.UsageError("give --admin-token (the nodes' ORDERBOOK_CLUSTER_START_ADMIN_TOKEN)")
    configs = load_products(config)
    if product not in configs:
        raise click.UsageError(f"{config} has no settings for {product}")
    log = (lambda _line: None) if as_json else (lambda line: click.echo(line, err=True))
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
            kafka_extra=load_kafka_properties(kafka_config),
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
bench.add_command(bench_ids, "ids")
cli.add_command(replay)

__all__ = ["cli", "main", "redact_url"]


def main() -> None:
    """Console-script entry point."""
    cli()
