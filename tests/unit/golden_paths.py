"""The worked example's golden files, for tests that need its input under another product name."""

from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def worked_example_lines(product: str = "BTC-USD") -> list[bytes]:
    """The worked example's five orders as JSON lines, for `product`."""
    lines = (GOLDEN / "worked_example.in.jsonl").read_bytes().splitlines()
    return [
        json.dumps({**json.loads(line), "product_id": product}).encode() for line in lines if line.strip()
    ]
