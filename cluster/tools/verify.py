"""The stream invariants, checked the same way by drills and tests.

The output topic, with redelivered sequences dropped, must equal `replay` of the input topic;
every redelivered event must be byte-identical to the first copy. Nothing here trusts the
broker's watermarks: both topics are read from offset 0 until the expected count is reached.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from cluster.kafka_io import read_topic
from engine.config import ProductConfig
from engine.replay import replay_lines

_sequence_of = msgspec.json.Decoder(dict)


@dataclass
class StreamReport:
    """What a check found: counts, and the first problems (empty when the stream is right)."""

    expected: int
    received: int
    distinct: int
    duplicates: int
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No gap, no reorder, no differing duplicate, nothing beyond the oracle."""
        return not self.problems


def read_records(
    bootstrap: str,
    topic: str,
    *,
    until_count: int | None = None,
    idle_s: float = 5.0,
    timeout_s: float = 120.0,
    extra: dict | None = None,
) -> list[tuple[int, bytes, int, list]]:
    """(offset, value, timestamp ms, headers) of a one-partition topic from offset 0, as a list.

    Stops at `until_count` records, or when nothing arrived for `idle_s`, or at `timeout_s`.
    """
    return list(
        read_topic(bootstrap, topic, idle_s=idle_s, count=until_count, timeout_s=timeout_s, extra=extra)
    )


def expected_events(config: ProductConfig, inputs: Iterable[tuple[bytes, int]]) -> list[bytes]:
    """The oracle: what replay publishes for (raw order, record time ns) in offset order."""
    return [item for item in replay_lines(config, inputs) if isinstance(item, bytes)]


def check_stream(output: list[bytes], expected: list[bytes], max_problems: int = 10) -> StreamReport:
    """Compare the raw output topic with the oracle, as a consumer that drops old sequences."""
    problems: list[str] = []
    last = 0
    distinct = 0
    for position, value in enumerate(output):
        try:
            seq = _sequence_of.decode(value)["sequence"]
        except (msgspec.DecodeError, KeyError, TypeError):
            problems.append(f"output record {position} is not an event: {value[:80]!r}")
            continue
        if not 1 <= seq <= len(expected):
            problems.append(f"sequence {seq} beyond the oracle's {len(expected)} events")
        elif value != expected[seq - 1]:
            problems.append(f"sequence {seq} differs: {value[:120]!r} != {expected[seq - 1][:120]!r}")
        if seq > last:
            if seq != last + 1:
                problems.append(f"gap: sequence {seq} follows {last}")
            last = seq
            distinct += 1
        if len(problems) >= max_problems:
            break
    if not problems and distinct != len(expected):
        problems.append(f"{distinct} distinct events, the oracle has {len(expected)}")
    return StreamReport(len(expected), len(output), distinct, len(output) - distinct, problems)
