"""How a command reaches Kafka and Redis: one declaration of the connection options for every
command, the embedded default's discovery, and bounded reachability checks that fail in one line.

Every command gets --kafka, --redis, --kafka-config and --state-dir from `connection_options`, as
one `Connection` argument. Without --kafka/--redis a command uses the embedded default that
`start` runs in --state-dir (cluster/state_dir.py says when that record is believed).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import click

from cluster.settings import DEFAULT_STATE_DIR, SettingsError, load_kafka_properties, redact_url

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Connection:
    """The connection options of one command invocation, resolved on demand."""

    kafka_given: str | None
    redis_given: str | None
    kafka_config: Path | None
    state_dir: Path

    @functools.cached_property
    def kafka_extra(self) -> dict[str, str]:
        """The operator's librdkafka properties (SASL/TLS, ...); {} without --kafka-config."""
        try:
            return load_kafka_properties(self.kafka_config)
        except SettingsError as exc:
            raise click.UsageError(str(exc)) from exc

    def address(self, service: str) -> str:
        """The address given for `service` ("kafka" or "redis"), else the running embedded default's."""
        from cluster.state_dir import StaleState, running_embedded

        given = self.kafka_given if service == "kafka" else self.redis_given
        if given:
            return given
        try:
            embedded = running_embedded(self.state_dir)
        except StaleState as exc:
            raise click.ClickException(f"{exc}; run `orderbook-cluster start` here first") from None
        if not embedded:
            raise click.UsageError(
                f"give --{service}, or run `orderbook-cluster start` here first "
                f"(no embedded default runs with state dir {self.state_dir})"
            )
        return embedded[service]

    def embedded_admin_token(self) -> str | None:
        """The admin token the embedded default running here generated, if one runs here."""
        from cluster.state_dir import StaleState, running_embedded

        try:
            return running_embedded(self.state_dir).get("admin_token")
        except StaleState:
            return None

    def kafka(self, *required_topics: str, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
        """The Kafka bootstrap address, checked to answer within `timeout_s` and to have the topics."""
        bootstrap = self.address("kafka")
        topics = kafka_topics(bootstrap, self.kafka_extra, timeout_s)
        for topic in required_topics:
            if topic not in topics:
                raise click.ClickException(f"no such product topic {topic} at {bootstrap}")
        return bootstrap

    def redis(self, timeout_s: float = CONNECT_TIMEOUT_S) -> str:
        """The Redis URL, checked to answer a PING within `timeout_s`."""
        url = self.address("redis")
        check_redis(url, timeout_s)
        return url


def kafka_topics(bootstrap: str, extra: dict[str, str], timeout_s: float = CONNECT_TIMEOUT_S) -> set[str]:
    """The broker's topics; one clear error line if no broker answers within `timeout_s`."""
    from cluster.kafka_io import KafkaUnreachable, existing_topics

    try:
        return existing_topics(bootstrap, extra, timeout_s)
    except KafkaUnreachable as exc:
        raise click.ClickException(str(exc)) from None


def check_redis(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """PING Redis with a bounded wait; one clear error line if it does not answer."""
    import redis

    from cluster.redis_state import sync_client

    try:
        sync_client(url, timeout_s=timeout_s).ping()
    except (redis.RedisError, OSError) as exc:
        raise click.ClickException(
            f"cannot reach Redis at {redact_url(url)} (timeout {timeout_s:g} s): {exc}"
        ) from None


def connection_options(command):
    """--kafka, --redis, --kafka-config and --state-dir, passed to `command` as `conn`."""

    @functools.wraps(command)
    def with_connection(*args, kafka, redis, kafka_config, state_dir, **kwargs):
        return command(*args, conn=Connection(kafka, redis, kafka_config, state_dir), **kwargs)

    options = (
        click.option(
            "--kafka",
            default=None,
            help="Kafka bootstrap servers (host:port,...). Omit for the embedded default `start` runs "
            "in --state-dir.",
        ),
        click.option(
            "--redis",
            default=None,
            help="Redis URL (redis:// or rediss://, AUTH in the URL). Omit for the embedded default.",
        ),
        click.option(
            "--kafka-config",
            type=click.Path(path_type=Path, exists=True, dir_okay=False),
            default=None,
            help="librdkafka properties file (key=value) with connection settings, e.g. SASL/TLS.",
        ),
        click.option(
            "--state-dir",
            type=click.Path(path_type=Path, file_okay=False),
            default=DEFAULT_STATE_DIR,
            show_default=True,
            help="Where `start` keeps the embedded default's record (embedded.json), logs and metrics "
            "files; other commands find the embedded default's addresses there.",
        ),
    )
    for option in reversed(options):
        with_connection = option(with_connection)
    return with_connection
