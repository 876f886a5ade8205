"""A deterministic, realistic order stream for benchmarks, `send --generate` and tests.

Same arguments, same stream (random.Random(seed), no clock). The mid price random-walks on
the tick grid; about 60% of messages are new limit orders near the mid (mostly GTC, some GTX,
IOC, FOK; ~5% carry stp), about 30% cancel an order believed to rest, about 10% are marketable
and sweep 1-5 levels (market sells by size, market buys by funds, IOC/FOK limits through the
book). The generator keeps a rough shadow of the book (it does not run the engine), so some
cancels hit orders already filled: the engine counts those as unknown cancels, as in life.
After a warm-up of ~20k messages the book holds a few thousand orders over a few hundred levels.

`created_at` is in ns, a multiple of 1_000_000 (the cluster publishes Kafka timestamps in ms)
and strictly increasing (+1 ms per message).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec

from engine.decimals import format_scaled

DEFAULT_START_TS = 1_700_000_000_000_000_000
MS = 1_000_000
TARGET_RESTING = 3_000


def generate_orders(
    product_id: str,
    n: int,
    seed: int,
    start_id: int = 1,
    start_ts: int = DEFAULT_START_TS,
    *,
    base_scale: int = 6,
    quote_scale: int = 2,
    tick: int = 1,
    lot: int = 1_000,
    mid: int = 3_000_000,
    users: int = 300,
) -> Iterator[dict]:
    """`n` wire order dicts (decimal strings); tick, lot and mid are in scaled units."""
    rng = random.Random(seed)
    next_id = start_id
    ts = -(-start_ts // MS) * MS
    shadow = _ShadowBook()

    def order(oid: int, user: int, side: str, kind: str, price: int, size: int, funds: int, tif: str) -> dict:
        msg = {
            "id": oid,
            "created_at": ts,
            "product_id": product_id,
            "user_id": user,
            "client_oid": f"c{oid}",
            "price": format_scaled(price, quote_scale),
            "size": format_scaled(size, base_scale),
            "funds": format_scaled(funds, quote_scale),
            "type": kind,
            "side": side,
            "time_in_force": tif,
            "status": "new",
        }
        if rng.random() < 0.05 and tif != "FOK":
            msg["stp"] = rng.choice(("co", "cn", "cb"))
        return msg

    for _ in range(n):
        ts += MS
        if rng.random() < 0.04:
            mid = max(mid + rng.choice((-tick, tick)), 400 * tick)
        live = len(shadow.orders)
        cancel_p = 0.22 if live < TARGET_RESTING else 0.36
        r = rng.random()
        user = rng.randrange(1, users + 1)
        if r < cancel_p and live:
            oid, owner, side = shadow.pick_cancel(rng)
            yield {
                "id": oid,
                "created_at": ts,
                "product_id": product_id,
                "user_id": owner,
                "side": side,
                "status": "cancelling",
            }
            continue
        oid = next_id
        next_id += 1
        side = "buy" if rng.random() < 0.5 else "sell"
        if r < cancel_p + 0.10:
            style = rng.random()
            tif = "GTC" if style < 0.33 else "IOC" if style < 0.75 else "FOK"
            fraction = rng.uniform(0.5, 1.1 if tif == "IOC" else 1.0)
            fills = shadow.sweep("sell" if side == "buy" else "buy", rng.randint(1, 5), fraction, lot)
            size = sum(f for _, f in fills) or lot * rng.randint(1, 100)
            last_price = fills[-1][0] if fills else mid
            if tif == "IOC" and fraction > 1:
                size = size * 11 // 10 // lot * lot
            if tif != "GTC":
                yield order(oid, user, side, "limit", last_price, size, 0, tif)
            elif side == "buy":
                funds = max(1, sum(p * f for p, f in fills) // 10**base_scale) if fills else last_price
                yield order(oid, user, side, "market", 0, 0, funds, "GTC")
            else:
                yield order(oid, user, side, "market", 0, size, 0, "GTC")
            continue
        distance = 1 + min(int(rng.expovariate(1 / 40)), 400)
        price = mid - distance * tick if side == "buy" else mid + distance * tick
        size = lot * max(1, int(rng.expovariate(1 / 300)))
        tif = rng.choices(("GTC", "GTX", "IOC", "FOK"), (88, 6, 3, 3))[0]
        if tif in ("GTC", "GTX"):
            shadow.add(oid, user, side, price, size)
        yield order(oid, user, side, "limit", price, size, 0, tif)


class _ShadowBook:
    """What the generator believes rests: enough to pick cancels and size sweeps."""

    def __init__(self) -> None:
        self.orders: dict[int, tuple[int, str, int]] = {}  # id -> (user, side, price)
        self.ids: list[int] = []  # for uniform picks; ids of swept orders are skipped lazily
        self.levels: dict[str, dict[int, dict[int, int]]] = {
            "buy": {},
            "sell": {},
        }  # side -> price -> id -> size

    def add(self, oid: int, user: int, side: str, price: int, size: int) -> None:
        self.orders[oid] = (user, side, price)
        self.ids.append(oid)
        self.levels[side].setdefault(price, {})[oid] = size

    def pick_cancel(self, rng: random.Random) -> tuple[int, int, str]:
        """A uniformly chosen believed-resting order, removed from the shadow."""
        ids = self.ids
        while True:
            i = rng.randrange(len(ids))
            ids[i], ids[-1] = ids[-1], ids[i]
            oid = ids.pop()
            if oid in self.orders:
                user, side, price = self.orders.pop(oid)
                level = self.levels[side][price]
                del level[oid]
                if not level:
                    del self.levels[side][price]
                return oid, user, side

    def sweep(self, side: str, n_levels: int, fraction: float, lot: int) -> list[tuple[int, int]]:
        """Consume `fraction` of the best `n_levels` of `side` in FIFO order; (price, size) fills."""
        book = self.levels[side]
        prices = sorted(book, reverse=(side == "buy"))[:n_levels]
        wanted = int(sum(sum(book[p].values()) for p in prices) * min(fraction, 1.0)) // lot * lot
        fills = []
        for price in prices:
            level = book[price]
            for oid in list(level):
                if wanted <= 0:
                    break
                fill = min(wanted, level[oid])
                fills.append((price, fill))
                wanted -= fill
                if fill == level[oid]:
                    del level[oid]
                    del self.orders[oid]
                else:
                    level[oid] -= fill
            if not level:
                del book[price]
        return fills


_encoder = msgspec.json.Encoder()


def orders_jsonl(
    product_id: str, n: int, seed: int, start_id: int = 1, start_ts: int = DEFAULT_START_TS, **kw
) -> bytes:
    """The same stream as JSON lines (one order per line, trailing newline)."""
    encode = _encoder.encode
    return b"".join(encode(o) + b"\n" for o in generate_orders(product_id, n, seed, start_id, start_ts, **kw))


# What an order gateway gets wrong now and then: each turns a generated new order into a reject
# (an event with reason `rejected`), or a record into a dead letter (no event).
_REJECTS = (
    {"price": "10.001"},  # price_too_precise
    {"size": "0.0000001"},  # size_too_precise
    {"product_id": "OTHER-USD"},  # product_mismatch
    {"time_in_force": "GTD"},  # invalid_time_in_force
    {"user_id": -1},  # invalid_user_id
)
_DEAD_LETTERS = (b"not json", b'{"created_at": 1}', b'{"id": 1, "status": "new", "side": "sideways"}', b"[]")


def orders_with_faults_jsonl(
    product_id: str,
    n: int,
    seed: int,
    reject_every: int = 50,
    dead_letter_every: int = 500,
    users: int = 50,
) -> bytes:
    """The realistic stream as JSON lines, with about one new order in `reject_every` made invalid
    (a `done` rejected) and one record in `dead_letter_every` replaced by an unreadable one
    (a dead letter). ~5% of new orders carry `stp`; with 50 active users (a book dominated by a
    few dozen market makers) it decides outcomes all along, where among 300 it rarely bites."""
    rng = random.Random(seed ^ 0x5EED)
    encode = _encoder.encode
    lines = []
    for i, order in enumerate(generate_orders(product_id, n, seed, users=users), start=1):
        if i % dead_letter_every == 0:
            lines.append(rng.choice(_DEAD_LETTERS))
            continue
        if order["status"] == "new" and rng.randrange(reject_every) == 0:
            order = {**order, **rng.choice(_REJECTS)}
        lines.append(encode(order))
    return b"".join(line + b"\n" for line in lines)
