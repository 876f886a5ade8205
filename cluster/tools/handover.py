"""`orderbook-cluster handover`: move a product's leadership to a caught-up standby, without a kill.

The request is a Redis key the leader reads at its next look (within `status_every_ms`, or
`status_idle_every_ms` for a quiet product); the leader then delivers and records everything and
hands its lease to the target in one step (cluster/lease.py). This command waits until a new epoch holds the lease and says who has it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from cluster.redis_state import handover_request_key, lease_holder, sync_client

REQUEST_TTL_MS = 10_000  # a request nobody acted on does not linger to surprise a later leader


class HandoverError(Exception):
    """The handover did not happen; the message says why."""


@dataclass
class Handover:
    """Who led before and after."""

    product: str
    old_node: str
    old_epoch: int
    new_node: str
    new_epoch: int
    took_ms: float


def request_handover(redis_url: str, product: str, to_node: str | None, timeout_s: float) -> Handover:
    """Ask the leader of `product` to hand over (to `to_node`, or the preferred caught-up standby)."""
    client = sync_client(redis_url)
    before = lease_holder(client, product)
    if before is None:
        raise HandoverError(f"no leader holds {product}; is the cluster running it?")
    if to_node is not None and to_node == before[1]:
        raise HandoverError(f"{to_node} already leads {product} (epoch {before[0]})")
    began = time.monotonic()
    client.set(handover_request_key(product), to_node or "", px=REQUEST_TTL_MS)
    deadline = began + timeout_s
    while time.monotonic() < deadline:
        after = lease_holder(client, product)
        if after is not None and after[0] > before[0]:
            return Handover(
                product, before[1], before[0], after[1], after[0], (time.monotonic() - began) * 1000
            )
        time.sleep(0.02)
    client.delete(handover_request_key(product))
    raise HandoverError(
        f"{product}: no handover within {timeout_s:.0f} s (no caught-up standby"
        + (f" on {to_node}" if to_node else "")
        + "? see `orderbook-cluster status`)"
    )
