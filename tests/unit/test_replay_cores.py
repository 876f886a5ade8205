"""`replay --core native` prints exactly what `replay --core python` (the oracle) prints, and the
bench that reports their speeds runs."""

from __future__ import annotations

import json

import msgspec
import pytest
from click.testing import CliRunner

from cluster.bench.replay import replay as bench_replay
from cluster.tools.replay import replay
from cluster.tools.workload import orders_with_faults_jsonl
from engine.native import native_available

needs_native = pytest.mark.skipif(not native_available(), reason="the C core is not built")


def _replay(path, core: str):
    result = CliRunner().invoke(replay, ["--product", "BTC-USD", "--core", core, str(path)])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes, result.stderr_bytes


@needs_native
def test_native_and_python_replay_are_byte_identical(tmp_path):
    stream = orders_with_faults_jsonl("BTC-USD", 30_000, seed=3)
    source = tmp_path / "orders.jsonl"
    source.write_bytes(stream)
    native_out, native_err = _replay(source, "native")
    python_out, python_err = _replay(source, "python")
    assert native_out == python_out
    assert native_err == python_err
    # the stream has what the comparison is about: fills, rejects, dead letters, and STP that bites
    events = [msgspec.json.decode(line) for line in python_out.splitlines()]
    assert sum(e["type"] == "match" for e in events) > 1000
    assert sum(e.get("reason") == "rejected" for e in events) > 50
    assert len(python_err.splitlines()) == 30_000 // 500
    without_stp = tmp_path / "no-stp.jsonl"
    without_stp.write_bytes(
        b"".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "stp"}).encode() + b"\n"
            if line.startswith(b'{"id"')
            else line + b"\n"
            for line in stream.splitlines()
        )
    )
    assert _replay(without_stp, "python")[0] != python_out, "no order's stp changed the outcome"


def test_replay_core_python_on_the_worked_example_and_unknown_core(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes(orders_with_faults_jsonl("BTC-USD", 200, seed=1))
    out, _ = _replay(source, "python")
    assert out == _replay(source, "auto")[0]
    result = CliRunner().invoke(replay, ["--product", "BTC-USD", "--core", "fast", str(source)])
    assert result.exit_code == 2 and "fast" in result.output


def test_bench_replay_reports_both_cores():
    result = CliRunner().invoke(bench_replay, ["--orders", "3000", "--rounds", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["outputs_identical"] is True
    assert report["python_orders_per_s"] > 0 and report["dead_letters"] == 3000 // 500
    assert report["rejected"] > 0
    if native_available():
        assert report["native_orders_per_s"] > 0 and report["native_over_python"] > 0
