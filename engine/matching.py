"""The matching rules of one product, written to be read: the specification both cores follow.

One single-threaded state machine fed by the ordered input log (LMAX style). Given the same
records with the same times, it emits the same events, byte for byte, before and after a
snapshot/restore. It never reads a clock: every event's `time` is its record's time.

The methods below follow docs/contract.md in its order: reading a record (dead letters), the
duplicate-id window (rule 9), validation (rule 10), time in force (rules 5-7), matching with
price-time priority, fills and self-trade prevention (rules 1, 2, 11), resting (rule 3), market
orders (rule 4) and cancels (rule 8). Each event kind is built in one place (`_open`, `_match`,
`_done`). engine/_native.c is the same rules in C, for speed: it must give the same bytes for any
input (tests/unit/test_native.py), so a rule changes here and there together.

Guarantees:
- `sequence` is +1 per event and `trade_seq` +1 per match, both carried by snapshots; they
  never pass 2^63-1: an input that could raises SequenceExhausted before it changes anything.
- Business outcomes (rejects, cancels, unknown cancels, duplicates) are events or counters,
  never exceptions; a record that cannot be read as an order becomes a DeadLetter.
- Cost per order: O(log levels) to rest at a new price, O(1) per fill and per cancel.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from engine.api import SEQUENCE_CHECK_FROM, Applied, Counters, Record, sequence_exhausted
from engine.book import BUY, SELL, BookSide, Level, OrderBook, RestingOrder
from engine.config import ProductConfig
from engine.decimals import format_scaled
from engine.id_window import DUPLICATE, FRESH, IdWindow
from engine.intake import MAX_ID, salvage_order, shape_reason
from engine.messages import (
    MAX_RECORD_BYTES,
    NOT_JSON,
    DeadLetter,
    Done,
    Event,
    Match,
    Open,
    OrderMessage,
    decode_order,
    encode_events,
    record_time_ns,
)
from engine.snapshot import decode_snapshot, encode_snapshot
from engine.validation import OrderValidator


class SizeBudget:
    """What a limit order or a market sell can still take: a size (base units)."""

    __slots__ = ("left",)

    def __init__(self, size: int) -> None:
        self.left = size

    def most_at(self, price: int) -> int:
        """The most this taker can take from one maker at `price`."""
        return self.left

    def spend(self, size: int, price: int) -> None:
        """Account for a fill of `size` at `price`."""
        self.left -= size


class FundsBudget:
    """What a market buy can still spend, in 10^-(base+quote) units so that it stays exact (rule 4)."""

    __slots__ = ("left", "lot")

    def __init__(self, funds: int, funds_unit: int, lot: int) -> None:
        self.left = funds * funds_unit
        self.lot = lot

    def most_at(self, price: int) -> int:
        """The whole lots the funds left buy at `price` (0: the market buy stops)."""
        size = self.left // price
        return size - size % self.lot

    def spend(self, size: int, price: int) -> None:
        """Account for a fill of `size` at `price`."""
        self.left -= size * price


class MatchingEngine:
    """Price-time priority matching for one product, per docs/contract.md (engine/api.Engine)."""

    core = "python"

    def __init__(self, config: ProductConfig) -> None:
        self.config = config
        self.rules = rules = config.rules()
        self.fingerprint = config.fingerprint()
        self.product_id = rules.product_id
        self.book = OrderBook()
        self.ids = IdWindow(rules.id_window)
        self.validate = OrderValidator(rules).check
        self.sequence = 0
        self.trade_seq = 0
        self.counters = Counters()

    # ---- queries -------------------------------------------------------------------------

    def best_bid(self) -> int | None:
        """Highest resting bid price in quote units, or None."""
        return self.book.best_bid()

    def best_ask(self) -> int | None:
        """Lowest resting ask price in quote units, or None."""
        return self.book.best_ask()

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top n levels per side as (price quote units, size base units), best first."""
        if n < 0:
            raise ValueError("depth(n) needs n >= 0")
        return self.book.depth(n)

    def resting_orders(self) -> int:
        """How many orders rest on the book."""
        return len(self.book)

    # ---- snapshots (contract choice 12) ----------------------------------------------------

    def snapshot(self) -> bytes:
        """The business state as versioned bytes (see engine/snapshot.py)."""
        return encode_snapshot(
            self.fingerprint,
            self.product_id,
            self.sequence,
            self.trade_seq,
            self.ids.max_seen,
            bytes(self.ids.bits),
            [
                (o.order_id, o.user_id, o.side, o.price, o.remaining, o.time_in_force)
                for o in self.book.resting_in_priority()
            ],
        )

    @classmethod
    def restore(cls, config: ProductConfig, data: bytes) -> MatchingEngine:
        """An engine in the state of `data` (written by either core); raises SnapshotError."""
        engine = cls(config)
        snap = decode_snapshot(data, engine.rules, engine.fingerprint)
        engine.ids = IdWindow(engine.rules.id_window, snap.id_window_max, snap.id_window_bits)
        engine.sequence = snap.sequence
        engine.trade_seq = snap.trade_seq
        for order_id, user_id, side, price, remaining, tif in snap.orders:
            resting = RestingOrder(order_id, user_id, side, price, remaining, tif)
            engine.book.rest(resting, engine._price_text(price))
        return engine

    # ---- reading records: what comes out, dead letters --------------------------------------

    def apply(self, records: Sequence[Record]) -> Applied:
        """Apply the records in order (engine/api.Engine.apply): event bytes, [(index, DeadLetter)]."""
        events: list[bytes] = []
        dead: list[tuple[int, DeadLetter]] = []
        for index, record in enumerate(records):
            if type(record) is tuple:
                value, time_ns = record
            else:  # a consumed Kafka record
                value, time_ns = record.value(), record_time_ns(record.timestamp()[1])
            outcome = self.apply_record(value or b"", time_ns)
            if type(outcome) is DeadLetter:
                dead.append((index, outcome))
            else:
                events += encode_events(outcome)
        return events, dead

    def apply_record(self, raw: bytes, ts: int) -> list[Event] | DeadLetter:
        """One input record: its events, or the DeadLetter of a record that is not an order.

        The bounds come before any decoder reads the record (engine/intake.py); JSON that is not
        an OrderMessage is salvaged, a wrong-typed field becoming a reject (invalid_<field>)."""
        if len(raw) > MAX_RECORD_BYTES:
            return self._unreadable(DeadLetter(reason="record_too_large"))
        shape = shape_reason(raw)
        if shape is not None:
            return self._unreadable(DeadLetter(reason=shape))
        try:
            order = decode_order(raw)
        except msgspec.ValidationError:
            salvaged = salvage_order(raw)
            if type(salvaged) is DeadLetter:
                return self._unreadable(salvaged)
            order, bad_field = salvaged
            return self.apply_order(order, ts, bad_field)
        except NOT_JSON:
            return self._unreadable(DeadLetter(reason="not_json"))
        except RecursionError:  # not within MAX_NESTING; here so that it can never escape
            return self._unreadable(DeadLetter(reason="too_deep"))
        return self.apply_order(order, ts)

    def _unreadable(self, letter: DeadLetter) -> DeadLetter:
        """A record that is not an order: counted as input and as a dead letter."""
        self.counters.orders_in += 1
        self.counters.dead_letters += 1
        return letter

    def _dead_letter(self, reason: str) -> DeadLetter:
        """A decoded order without a usable id, side or status: it goes to the DLQ (choice 6)."""
        self.counters.dead_letters += 1
        return DeadLetter(reason=reason)

    def apply_order(
        self, order: OrderMessage, ts: int, bad_field: str | None = None
    ) -> list[Event] | DeadLetter:
        """Apply one decoded order or cancel; `bad_field` (a wrong-typed field) makes it a reject."""
        if self.sequence > SEQUENCE_CHECK_FROM:
            exhausted = sequence_exhausted(self.product_id, self.sequence, len(self.book))
            if exhausted is not None:
                raise exhausted
        self.counters.orders_in += 1
        if order.id is None:
            return self._dead_letter("missing_id")
        if not 0 < order.id <= MAX_ID:
            return self._dead_letter("invalid_id")
        if order.status == "new":
            if order.side != BUY and order.side != SELL:
                return self._dead_letter("missing_side" if order.side is None else "invalid_side")
            return self._new_order(order, ts, bad_field)
        if order.status == "cancelling":
            if order.side is not None and order.side != BUY and order.side != SELL:
                return self._dead_letter("invalid_side")
            return self._cancel(order, ts)
        return self._dead_letter("invalid_status")

    # ---- rule 9 (duplicate ids), rule 10 (validation), then the order's kind ---------------

    def _new_order(self, order: OrderMessage, ts: int, bad_field: str | None) -> list[Event] | DeadLetter:
        """A new order: a fresh id (rule 9), valid (rule 10), then a limit or a market order."""
        verdict = self.ids.check_and_mark(order.id)
        if verdict == DUPLICATE:
            self.counters.duplicates += 1
            return []
        if verdict != FRESH:
            return self._dead_letter("order_id_outside_window")
        if bad_field is not None:
            return [self._reject(order, f"invalid_{bad_field}", 0, 0, ts)]
        reason, price, size, funds = self.validate(order)
        if reason is not None:
            return [self._reject(order, reason, price, size, ts)]
        if order.type == "limit":
            return self._limit(order, price, size, ts)
        return self._market(order, size, funds, ts)

    def _reject(self, order: OrderMessage, reason: str, price: int, size: int, ts: int) -> Done:
        """Rule 10 and choice 4: price and size echo what was read (0 where unread or unused)."""
        self.counters.rejected += 1
        is_limit = order.type == "limit"
        return self._done(
            order.id,
            order.user_id,
            order.side,
            order.time_in_force,
            remaining=size if is_limit or order.side == SELL else 0,
            price=self._price_text(price) if is_limit else self._price_text(0),
            reason="rejected",
            ts=ts,
            reject_reason=reason,
        )

    # ---- rules 3, 5, 6, 7: limit orders and their time in force -----------------------------

    def _limit(self, order: OrderMessage, price: int, size: int, ts: int) -> list[Event]:
        """Match up to the limit price, then rest (GTC, GTX) or cancel (IOC, FOK, stopped by STP)."""
        tif = order.time_in_force
        opposite = self._opposite(order.side)
        if tif == "GTX" and self._crosses_now(opposite, order.side, price):
            return [self._taker_done(order, size, price, "cancelled", ts)]
        if tif == "FOK" and self._size_crossing(opposite, order.side, price, size) < size:
            return [self._taker_done(order, size, price, "cancelled", ts)]
        events: list[Event] = []
        budget = SizeBudget(size)
        stopped = self._take(order, price, budget, ts, events)
        if not budget.left:
            events.append(self._taker_done(order, 0, price, "filled", ts))
        elif stopped or tif == "IOC" or tif == "FOK":
            events.append(self._taker_done(order, budget.left, price, "cancelled", ts))
        else:
            events.append(self._rest(order, price, budget.left, ts))
        return events

    def _crosses_now(self, opposite: BookSide, side: str, price: int) -> bool:
        """Rule 7 (GTX): whether the best opposite price crosses `price`."""
        best = opposite.best_level()
        return best is not None and _crosses(side, price, best.price)

    def _size_crossing(self, opposite: BookSide, side: str, price: int, enough: int) -> int:
        """Rule 6 (FOK): the resting size at crossing prices, counted up to `enough`, book unchanged."""
        limit_key = price * opposite.sign
        available = 0
        for level in opposite.crossing_levels(limit_key):
            available += level.size
            if available >= enough:
                break
        return available

    def _taker_done(self, order: OrderMessage, remaining: int, price: int, reason: str, ts: int) -> Done:
        """The `done` of a limit order that leaves: its remaining size and its limit price."""
        return self._done(
            order.id,
            order.user_id,
            order.side,
            order.time_in_force,
            remaining=remaining,
            price=self._price_text(price),
            reason=reason,
            ts=ts,
        )

    def _rest(self, order: OrderMessage, price: int, remaining: int, ts: int) -> Open:
        """Rule 3: the remainder rests at the back of its price level."""
        resting = RestingOrder(order.id, order.user_id, order.side, price, remaining, order.time_in_force)
        self.book.rest(resting, self._price_text(price))
        return self._open(resting, ts)

    # ---- rule 4: market orders --------------------------------------------------------------

    def _market(self, order: OrderMessage, size: int, funds: int, ts: int) -> list[Event]:
        """Trade a sell's size or a buy's funds at any price; never rest; done at price 0, remaining 0."""
        if order.side == SELL:
            budget: SizeBudget | FundsBudget = SizeBudget(size)
        else:
            budget = FundsBudget(funds, 10**self.rules.base_scale, self.rules.lot)
        events: list[Event] = []
        self._take(order, None, budget, ts, events)
        reason = "cancelled" if budget.left else "filled"
        events.append(
            self._done(
                order.id,
                order.user_id,
                order.side,
                order.time_in_force,
                remaining=0,
                price=self._price_text(0),
                reason=reason,
                ts=ts,
            )
        )
        return events

    # ---- rules 1, 2, 11: matching, fills and self-trade prevention --------------------------

    def _take(
        self, order: OrderMessage, limit: int | None, budget: SizeBudget | FundsBudget, ts: int, events: list
    ) -> bool:
        """Trade against the opposite side, best price first and oldest first (rule 1), while the
        price crosses `limit` (None: any price) and the budget buys at least one lot there.
        Returns whether self-trade prevention ended the taker (rule 11)."""
        opposite = self._opposite(order.side)
        while budget.left:
            level = opposite.best_level()
            if level is None or (limit is not None and not _crosses(order.side, limit, level.price)):
                return False
            most = budget.most_at(level.price)
            if not most:
                return False
            maker = level.front()
            if order.stp is not None and maker.user_id == order.user_id:
                if self._prevent_self_trade(order.stp, level, maker, ts, events):
                    return True
                continue
            fill = min(most, maker.remaining)
            budget.spend(fill, level.price)
            self._fill(order, level, maker, fill, ts, events)
        return False

    def _fill(
        self, order: OrderMessage, level: Level, maker: RestingOrder, size: int, ts: int, events: list
    ) -> None:
        """Rule 2: a match at the maker's price, and the maker's done when it is used up."""
        self.trade_seq += 1
        events.append(self._match(order, maker, level, size, ts))
        if self.book.fill(level, maker, size):
            events.append(self._maker_done(maker, level, 0, "filled", ts))

    def _prevent_self_trade(self, stp: str, level: Level, maker: RestingOrder, ts: int, events: list) -> bool:
        """Rule 11, the taker reached its own user's maker: co cancels the maker, cn ends the
        taker, cb does both. Returns whether the taker ends."""
        if stp != "cn":
            resting = self.book.remove_front(level, maker)
            events.append(self._maker_done(maker, level, resting, "cancelled", ts))
        return stp != "co"

    def _maker_done(self, maker: RestingOrder, level: Level, remaining: int, reason: str, ts: int) -> Done:
        """The `done` of a maker that left the book while a taker traded: at its level's price."""
        return self._done(
            maker.order_id,
            maker.user_id,
            maker.side,
            maker.time_in_force,
            remaining=remaining,
            price=level.price_text,
            reason=reason,
            ts=ts,
        )

    # ---- rule 8: cancels --------------------------------------------------------------------

    def _cancel(self, order: OrderMessage, ts: int) -> list[Event]:
        """A resting order leaves with its resting size; an unknown one, or another product's, is
        counted (choice 8)."""
        taken = None
        if order.product_id is None or order.product_id == self.product_id:
            taken = self.book.cancel(order.id)
        if taken is None:
            self.counters.unknown_cancels += 1
            return []
        resting, size, price_text = taken
        return [
            self._done(
                resting.order_id,
                resting.user_id,
                resting.side,
                resting.time_in_force,
                remaining=size,
                price=price_text,
                reason="cancelled",
                ts=ts,
            )
        ]

    # ---- the events, each kind built here only ----------------------------------------------

    def _open(self, resting: RestingOrder, ts: int) -> Open:
        self.sequence += 1
        return Open(
            sequence=self.sequence,
            product_id=self.product_id,
            time=ts,
            order_id=resting.order_id,
            user_id=resting.user_id,
            remaining_size=self._size_text(resting.remaining),
            price=self._price_text(resting.price),
            side=resting.side,
            time_in_force=resting.time_in_force,
        )

    def _match(self, taker: OrderMessage, maker: RestingOrder, level: Level, size: int, ts: int) -> Match:
        self.sequence += 1
        return Match(
            sequence=self.sequence,
            product_id=self.product_id,
            time=ts,
            trade_seq=self.trade_seq,
            taker_order_id=taker.id,
            maker_order_id=maker.order_id,
            taker_user_id=taker.user_id,
            maker_user_id=maker.user_id,
            side=maker.side,
            price=level.price_text,
            size=self._size_text(size),
            taker_time_in_force=taker.time_in_force,
            maker_time_in_force=maker.time_in_force,
        )

    def _done(
        self,
        order_id: int,
        user_id: int,
        side: str,
        time_in_force: str,
        *,
        remaining: int,
        price: str,
        reason: str,
        ts: int,
        reject_reason: str | None = None,
    ) -> Done:
        self.sequence += 1
        return Done(
            sequence=self.sequence,
            product_id=self.product_id,
            time=ts,
            order_id=order_id,
            user_id=user_id,
            remaining_size=self._size_text(remaining),
            price=price,
            reason=reason,
            side=side,
            time_in_force=time_in_force,
            reject_reason=reject_reason,
        )

    # ---- small helpers ----------------------------------------------------------------------

    def _opposite(self, side: str) -> BookSide:
        """The side a taker of `side` trades against."""
        return self.book.asks if side == BUY else self.book.bids

    def _price_text(self, price: int) -> str:
        return format_scaled(price, self.rules.quote_scale)

    def _size_text(self, size: int) -> str:
        return format_scaled(size, self.rules.base_scale)


def _crosses(side: str, limit: int, maker_price: int) -> bool:
    """Rule 1: a buy crosses an ask at or below its limit; a sell crosses a bid at or above it."""
    return maker_price <= limit if side == BUY else maker_price >= limit
