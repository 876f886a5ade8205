"""Validation of a new order against its product's rules, as snake_case reject reasons.

A failed check is a business outcome: the engine emits `done` with reason `rejected` and the
code below as `reject_reason`. Checks run in this order and the first failure wins:

    product_mismatch            product_id absent or not this product
    invalid_user_id             user_id outside the signed 64-bit range
    invalid_type                type not limit|market
    invalid_time_in_force       time_in_force not GTC|IOC|GTX|FOK (checked for market orders too)
    invalid_stp                 stp present and not co|cn|cb
    invalid_price               limit price absent, not a decimal, <= 0, too long or too large
    price_too_precise           limit price has non-zero digits beyond quote_scale
    price_not_on_tick           limit price not a multiple of tick_size
    invalid_size                size absent/not a decimal/<= 0/too large (limit, market sell)
    size_too_precise            size has non-zero digits beyond base_scale
    size_not_on_lot             size not a multiple of lot_size
    size_below_minimum          size < min_size
    market_buy_requires_funds   market buy with funds absent or zero
    invalid_funds               funds not a decimal, negative, too long or too large
    funds_too_precise           funds has non-zero digits beyond quote_scale
    funds_below_minimum         funds < min_funds
    fok_with_stp_unsupported    a FOK limit order that carries stp

A market order's price is ignored; a market buy's size is ignored; a limit order's funds are ignored.
"""

from __future__ import annotations

from engine.config import ProductRules
from engine.decimals import TOO_PRECISE, DecimalFormatError, parse_scaled
from engine.messages import OrderMessage

TIME_IN_FORCE = frozenset(("GTC", "IOC", "GTX", "FOK"))
STP_MODES = frozenset(("co", "cn", "cb"))
_CACHE_LIMIT = 1 << 16


def _amount(text: str | None, scale: int, field: str) -> tuple[str | None, int]:
    try:
        value = parse_scaled(text, scale)
    except DecimalFormatError as exc:
        return (f"{field}_too_precise" if exc.reason == TOO_PRECISE else f"invalid_{field}"), 0
    return (None if value > 0 else f"invalid_{field}"), value


class OrderValidator:
    """validate_new for one product, remembering decimal texts already found valid.

    Prices and sizes repeat a lot in a live stream; a dict lookup replaces the parse and the
    tick/lot/minimum checks for a text seen before. Only valid texts are remembered, so a
    cache hit can never hide a reject. The caches are bounded and are not business state.
    """

    __slots__ = ("rules", "_prices", "_sizes")

    def __init__(self, rules: ProductRules) -> None:
        self.rules = rules
        self._prices: dict[str, int] = {}
        self._sizes: dict[str, int] = {}

    def _price(self, text: str | None) -> tuple[str | None, int]:
        rules = self.rules
        reason, price = _amount(text, rules.quote_scale, "price")
        if reason:
            return reason, 0
        if price % rules.tick:
            return "price_not_on_tick", price
        if len(self._prices) > _CACHE_LIMIT:
            self._prices.clear()
        self._prices[text] = price
        return None, price

    def _size(self, text: str | None) -> tuple[str | None, int]:
        rules = self.rules
        reason, size = _amount(text, rules.base_scale, "size")
        if reason:
            return reason, max(size, 0)
        if size % rules.lot:
            return "size_not_on_lot", size
        if size < rules.min_size:
            return "size_below_minimum", size
        if len(self._sizes) > _CACHE_LIMIT:
            self._sizes.clear()
        self._sizes[text] = size
        return None, size

    def check(self, order: OrderMessage) -> tuple[str | None, int, int, int]:
        """(reject reason or None, price, size, funds) with amounts scaled; 0 where unusable."""
        rules = self.rules
        if order.product_id != rules.product_id:
            return "product_mismatch", 0, 0, 0
        if not -(2**63) <= order.user_id < 2**63:
            return "invalid_user_id", 0, 0, 0
        kind = order.type
        if kind != "limit" and kind != "market":
            return "invalid_type", 0, 0, 0
        if order.time_in_force not in TIME_IN_FORCE:
            return "invalid_time_in_force", 0, 0, 0
        stp = order.stp
        if stp is not None and stp not in STP_MODES:
            return "invalid_stp", 0, 0, 0
        if kind == "limit":
            price = self._prices.get(order.price)
            if price is None:
                reason, price = self._price(order.price)
                if reason:
                    return reason, price, 0, 0
            size = self._sizes.get(order.size)
            if size is None:
                reason, size = self._size(order.size)
                if reason:
                    return reason, price, size, 0
            if stp is not None and order.time_in_force == "FOK":
                return "fok_with_stp_unsupported", price, size, 0
            return None, price, size, 0
        if order.side == "sell":
            size = self._sizes.get(order.size)
            if size is None:
                reason, size = self._size(order.size)
                return reason, 0, size, 0
            return None, 0, size, 0
        return _market_funds(order.funds, rules)


def _market_funds(text: str | None, rules: ProductRules) -> tuple[str | None, int, int, int]:
    if text is None:
        return "market_buy_requires_funds", 0, 0, 0
    try:
        funds = parse_scaled(text, rules.quote_scale)
    except DecimalFormatError as exc:
        return ("funds_too_precise" if exc.reason == TOO_PRECISE else "invalid_funds"), 0, 0, 0
    if funds == 0:
        return "market_buy_requires_funds", 0, 0, 0
    if funds < 0:
        return "invalid_funds", 0, 0, 0
    if funds < rules.min_funds:
        return "funds_below_minimum", 0, 0, funds
    return None, 0, 0, funds


def validate_new(order: OrderMessage, rules: ProductRules) -> tuple[str | None, int, int, int]:
    """(reject reason or None, price, size, funds) for one order, without caches."""
    return OrderValidator(rules).check(order)
