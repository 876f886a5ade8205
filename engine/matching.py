"""The matching engine of one product: orders in, events out, deterministically.

One single-threaded state machine fed by the ordered input log (LMAX style). Given the same
inputs with the same timestamps, it emits byte-identical events, before and after a
snapshot/restore. It never reads a clock: every event's `time` is the `ts` passed in.

Guarantees:
- `sequence` is +1 per event and `trade_seq` +1 per match, both carried by snapshots.
- Business outcomes (rejects, cancels, unknown cancels, duplicates) are events or counters,
  never exceptions; an input that cannot be read as an order becomes a DeadLetter.
- Cost per order: O(log levels) to rest at a new price, O(1) per fill and per cancel.
- `sequence` and `trade_seq` never pass 2^63-1 (consumers keep them in int64): an input that
  could take `sequence` past it (an order emits at most 2 events per resting order plus 1)
  raises SequenceExhausted before it changes anything. trade_seq <= sequence, so it cannot
  pass first. At 10^7 events/s that is 29,000 years away: only a crafted snapshot gets there,
  and the product process stops with a configuration error (cluster/worker.py).
"""

from __future__ import annotations

from heapq import heappop, heappush

import msgspec

from engine.book import BUY, SELL, Level, OrderBook, RestingOrder
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
from engine.snapshot import INT64_MAX, restore_into, take_snapshot
from engine.validation import OrderValidator

NO_LIMIT = 1 << 256
_TEXT_CACHE_LIMIT = 1 << 16
# Below this sequence no input can exhaust it (that would take 2^39 resting orders): the exact
# test runs only above it. The C core uses the same two steps.
SEQUENCE_CHECK_FROM = INT64_MAX - 2**40


class SequenceExhausted(RuntimeError):
    """The next input could take `sequence` past 2^63-1; nothing was changed (module docstring)."""


def sequence_exhausted(product_id: str, sequence: int, resting: int) -> SequenceExhausted | None:
    """The error to raise before applying an input in this state, or None."""
    if sequence + 2 * resting + 1 <= INT64_MAX:
        return None
    return SequenceExhausted(
        f"product={product_id} sequence={sequence} resting={resting}: "
        "the next input could take sequence past 2^63-1"
    )


class Counters:
    """Operational counts (not business state: not in snapshots, not replayed)."""

    __slots__ = ("orders_in", "duplicates", "unknown_cancels", "rejected", "dead_letters")

    def __init__(self) -> None:
        self.orders_in = 0
        self.duplicates = 0
        self.unknown_cancels = 0
        self.rejected = 0
        self.dead_letters = 0

    def as_dict(self) -> dict[str, int]:
        """The counts by name."""
        return {name: getattr(self, name) for name in self.__slots__}


class MatchingEngine:
    """Price-time priority matching for one product, per docs/contract.md."""

    def __init__(self, config: ProductConfig) -> None:
        self.config = config
        self.rules = rules = config.rules()
        self.fingerprint = config.fingerprint()
        self.product_id = rules.product_id
        self.book = OrderBook()
        self.ids = IdWindow(rules.id_window)
        self._validate = OrderValidator(rules).check
        self.sequence = 0
        self.trade_seq = 0
        self.counters = Counters()
        self._price_texts: dict[int, str] = {}
        self._size_texts: dict[int, str] = {}
        self._zero_price = format_scaled(0, rules.quote_scale)
        self._zero_size = format_scaled(0, rules.base_scale)
        self._funds_unit = 10**rules.base_scale

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

    # ---- snapshots -----------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The business state as versioned bytes (see engine/snapshot.py)."""
        return take_snapshot(self)

    @classmethod
    def restore(cls, config: ProductConfig, data: bytes) -> MatchingEngine:
        """An engine in the state of `data`; raises SnapshotError on version or config mismatch."""
        return restore_into(cls(config), data)

    # ---- intake --------------------------------------------------------------------------

    def submit_raw(self, raw: bytes, ts: int) -> list[Event] | DeadLetter:
        """Decode one input record and apply it; any bytes give events or a DeadLetter."""
        if len(raw) > MAX_RECORD_BYTES:
            return self._unreadable(DeadLetter(reason="record_too_large"))
        shape = shape_reason(raw)  # before any decoder: see engine/intake.py
        if shape is not None:
            return self._unreadable(DeadLetter(reason=shape))
        try:
            order = decode_order(raw)
        except msgspec.ValidationError:
            salvaged = salvage_order(raw)
            if isinstance(salvaged, DeadLetter):
                return self._unreadable(salvaged)
            order, bad_field = salvaged
            return self.submit(order, ts, bad_field)
        except NOT_JSON:
            return self._unreadable(DeadLetter(reason="not_json"))
        except RecursionError:  # not within MAX_NESTING; here so that it can never escape
            return self._unreadable(DeadLetter(reason="too_deep"))
        return self.submit(order, ts)

    def _unreadable(self, letter: DeadLetter) -> DeadLetter:
        """An input record that is not an order: counted as input and as a dead letter."""
        self.counters.orders_in += 1
        self.counters.dead_letters += 1
        return letter

    def submit_records(self, records) -> tuple[list[bytes], list[tuple[int, DeadLetter]]]:
        """Apply a batch of input records in order: (all event bytes, [(index, DeadLetter)]).

        `records` have `value()` (bytes or None) and `timestamp()` ((type, ms)), the shape of a
        Kafka record; an event's `time` is record_time_ns of its record's timestamp. The events
        of the batch are consecutive in `sequence`.
        """
        events: list[bytes] = []
        dead: list[tuple[int, DeadLetter]] = []
        last_ms = ts = None
        for index, record in enumerate(records):
            ms = record.timestamp()[1]
            if ms != last_ms:
                last_ms, ts = ms, record_time_ns(ms)
            result = self.submit_encoded(record.value() or b"", ts)
            if type(result) is DeadLetter:
                dead.append((index, result))
            else:
                events.extend(result)
        return events, dead

    def submit_encoded(self, raw: bytes, ts: int) -> list[bytes] | DeadLetter:
        """submit_raw with each event as its published bytes (the worker's call; see engine/native.py)."""
        result = self.submit_raw(raw, ts)
        return result if type(result) is DeadLetter else encode_events(result)

    def submit(self, order: OrderMessage, ts: int, bad_field: str | None = None) -> list[Event] | DeadLetter:
        """Apply one decoded order or cancel; `bad_field` forces a reject (wrong-typed field)."""
        if self.sequence > SEQUENCE_CHECK_FROM:
            exhausted = sequence_exhausted(self.product_id, self.sequence, len(self.book.index))
            if exhausted is not None:
                raise exhausted
        counters = self.counters
        counters.orders_in += 1
        oid = order.id
        if oid is None:
            counters.dead_letters += 1
            return DeadLetter(reason="missing_id")
        if oid <= 0 or oid > MAX_ID:
            counters.dead_letters += 1
            return DeadLetter(reason="invalid_id")
        side = order.side
        status = order.status
        if status == "new":
            if side != BUY and side != SELL:
                counters.dead_letters += 1
                return DeadLetter(reason="missing_side" if side is None else "invalid_side")
            verdict = self.ids.check_and_mark(oid)
            if verdict != FRESH:
                if verdict == DUPLICATE:
                    counters.duplicates += 1
                    return []
                counters.dead_letters += 1
                return DeadLetter(reason="order_id_outside_window")
            if bad_field is not None:
                return self._reject(order, f"invalid_{bad_field}", 0, 0, ts)
            reason, price, size, funds = self._validate(order)
            if reason is not None:
                return self._reject(order, reason, price, size, ts)
            if order.type == "limit":
                return self._limit(order, side, price, size, ts)
            if side == SELL:
                return self._market_sell(order, size, ts)
            return self._market_buy(order, funds, ts)
        if status == "cancelling":
            if side is not None and side != BUY and side != SELL:
                counters.dead_letters += 1
                return DeadLetter(reason="invalid_side")
            return self._cancel(order, ts)
        counters.dead_letters += 1
        return DeadLetter(reason="invalid_status")

    # ---- outcomes ------------------------------------------------------------------------

    def _price_text(self, price: int) -> str:
        cache = self._price_texts
        text = cache.get(price)
        if text is None:
            if len(cache) > _TEXT_CACHE_LIMIT:
                cache.clear()
            text = cache[price] = format_scaled(price, self.rules.quote_scale)
        return text

    def _size_text(self, size: int) -> str:
        cache = self._size_texts
        text = cache.get(size)
        if text is None:
            if len(cache) > _TEXT_CACHE_LIMIT:
                cache.clear()
            text = cache[size] = format_scaled(size, self.rules.base_scale)
        return text

    def _done(self, order: OrderMessage, remaining: str, price: str, reason: str, ts: int) -> Done:
        self.sequence += 1
        return Done(
            sequence=self.sequence,
            product_id=self.product_id,
            time=ts,
            order_id=order.id,
            user_id=order.user_id,
            remaining_size=remaining,
            price=price,
            reason=reason,
            side=order.side,
            time_in_force=order.time_in_force,
        )

    def _reject(self, order: OrderMessage, reason: str, price: int, size: int, ts: int) -> list[Event]:
        self.counters.rejected += 1
        self.sequence += 1
        is_limit = order.type == "limit"
        return [
            Done(
                sequence=self.sequence,
                product_id=self.product_id,
                time=ts,
                order_id=order.id,
                user_id=order.user_id,
                remaining_size=self._size_text(size) if is_limit or order.side == SELL else self._zero_size,
                price=self._price_text(price) if is_limit else self._zero_price,
                reason="rejected",
                side=order.side,
                time_in_force=order.time_in_force,
                reject_reason=reason,
            )
        ]

    def _cancel(self, order: OrderMessage, ts: int) -> list[Event]:
        if order.product_id is not None and order.product_id != self.product_id:
            self.counters.unknown_cancels += 1
            return []
        taken = self.book.cancel(order.id)
        if taken is None:
            self.counters.unknown_cancels += 1
            return []
        resting, size, price_text = taken
        self.sequence += 1
        return [
            Done(
                sequence=self.sequence,
                product_id=self.product_id,
                time=ts,
                order_id=resting.order_id,
                user_id=resting.user_id,
                remaining_size=self._size_text(size),
                price=price_text,
                reason="cancelled",
                side=resting.side,
                time_in_force=resting.time_in_force,
            )
        ]

    def _open(self, order: OrderMessage, side: str, price: int, remaining: int, ts: int) -> Open:
        """Rest the remainder at the back of its level (BookSide.level_for/OrderBook.rest, inlined)."""
        price_text = self._price_texts.get(price) or self._price_text(price)
        tif = order.time_in_force
        oid = order.id
        book = self.book
        if side == BUY:
            own = book.bids
            key = -price
        else:
            own = book.asks
            key = price
        level = own.levels.get(key)
        if level is None:
            level = own.levels[key] = Level(price, price_text)
            heappush(own.heap, key)
        level.orders.append(RestingOrder(oid, order.user_id, side, price, remaining, tif))
        level.live += 1
        level.size += remaining
        book.index[oid] = level.orders[-1]
        self.sequence += 1
        return Open(
            sequence=self.sequence,
            product_id=self.product_id,
            time=ts,
            order_id=oid,
            user_id=order.user_id,
            remaining_size=self._size_texts.get(remaining) or self._size_text(remaining),
            price=price_text,
            side=side,
            time_in_force=tif,
        )

    # ---- order kinds ---------------------------------------------------------------------

    def _limit(self, order: OrderMessage, side: str, price: int, size: int, ts: int) -> list[Event]:
        if side == BUY:
            opposite = self.book.asks
            limit_key = price
        else:
            opposite = self.book.bids
            limit_key = -price
        tif = order.time_in_force
        if tif == "GTX" or tif == "FOK":
            if tif == "GTX":
                best = opposite.best_level()
                refuse = best is not None and best.price * opposite.sign <= limit_key
            else:
                available = 0
                for level in opposite.crossing_levels(limit_key):
                    available += level.size
                    if available >= size:
                        break
                refuse = available < size
            if refuse:
                return [self._done(order, self._size_text(size), self._price_text(price), "cancelled", ts)]
        events: list[Event] = []
        heap = opposite.heap
        if heap and heap[0] <= limit_key:
            remaining, stopped = self._take(order, opposite, limit_key, size, ts, events)
        else:
            remaining, stopped = size, False
        if not remaining:
            events.append(self._done(order, self._zero_size, self._price_text(price), "filled", ts))
        elif stopped or tif == "IOC" or tif == "FOK":
            events.append(
                self._done(order, self._size_text(remaining), self._price_text(price), "cancelled", ts)
            )
        else:
            events.append(self._open(order, side, price, remaining, ts))
        return events

    def _market_sell(self, order: OrderMessage, size: int, ts: int) -> list[Event]:
        events: list[Event] = []
        remaining, _ = self._take(order, self.book.bids, NO_LIMIT, size, ts, events)
        reason = "cancelled" if remaining else "filled"
        events.append(self._done(order, self._zero_size, self._zero_price, reason, ts))
        return events

    def _take(self, order: OrderMessage, opposite, limit_key: int, remaining: int, ts: int, events: list):
        """Fill `remaining` against `opposite` up to limit_key; returns (unfilled, stopped by STP)."""
        seq = self.sequence
        trade = self.trade_seq
        product_id = self.product_id
        index = self.book.index
        size_texts = self._size_texts
        size_text = self._size_text
        zero_size = self._zero_size
        heap = opposite.heap
        levels = opposite.levels
        maker_side = opposite.side
        append = events.append
        taker_id = order.id
        taker_user = order.user_id
        taker_tif = order.time_in_force
        stp = order.stp
        stopped = False
        while remaining:
            while heap:
                key = heap[0]
                level = levels[key]
                if level.live:
                    break
                heappop(heap)
                del levels[key]
            else:
                break
            if key > limit_key:
                break
            queue = level.orders
            price_text = level.price_text
            while queue:
                maker = queue[0]
                resting = maker.remaining
                if not resting:
                    queue.popleft()
                    continue
                if stp is not None and maker.user_id == taker_user:
                    if stp != "cn":
                        seq += 1
                        append(self._stp_cancel(maker, level, seq, ts))
                    if stp != "co":
                        stopped = True
                        break
                    continue
                fill = resting if resting < remaining else remaining
                fill_text = size_texts.get(fill) or size_text(fill)
                seq += 1
                trade += 1
                append(
                    Match(
                        sequence=seq,
                        product_id=product_id,
                        time=ts,
                        trade_seq=trade,
                        taker_order_id=taker_id,
                        maker_order_id=maker.order_id,
                        taker_user_id=taker_user,
                        maker_user_id=maker.user_id,
                        side=maker_side,
                        price=price_text,
                        size=fill_text,
                        taker_time_in_force=taker_tif,
                        maker_time_in_force=maker.time_in_force,
                    )
                )
                remaining -= fill
                level.size -= fill
                if fill == resting:
                    maker.remaining = 0
                    queue.popleft()
                    del index[maker.order_id]
                    level.live -= 1
                    seq += 1
                    append(
                        Done(
                            sequence=seq,
                            product_id=product_id,
                            time=ts,
                            order_id=maker.order_id,
                            user_id=maker.user_id,
                            remaining_size=zero_size,
                            price=price_text,
                            reason="filled",
                            side=maker_side,
                            time_in_force=maker.time_in_force,
                        )
                    )
                else:
                    maker.remaining = resting - fill
                if not remaining:
                    break
            if not level.live:
                queue.clear()
                heappop(heap)
                del levels[key]
            if stopped:
                break
        self.sequence = seq
        self.trade_seq = trade
        return remaining, stopped

    def _market_buy(self, order: OrderMessage, funds: int, ts: int) -> list[Event]:
        """Spend `funds` on asks best-first; funds_left is in 10^-(base+quote) so it stays exact."""
        events: list[Event] = []
        asks = self.book.asks
        lot = self.rules.lot
        funds_left = funds * self._funds_unit
        stp = order.stp
        stopped = False
        while funds_left and not stopped:
            level = asks.best_level()
            if level is None:
                break
            price = level.price
            queue = level.orders
            affordable = 0
            while queue:
                maker = queue[0]
                resting = maker.remaining
                if not resting:
                    queue.popleft()
                    continue
                affordable = funds_left // price
                affordable -= affordable % lot
                if not affordable:
                    break
                if stp is not None and maker.user_id == order.user_id:
                    if stp != "cn":
                        self.sequence += 1
                        events.append(self._stp_cancel(maker, level, self.sequence, ts))
                    if stp != "co":
                        stopped = True
                        break
                    continue
                fill = resting if resting < affordable else affordable
                funds_left -= fill * price
                self._fill(order, maker, level, fill, ts, events)
                if not funds_left:
                    break
            if not level.live:
                queue.clear()
                heappop(asks.heap)
                del asks.levels[price]
            elif not affordable:
                break
        reason = "cancelled" if funds_left else "filled"
        events.append(self._done(order, self._zero_size, self._zero_price, reason, ts))
        return events

    def _fill(
        self, order: OrderMessage, maker: RestingOrder, level, fill: int, ts: int, events: list
    ) -> None:
        """One match (and the maker's done if used up); the slow path shared by market buys."""
        self.sequence += 1
        self.trade_seq += 1
        maker_side = maker.side
        events.append(
            Match(
                sequence=self.sequence,
                product_id=self.product_id,
                time=ts,
                trade_seq=self.trade_seq,
                taker_order_id=order.id,
                maker_order_id=maker.order_id,
                taker_user_id=order.user_id,
                maker_user_id=maker.user_id,
                side=maker_side,
                price=level.price_text,
                size=self._size_text(fill),
                taker_time_in_force=order.time_in_force,
                maker_time_in_force=maker.time_in_force,
            )
        )
        level.size -= fill
        maker.remaining -= fill
        if not maker.remaining:
            level.orders.popleft()
            del self.book.index[maker.order_id]
            level.live -= 1
            self.sequence += 1
            events.append(
                Done(
                    sequence=self.sequence,
                    product_id=self.product_id,
                    time=ts,
                    order_id=maker.order_id,
                    user_id=maker.user_id,
                    remaining_size=self._zero_size,
                    price=level.price_text,
                    reason="filled",
                    side=maker_side,
                    time_in_force=maker.time_in_force,
                )
            )

    def _stp_cancel(self, maker: RestingOrder, level, sequence: int, ts: int) -> Done:
        """Take the front maker off the book for self-trade prevention; its done event."""
        resting = maker.remaining
        maker.remaining = 0
        level.orders.popleft()
        level.live -= 1
        level.size -= resting
        del self.book.index[maker.order_id]
        return Done(
            sequence=sequence,
            product_id=self.product_id,
            time=ts,
            order_id=maker.order_id,
            user_id=maker.user_id,
            remaining_size=self._size_text(resting),
            price=level.price_text,
            reason="cancelled",
            side=maker.side,
            time_in_force=maker.time_in_force,
        )
