"""`orderbook-cluster bench replay`: the `replay` command's throughput on each core, in one run.

A realistic stream (cluster/tools/workload.py: limits, markets, cancels, IOC/FOK/GTX, STP, plus
rejects and dead letters) is written to a file; every round replays it once per core, from the
file to an output file, as `orderbook-cluster replay --core ...` does (read lines, created_at,
match, write events and dead letters). Rounds alternate the cores; the figures are medians.
The outputs of the two cores are compared byte for byte.
"""

from __future__ import annotations

import filecmp
import json
import statistics
import tempfile
import time
from pathlib import Path

import click

from cluster.options import default_config_path, json_option, seed_option
from cluster.tools.replay import replay_stream
from cluster.tools.workload import orders_with_faults_jsonl
from engine.config import load_products
from engine.native import native_available

PRODUCT = "BTC-USD"


def timed_replay(config, core: str, source: Path, out: Path, err: Path) -> tuple[int, float]:
    """(records, seconds) of one replay of `source` on `core`."""
    with open(source, "rb") as src, open(out, "wb") as events, open(err, "wb") as letters:
        start = time.perf_counter()
        records = replay_stream(config, core, src, events, letters)
        events.flush()
        letters.flush()
        return records, time.perf_counter() - start


def run_bench(orders: int, seed: int, rounds: int) -> dict:
    """The figures as a dict: per core, orders/s by round and the median; native over python first."""
    config = load_products(default_config_path())[PRODUCT]
    cores = ["native", "python"] if native_available() else ["python"]
    rates: dict[str, list[float]] = {core: [] for core in cores}
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        work = Path(tmp)
        source = work / "orders.jsonl"
        source.write_bytes(orders_with_faults_jsonl(PRODUCT, orders, seed))
        for _ in range(rounds):
            for core in cores:
                records, seconds = timed_replay(
                    config, core, source, work / f"{core}.out", work / f"{core}.err"
                )
                rates[core].append(records / seconds)
        identical = all(
            filecmp.cmp(work / f"{cores[0]}.{kind}", work / f"{core}.{kind}", shallow=False)
            for core in cores
            for kind in ("out", "err")
        )
        events = (work / "python.out").read_bytes().count(b"\n")
        text = (work / "python.out").read_bytes()
        dead_letters = (work / "python.err").read_bytes().count(b"\n")
    result: dict = {
        "orders": orders,
        "seed": seed,
        "rounds": rounds,
        "events": events,
        "rejected": text.count(b'"reason":"rejected"'),
        "dead_letters": dead_letters,
        "outputs_identical": identical,
    }
    medians = {core: statistics.median(r) for core, r in rates.items()}
    if "native" in medians:
        result["native_over_python"] = round(medians["native"] / medians["python"], 2)
    for core in cores:
        result[f"{core}_orders_per_s"] = round(medians[core])
        result[f"{core}_orders_per_s_by_round"] = [round(r) for r in rates[core]]
    return result


@click.command()
@click.option("--orders", default=300_000, show_default=True, help="Records in the replayed stream.")
@seed_option
@click.option(
    "--rounds",
    type=click.IntRange(1, 20),
    default=3,
    show_default=True,
    help="Rounds per core; the median is reported.",
)
@json_option()
def replay(orders: int, seed: int, rounds: int, as_json: bool) -> None:
    """`replay` throughput with the C core and with the Python core, on the same stream."""
    result = run_bench(orders, seed, rounds)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(
        f"{orders:,} records (seed {seed}): {result['events']:,} events, {result['rejected']:,} rejected, "
        f"{result['dead_letters']:,} dead letters; median of {rounds} round(s)"
    )
    if "native_over_python" in result:
        click.echo(f"C core / Python core: {result['native_over_python']}x")
    for core in ("native", "python"):
        if f"{core}_orders_per_s" in result:
            click.echo(
                f"{core:>6}: {result[f'{core}_orders_per_s']:>9,} orders/s on this machine "
                f"(by round {result[f'{core}_orders_per_s_by_round']})"
            )
    click.echo(f"outputs identical: {result['outputs_identical']}")
