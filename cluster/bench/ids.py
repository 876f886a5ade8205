"""`orderbook-cluster bench ids`: what chosen order ids cost the core, against sequential ids.

Clients choose order ids (the contract asks only for an int > 0, unique per product), so ids
are attacker input. Each id set rests ORDERS buy limits at one far-from-market price and then
cancels them, timed apart:
  - sequential: 1, 2, 3, ... (the ordinary case, the baseline);
  - old_hash: ids that all land in one slot of the C core's former id map at every table size up
    to 2^20. That map hashed with murmur3's fmix64, an unkeyed public bijection: inverting it on
    hash values k << 20 gives such ids in microseconds, offline. They are a fair attack: they are
    valid ids in 1..2^63-1, sent in increasing order so the duplicate window takes each as fresh,
    on small valid GTC orders that rest, which no validation refuses; anyone who read the source
    could send them. Under that hash each rest and each cancel walked every colliding id before
    it (quadratic);
  - pow2: multiples of 2^20, which share their low bits (the slot under any hash that keeps low
    bits, e.g. identity, as CPython's int hash does) and jump by more than the default id window
    each time (each jump once cleared the whole 125 KB window bitmap).
Each set runs `--repeat` times on a fresh engine; the best time of each phase counts, so a busy
machine inflates the figures less. The ratio is an id set's total over sequential's.
"""

from __future__ import annotations

import json
import time

import click
import msgspec

from cluster.options import default_config_path, json_option
from engine.config import load_products
from engine.native import make_engine

MASK64 = (1 << 64) - 1
FMIX_C1, FMIX_C2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
SLOT_BITS = 20  # one slot for every table up to 2^20 slots (40,000 ids take a 2^17-slot table)


def _unxorshift33(x: int) -> int:
    return x ^ (x >> 33)  # x ^= x >> 33 undoes itself: the shift is more than half the width


def old_hash(x: int) -> int:
    """The C core's former id hash (murmur3 fmix64), for showing that the ids below collide."""
    x = (_unxorshift33(x) * FMIX_C1) & MASK64
    x = (_unxorshift33(x) * FMIX_C2) & MASK64
    return _unxorshift33(x)


def _old_hash_inverse(h: int) -> int:
    x = (_unxorshift33(h) * pow(FMIX_C2, -1, 1 << 64)) & MASK64
    x = (_unxorshift33(x) * pow(FMIX_C1, -1, 1 << 64)) & MASK64
    return _unxorshift33(x)


def old_hash_colliding_ids(n: int) -> list[int]:
    """n valid ids (1..2^63-1, increasing) whose old hash has SLOT_BITS low zero bits."""
    ids, k = [], 1
    while len(ids) < n:
        oid = _old_hash_inverse(k << SLOT_BITS)
        k += 1
        if 0 < oid < 1 << 63:
            ids.append(oid)
    return sorted(ids)


ID_SETS = {
    "sequential": lambda n: list(range(1, n + 1)),
    "old_hash": old_hash_colliding_ids,
    "pow2": lambda n: [k << SLOT_BITS for k in range(1, n + 1)],
}


def _time_once(config, core: str, rests: list[bytes], cancels: list[bytes]) -> tuple[float, float]:
    engine = make_engine(config, core)
    rest_records = [(raw, 0) for raw in rests]
    cancel_records = [(raw, 0) for raw in cancels]
    start = time.perf_counter()
    engine.apply(rest_records)
    rested = time.perf_counter()
    if engine.resting_orders() != len(rests):
        raise RuntimeError(f"only {engine.resting_orders()} of {len(rests)} orders rested")
    engine.apply(cancel_records)
    done = time.perf_counter()
    if engine.resting_orders():
        raise RuntimeError(f"{engine.resting_orders()} orders left after cancelling all")
    return rested - start, done - rested


def run_bench(orders: int, core: str, repeat: int, product: str = "BTC-USD") -> dict:
    """Best rest and cancel times per id set, and each set's total relative to sequential."""
    config = load_products(default_config_path())[product]
    result: dict = {"orders": orders, "core": core, "repeat": repeat, "product": product}
    for name, make_ids in ID_SETS.items():
        ids = make_ids(orders)
        rests = [
            msgspec.json.encode(
                {
                    "id": i,
                    "product_id": product,
                    "type": "limit",
                    "side": "buy",
                    "price": "1.00",
                    "size": "0.001",
                }
            )
            for i in ids
        ]
        cancels = [msgspec.json.encode({"id": i, "status": "cancelling"}) for i in ids]
        runs = [_time_once(config, core, rests, cancels) for _ in range(repeat)]
        rest_s, cancel_s = min(r for r, _ in runs), min(c for _, c in runs)
        result[name] = {
            "rest_s": round(rest_s, 4),
            "cancel_s": round(cancel_s, 4),
            "total_s": round(rest_s + cancel_s, 4),
        }
    base = result["sequential"]["total_s"]
    for name in ID_SETS:
        result[name]["ratio"] = round(result[name]["total_s"] / base, 2)
    return result


@click.command()
@click.option(
    "--orders", default=40_000, show_default=True, help="Orders per id set (rested, then cancelled)."
)
@click.option(
    "--core",
    type=click.Choice(["native", "python"]),
    default="native",
    show_default=True,
    help="The matching core whose id map is attacked.",
)
@click.option("--repeat", default=3, show_default=True, help="Runs per id set; the best counts.")
@json_option()
def ids(orders: int, core: str, repeat: int, as_json: bool) -> None:
    """Benchmark chosen (colliding) order ids against sequential ids."""
    result = run_bench(orders, core, repeat)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"core={core} orders={orders} best of {repeat}")
    for name in ID_SETS:
        r = result[name]
        click.echo(
            f"{name:<11} rest {r['rest_s']:8.4f} s   cancel {r['cancel_s']:8.4f} s   "
            f"total {r['total_s']:8.4f} s   x{r['ratio']:.2f} sequential"
        )
