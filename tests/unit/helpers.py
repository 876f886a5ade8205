"""Shared helpers for the unit tests of the pure core (wire dicts in, plain event dicts out)."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from engine.api import Engine, apply_one
from engine.config import ProductConfig
from engine.matching import MatchingEngine
from engine.messages import DeadLetter, Event, decode_event, encode_event
from engine.native import NativeEngine

PRODUCT = "BTC-USD"
DECIMAL_FIELDS = ("remaining_size", "price", "size")
CORES = {"python": MatchingEngine, "native": NativeEngine}
# The core Harness builds; the `each_core` fixture (tests/unit/conftest.py) runs a module on both.
harness_core = "python"


def as_plain(event) -> dict:
    """An event as its published JSON object, decimals as Decimal (the contract's comparison)."""
    obj = msgspec.json.decode(encode_event(event))
    for name in DECIMAL_FIELDS:
        if name in obj:
            obj[name] = Decimal(obj[name])
    return obj


def events_of(engine: Engine, raw: bytes, ts: int) -> list[Event] | DeadLetter:
    """One record through engine.apply, its events read back from their bytes as Event values."""
    out = apply_one(engine, raw, ts)
    return out if isinstance(out, DeadLetter) else [decode_event(b) for b in out]


def order(oid: int, side: str, price: str | None = "10.00", size: str | None = "1", **kw) -> dict:
    """A wire order dict with orderbook-py's fields; keyword arguments override."""
    msg = {
        "id": oid,
        "created_at": 0,
        "product_id": PRODUCT,
        "user_id": kw.pop("user_id", 1),
        "client_oid": "",
        "price": price,
        "size": size,
        "funds": "0.00",
        "type": "limit",
        "side": side,
        "time_in_force": "GTC",
        "status": "new",
    }
    msg.update(kw)
    return {k: v for k, v in msg.items() if v is not None}


def cancel(oid: int, **kw) -> dict:
    """A wire cancel message."""
    return {"id": oid, "status": "cancelling", **kw}


class Harness:
    """An engine fed wire dicts; returns events as plain dicts."""

    def __init__(self, **config) -> None:
        cfg = {"product_id": PRODUCT, "base_scale": 6, "quote_scale": 2, **config}
        self.engine = CORES[harness_core](ProductConfig(**cfg))
        self.ts = 0

    def send(self, msg: dict | bytes, ts: int | None = None):
        self.ts += 1_000_000
        raw = msg if isinstance(msg, bytes) else msgspec.json.encode(msg)
        out = events_of(self.engine, raw, self.ts if ts is None else ts)
        if isinstance(out, DeadLetter):
            return out
        return [as_plain(e) for e in out]
