"""`orderbook-cluster replay`: run the engine over a file of order messages.

Prints exactly the bytes the cluster would publish (one event per line) so that a live
topic can be diffed against an offline run. `created_at` stands in for the Kafka record
time; a line whose created_at is absent, not an integer or negative uses 0. Blank lines are
skipped (but still counted for line numbers). Dead letters go to stderr as JSON lines
{"line": n, "reason": "..."}; the exit status is 0 even when some inputs are dead letters.

`--core` picks the matching core as `start --core` does: the C core (auto: when built) writes
the same bytes as the Python core, engine/matching.py, which stays the oracle the tests compare
against (tests/unit/test_replay_cores.py compares the two through this command).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import click
import msgspec

from cluster.options import config_option, core_option
from engine.api import Engine
from engine.config import ConfigError, ProductConfig, load_products
from engine.native import make_engine, resolve_core
from engine.replay import created_at_of

REPLAY_BATCH = 4096  # records per apply


def replay_stream(
    config: ProductConfig, core: str, source: Iterable[bytes], out: BinaryIO, err: BinaryIO
) -> int:
    """Replay JSON lines from `source`: events to `out`, dead letters to `err`; returns the records read."""
    engine = make_engine(config, core)
    records = 0
    batch: list[tuple[bytes, int]] = []  # applied and written in batches: a call and a write per
    lines: list[int] = []  # record cost more than the C core's matching
    for n, line in enumerate(source, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        batch.append((raw, created_at_of(raw)))
        lines.append(n)
        if len(batch) >= REPLAY_BATCH:
            records += _replay_batch(engine, batch, lines, out, err)
            batch, lines = [], []
    return records + _replay_batch(engine, batch, lines, out, err)


def _replay_batch(
    engine: Engine, batch: list[tuple[bytes, int]], lines: list[int], out: BinaryIO, err: BinaryIO
) -> int:
    """Apply one batch of (line, record time): its events to `out`, its dead letters by line to `err`."""
    events, dead = engine.apply(batch)
    if events:
        out.write(b"\n".join(events) + b"\n")
    for index, letter in dead:
        err.write(msgspec.json.encode({"line": lines[index], "reason": letter.reason}) + b"\n")
    return len(batch)


@click.command()
@click.option("--product", required=True, help="Product id, e.g. BTC-USD.")
@config_option()
@core_option
@click.argument("source", type=click.File("rb"))
def replay(product: str, config: Path, core: str, source) -> None:
    """Replay order messages (JSON lines, FILE or -) and print the events they produce."""
    try:
        products = load_products(config)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if product not in products:
        raise click.ClickException(f"product {product!r} is not in {config}")
    try:
        core = resolve_core(core)
    except ValueError as exc:  # --core native without the C core built
        raise click.ClickException(str(exc)) from None
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    replay_stream(products[product], core, source, out, err)
    out.flush()
    err.flush()
