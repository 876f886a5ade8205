"""Hostile records on both cores and in replay: never an exception, the same outcome everywhere (#17).

A 1 KB record of `[` once raised RecursionError in both cores and crash-looped the product process
on every node; `replay` crashed on it too. Every record here must give the same dead letter (and
reason), or the same event bytes, on both cores, the same counters and state, and the next valid
order must still trade.
"""

from __future__ import annotations

import os

import msgspec
import pytest
from click.testing import CliRunner
from confluent_kafka import Message
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cluster.tools.replay import replay
from cluster.tools.send import record_timestamp_ms
from engine.api import apply_one
from engine.config import ProductConfig
from engine.intake import shape_reason
from engine.matching import MatchingEngine
from engine.messages import MAX_NESTING, MAX_NUMBER_DIGITS, DeadLetter
from engine.native import NativeEngine, native_available
from engine.replay import created_at_of, replay_lines
from tests.unit.hostile_corpus import hostile_corpus, with_value

pytestmark = pytest.mark.skipif(
    not native_available() and os.environ.get("OBC_REQUIRE_NATIVE") != "1",
    reason="the C core is not built",
)

CONFIG = ProductConfig(product_id="BTC-USD", base_scale=6, quote_scale=2)
CORPUS = hostile_corpus()
MAKER, TAKER = 900_001, 900_002  # ids above the corpus's


def _limit(oid: int, side: str, price: str) -> bytes:
    return msgspec.json.encode(
        {"id": oid, "product_id": "BTC-USD", "type": "limit", "side": side, "price": price, "size": "1"}
    )


def _event(data: bytes) -> dict:
    return msgspec.json.decode(data)


def _outcome(result) -> str:
    """A corpus expectation for one record's outcome (apply_one)."""
    if isinstance(result, DeadLetter):
        return f"dlq:{result.reason}"
    (event,) = map(_event, result)
    return f"rejected:{event['reject_reason']}" if event["type"] == "done" else event["type"]


def _same_state(py: MatchingEngine, nat: NativeEngine) -> None:
    assert nat.counters.as_dict() == py.counters.as_dict()
    assert nat.snapshot() == py.snapshot()


@pytest.mark.parametrize("hostile", CORPUS, ids=[h.name for h in CORPUS])
def test_each_hostile_record_is_the_same_outcome_on_both_cores_and_trading_goes_on(hostile):
    py, nat = MatchingEngine(CONFIG), NativeEngine(CONFIG)
    outcomes = []
    for step, raw in enumerate([_limit(MAKER, "sell", "10.00"), hostile.raw, _limit(TAKER, "buy", "10.00")]):
        want = apply_one(py, raw, step)
        got = apply_one(nat, raw, step)
        assert got == want, f"{hostile.name}: step {step}"
        outcomes.append(want)
    assert _outcome(outcomes[1]) == hostile.expect, hostile.name
    taker = [_event(e) for e in outcomes[2]]
    assert [(e["type"], e.get("maker_order_id")) for e in taker][:1] == [("match", MAKER)]
    dead = 1 if hostile.expect.startswith("dlq:") else 0
    rejected = 1 if hostile.expect.startswith("rejected:") else 0
    counters = py.counters.as_dict()
    assert (counters["orders_in"], counters["dead_letters"], counters["rejected"]) == (3, dead, rejected)
    _same_state(py, nat)


def _kafka_records(raws: list[bytes]) -> list[Message]:
    """Records as the worker consumes them, stamped with created_at in ms as `send` stamps them."""
    return [Message(value=raw, timestamp=(1, record_timestamp_ms(raw) or 0)) for raw in raws]


def _stream() -> list[bytes]:
    """The corpus between a resting sell and the buy that must take it."""
    return [_limit(MAKER, "sell", "10.00"), *(h.raw for h in CORPUS), _limit(TAKER, "buy", "10.00")]


def test_the_corpus_as_one_batch_on_both_cores_equals_replay():
    """apply (the worker's call) on either core = replay_lines, dead letters in place."""
    raws = _stream()
    records = _kafka_records(raws)
    want_events, want_dead = [], []
    for item in replay_lines(CONFIG, [(raw, (record_timestamp_ms(raw) or 0) * 1_000_000) for raw in raws]):
        if isinstance(item, DeadLetter):
            want_dead.append(item.reason)
        else:
            want_events.append(item)
    assert want_dead == [h.expect[4:] for h in CORPUS if h.expect.startswith("dlq:")]
    engines = MatchingEngine(CONFIG), NativeEngine(CONFIG)
    for engine in engines:
        events, dead = engine.apply(records)
        assert events == want_events, type(engine).__name__
        assert [(raws[i], letter.reason) for i, letter in dead] == [
            (h.raw, h.expect[4:]) for h in CORPUS if h.expect.startswith("dlq:")
        ]
    _same_state(*engines)
    matches = [e for e in map(_event, want_events) if e["type"] == "match"]
    assert [(m["taker_order_id"], m["maker_order_id"]) for m in matches] == [(TAKER, MAKER)]


def test_replay_cli_on_the_corpus(tmp_path):
    """`orderbook-cluster replay`: no crash, the events of replay_lines, each dead letter by line."""
    raws = [raw for raw in _stream() if b"\n" not in raw and b"\r" not in raw and raw.strip()]
    src = tmp_path / "hostile.jsonl"
    src.write_bytes(b"".join(raw + b"\n" for raw in raws))
    result = CliRunner().invoke(
        replay, ["--product", "BTC-USD", "--config", "configs/products.toml", str(src)]
    )
    assert result.exit_code == 0, result.output
    expected = list(replay_lines(CONFIG, [(raw, created_at_of(raw)) for raw in raws]))
    assert result.stdout_bytes.splitlines() == [item for item in expected if isinstance(item, bytes)]
    reasons = {h.raw: h.expect[4:] for h in CORPUS if h.expect.startswith("dlq:")}
    letters = [msgspec.json.decode(line) for line in result.stderr_bytes.splitlines()]
    assert letters == [{"line": n, "reason": reasons[raw]} for n, raw in enumerate(raws, 1) if raw in reasons]
    assert any(_event(line)["type"] == "match" for line in result.stdout_bytes.splitlines())


def test_recursion_in_a_decoder_is_too_deep_even_without_the_bounds(monkeypatch):
    """The belt behind the braces: with the bounds lifted, msgspec raises RecursionError in the typed
    decoder (an object nested in unknown keys) and in salvage's plain-JSON read (arrays); both cores
    still answer too_deep and trade on."""
    import engine.matching
    import engine.native

    monkeypatch.setattr(engine.matching, "shape_reason", lambda raw: None)
    monkeypatch.setattr(engine.native, "MAX_NESTING", 2**31 - 1)
    monkeypatch.setattr(engine.native, "MAX_NUMBER_DIGITS", 2**31 - 1)
    py, nat = MatchingEngine(CONFIG), NativeEngine(CONFIG)
    lifted = _limit(1, "buy", "5.00")[:-1] + b',"x":' + b"[" * 40 + b"]" * 40 + b"}"
    for core in (py, nat):  # 40 levels: no bound now
        assert _event(apply_one(core, lifted, 0)[0])["type"] == "open"
    raws = [b'{"a":' * 5000, b"[" * 5000, b'{"id":1,"price":[' + b"[" * 5000, _limit(MAKER, "sell", "10.00")]
    for i, raw in enumerate([*raws, _limit(TAKER, "buy", "10.00")]):
        want = apply_one(py, raw, i)
        assert apply_one(nat, raw, i) == want
        if i < 3:
            assert want == DeadLetter(reason="too_deep"), raw[:20]
    assert _event(want[0])["type"] == "match"
    _same_state(py, nat)


@pytest.mark.parametrize("bounds", ["kept", "lifted"])
def test_no_decoder_of_input_lets_recursion_escape(bounds, monkeypatch):
    """replay's and send's readers of created_at: 0 / unstamped, with the bounds and behind them."""
    if bounds == "lifted":
        import engine.replay

        monkeypatch.setattr(engine.replay, "shape_reason", lambda raw: None)
    for raw in (b"[" * 50_000, b'{"created_at":' * 50_000, b'{"x":' + b"[" * 5_000 + b"]" * 5_000 + b"}"):
        assert created_at_of(raw) == 0
        assert record_timestamp_ms(raw) is None
    # a created_at beyond int64 is no Kafka timestamp (the producer raised on it): sent unstamped
    assert record_timestamp_ms(b'{"created_at": ' + b"9" * 32 + b"}") is None
    assert record_timestamp_ms(b'{"created_at": 9223372036854775807}') == 9223372036854


def test_long_runs_of_digits_cost_linear_time():
    """Ten times the digits cost about ten times as much, not a hundred, on both cores: a decimal
    string is refused by its length first, and an int field is bounded before msgspec builds a
    Python int from it (quadratic: a 4,300-digit user_id took ~0.3 ms)."""
    import time

    def cost(make) -> float:
        best = float("inf")
        for engine_cls in (MatchingEngine, NativeEngine):
            for _ in range(3):
                engine = engine_cls(CONFIG)
                start = time.perf_counter()
                for oid in range(1, 21):
                    apply_one(engine, make(oid), 0)
                best = min(best, time.perf_counter() - start)
        return best

    def price(n):
        return lambda oid: _limit(oid, "buy", "9" * n)

    def user_id(n):
        return lambda oid: _limit(oid, "buy", "10.00")[:-1] + b',"user_id":' + b"9" * n + b"}"

    for make in (price, user_id):
        small, large = cost(make(430)), cost(make(4300))
        assert large < 40 * small + 0.02, (make.__name__, small, large)


# ---- fuzz ---------------------------------------------------------------------------------------


def _reference_shape(raw: bytes) -> str | None:
    """The bounds, byte by byte, as the C core scans: the definition shape_reason must agree with."""
    depth = digits = 0
    i, n = 0, len(raw)
    while i < n:
        ch = raw[i]
        i += 1
        if 48 <= ch <= 57:
            digits += 1
            if digits > MAX_NUMBER_DIGITS:
                return "number_too_long"
            continue
        digits = 0
        if ch == 34:  # a string: skipped with its escapes
            while i < n:
                ch = raw[i]
                i += 1
                if ch == 34:
                    break
                if ch == 92:
                    i += 1
        elif ch in b"[{":
            depth += 1
            if depth > MAX_NESTING:
                return "too_deep"
        elif ch in b"]}":
            depth = max(depth - 1, 0)
    return None


_PIECES = st.one_of(
    st.sampled_from(
        [b"[", b"]", b"{", b"}", b'{"a":', b",", b":", b'"', b"\\", b'\\"', b"-", b".", b"e", b" "]
    ),
    st.integers(1, 40).map(lambda n: b"[" * n),
    st.integers(1, 40).map(lambda n: b'{"k":' * n),
    st.integers(1, 40).map(lambda n: b"]" * n),
    st.integers(1, 40).map(lambda n: b"7" * n),
    st.integers(28, 36).map(lambda n: b"9" * n),  # around MAX_NUMBER_DIGITS
    st.integers(28, 36).map(lambda n: b"[" * n),  # around MAX_NESTING
    st.text(alphabet='[]{}"\\0123456789ab', max_size=12).map(lambda t: msgspec.json.encode(t)),
    st.sampled_from(
        [b"NaN", b"1e400", b"-0", b"\\ud800", b"\x00", b"\xff", b"\xef\xbb\xbf", b"null", b"true"]
    ),
    st.binary(max_size=8),
)


@st.composite
def hostile_records(draw) -> bytes:
    """Random hostile bytes: alone, or spliced into a valid order (in a known or an unknown field)."""
    junk = b"".join(draw(st.lists(_PIECES, max_size=12)))
    base = _limit(draw(st.integers(1, 50)), draw(st.sampled_from(["buy", "sell"])), "10.00")
    where = draw(st.sampled_from(["alone", "unknown", "cut", "id", "price", "size"]))
    if where == "alone":
        return junk
    if where == "unknown":
        return base[:-1] + b',"x":' + junk + b"}"
    if where == "cut":
        return base[: draw(st.integers(0, len(base)))] + junk
    return with_value(base, where.encode(), junk)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_records(), min_size=1, max_size=8))
@example([b"[" * 33, b"9" * 33, b'"' + b"[" * 40 + b'"', b'"\\"' + b"[" * 40])
def test_both_cores_agree_on_hostile_bytes(raws):
    py, nat = MatchingEngine(CONFIG), NativeEngine(CONFIG)
    for i, raw in enumerate([*raws, _limit(MAKER, "sell", "10.00"), _limit(TAKER, "buy", "10.00")]):
        assert shape_reason(raw) == _reference_shape(raw), raw
        want = apply_one(py, raw, i)
        assert apply_one(nat, raw, i) == want, f"input {i}: {raw!r}"
    _same_state(py, nat)
    records = _kafka_records(raws)
    batch = MatchingEngine(CONFIG).apply(records)
    assert NativeEngine(CONFIG).apply(records) == batch


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_shape_reason_is_the_byte_by_byte_scan(raw):
    assert shape_reason(raw) == _reference_shape(raw)
