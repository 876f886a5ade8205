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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

import click
import msgspec

from cluster.options import config_option, core_option
from engine.config import ConfigError, ProductConfig, load_products
from engine.messages import DeadLetter, encode_events
from engine.native import NativeEngine, make_engine, resolve_core
from engine.replay import created_at_of

WRITE_CHUNK_EVENTS = 4096


def encoded_submit(config: ProductConfig, core: str) -> Callable[[bytes, int], list[bytes] | DeadLetter]:
    """(raw, record time) -> the published bytes of its events, or its DeadLetter, on the chosen core."""
    engine = make_engine(config, core)
    if isinstance(engine, NativeEngine):
        return engine.submit_encoded  # the C core writes each event's bytes itself
    submit_raw = engine.submit_raw

    def submit(raw: bytes, ts: int) -> list[bytes] | DeadLetter:
        outcome = submit_raw(raw, ts)
        return outcome if type(outcome) is DeadLetter else encode_events(outcome)

    return submit


def replay_stream(
    config: ProductConfig, core: str, source: Iterable[bytes], out: BinaryIO, err: BinaryIO
) -> int:
    """Replay JSON lines from `source`: events to `out`, dead letters to `err`; returns the records read."""
    submit = encoded_submit(config, core)
    encode = msgspec.json.encode
    records = 0
    events: list[bytes] = []  # written in chunks: a write per order cost more than the C core's matching
    for n, line in enumerate(source, start=1):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        records += 1
        outcome = submit(raw, created_at_of(raw))
        if type(outcome) is DeadLetter:
            err.write(encode({"line": n, "reason": outcome.reason}) + b"\n")
        else:
            events += outcome
            if len(events) >= WRITE_CHUNK_EVENTS:
                out.write(b"\n".join(events) + b"\n")
                events.clear()
    if events:
        out.write(b"\n".join(events) + b"\n")
    return records


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
