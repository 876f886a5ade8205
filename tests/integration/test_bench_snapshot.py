"""`bench snapshot --json` measures every way on a real redis-server and checks what it stored.

Figures only: no timing thresholds here (docs/availability.md has them for 1,000,000 orders).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.bench.snapshot import WAYS, snapshot
from engine.native import native_available

pytestmark = pytest.mark.integration


def test_bench_snapshot_json_reports_each_way_and_the_core_that_ran():
    result = CliRunner().invoke(snapshot, ["--resting", "3000", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output + str(result.exception)
    report = json.loads(result.stdout)
    assert report["resting_orders"] == 3000 and report["snapshot_mb"] > 0
    assert report["core"] == ("native" if native_available() else "python")
    assert set(report["medians"]) == set(WAYS)
    for way, figures in report["medians"].items():
        assert figures["wall_ms"] > 0 and figures["process_cpu_ms"] >= 0, (way, figures)
        assert figures["child_cpu_ms"] > 0, f"{way}: captured in a forked child"
