"""`orderbook-cluster dlq`: a product's dead letters, readable without a Kafka client.

Each dead letter is the input record's bytes with headers `reason`, `source_offset` and
`product_id` (and `source_size` when the copy was cut; docs/contract.md). A failover may write a
letter twice: like consumers, this reader keeps the first per source offset.
"""

from __future__ import annotations

from collections.abc import Iterator

from cluster.kafka_io import dlq_topic, read_topic

PREVIEW_BYTES = 120


def preview(value: bytes, limit: int = PREVIEW_BYTES) -> str:
    """The first `limit` bytes as text: printable ASCII as is, any other byte (and the backslash)
    escaped, so a record of control characters or invalid UTF-8 cannot garble a terminal."""
    out = []
    for byte in value[:limit]:
        if byte == 0x5C:
            out.append("\\\\")
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out) + ("..." if len(value) > limit else "")


def dead_letters(
    bootstrap: str, product: str, *, count: int | None, idle_timeout: float | None
) -> Iterator[dict]:
    """The product's dead letters in order, one per source offset, as plain dicts."""
    seen: set[int | None] = set()
    found = 0
    for offset, value, timestamp_ms, headers in read_topic(
        bootstrap, dlq_topic(product), idle_s=idle_timeout
    ):
        fields = {key: (raw or b"").decode(errors="replace") for key, raw in headers}
        source = fields.get("source_offset")
        source_offset = int(source) if source and source.isdigit() else None
        if source_offset is not None and source_offset in seen:
            continue  # a redelivered copy after a failover
        seen.add(source_offset)
        size = fields.get("source_size")
        yield {
            "dlq_offset": offset,
            "source_offset": source_offset,
            "reason": fields.get("reason"),
            "product_id": fields.get("product_id"),
            "timestamp_ms": timestamp_ms,
            "size": int(size) if size and size.isdigit() else len(value),
            "preview": preview(value),
        }
        found += 1
        if count is not None and found >= count:
            return


def format_letter(letter: dict) -> str:
    """One line for a terminal."""
    return (
        f"source_offset={letter['source_offset']} reason={letter['reason']} size={letter['size']} "
        f"preview={letter['preview']}"
    )
