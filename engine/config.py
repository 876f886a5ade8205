"""Per-product settings, loaded from TOML (see configs/products.toml for the schema).

A config is validated once at load time; the engine then works with the scaled integers from
`ProductConfig.rules()`. `fingerprint()` goes into every snapshot so a snapshot is never restored
under different scales, tick, lot or id window.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import msgspec

from engine.decimals import DecimalFormatError, format_scaled, parse_scaled

MAX_SCALE = 18
MAX_ID_WINDOW = 100_000_000


class ConfigError(ValueError):
    """The product configuration is unusable; the message names the product and the setting."""


class ProductConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One product's settings; decimals are strings, validated by `rules()`."""

    product_id: str
    base_scale: int
    quote_scale: int
    tick_size: str | None = None
    lot_size: str | None = None
    min_size: str | None = None
    min_funds: str | None = None
    id_window: int = 1_000_000

    def rules(self) -> ProductRules:
        """The validated settings as scaled integers; raises ConfigError."""
        return ProductRules.from_config(self)

    def fingerprint(self) -> str:
        """A stable hash of the settings that change matching (snapshots carry it)."""
        r = self.rules()
        canon = (
            f"v1|{self.product_id}|{r.base_scale}|{r.quote_scale}|{r.tick}|{r.lot}"
            f"|{r.min_size}|{r.min_funds}|{r.id_window}"
        )
        return hashlib.sha256(canon.encode()).hexdigest()[:32]


class ProductRules(msgspec.Struct, frozen=True, kw_only=True):
    """Validated settings: tick and min_funds in quote units, lot and min_size in base units."""

    product_id: str
    base_scale: int
    quote_scale: int
    tick: int
    lot: int
    min_size: int
    min_funds: int
    id_window: int

    @classmethod
    def from_config(cls, cfg: ProductConfig) -> ProductRules:
        """Check every setting of `cfg` and scale its decimals."""
        pid = cfg.product_id
        if not pid or not isinstance(pid, str):
            raise ConfigError("product_id must be a non-empty string")
        for name in ("base_scale", "quote_scale"):
            value = getattr(cfg, name)
            if type(value) is not int or not 0 <= value <= MAX_SCALE:
                raise ConfigError(f"product={pid}: {name} must be an int in 0..{MAX_SCALE}, got {value!r}")
        if type(cfg.id_window) is not int or not 1 <= cfg.id_window <= MAX_ID_WINDOW:
            raise ConfigError(f"product={pid}: id_window must be an int in 1..{MAX_ID_WINDOW}")
        tick = _positive(pid, "tick_size", cfg.tick_size, cfg.quote_scale, 1)
        lot = _positive(pid, "lot_size", cfg.lot_size, cfg.base_scale, 1)
        min_size = _positive(pid, "min_size", cfg.min_size, cfg.base_scale, lot)
        min_funds = _positive(pid, "min_funds", cfg.min_funds, cfg.quote_scale, 1)
        return cls(
            product_id=pid,
            base_scale=cfg.base_scale,
            quote_scale=cfg.quote_scale,
            tick=tick,
            lot=lot,
            min_size=min_size,
            min_funds=min_funds,
            id_window=cfg.id_window,
        )


def _positive(pid: str, name: str, text: str | None, scale: int, default: int) -> int:
    if text is None:
        return default
    try:
        value = parse_scaled(text, scale)
    except DecimalFormatError as exc:
        raise ConfigError(
            f"product={pid}: {name}={text!r} is not a decimal within scale {scale} ({exc.reason})"
        ) from None
    if value <= 0:
        raise ConfigError(
            f"product={pid}: {name}={text!r} must be > 0 (smallest is {format_scaled(1, scale)})"
        )
    return value


def load_products(path: str | Path) -> dict[str, ProductConfig]:
    """Read `[products."<ID>"]` tables from a TOML file; every product is validated."""
    try:
        with open(path, "rb") as fh:
            doc = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    unknown = set(doc) - {"products"}
    if unknown:
        raise ConfigError(f"{path}: unknown top-level keys {sorted(unknown)}")
    tables = doc.get("products", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{path}: `products` must be a table")
    products: dict[str, ProductConfig] = {}
    for pid, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: products.{pid} must be a table")
        if "product_id" in table and table["product_id"] != pid:
            raise ConfigError(f"{path}: products.{pid} has product_id={table['product_id']!r}")
        try:
            cfg = msgspec.convert({**table, "product_id": pid}, ProductConfig)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"{path}: products.{pid}: {exc}") from None
        cfg.rules()
        products[pid] = cfg
    return products
