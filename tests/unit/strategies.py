"""Hypothesis strategies for random order streams, shared by the property and the C-core tests.

Streams mix every order kind the contract knows (limits with all TIFs, market sells by size,
market buys by funds, STP modes, cancels of live/finished/unknown ids, duplicate ids and a few
invalid values) on CONFIG, a product whose tick and lot are not powers of ten.
"""

from __future__ import annotations

from hypothesis import strategies as st

CONFIG = dict(product_id="BTC-USD", base_scale=3, quote_scale=2, tick_size="0.05", lot_size="0.010")
PRICES = ["9.80", "9.85", "9.90", "9.95", "10.00", "10.05", "10.10", "10.15", "10.20"]

# sizes are in thousandths: mostly whole lots (0.010), sometimes off-lot or zero
new_order = st.tuples(
    st.just("new"),
    st.sampled_from(["buy", "sell"]),
    st.sampled_from(["limit"] * 6 + ["market"] * 2),
    st.sampled_from(PRICES * 4 + ["10.01", "0", "10.001"]),
    st.sampled_from([10 * lots for lots in range(1, 31)] + [0, 5, 123]),
    st.sampled_from(["0.01", "0.10", "1.00", "9.99", "25.00", "100.00", "0"]),  # funds
    st.sampled_from(["GTC"] * 5 + ["IOC", "FOK", "GTX"]),
    st.integers(min_value=1, max_value=3),
    st.sampled_from([None] * 6 + ["co", "cn", "cb"]),
)
step = st.one_of(
    new_order,
    new_order,
    new_order,
    st.tuples(st.just("cancel"), st.integers(min_value=0, max_value=60)),
    st.tuples(st.just("dup"), st.integers(min_value=0, max_value=60)),
)
streams = st.lists(step, min_size=20, max_size=80)


def wire_stream(steps) -> list[dict]:
    """Wire dicts with fresh increasing ids; cancels/dups refer back to earlier ids."""
    out, next_id = [], 1
    for s in steps:
        if s[0] == "new":
            _, side, kind, price, size, funds, tif, user, stp = s
            msg = {
                "id": next_id,
                "created_at": next_id * 1_000_000,
                "product_id": "BTC-USD",
                "user_id": user,
                "client_oid": "",
                "price": price,
                "size": f"{size / 1000:.3f}",
                "funds": funds,
                "type": kind,
                "side": side,
                "time_in_force": tif,
                "status": "new",
            }
            if stp:
                msg["stp"] = stp
            out.append(msg)
            next_id += 1
        elif s[0] == "cancel":
            out.append({"id": max(1, next_id - s[1]), "status": "cancelling"})
        elif out:
            prior = dict(out[min(s[1], len(out) - 1)], status="new")
            if "side" in prior:
                out.append(prior)
    return out
