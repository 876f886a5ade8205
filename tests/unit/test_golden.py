"""The contract's worked example (orderbook-py's README log) as a golden file.

The expected events are orderbook-py's own log lines with `time` set to the orders'
created_at (our rule: the record time, never the clock). Decimals compare as decimals:
orderbook-py wrote "1.00" where we write "1.000000".
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import msgspec
from click.testing import CliRunner

from cluster.tools.replay import replay
from engine.config import ProductConfig
from engine.replay import created_at_of, replay_lines

GOLDEN = Path(__file__).parent / "golden"
DECIMAL_FIELDS = ("remaining_size", "price", "size")


def _plain(line: bytes) -> dict:
    obj = msgspec.json.decode(line)
    for name in DECIMAL_FIELDS:
        if name in obj:
            obj[name] = Decimal(obj[name])
    return obj


def _expected() -> list[dict]:
    return [_plain(line) for line in (GOLDEN / "worked_example.out.jsonl").read_bytes().splitlines()]


def test_worked_example_via_replay_lines():
    config = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)
    lines = (GOLDEN / "worked_example.in.jsonl").read_bytes().splitlines()
    out = list(replay_lines(config, [(raw, created_at_of(raw)) for raw in lines]))
    assert [_plain(b) for b in out] == _expected()
    golden_keys = [
        list(msgspec.json.decode(b)) for b in (GOLDEN / "worked_example.out.jsonl").read_bytes().splitlines()
    ]
    assert [list(msgspec.json.decode(b)) for b in out] == golden_keys  # orderbook-py's key order


def test_replay_cli_on_worked_example():
    result = CliRunner().invoke(
        replay,
        [
            "--product",
            "BTC-USD",
            "--config",
            "configs/products.toml",
            str(GOLDEN / "worked_example.in.jsonl"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.splitlines()
    assert len(lines) == 13
    assert [_plain(line) for line in lines] == _expected()


def test_replay_cli_reports_dead_letters_on_stderr(tmp_path):
    src = tmp_path / "in.jsonl"
    good = (GOLDEN / "worked_example.in.jsonl").read_bytes().splitlines()[0]
    src.write_bytes(b"garbage\n" + good + b'\n\n{"id": 2, "status": "new"}\n')
    result = CliRunner().invoke(replay, ["--product", "BTC-USD", str(src)])
    assert result.exit_code == 0
    assert len(result.stdout_bytes.splitlines()) == 1
    dlq = [msgspec.json.decode(line) for line in result.stderr_bytes.splitlines()]
    assert dlq == [{"line": 1, "reason": "not_json"}, {"line": 4, "reason": "missing_side"}]


def test_created_at_fallback():
    assert created_at_of(b'{"created_at": 5}') == 5
    assert created_at_of(b'{"created_at": "5"}') == 0
    assert created_at_of(b'{"created_at": -1}') == 0
    assert created_at_of(b"[1]") == 0
    assert created_at_of(b"nope") == 0
