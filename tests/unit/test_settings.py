"""Settings: typos are errors, secrets never reach logs, overridden Kafka settings are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.kafka_io import client_config, make_consumer, make_producer, product_topics
from cluster.settings import (
    MAX_PRODUCT_NAME,
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


def test_status_is_reported_at_the_idle_cadence_only_after_idle_after_ms_without_input():
    timing = parse_timing(["status_every_ms=400", "status_idle_every_ms=1500", "idle_after_ms=3000"])
    assert timing.status_cadence_s(0.0) == timing.status_cadence_s(2.9) == 0.4
    assert timing.status_cadence_s(3.0) == timing.status_cadence_s(600.0) == 1.5
    assert timing.status_fresh_ms() == 4500, "readers wait for three reports at the slowest cadence"
    with pytest.raises(SettingsError, match="status_idle_every_ms"):
        parse_timing(["status_idle_every_ms=400"])  # below status_every_ms (500)


def test_products_must_be_usable_topic_names_and_configured():
    assert parse_products("BTC-USD, ETH-USD") == ("BTC-USD", "ETH-USD")
    for bad in ("", "BTC USD", "BTC-USD,BTC-USD", "A/B"):
        with pytest.raises(SettingsError):
            parse_products(bad)
    with pytest.raises(SettingsError, match="NOPE-USD"):
        build_settings(
            products="BTC-USD,NOPE-USD", config_path=CONFIG, node_id="n1", kafka="k:9092", redis_url=""
        )


def test_product_names_that_would_share_or_break_a_topic_are_refused():
    with pytest.raises(SettingsError, match=r"'BTC-USD'.*dead-letter topic 'matching_order_BTC-USD.dlq'"):
        parse_products("BTC-USD.dlq")
    with pytest.raises(SettingsError, match="'A.B' and 'A_B' collide"):
        parse_products("A.B,A_B")  # Kafka takes '.' and '_' as one character in topic names
    with pytest.raises(SettingsError, match="'X.dlq'"):
        parse_products("X,X_dlq,X.dlq")
    with pytest.raises(SettingsError, match="collide"):
        parse_products("X,X_dlq")  # X_dlq's input topic is X's dead-letter topic to Kafka
    for bad in ("BTC+USD", "BTC:USD", "BTC-\u00dcSD", "a" * (MAX_PRODUCT_NAME + 1)):
        with pytest.raises(SettingsError, match="topic"):
            parse_products(bad)
    longest = "a" * MAX_PRODUCT_NAME
    assert parse_products(longest) == (longest,)
    assert max(len(t) for t in product_topics(longest)) == 249  # Kafka's limit, exactly
    assert parse_products("BTC-USD,ETH-USD,dlq,X.dlqs") == ("BTC-USD", "ETH-USD", "dlq", "X.dlqs")


def test_the_whole_config_file_is_checked_not_only_this_nodes_products(tmp_path):
    config = tmp_path / "products.toml"
    config.write_text(
        '[products."BTC-USD"]\nbase_scale = 6\nquote_scale = 2\n\n'
        '[products."BTC-USD.dlq"]\nbase_scale = 6\nquote_scale = 2\n'
    )
    with pytest.raises(SettingsError, match=r"products.toml: product name 'BTC-USD.dlq'"):
        build_settings(products="BTC-USD", config_path=config, node_id="n1", kafka="k:9092", redis_url="")
    build_settings(products="BTC-USD", config_path=CONFIG, node_id="n1", kafka="k:9092", redis_url="")


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
