"""A deliberately naive matching engine: lists, Decimal and linear scans, no caching.

Written from docs/contract.md independently of engine/ so the property tests can compare
event streams. It only understands well-typed wire dicts (the generators never send others).
Events come out as dicts with every decimal field as a Decimal.
"""

from __future__ import annotations

from decimal import Decimal

DECIMAL_FIELDS = ("remaining_size", "price", "size")


def _dec(text, scale):
    """(reason_suffix, Decimal value); reason_suffix is None, 'invalid' or 'too_precise'."""
    if not isinstance(text, str):
        return "invalid", None
    body = text[1:] if text.startswith("-") else text
    whole, _, frac = body.partition(".")
    if (
        not whole.isdigit()
        or not whole.isascii()
        or ("." in body and not (frac.isdigit() and frac.isascii()))
    ):
        return "invalid", None
    value = Decimal(text)
    if value != value.quantize(Decimal(1).scaleb(-scale)) if scale else value != int(value):
        return "too_precise", None
    return None, value


class ReferenceBook:
    """The contract, executed the slow and obvious way."""

    def __init__(
        self,
        product_id,
        base_scale,
        quote_scale,
        tick="0.01",
        lot="0.000001",
        min_size=None,
        min_funds=None,
        id_window=1_000_000,
    ):
        self.product_id = product_id
        self.bs = base_scale
        self.qs = quote_scale
        self.tick = Decimal(tick)
        self.lot = Decimal(lot)
        self.min_size = Decimal(min_size) if min_size else self.lot
        self.min_funds = Decimal(min_funds) if min_funds else Decimal(1).scaleb(-quote_scale)
        self.window = id_window
        self.seen: set[int] = set()
        self.max_id = 0
        self.resting: list[dict] = []  # arrival order
        self.seq = 0
        self.trade = 0

    # -- helpers --
    def _ev(self, kind, ts, **fields):
        self.seq += 1
        return {"type": kind, "sequence": self.seq, "product_id": self.product_id, "time": ts, **fields}

    def _done(self, ts, order_id, user_id, remaining, price, reason, side, tif, reject=None):
        ev = self._ev(
            "done",
            ts,
            order_id=order_id,
            user_id=user_id,
            remaining_size=Decimal(remaining),
            price=Decimal(price),
            reason=reason,
            side=side,
            time_in_force=tif,
        )
        if reject:
            ev["reject_reason"] = reject
        return ev

    def _best_maker(self, taker_side):
        makers = [o for o in self.resting if o["side"] != taker_side]
        if not makers:
            return None
        if taker_side == "buy":
            return min(makers, key=lambda o: (o["price"], o["arrival"]))
        return min(makers, key=lambda o: (-o["price"], o["arrival"]))

    def total_resting(self):
        return sum(o["remaining"] for o in self.resting)

    def crossed(self):
        bids = [o["price"] for o in self.resting if o["side"] == "buy"]
        asks = [o["price"] for o in self.resting if o["side"] == "sell"]
        return bool(bids and asks and max(bids) >= min(asks))

    # -- validation --
    def _validate(self, m):
        if m.get("product_id") != self.product_id:
            return "product_mismatch", 0, 0, 0
        if m.get("type") not in ("limit", "market"):
            return "invalid_type", 0, 0, 0
        tif = m.get("time_in_force", "GTC")
        if tif not in ("GTC", "IOC", "GTX", "FOK"):
            return "invalid_time_in_force", 0, 0, 0
        stp = m.get("stp")
        if stp is not None and stp not in ("co", "cn", "cb"):
            return "invalid_stp", 0, 0, 0
        price = Decimal(0)
        if m["type"] == "limit":
            bad, price = _dec(m.get("price"), self.qs)
            if bad:
                return f"price_{bad}" if bad == "too_precise" else "invalid_price", 0, 0, 0
            if price <= 0:
                return "invalid_price", 0, 0, 0
            if price % self.tick:
                return "price_not_on_tick", price, 0, 0
        if m["type"] == "limit" or m["side"] == "sell":
            bad, size = _dec(m.get("size"), self.bs)
            if bad:
                return f"size_{bad}" if bad == "too_precise" else "invalid_size", price, 0, 0
            if size <= 0:
                return "invalid_size", price, 0, 0
            if size % self.lot:
                return "size_not_on_lot", price, size, 0
            if size < self.min_size:
                return "size_below_minimum", price, size, 0
            if m["type"] == "limit" and stp is not None and tif == "FOK":
                return "fok_with_stp_unsupported", price, size, 0
            return None, price, size, 0
        funds_text = m.get("funds")
        if funds_text is None:
            return "market_buy_requires_funds", 0, 0, 0
        bad, funds = _dec(funds_text, self.qs)
        if bad:
            return f"funds_{bad}" if bad == "too_precise" else "invalid_funds", 0, 0, 0
        if funds == 0:
            return "market_buy_requires_funds", 0, 0, 0
        if funds < 0:
            return "invalid_funds", 0, 0, 0
        if funds < self.min_funds:
            return "funds_below_minimum", 0, 0, funds
        return None, 0, 0, funds

    # -- the rules --
    def apply(self, m: dict, ts: int):
        """Events (list of dicts), or ("dlq", reason)."""
        oid = m.get("id")
        if oid is None:
            return ("dlq", "missing_id")
        if m.get("status", "new") == "cancelling":
            if m.get("product_id") not in (None, self.product_id):
                return []
            for o in self.resting:
                if o["id"] == oid:
                    self.resting.remove(o)
                    return [
                        self._done(
                            ts, oid, o["user"], o["remaining"], o["price"], "cancelled", o["side"], o["tif"]
                        )
                    ]
            return []
        side = m.get("side")
        if side not in ("buy", "sell"):
            return ("dlq", "missing_side" if side is None else "invalid_side")
        if oid <= self.max_id - self.window:
            return ("dlq", "order_id_outside_window")
        if oid in self.seen:
            return []
        self.seen.add(oid)
        self.max_id = max(self.max_id, oid)
        user = m.get("user_id", 0)
        tif = m.get("time_in_force", "GTC")
        reason, price, size, funds = self._validate(m)
        if reason:
            is_limit = m.get("type") == "limit"
            remaining = size if is_limit or side == "sell" else 0
            return [
                self._done(ts, oid, user, remaining, price if is_limit else 0, "rejected", side, tif, reason)
            ]
        events = []
        if m["type"] == "limit":
            return self._limit(m, oid, user, side, price, size, tif, ts)
        if side == "sell":
            left = self._match(events, oid, user, side, tif, None, size, None, m.get("stp"), ts)[0]
            events.append(self._done(ts, oid, user, 0, 0, "cancelled" if left else "filled", side, tif))
            return events
        funds_left = self._match(events, oid, user, side, tif, None, None, funds, m.get("stp"), ts)[1]
        events.append(self._done(ts, oid, user, 0, 0, "cancelled" if funds_left else "filled", side, tif))
        return events

    def _crosses(self, side, limit, maker_price):
        return limit is None or (maker_price <= limit if side == "buy" else maker_price >= limit)

    def _limit(self, m, oid, user, side, price, size, tif, ts):
        events = []
        if tif == "GTX":
            best = self._best_maker(side)
            if best and self._crosses(side, price, best["price"]):
                return [self._done(ts, oid, user, size, price, "cancelled", side, tif)]
        if tif == "FOK":
            avail = sum(
                o["remaining"]
                for o in self.resting
                if o["side"] != side and self._crosses(side, price, o["price"])
            )
            if avail < size:
                return [self._done(ts, oid, user, size, price, "cancelled", side, tif)]
        left, _, stopped = self._match(events, oid, user, side, tif, price, size, None, m.get("stp"), ts)
        if left == 0:
            events.append(self._done(ts, oid, user, 0, price, "filled", side, tif))
        elif stopped or tif in ("IOC", "FOK"):
            events.append(self._done(ts, oid, user, left, price, "cancelled", side, tif))
        else:
            self.resting.append(
                {
                    "id": oid,
                    "user": user,
                    "side": side,
                    "price": price,
                    "remaining": left,
                    "tif": tif,
                    "arrival": self.seq,
                }
            )
            events.append(
                self._ev(
                    "open",
                    ts,
                    order_id=oid,
                    user_id=user,
                    remaining_size=left,
                    price=price,
                    side=side,
                    time_in_force=tif,
                )
            )
        return events

    def _match(self, events, oid, user, side, tif, limit, size, funds, stp, ts):
        """Returns (size left, funds left, stopped by stp)."""
        while True:
            if size is not None and size == 0 or funds is not None and funds == 0:
                return size, funds, False
            maker = self._best_maker(side)
            if maker is None or not self._crosses(side, limit, maker["price"]):
                return size, funds, False
            if funds is not None:
                unit = Decimal(10) ** self.bs
                can = (funds * unit // maker["price"]) / unit
                can = (can // self.lot) * self.lot
                if can == 0:
                    return size, funds, False
                fill = min(can, maker["remaining"])
            else:
                fill = min(size, maker["remaining"])
            if stp is not None and maker["user"] == user:
                if stp in ("co", "cb"):
                    self.resting.remove(maker)
                    events.append(
                        self._done(
                            ts,
                            maker["id"],
                            maker["user"],
                            maker["remaining"],
                            maker["price"],
                            "cancelled",
                            maker["side"],
                            maker["tif"],
                        )
                    )
                if stp in ("cn", "cb"):
                    return size, funds, True
                continue
            self.trade += 1
            events.append(
                self._ev(
                    "match",
                    ts,
                    trade_seq=self.trade,
                    taker_order_id=oid,
                    maker_order_id=maker["id"],
                    taker_user_id=user,
                    maker_user_id=maker["user"],
                    side=maker["side"],
                    price=maker["price"],
                    size=fill,
                    taker_time_in_force=tif,
                    maker_time_in_force=maker["tif"],
                )
            )
            maker["remaining"] -= fill
            if size is not None:
                size -= fill
            else:
                funds -= fill * maker["price"]
            if maker["remaining"] == 0:
                self.resting.remove(maker)
                events.append(
                    self._done(
                        ts,
                        maker["id"],
                        maker["user"],
                        0,
                        maker["price"],
                        "filled",
                        maker["side"],
                        maker["tif"],
                    )
                )
