"""Offline replay: the oracle for what the cluster must publish for a given input log.

Each record is (raw bytes, record time in ns). The cluster's tests feed the records read
back from Kafka; the `replay` CLI feeds JSON lines with `created_at` as the record time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import msgspec

from engine.api import Engine, apply_one
from engine.config import ProductConfig
from engine.intake import shape_reason
from engine.matching import MatchingEngine
from engine.messages import NOT_JSON, DeadLetter


class _Stamp(msgspec.Struct):
    created_at: object = 0


_stamp_decoder = msgspec.json.Decoder(_Stamp)


def created_at_of(raw: bytes) -> int:
    """The line's `created_at` as a record time; 0 when absent, not JSON, or not an int >= 0, and for
    a line beyond the shape bounds (a dead letter, read by no decoder: see engine/intake.py)."""
    if shape_reason(raw) is not None:
        return 0
    try:
        value = _stamp_decoder.decode(raw).created_at
    except (*NOT_JSON, RecursionError):  # RecursionError: not within the bounds; so that it never escapes
        return 0
    return value if type(value) is int and 0 <= value < 2**63 else 0


def replay_outcomes(
    engine: Engine, records: Iterable[tuple[bytes, int]]
) -> Iterator[list[bytes] | DeadLetter]:
    """Per record, in order: the published bytes of its events, or its DeadLetter."""
    for raw, ts in records:
        yield apply_one(engine, raw, ts)


def replay_lines(config: ProductConfig, records: Iterable[tuple[bytes, int]]) -> Iterator[bytes | DeadLetter]:
    """Every event's published bytes (no newline) in sequence order, and DeadLetters in place."""
    for outcome in replay_outcomes(MatchingEngine(config), records):
        if isinstance(outcome, DeadLetter):
            yield outcome
        else:
            yield from outcome
