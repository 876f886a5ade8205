"""Settings: typos are errors, secrets never reach logs, overridden Kafka settings are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.kafka_io import client_config, make_consumer, make_producer
from cluster.settings import (
    SettingsError,
    Timing,
    build_settings,
    load_kafka_properties,
    parse_products,
    parse_timing,
    redact_url,
)

CONFIG = Path(__file__).parents[2] / "configs" / "products.toml"


def test_timing_overrides_and_typos():
    timing = parse_timing(["snapshot_every_orders=50000", "snapshot_every_s=2.5", "lease_ttl_ms=1200"])
    assert (timing.snapshot_every_orders, timing.snapshot_every_s, timing.lease_ttl_ms) == (50000, 2.5, 1200)
    assert parse_timing([]) == Timing()
    for bad in ("snapshot_every_order=5", "lease_ttl_ms", "lease_ttl_ms=abc", "consume_batch=0"):
        with pytest.raises(SettingsError):
            parse_timing([bad])


def test_lease_timing_must_leave_room_for_renewals():
    with pytest.raises(SettingsError):
        parse_timing(["lease_ttl_ms=250"])  # renew 100 ms * 3 > 250
    with pytest.raises(SettingsError):
        parse_timing(["lease_safety_ms=750"])


def test_products_must_be_usable_topic_names_and_configured():
    assert parse_products("BTC-USD, ETH-USD") == ("BTC-USD", "ETH-USD")
    for bad in ("", "BTC USD", "BTC-USD,BTC-USD", "A/B"):
        with pytest.raises(SettingsError):
            parse_products(bad)
    with pytest.raises(SettingsError, match="NOPE-USD"):
        build_settings(
            products="BTC-USD,NOPE-USD", config_path=CONFIG, node_id="n1", kafka="k:9092", redis_url=""
        )


def test_secrets_are_redacted(tmp_path):
    props = tmp_path / "kafka.properties"
    props.write_text(
        "# SASL\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\nsasl.username=matcher\n"
        "sasl.password=hunter2\nssl.ca.location=/etc/ca.pem\nssl.key.password=k3y\n"
    )
    assert load_kafka_properties(props)["sasl.password"] == "hunter2"
    settings = build_settings(
        products="BTC-USD",
        config_path=CONFIG,
        node_id="n1",
        kafka="k:9093",
        redis_url="rediss://default:s3cret@redis:6380/0",
        kafka_config=props,
        admin_token="t0ken",
    )
    shown = repr(settings.redacted())
    for secret in ("hunter2", "s3cret", "k3y", "t0ken"):
        assert secret not in shown
    assert "/etc/ca.pem" in shown and "matcher" in shown and "redis:6380" in shown
    assert redact_url("redis://redis:6379/0") == "redis://redis:6379/0"


def test_operator_kafka_settings_we_override_are_named(caplog):
    extra = {
        "sasl.username": "matcher",
        "enable.idempotence": "false",
        "acks": "all",
        "compression.type": "zstd",
    }
    with caplog.at_level("WARNING", logger="cluster.kafka_io"):
        config = client_config(
            "k:9092",
            extra,
            {"enable.idempotence": True, "acks": "all", "compression.type": "lz4"},
            "producer",
        )
    assert config["sasl.username"] == "matcher"  # the operator's own settings stay
    assert config["enable.idempotence"] is True and config["compression.type"] == "lz4"
    ignored = sorted(r.args[1] for r in caplog.records)
    assert ignored == ["compression.type", "enable.idempotence"]  # acks=all agrees: nothing to say


def test_the_node_clients_are_built_through_it(caplog):
    extra = {"compression.type": "zstd", "enable.auto.commit": "true"}
    with caplog.at_level("WARNING", logger="cluster.kafka_io"):
        make_producer("127.0.0.1:1", extra, "obc-test", lambda err, msg: None)  # no connection is made yet
        make_consumer("127.0.0.1:1", extra, "obc-test")
    ignored = sorted((r.args[0], r.args[1]) for r in caplog.records)
    assert ignored == [("consumer", "enable.auto.commit"), ("producer", "compression.type")]


def test_snapshots_follow_orders_but_at_most_at_the_minimum_interval():
    timing = parse_timing(["snapshot_every_orders=20000", "snapshot_min_interval_s=1", "snapshot_every_s=5"])
    assert not timing.snapshot_due(0, 60.0)  # no input, nothing new to keep
    assert not timing.snapshot_due(19_999, 4.9)
    assert timing.snapshot_due(20_000, 1.0)
    assert not timing.snapshot_due(400_000, 0.5)  # a burst: not 20 snapshots a second
    assert timing.snapshot_due(1, 5.0)  # a trickle: every snapshot_every_s
    assert timing.snapshot_due(1, float("inf"))  # a new leader takes one at once
    with pytest.raises(SettingsError):
        parse_timing(["snapshot_min_interval_s=10", "snapshot_every_s=5"])
