"""The rolling-restart drill's table: each product's pause and delay beside the host's own."""

from __future__ import annotations

from cluster.tools.rolling import RollingReport, format_rolling


def test_the_table_shows_restart_and_quiet_figures_side_by_side():
    report = RollingReport(["BTC-USD"], nodes=["r1", "r2"], restarted=["r1", "r2"], orders_sent=900)
    report.per_product["BTC-USD"] = {
        "baseline_pause_ms": 40,
        "restart_pause_ms": 143,
        "restart_pause_at_ms": 5000,
        "baseline_delay_ms": 70,
        "restart_delay_ms": 180,
        "quiet_pause_ms": 133,
        "quiet_delay_ms": 170,
        "handover_gaps_ms": [12, 31],
        "epochs": [1, 2, 3],
        "stream": {"ok": True, "distinct": 1800, "problems": []},
    }
    lines = format_rolling(report).splitlines()
    assert lines[0] == "rolling restart of r1, r2 (2 of 2 nodes), 900 orders"
    assert lines[-1].split() == ["BTC-USD", "143", "133", "180", "170", "31", "3", "OK"]
    assert report.ok()
