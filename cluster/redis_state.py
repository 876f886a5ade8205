"""Redis state of a product: leader lease with epoch, publish progress, snapshots, status.

Fencing: the lease value is `<epoch>|<owner token>`; the epoch comes from INCR on
`matching_epoch_P`, so it only grows (Redis runs with an fsync-always AOF). Every write that
matters (progress, snapshot) is a Lua script that first checks the caller still holds exactly
that lease value, so a paused or partitioned ex-leader's late write is refused, and checks that
sequences never go backwards.
"""

from __future__ import annotations

import hashlib

import msgspec
import redis
import redis.asyncio as aredis
from redis.exceptions import NoScriptError

from engine.snapshot import SnapshotError

SNAPSHOT_FORMAT = 1


def leader_key(product: str) -> str:
    """The lease of a product's leader."""
    return f"matching_leader_{product}"


def epoch_key(product: str) -> str:
    """The product's epoch counter (fencing token source)."""
    return f"matching_epoch_{product}"


def progress_key(product: str) -> str:
    """What the leader knows to be delivered: last sequence and the next input offset."""
    return f"matching_progress_{product}"


def snapshot_key(product: str) -> str:
    """The latest snapshot of the product's engine, with the input offset it resumes at."""
    return f"matching_snapshot_{product}"


def snapshot_data_key(product: str) -> str:
    """The latest snapshot's bytes (its metadata is the hash at snapshot_key)."""
    return f"matching_snapshot_{product}:data"


def released_key(product: str) -> str:
    """The epoch of the product's last lease given up (released or handed over): never re-taken."""
    return f"matching_released_{product}"


def status_key(product: str) -> str:
    """Self-reported status of the product's processes: a hash, node -> JSON with `reported_ms`."""
    return f"matching_status_{product}"


def handover_key(product: str, node: str) -> str:
    """A list a standby blocks on: a leader handing the product over pushes to its target's list."""
    return f"matching_handover_{product}:{node}"


def handover_request_key(product: str) -> str:
    """An operator's request (`orderbook-cluster handover`): the target node, or '' for any."""
    return f"matching_handover_request_{product}"


NODES_KEY = "matching_nodes"
NODE_ADDRESSES_KEY = "matching_node_addresses"

ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0, 0, 0} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. '|' .. ARGV[1], 'PX', ARGV[2])
local seq = redis.call('HGET', KEYS[3], 'sequence') or '0'
local off = redis.call('HGET', KEYS[3], 'offset') or '0'
return {epoch, tonumber(seq), tonumber(off)}
"""

# Renews many leases in one round trip. KEYS are, for each of n leases, its leader key, then the n
# epoch counters, then the n released-epoch keys; ARGV the n expected values and, last, the TTL.
# A lease whose value is still exactly the expected one is extended. One that lapsed (Redis, or
# this node, was held up for longer than the TTL) is taken again with the same value when nobody
# can have held it since: every acquisition moves the epoch counter, and every release or
# handover records its epoch as released. The answer is the (0-based) positions of the leases
# that are not ours (usually none), then those taken again.
RENEW_MANY = """
local n = (#KEYS) / 3
local ttl = ARGV[#ARGV]
local lost, retaken = {}, {}
for i = 1, n do
  local v = redis.call('GET', KEYS[i])
  if v == ARGV[i] then
    redis.call('PEXPIRE', KEYS[i], ttl)
  else
    local epoch = string.match(ARGV[i], '^(%d+)|')
    if not v and redis.call('GET', KEYS[n + i]) == epoch and redis.call('GET', KEYS[2 * n + i]) ~= epoch then
      redis.call('SET', KEYS[i], ARGV[i], 'PX', ttl)
      retaken[#retaken + 1] = i - 1
    else
      lost[#lost + 1] = i - 1
    end
  end
end
return {lost, retaken}
"""

RELEASE = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local suffix = '|' .. ARGV[1]
if string.sub(v, -string.len(suffix)) == suffix then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], string.match(v, '^(%d+)|'))
  return 1
end
return 0
"""

HAND_OVER = """
local v = redis.call('GET', KEYS[1])
if v ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[2])
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

WRITE_PROGRESS = """
local v = redis.call('GET', KEYS[1])
if not v then return -4 end
if v ~= ARGV[1] then return -1 end
local cur = tonumber(redis.call('HGET', KEYS[2], 'sequence') or '0')
if tonumber(ARGV[3]) < cur then return -2 end
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'epoch', ARGV[2], 'sequence', ARGV[3], 'offset', ARGV[4],
  'fingerprint', ARGV[5], 'updated_ms', t[1] * 1000 + math.floor(t[2] / 1000))
if ARGV[6] ~= '' then redis.call('HSET', KEYS[2], 'checkpoint', ARGV[6]) end
return 1
"""

# The snapshot's bytes are staged in pieces (APPEND) under a key of the writer's own, then put in
# place by this script in O(1) (RENAME): a large book's snapshot (27 MB at 1,000,000 orders) as one
# command held Redis, and with it every leader's lease renewal, for its copy and fsync.
COMMIT_SNAPSHOT = """
local v = redis.call('GET', KEYS[1])
if not v then redis.call('DEL', KEYS[3]) return -4 end
if v ~= ARGV[1] then redis.call('DEL', KEYS[3]) return -1 end
local cur = tonumber(redis.call('HGET', KEYS[2], 'sequence') or '-1')
if tonumber(ARGV[2]) <= cur then redis.call('DEL', KEYS[3]) return -2 end
if redis.call('STRLEN', KEYS[3]) ~= tonumber(ARGV[5]) then redis.call('DEL', KEYS[3]) return -3 end
redis.call('RENAME', KEYS[3], KEYS[4])
redis.call('PERSIST', KEYS[4])
local t = redis.call('TIME')
redis.call('HSET', KEYS[2], 'sequence', ARGV[2], 'offset', ARGV[3], 'state_hash', ARGV[4],
  'created_ms', t[1] * 1000 + math.floor(t[2] / 1000))
redis.call('HDEL', KEYS[2], 'envelope')
return 1
"""
SNAPSHOT_PIECE_BYTES = 1 << 20
STAGING_TTL_MS = 120_000  # a writer that died mid-way leaves no staged bytes behind for long


def staging_key(product: str, lease_value: str) -> str:
    """Where a leader's next snapshot is staged before COMMIT_SNAPSHOT puts it in place."""
    return f"{snapshot_data_key(product)}:staging:{lease_value}"


def stage_snapshot(client: redis.Redis, product: str, lease_value: str, envelope: SnapshotEnvelope) -> int:
    """Stage a snapshot's envelope under the leader's key, piece by piece (Redis answers lease
    renewals in between); its size. Not visible until committed, so not fenced: what a deposed
    leader stages is never committed and expires."""
    pieces = envelope_pieces(envelope, SNAPSHOT_PIECE_BYTES)
    staging = staging_key(product, lease_value)
    client.set(staging, pieces[0], px=STAGING_TTL_MS)
    for piece in pieces[1:]:
        client.append(staging, piece)
    return sum(len(piece) for piece in pieces)


class SnapshotEnvelope(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot as stored: the engine's own bytes plus where the input resumes."""

    format: int
    product: str
    epoch: int
    next_offset: int
    sequence: int
    fingerprint: str
    engine: bytes
    # cluster/snapshots.state_hash of `engine`; standbys compare theirs at next_offset with it.
    state_hash: str = ""


_envelope_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(SnapshotEnvelope)


def encode_envelope(envelope: SnapshotEnvelope) -> bytes:
    """Bytes for Redis."""
    return _envelope_encoder.encode(envelope)


_ENGINE_FIELD = b"\xa6engine\xc4\x00"  # msgpack: the key "engine", then an empty bin


def envelope_pieces(envelope: SnapshotEnvelope, piece_bytes: int) -> list:
    """The envelope's msgpack bytes as pieces, without copying the engine's bytes: the envelope
    is encoded with an empty engine, whose bin header is widened to hold them, and the engine's
    bytes follow as views (a 27 MB snapshot re-encoded whole held the loop for 20-40 ms)."""
    shell = _envelope_encoder.encode(msgspec.structs.replace(envelope, engine=b""))
    at = shell.index(_ENGINE_FIELD) + len(_ENGINE_FIELD) - 2
    engine = memoryview(envelope.engine)
    head = shell[:at] + b"\xc6" + len(engine).to_bytes(4, "big")  # bin 32
    body = [engine[start : start + piece_bytes] for start in range(0, len(engine), piece_bytes)]
    return [head, *body, shell[at + 2 :]]


def decode_envelope(data: bytes, product: str) -> SnapshotEnvelope:
    """Parse stored bytes; raises SnapshotError on a damaged or foreign value, or another format.

    `format` is the envelope's layout: a value written by a newer (or older) release must not be
    read as this one, so an unknown format is refused by name rather than misread.
    """
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise SnapshotError("corrupt", f"product={product} snapshot envelope: {exc}") from None
    if envelope.format != SNAPSHOT_FORMAT:
        raise SnapshotError(
            "format_mismatch",
            f"product={product} snapshot envelope format {envelope.format!r}, this release reads {SNAPSHOT_FORMAT}",
        )
    if envelope.product != product:
        raise SnapshotError(
            "config_mismatch", f"snapshot of product {envelope.product!r} under the key of {product}"
        )
    return envelope


class Acquired(msgspec.Struct, frozen=True):
    """The result of a successful lease acquisition, read atomically with it."""

    epoch: int
    lease_value: str
    progress_sequence: int
    progress_offset: int


class ProductRedis:
    """Async access to one product's keys, for its product process."""

    def __init__(self, client: aredis.Redis, product: str) -> None:
        self.client = client
        self.product = product
        self.keys = (leader_key(product), epoch_key(product), progress_key(product), snapshot_key(product))
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._hand_over = client.register_script(HAND_OVER)
        self._progress = client.register_script(WRITE_PROGRESS)
        self._commit_snapshot = client.register_script(COMMIT_SNAPSHOT)

    async def try_acquire(self, token: str, ttl_ms: int) -> Acquired | None:
        """Take the lease if nobody holds it; hands out a new, larger epoch."""
        leader, epoch, progress, _ = self.keys
        epoch_no, seq, offset = await self._acquire(keys=[leader, epoch, progress], args=[token, ttl_ms])
        if not epoch_no:
            return None
        return Acquired(int(epoch_no), f"{epoch_no}|{token}", int(seq), int(offset))

    async def release(self, token: str) -> bool:
        """Give the lease up if `token` holds it (clean exit), so a standby takes over at once."""
        return bool(await self._release(keys=[self.keys[0], released_key(self.product)], args=[token]))

    async def hand_over(self, lease_value: str, target_node: str, epoch: int, ttl_ms: int) -> bool:
        """Release our lease and wake `target_node`'s standby at once (planned handover); False if
        the lease was not ours any more. The wake-up expires after ttl_ms if nobody takes it."""
        keys = [self.keys[0], handover_key(self.product, target_node), released_key(self.product)]
        return bool(await self._hand_over(keys=keys, args=[lease_value, epoch, ttl_ms]))

    async def wait_for_handover(self, node: str, timeout_s: float) -> bool:
        """Block up to timeout_s for a leader handing this product to `node`; True if one did."""
        return await self.client.blpop([handover_key(self.product, node)], timeout=timeout_s) is not None

    async def holder_ttl(self) -> tuple[str | None, int]:
        """The current lease value (or None) and its remaining time in ms (negative when none), in
        one round trip."""
        pipe = self.client.pipeline(transaction=True)
        pipe.get(self.keys[0])
        pipe.pttl(self.keys[0])
        value, ttl_ms = await pipe.execute()
        return (value.decode() if value else None), int(ttl_ms)

    async def write_progress(
        self,
        lease_value: str,
        epoch: int,
        sequence: int,
        offset: int,
        fingerprint: str,
        checkpoint: int | None = None,
    ) -> int:
        """Record delivered progress; 1 written, -1 not the leader any more, -2 would go backwards,
        -4 nobody holds the lease (it lapsed; its leader's node may take it again: RENEW_MANY).

        `checkpoint` announces the input offset of a snapshot being captured: standbys stop there
        to hash their own state (see cluster/state_check.py). It is written with (never after)
        the progress that lets them pass it."""
        args = [lease_value, epoch, sequence, offset, fingerprint, "" if checkpoint is None else checkpoint]
        return int(await self._progress(keys=[self.keys[0], self.keys[2]], args=args))

    async def read_progress(self) -> tuple[int, int, str | None]:
        """(last delivered sequence, next input offset, config fingerprint) as last recorded."""
        seq, offset, fingerprint = await self.client.hmget(self.keys[2], "sequence", "offset", "fingerprint")
        return int(seq or 0), int(offset or 0), fingerprint.decode() if fingerprint else None

    async def read_follow(self) -> tuple[int, int, int | None, tuple[int, str] | None]:
        """What a standby follows, in one round trip: (delivered sequence, next input offset, the
        announced checkpoint offset, (offset, state hash) of the latest snapshot)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hmget(self.keys[2], "sequence", "offset", "checkpoint")
        pipe.hmget(self.keys[3], "offset", "state_hash")
        (seq, offset, checkpoint), (snap_offset, state_hash) = await pipe.execute()
        snap = (int(snap_offset), state_hash.decode()) if snap_offset and state_hash else None
        return int(seq or 0), int(offset or 0), int(checkpoint) if checkpoint else None, snap

    async def write_snapshot(self, lease_value: str, envelope: SnapshotEnvelope) -> int:
        """Store a snapshot of delivered state; 1 written, -1 not the leader, -2 not newer, -3 its
        staged bytes were disturbed, -4 nobody holds the lease (see write_progress). Written in
        pieces, so Redis answers lease renewals in between."""
        pieces = envelope_pieces(envelope, SNAPSHOT_PIECE_BYTES)
        staging = staging_key(self.product, lease_value)
        client = self.client
        await client.set(staging, pieces[0], px=STAGING_TTL_MS)
        for piece in pieces[1:]:
            await client.append(staging, piece)
        size = sum(len(piece) for piece in pieces)
        return await self.commit_snapshot(
            lease_value, envelope.sequence, envelope.next_offset, envelope.state_hash, size
        )

    async def commit_snapshot(
        self, lease_value: str, sequence: int, next_offset: int, state_hash: str, size: int
    ) -> int:
        """Put the snapshot staged under this leader's key (`size` bytes) in place, fenced; the
        codes of write_snapshot."""
        keys = [
            self.keys[0],
            self.keys[3],
            staging_key(self.product, lease_value),
            snapshot_data_key(self.product),
        ]
        args = [lease_value, sequence, next_offset, state_hash, size]
        return int(await self._commit_snapshot(keys=keys, args=args))

    async def read_snapshot(self) -> SnapshotEnvelope | None:
        """The latest stored snapshot, or None if there is none; raises SnapshotError if it is unusable."""
        data = await self.client.get(snapshot_data_key(self.product))
        if data is None:  # written by a release that kept the bytes in the hash
            data = await self.client.hget(self.keys[3], "envelope")
        return decode_envelope(data, self.product) if data else None


def sync_client(url: str, timeout_s: float = 2.0) -> redis.Redis:
    """A blocking client, for the supervisor and the CLI."""
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


def async_client(url: str, timeout_s: float = 1.0) -> aredis.Redis:
    """An asyncio client, for a product process."""
    return aredis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


class LeaseRenewals:
    """Renewal of every lease a node's leaders hold, on the node's renewer thread
    (cluster/lease_board.py): one prepared EVALSHA of RENEW_MANY per round, whatever the number of
    leaders.

    A leader renews ten times a second whether it trades or not, so with many products on a node
    the renewals were much of an idle node's work (one thread, one connection and one fsynced
    PEXPIRE per leader, ten times a second). The command is packed once per set of lease values,
    and the script compares each whole value `<epoch>|<token>` before extending it.
    """

    def __init__(self, redis_url: str, timeout_s: float) -> None:
        self.pool = redis.ConnectionPool.from_url(
            redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self.sha = hashlib.sha1(RENEW_MANY.encode()).hexdigest()
        self.connection = None
        self.packed_for: tuple | None = None
        self.packed: list = []

    def __call__(self, leases: list[tuple[str, str]], ttl_ms: int) -> tuple[set[int], set[int]]:
        """Extend each (product, lease value): the positions in `leases` of those no longer ours,
        and of those that had lapsed and were taken again (see RENEW_MANY)."""
        self.send(leases, ttl_ms)
        return self.receive()

    def send(self, leases: list[tuple[str, str]], ttl_ms: int) -> None:
        """Send the renewal; receive() reads its answer (answered() tells whether it is there)."""
        if self.connection is None:
            self.connection = self.pool.get_connection()
        wanted = (tuple(leases), ttl_ms)
        if self.packed_for != wanted:
            products = [product for product, _ in leases]
            keys = [*map(leader_key, products), *map(epoch_key, products), *map(released_key, products)]
            values = [value for _, value in leases]
            self.packed = self.connection.pack_command("EVALSHA", self.sha, len(keys), *keys, *values, ttl_ms)
            self.packed_for = wanted
        try:
            self.connection.send_packed_command(self.packed, check_health=False)
        except Exception:
            self.connection.disconnect()  # a fresh connection next time
            raise

    def answered(self, timeout_s: float) -> bool:
        """Whether the answer to the renewal sent arrived within timeout_s."""
        return self.connection.can_read(timeout=timeout_s)

    def receive(self) -> tuple[set[int], set[int]]:
        """The answer to the renewal sent: (positions not ours, positions taken again)."""
        try:
            try:
                lost, retaken = self.connection.read_response()
            except NoScriptError:  # a restarted or flushed Redis: load the script, once
                self.connection.send_command("SCRIPT", "LOAD", RENEW_MANY)
                self.connection.read_response()
                self.connection.send_packed_command(self.packed, check_health=False)
                lost, retaken = self.connection.read_response()
        except Exception:
            self.connection.disconnect()  # a fresh connection next time, not a half-read reply
            raise
        return set(lost), set(retaken)

    def close(self) -> None:
        self.pool.disconnect()


def lease_holder(client: redis.Redis, product: str) -> tuple[int, str] | None:
    """(epoch, node) of the product's leader, read from its lease value `<epoch>|<node>:<pid>:<nonce>`;
    None while nobody holds it (none yet, or expired)."""
    value = client.get(leader_key(product))
    if not value:
        return None
    epoch, _, token = value.decode().partition("|")
    return int(epoch), token.rsplit(":", 2)[0]


def release_sync(client: redis.Redis, product: str, token: str) -> bool:
    """Release a dead child's lease from the supervisor, so failover need not wait for the TTL."""
    return bool(client.eval(RELEASE, 2, leader_key(product), released_key(product), token))


def durability_problems(client: redis.Redis) -> list[str]:
    """What in this Redis's configuration could let epochs or progress go backwards or vanish.

    Managed Redis services often refuse CONFIG; then nothing can be checked and we say so.
    """
    try:
        config = client.config_get("appendonly") | client.config_get("appendfsync")
        config |= client.config_get("maxmemory-policy")
    except redis.RedisError as exc:
        return [f"could not read the configuration ({exc}); make sure it is durable"]
    problems = []
    if config.get("appendonly") != "yes":
        problems.append("appendonly is not yes: a restart can lose leases, epochs and progress")
    elif config.get("appendfsync") != "always":
        problems.append(
            f"appendfsync is {config.get('appendfsync')}, not always: a crash can lose the last writes"
        )
    if config.get("maxmemory-policy", "noeviction") != "noeviction":
        problems.append(f"maxmemory-policy is {config.get('maxmemory-policy')}: keys may be evicted")
    return problems
