"""The command-line options several commands share, each declared once: name, type, default, help.

Commands apply them as decorators, so `start`, `drill`, `replay` and the benchmarks cannot drift
apart on what --config or --core means. The connection options (--kafka, --redis, --kafka-config,
--state-dir) are declared in cluster/connection.py; a node's own defaults live in NodeSettings
(cluster/settings.py), which `start` reads them from.
"""

from __future__ import annotations

from pathlib import Path

import click

from cluster.settings import NodeSettings
from engine.native import CORES

CONFIG_FILE = Path("configs") / "products.toml"
SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / CONFIG_FILE


def default_config_path() -> Path:
    """configs/products.toml under the working directory, else the one shipped beside the package."""
    return CONFIG_FILE if CONFIG_FILE.is_file() else SHIPPED_CONFIG


def config_option(help: str = "Product settings (TOML)."):
    """--config: the products TOML, by default found by default_config_path()."""
    return click.option(
        "--config",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        default=default_config_path,
        help=f"{help} Default: ./{CONFIG_FILE}, else the one shipped with the package.",
    )


core_option = click.option(
    "--core",
    type=click.Choice(CORES),
    default=NodeSettings.core,
    show_default=True,
    help="Matching core: native (C, engine/_native.c), python (engine/matching.py, the reference) or "
    "auto (native when built). Both give byte-identical events and snapshots.",
)

seed_option = click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Random seed of the generated orders (cluster/tools/workload.py).",
)


def json_option(help: str = "Print one JSON object."):
    """--json, passed as `as_json`: machine-readable output instead of lines for a person."""
    return click.option("--json", "as_json", is_flag=True, help=help)
