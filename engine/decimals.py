"""Exact decimal strings <-> scaled integers, without float or Decimal on the hot path.

A value with scale s is held as the integer value * 10**s. Parsing is strict: an optional
leading `-`, ASCII digits, optionally one `.` followed by at least one digit. NaN, Infinity,
exponents, `+`, spaces, `_`, `.5` and `5.` are refused. Extra fractional digits beyond the scale
are accepted only when they are zeros ("1.000" at scale 2 is 1.00). Magnitudes are bounded by
MAX_SCALED so every value fits a signed 64-bit integer downstream.
"""

from __future__ import annotations

MAX_SCALED = 2**63 - 1
MAX_TEXT_LEN = 64

NOT_DECIMAL = "not_decimal"
TOO_MANY_DIGITS = "too_many_digits"
TOO_PRECISE = "too_precise"
TOO_LARGE = "too_large"


class DecimalFormatError(ValueError):
    """A decimal string that cannot be held exactly; `reason` is one of the codes above."""

    def __init__(self, reason: str, text: object) -> None:
        super().__init__(f"{reason}: {text!r}")
        self.reason = reason


def parse_scaled(text: object, scale: int) -> int:
    """The exact integer text * 10**scale; raises DecimalFormatError with a typed reason."""
    if type(text) is not str:
        raise DecimalFormatError(NOT_DECIMAL, text)
    if len(text) > MAX_TEXT_LEN:
        raise DecimalFormatError(TOO_MANY_DIGITS, text)
    negative = text[:1] == "-"
    body = text[1:] if negative else text
    whole, dot, frac = body.partition(".")
    if not (whole.isascii() and whole.isdigit()):
        raise DecimalFormatError(NOT_DECIMAL, text)
    if dot and not (frac.isascii() and frac.isdigit()):
        raise DecimalFormatError(NOT_DECIMAL, text)
    if len(frac) > scale:
        if frac[scale:].strip("0"):
            raise DecimalFormatError(TOO_PRECISE, text)
        frac = frac[:scale]
    value = int(whole + frac + "0" * (scale - len(frac)))
    if value > MAX_SCALED:
        raise DecimalFormatError(TOO_LARGE, text)
    return -value if negative else value


def format_scaled(value: int, scale: int) -> str:
    """The decimal string of value * 10**-scale with exactly `scale` fractional digits."""
    if scale == 0:
        return str(value)
    if value < 0:
        return "-" + format_scaled(-value, scale)
    digits = str(value).rjust(scale + 1, "0")
    return digits[:-scale] + "." + digits[-scale:]
