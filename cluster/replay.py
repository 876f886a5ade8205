"""`orderbook-cluster replay`: run the pure engine over a file of order messages.

Prints exactly the bytes the cluster would publish (one event per line) so that a live
topic can be diffed against an offline run. `created_at` stands in for the Kafka record
time; a line whose created_at is absent, not an integer or negative uses 0. Blank lines are
skipped (but still counted for line numbers). Dead letters go to stderr as JSON lines
{"line": n, "reason": "..."}; the exit status is 0 even when some inputs are dead letters.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import msgspec

from engine.config import ConfigError, load_products
from engine.matching import MatchingEngine
from engine.messages import DeadLetter
from engine.replay import created_at_of, replay_outcomes

DEFAULT_CONFIG = "configs/products.toml"
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "products.toml"


def default_config_path() -> Path:
    """configs/products.toml under the working directory, else the one beside the package."""
    local = Path(DEFAULT_CONFIG)
    return local if local.is_file() else SHIPPED_CONFIG


@click.command()
@click.option("--product", required=True, help="Product id, e.g. BTC-USD.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Products TOML (default: ./configs/products.toml, else the shipped one).",
)
@click.argument("source", type=click.File("rb"))
def replay(product: str, config_path: Path | None, source) -> None:
    """Replay order messages (JSON lines, FILE or -) and print the events they produce."""
    path = config_path or default_config_path()
    try:
        products = load_products(path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if product not in products:
        raise click.ClickException(f"product {product!r} is not in {path}")
    out = sys.stdout.buffer
    err = sys.stderr.buffer
    numbered = [(n, line.rstrip(b"\r\n")) for n, line in enumerate(source, start=1)]
    numbered = [(n, raw) for n, raw in numbered if raw.strip()]
    records = ((raw, created_at_of(raw)) for _, raw in numbered)
    encode = msgspec.json.encode
    for (n, _), outcome in zip(
        numbered, replay_outcomes(MatchingEngine(products[product]), records), strict=True
    ):
        if isinstance(outcome, DeadLetter):
            err.write(encode({"line": n, "reason": outcome.reason}) + b"\n")
        else:
            out.writelines(event + b"\n" for event in outcome)
    out.flush()
    err.flush()
