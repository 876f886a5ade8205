"""A minimal order gateway against orderbook-cluster, with nothing but confluent-kafka.

Sends orderbook-py's worked example (five GTC limit orders of user 1 at 10.00) to the product's
order topic, then reads the product's events, dropping redelivered ones by `sequence`, and prints
them as JSON lines. The rules it follows are the README's "Connecting an order gateway":

- one partition per product topic: orders go to partition 0 of matching_order_<P>, in the order
  they must be matched; events come from partition 0 of matching_message_<P>, in sequence order;
- the record timestamp of an order becomes the `time` of its events: set it to created_at in ms
  (and created_at to a whole number of ms), so that `orderbook-cluster replay` agrees;
- decimals are strings, read as decimals: sizes come back at the product's base_scale ("1.000000");
- events are deduplicated by `sequence` (a failover may deliver one twice, byte-identical).

    python examples/gateway.py --bootstrap localhost:9092 --product BTC-USD
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal

from confluent_kafka import Consumer, Producer, TopicPartition


def worked_example(product: str, first_id: int) -> list[dict]:
    """orderbook-py's README example: sell 1, 1, 1, buy 5, sell 2, all at 10.00, user 1."""
    created_at = time.time_ns() // 1_000_000 * 1_000_000  # now, a whole number of ms
    orders = []
    for offset, (side, size) in enumerate(
        [("sell", "1"), ("sell", "1"), ("sell", "1"), ("buy", "5"), ("sell", "2")]
    ):
        orders.append(
            {
                "id": first_id + offset,  # unique per product, > 0
                "created_at": created_at,  # ns
                "product_id": product,
                "user_id": 1,
                "client_oid": "",
                "price": "10.00",  # decimals as strings, never floats
                "size": size,
                "funds": "0",
                "type": "limit",
                "side": side,
                "time_in_force": "GTC",
                "status": "new",
                # no "stp": self-trades are allowed, as in orderbook-py (add "stp": "co"|"cn"|"cb" to prevent them)
            }
        )
    return orders


def send(bootstrap: str, product: str, orders: list[dict]) -> None:
    """Produce in order, idempotently, each record stamped with its order's created_at in ms."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    failures = []

    def delivered(err, _msg) -> None:
        if err is not None:
            failures.append(err)

    for order in orders:
        producer.produce(
            f"matching_order_{product}",
            json.dumps(order).encode(),
            partition=0,
            timestamp=order["created_at"] // 1_000_000,
            on_delivery=delivered,
        )
    if producer.flush(30) or failures:
        raise SystemExit(f"orders not delivered: {failures or 'timed out'}")


def events(bootstrap: str, product: str, count: int, timeout_s: float):
    """The product's events from the start, each sequence once, until `count` of them."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"gateway-{product}", "enable.auto.commit": False}
    )
    # A real gateway stores its last applied sequence (and the offset after it) with its own state and
    # assigns from there; this example reads from the start.
    consumer.assign([TopicPartition(f"matching_message_{product}", 0, 0)])
    last_sequence = 0
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            event = json.loads(msg.value())
            if event["sequence"] <= last_sequence:
                continue  # redelivered after a failover: already applied
            last_sequence = event["sequence"]
            seen += 1
            yield event
    finally:
        consumer.close()
    if seen < count:
        raise SystemExit(f"{seen} of {count} events in {timeout_s:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="localhost:9092")
    parser.add_argument("--product", default="BTC-USD")
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--count", type=int, default=13, help="events to print (13 for a fresh product)")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    send(args.bootstrap, args.product, worked_example(args.product, args.first_id))
    traded = Decimal(0)
    for event in events(args.bootstrap, args.product, args.count, args.timeout):
        if event["type"] == "match":
            traded += Decimal(event["size"])  # decimal strings: "1.000000" == "1.00" as decimals
        print(json.dumps(event), flush=True)
    print(f"traded {traded} in {args.count} events", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
