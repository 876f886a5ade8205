"""`bench e2e --json` runs end to end on tiny sizes and reports every figure, consistently.

Figures only: no timing thresholds here (the targets are benchmark figures, see docs/performance.md).
"""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from cluster.bench.e2e import e2e, restart_reasons
from engine.native import native_available

pytestmark = pytest.mark.integration

PRODUCT_FIELDS = {"orders_per_s", "seconds", "events", "cpu_cores", "cpu_us_per_order", "peak_rss_mb", "pid"}
LATENCY_FIELDS = {"offered_per_product_per_s", "p50_ms", "p99_ms", "p999_ms", "max_ms", "orders_measured"}
LATENCY_FIELDS |= {"cpu_cores_per_process"}


def test_bench_e2e_json_has_every_figure(services):
    args = ["--products", "2", "--orders", "2000", "--rate", "500", "--seconds", "1", "--json"]
    args += ["--rounds", "2", "--volume-matched"]
    args += ["--kafka", services.bootstrap, "--redis", services.redis_url]
    result = CliRunner().invoke(e2e, args)
    assert result.exit_code == 0, result.stderr + str(result.exception)
    report = json.loads(result.stdout)
    assert report["products"] == 2 and report["orders_per_product"] == 2000
    # the core the engine's product processes reported in /status, not the one this process would take
    assert report["core"] == ("native" if native_available() else "python") and report["core_asked"] == "auto"
    assert {f["core"] for f in report["engine"]["products"].values()} == {report["core"]}
    for mode in ("passthrough", "engine"):
        run = report[mode]
        assert len(run["products"]) == 2, f"{mode}: {run['products']}"
        for product, figures in run["products"].items():
            assert PRODUCT_FIELDS <= figures.keys(), f"{mode} {product}: {figures}"
            assert figures["orders_per_s"] > 0 and figures["peak_rss_mb"] > 0, f"{mode} {product}: {figures}"
            assert figures["events"] >= (2000 if mode == "passthrough" else 1), f"{mode} {product}: {figures}"
        assert run["restart_reasons"] == {}, f"{mode}: a small run on an idle box restarts nothing"
        assert run["total_orders_per_s"] == sum(f["orders_per_s"] for f in run["products"].values())
        latency = run["latency"]
        assert LATENCY_FIELDS <= latency.keys(), f"{mode}: {latency}"
        assert latency["orders_measured"] > 0, f"{mode}: {latency}"
        assert latency["cpu_cores_per_process"].keys() == run["products"].keys(), latency
        assert all(0 < cores < 4 for cores in latency["cpu_cores_per_process"].values()), latency
        assert 0 <= latency["p50_ms"] <= latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"], latency
        # two rounds: the figures are those of the median (lower middle) run, p99 the lower median
        assert len(run["total_orders_per_s_by_round"]) == 2 == len(run["p99_ms_by_round"])
        assert run["total_orders_per_s"] == min(run["total_orders_per_s_by_round"])
        assert latency["p99_ms"] == min(run["p99_ms_by_round"])
    assert report["rounds"] == 2 and len(report["throughput_ratio_by_round"]) == 2
    # the volume-matched passthrough wrote as many records as the engine did events (same stream)
    volume = report["passthrough_at_engine_volume"]
    assert volume["latency"] is None and report["throughput_engine_over_volume_matched_passthrough"] > 0
    engine_events = [f["events"] for f in report["engine"]["products"].values()]
    for figures in volume["products"].values():
        assert abs(figures["events"] - engine_events[0]) <= 2000 // 1000 + 1, (figures, engine_events)
    comparison = report["comparison"]
    assert comparison["throughput_engine_over_passthrough"] > 0
    assert isinstance(comparison["throughput_at_least_half_of_passthrough"], bool)
    assert isinstance(comparison["p99_at_most_twice_passthrough"], bool)


def test_restart_reasons_are_read_from_the_node_log():
    log_text = "\n".join(
        [
            "2026-11-25 16:04:28,756 WARNING cluster.worker pid=4002 demoted product=A reason=lease renewal overdue",
            "2026-11-25 16:04:28,760 INFO supervisor pid=1 child exited name=A pid=4002 code=75",
            "2026-11-25 16:04:29,756 WARNING cluster.worker pid=4003 demoted product=A reason=lease renewal overdue",
            "2026-11-25 16:04:30,001 INFO supervisor pid=1 child exited name=B pid=4010 code=-9",
            "2026-11-25 16:04:31,001 INFO supervisor pid=1 child exited name=C pid=4011 code=0",
        ]
    )
    assert restart_reasons(log_text) == {"lease renewal overdue": 2, "exit -9": 1}


def test_bench_availability_counts_only_the_log_lines_of_its_window():
    from cluster.bench.availability import lines_between

    log_text = "\n".join(
        [
            "2026-11-25 16:04:27,999 INFO cluster.worker pid=1 handed over product=A epoch=1",
            "2026-11-25 16:04:28,000 INFO cluster.worker pid=1 handed over product=A epoch=2",
            "Traceback (most recent call last):",
            "2026-11-25 16:04:30,500 INFO cluster.worker pid=2 lease renewal confirmed paused_ms=12: x",
            "2026-11-25 16:04:30,501 INFO cluster.worker pid=2 handed over product=A epoch=3",
        ]
    )
    start = time.mktime(time.strptime("2026-11-25 16:04:28", "%Y-%m-%d %H:%M:%S"))
    picked = lines_between(log_text, start, start + 2.5)
    assert [line[20:23] for line in picked] == ["000", "500"]
