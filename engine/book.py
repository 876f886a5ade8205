"""The order book: price levels with FIFO queues and an id index, all in scaled integers.

Each side keeps a binary heap of level keys (price for asks, -price for bids, so the best
level is always heap[0]) and a dict key -> Level. Levels are removed lazily: a level whose last
order leaves stays in the dict with `live == 0` until it reaches the heap top, so each price is
in the heap at most once. A level's queue is a deque in arrival order; a cancelled order is
marked (remaining 0) and skipped, and the queue is compacted when most of it is garbage.

Complexity: best price O(1) amortised; rest O(log levels) for a new level, else O(1);
cancel by id O(1) amortised; depth(n) O(levels log levels) (not on the hot path).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from heapq import heappop, heappush

import msgspec

BUY = "buy"
SELL = "sell"


class RestingOrder(msgspec.Struct, gc=False):
    """A limit order on the book; `remaining` is mutable, 0 means it has left the queue.

    A msgspec Struct rather than a __slots__ class: it is built once per resting order and
    msgspec builds it about twice as fast; gc=False is safe as it holds only ints and strs.
    """

    order_id: int
    user_id: int
    side: str
    price: int
    remaining: int
    time_in_force: str


class Level:
    """All resting orders at one price, oldest first; `live` counts orders, `size` sums them."""

    __slots__ = ("price", "price_text", "orders", "live", "size")

    def __init__(self, price: int, price_text: str):
        self.price = price
        self.price_text = price_text
        self.orders: deque[RestingOrder] = deque()
        self.live = 0
        self.size = 0

    def front(self) -> RestingOrder:
        """The oldest order still resting here (the level must be live), dropping cancelled ones."""
        orders = self.orders
        while not orders[0].remaining:
            orders.popleft()
        return orders[0]


class BookSide:
    """One side of the book; `sign` maps a price to its heap key (asks +1, bids -1)."""

    __slots__ = ("side", "sign", "heap", "levels")

    def __init__(self, side: str):
        self.side = side
        self.sign = 1 if side == SELL else -1
        self.heap: list[int] = []
        self.levels: dict[int, Level] = {}

    def best_level(self) -> Level | None:
        """The best non-empty level, dropping empty levels found on top of the heap."""
        heap = self.heap
        levels = self.levels
        while heap:
            key = heap[0]
            level = levels[key]
            if level.live:
                return level
            heappop(heap)
            del levels[key]
        return None

    def level_for(self, price: int, price_text: str) -> Level:
        """The level at `price`, created (and pushed on the heap) if needed."""
        key = price * self.sign
        level = self.levels.get(key)
        if level is None:
            level = self.levels[key] = Level(price, price_text)
            heappush(self.heap, key)
        return level

    def crossing_levels(self, limit_key: int) -> Iterator[Level]:
        """Non-empty levels with key <= limit_key in priority order, without mutating the heap."""
        heap = self.heap
        levels = self.levels
        n = len(heap)
        if not n or heap[0] > limit_key:
            return
        frontier = [(heap[0], 0)]
        while frontier:
            key, i = heappop(frontier)
            level = levels[key]
            if level.live:
                yield level
            for child in (2 * i + 1, 2 * i + 2):
                if child < n and heap[child] <= limit_key:
                    heappush(frontier, (heap[child], child))

    def sorted_levels(self) -> list[Level]:
        """Non-empty levels, best first."""
        return [self.levels[k] for k in sorted(self.levels) if self.levels[k].live]


class OrderBook:
    """Both sides plus the id index of resting orders."""

    __slots__ = ("bids", "asks", "index")

    def __init__(self) -> None:
        self.bids = BookSide(BUY)
        self.asks = BookSide(SELL)
        self.index: dict[int, RestingOrder] = {}

    def side(self, side: str) -> BookSide:
        """The book side on which orders of `side` rest."""
        return self.bids if side == BUY else self.asks

    def rest(self, order: RestingOrder, price_text: str) -> None:
        """Append `order` at the back of its price level."""
        level = (self.bids if order.side == BUY else self.asks).level_for(order.price, price_text)
        level.orders.append(order)
        level.live += 1
        level.size += order.remaining
        self.index[order.order_id] = order

    def fill(self, level: Level, maker: RestingOrder, size: int) -> bool:
        """Take `size` from `maker`, the front of `level`; True when that used the maker up (it left)."""
        maker.remaining -= size
        level.size -= size
        if maker.remaining:
            return False
        self._remove_front(level, maker)
        return True

    def remove_front(self, level: Level, maker: RestingOrder) -> int:
        """Take `maker`, the front of `level`, off the book whole; returns the size it had left."""
        size = maker.remaining
        maker.remaining = 0
        level.size -= size
        self._remove_front(level, maker)
        return size

    def _remove_front(self, level: Level, maker: RestingOrder) -> None:
        level.orders.popleft()
        level.live -= 1
        del self.index[maker.order_id]

    def cancel(self, order_id: int) -> tuple[RestingOrder, int, str] | None:
        """Take a resting order off the book; returns it, its resting size and its price text."""
        order = self.index.pop(order_id, None)
        if order is None:
            return None
        side = self.bids if order.side == BUY else self.asks
        level = side.levels[order.price * side.sign]
        size = order.remaining
        order.remaining = 0
        level.live -= 1
        level.size -= size
        if level.live == 0:
            level.orders.clear()
        elif len(level.orders) > 2 * level.live + 16:
            level.orders = deque(o for o in level.orders if o.remaining)
        return order, size, level.price_text

    def best_bid(self) -> int | None:
        """Highest bid price (scaled), or None."""
        level = self.bids.best_level()
        return level.price if level else None

    def best_ask(self) -> int | None:
        """Lowest ask price (scaled), or None."""
        level = self.asks.best_level()
        return level.price if level else None

    def depth(self, n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Top `n` levels per side as (price, total size), best first."""
        bids = [(lv.price, lv.size) for lv in self.bids.sorted_levels()[:n]]
        asks = [(lv.price, lv.size) for lv in self.asks.sorted_levels()[:n]]
        return bids, asks

    def resting_in_priority(self) -> Iterator[RestingOrder]:
        """Every resting order: bids best-first then asks best-first, FIFO within a level."""
        for book_side in (self.bids, self.asks):
            for level in book_side.sorted_levels():
                for order in level.orders:
                    if order.remaining:
                        yield order

    def __len__(self) -> int:
        return len(self.index)
