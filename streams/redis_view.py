"""Redis as a materialised view of a compacted topic, for email platforms' pre-send lookups.

Records are applied in batches, one Lua script call per Redis master per partition batch (on a single Redis, one;
EVALSHA, and redis-py loads the script again when Redis answers NOSCRIPT, e.g. after a restart): SET with PXAT at
the block's ``until``, DEL for allows, expired blocks and tombstones, SET for preference views, under the
hash-tagged keys of streams.redis_keys (and the legacy ones too, on a single Redis, while they are still written).
Calls are retried until Redis answers, so an outage only delays the view: consumption of the decisions topic
pauses while the guard itself goes on. After a failure, and whenever Redis restarts or fails over (its masters or
their run ids change) or turns out to lack records before a batch, the view is reconciled from the compacted
topic. Every reader reads committed: the guard writes its outputs in transactions, and an aborted one must never
reach Redis.

Why every write is conditional on the record's position. A worker frozen (SIGSTOP, a long GC pause, a VM stall)
past the session timeout loses its partitions, but it may still hold a batch it fetched before the freeze; thawed,
it would write that batch over the newer values the partition's new owner wrote meanwhile, and nothing would
correct them until the key changes again. So Redis keeps, per key, the offset of the record it holds: a field
``<topic>:<partition>[:<channel>]`` of the customer's hash ``{prefix}:{c:<id>}:pos``, in the customer's hash slot
(a script may only touch keys of its node on a cluster). The script writes a record only when its offset is above
its key's position, which it then becomes, atomically: whoever writes last, a stale reader cannot set a key back,
and records of one key arrive in offset order whichever way they come (a partition's batches from the view's
consumer, a transaction's from write-through, a reconcile's snapshot). A tombstone keeps its key's position too
(else a stale reader could bring back a block an expiry or an erasure removed), so the position hash outlives the
customer's last key: offsets only, under the customer's pseudonymous id.

Completeness. Redis keeps per topic partition a watermark ``{prefix}:view-offset:{topic}:{partition}``: the offset
up to which a batch was written completely. A batch says where it starts (the reader's position before it: the
records of ``[start, end)`` are all there, transaction markers and compacted-away offsets hold none); one that
starts after ``watermark + 1`` is incomplete: Redis lacks the records between (it restarted empty and a client
reconnected silently, it was restored from an older copy, or an aborted transaction's records lie before a
write-through). Its records are still written (each is newer than what its key holds), but the watermark stays and
the view reconciles (or, for a write-through, leaves the partition to its consumer). The watermark is also the
view's progress for operators and benchmarks.

Write-through. The records the worker's own pipeline commits to these topics are written the moment their
transaction has committed (:meth:`ViewConsumer.write_through`, with the offsets the broker gave them and the
offset past the commit marker as the batch's end), instead of a fetch later, once the consumer has read them back
and the view's turn in the event loop has come. It goes through the same script, so it is as safe; one that fails
or takes too long is dropped (and write-through paused for a few seconds), and then the consumer, which reads every
record of the topics as before, writes those; it skips the Redis call only for batches this worker has written
through completely up to their end. Only committed records are ever written through: a fenced zombie's commit
fails, so it writes nothing through, and one frozen between its commit and its write-through is the stale reader
above.

The reconcile, made safe against stale readers the same way. It reads the topic up to its last stable offset ``E``
(a snapshot: each key's latest record and its offset) and writes the snapshot through the same script (each record
conditional on its key's position, so a snapshot read long ago cannot set a key back), then raises the watermark
to ``E - 1``. Keys the topic no longer has at all (tombstones compacted away, keys of a crashed earlier layout) are
deleted by a second script, each only while its key's position is at most ``E - 1``: a reader that wrote a record
of that key past ``E - 1`` may have created it.

Acknowledgement (a Redis Cluster, or any Redis with replicas). Replication is asynchronous: a master that dies
takes with it what its replica had not received. :meth:`ViewConsumer.acknowledged` waits (``WAIT``) on every master
for its replicas before the view commits its consumer offsets, so a record the view has acknowledged survives a
failover; what it wrote after is rewritten by the reconcile that the failover triggers (docs/contract.md, "What a
check can miss").

Operational notes. Recreating a topic restarts its offsets at 0: delete the positions and watermark keys (or use a
new prefix), or every record at or below the old positions is skipped. Redis must not evict keys
(``maxmemory-policy noeviction``): an evicted position would let a stale reader write an older record.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from fatigue.clock import partition_for_key
from streams import redis_keys
from streams.bounded import within
from streams.metrics import Metrics
from streams.redis_nodes import SINGLE as _SINGLE
from streams.redis_nodes import NodeId, RedisNodes

log = logging.getLogger("fatigue.redis")

# (offset, key, value) of one partition's record; value None is a tombstone
Record = tuple[int, bytes, bytes | None]

# Writes one master's share of a batch. ARGV[1]: per record one line "offset op pxat t" (op 'd' DEL, 's' SET, 'x'
# SET PXAT; t the record's template, 1-based); ARGV[2]: K, the keys a record writes; ARGV[3]: T, the templates;
# ARGV[4], ARGV[5]: the position hash's key around the customer id (head, tail); ARGV[6]: the common part of the
# position fields; then per template its field suffix and K (head, tail) pairs around the id; then per record its
# customer id and its value (empty for a DEL). So a record costs two arguments whatever its keys (packing each
# argument costs the client more than the whole script costs Redis), and the key layout stays in
# streams.redis_keys (the view passes the text around the id). A record is applied only when its offset is above
# the position its key's field holds, which it then becomes. No key is declared: on a Redis Cluster, Redis 7 refuses
# declared keys of several slots even with ``allow-cross-slot-keys``, which lets a script use undeclared keys of any
# slot its node serves (the view sends each master the customers of its slots, see streams.redis_nodes; a key of a
# slot the node does not serve fails the whole call, never a wrong write). Returns {sets, deletes, skipped}.
_APPLY_LUA = """#!lua flags=allow-cross-slot-keys
local K, T, pos_head, pos_tail, field_base = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6]
local per_template = 1 + 2 * K
local a, sets, dels, skipped = 7 + T * per_template, 0, 0, 0
for offset, op, pxat, t in string.gmatch(ARGV[1], '(%d+) (%a) (%d+) (%d+)') do
  local id, value = ARGV[a], ARGV[a + 1]
  local base = 7 + (tonumber(t) - 1) * per_template
  local position, field = pos_head .. id .. pos_tail, field_base .. ARGV[base]
  if tonumber(offset) > tonumber(redis.call('HGET', position, field) or '-1') then
    for k = 1, K do
      local key = ARGV[base + 2 * k - 1] .. id .. ARGV[base + 2 * k]
      if op == 'd' then
        redis.call('DEL', key)
      elseif op == 'x' then
        redis.call('SET', key, value, 'PXAT', pxat)
      else
        redis.call('SET', key, value)
      end
    end
    if op == 'd' then dels = dels + 1 else sets = sets + 1 end
    redis.call('HSET', position, field, offset)
  else
    skipped = skipped + 1
  end
  a = a + 2
end
return {sets, dels, skipped}
"""

# KEYS[1]: the partition's progress watermark. ARGV[1]: the first offset the batch covers, ARGV[2]: its last.
# Returns -1 when the batch starts after the watermark + 1 (Redis lacks the records between: it lost data, or an
# aborted transaction's records lie before a write-through), else raises the watermark and returns 1.
_PROGRESS_LUA = """
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) > held + 1 then return -1 end
if tonumber(ARGV[2]) > held then redis.call('SET', KEYS[1], ARGV[2]) end
return 1
"""

# ARGV[1]: the offset the reconcile read up to; then triples (a customer's position hash, a key of that customer the
# topic has no record for, the key's field in the hash); undeclared keys, as in _APPLY_LUA. Deletes a key only while
# no reader has written a record of it past that offset (which may have created the key); returns how many it
# deleted.
_DELETE_STALE_LUA = """#!lua flags=allow-cross-slot-keys
local deleted, read_up_to = 0, tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if tonumber(redis.call('HGET', ARGV[i], ARGV[i + 2]) or '-1') <= read_up_to then
    deleted = deleted + redis.call('DEL', ARGV[i + 1])
  end
end
return deleted
"""

RECONCILE_CHUNK = 5_000  # keys per script call of a reconcile: bounds how long one call holds Redis


@dataclass(frozen=True, slots=True)
class ViewLayout:
    """Where one topic's records go in Redis (streams.redis_keys): the decisions topic's ``<channel>:<customer>``
    to the customer's block key, the preferences topic's ``<customer>`` to its preference view; with ``legacy``
    also to the layout before hash tags (a single Redis only)."""

    prefix: str
    kind: Literal["blocks", "prefs"]
    legacy: bool = False

    def customer(self, topic_key: bytes) -> str:
        text = topic_key.decode()
        return text.split(":", 1)[1] if self.kind == "blocks" else text

    def keys(self, topic_key: bytes) -> list[str]:
        """The Redis keys a record of ``topic_key`` sets or deletes."""
        text = topic_key.decode()
        if self.kind == "blocks":
            channel, customer = text.split(":", 1)
            keys = [redis_keys.block_key(self.prefix, channel, customer)]
            if self.legacy:
                keys.append(redis_keys.legacy_block_key(self.prefix, channel, customer))
            return keys
        keys = [redis_keys.prefs_key(self.prefix, text)]
        if self.legacy:
            keys.append(redis_keys.legacy_prefs_key(self.prefix, text))
        return keys

    def position(self, customer: str) -> str:
        return redis_keys.position_key(self.prefix, customer)

    def split(self, topic_key: bytes) -> tuple[str, str]:
        """``(tag, customer)`` of a topic key: the tag names the record's template (its channel; "" for prefs)."""
        text = topic_key.decode()
        if self.kind == "blocks":
            channel, customer = text.split(":", 1)
            return channel, customer
        return "", text

    def templates(self, tags: Iterable[str]) -> list[str]:
        """The apply script's template arguments (see _APPLY_LUA) for records of ``tags``, in that order: per tag
        its position field suffix and the text around the id of each key it writes."""
        args: list[str] = []
        for tag in tags:
            args.append(f":{tag}" if tag else "")
            if self.kind == "blocks":
                renders: list[Callable[[str], str]] = [functools.partial(redis_keys.block_key, self.prefix, tag)]
                if self.legacy:
                    renders.append(functools.partial(redis_keys.legacy_block_key, self.prefix, tag))
            else:
                renders = [functools.partial(redis_keys.prefs_key, self.prefix)]
                if self.legacy:
                    renders.append(functools.partial(redis_keys.legacy_prefs_key, self.prefix))
            for render in renders:
                args.extend(redis_keys.around_id(render))
        return args

    @property
    def keys_per_record(self) -> int:
        return 2 if self.legacy else 1

    def field(self, topic: str, partition: int, topic_key: str) -> str:
        """The field of a topic key in its customer's position hash: one per Redis key, so that each key's records
        are compared with that key's own last one (a customer's channels are decided independently, and the view
        may write a partition's records out of order across channels: after a gap, write-through goes first)."""
        if self.kind == "blocks":
            return f"{topic}:{partition}:{topic_key.split(':', 1)[0]}"
        return f"{topic}:{partition}"

    def field_of(self, topic: str, partition: int, name: str) -> str:
        """The position field of a Redis key this layout writes (a key :meth:`customer_of` recognises)."""
        if self.kind == "prefs":
            return f"{topic}:{partition}"
        parsed = redis_keys.parse_customer_key(self.prefix, name)
        channel = parsed[1].removeprefix("block:") if parsed else name[len(self.prefix) + 7 :].split(":", 1)[0]
        return f"{topic}:{partition}:{channel}"

    def scan_patterns(self) -> list[str]:
        own = f"{self.prefix}:{{c:*}}:block:*" if self.kind == "blocks" else f"{self.prefix}:{{c:*}}:prefs"
        if not self.legacy:
            return [own]
        return [own, f"{self.prefix}:block:*" if self.kind == "blocks" else f"{self.prefix}:prefs:*"]

    def customer_of(self, name: str) -> str | None:
        """The customer of a Redis key this layout writes (a key found by :meth:`scan_patterns`), else None."""
        parsed = redis_keys.parse_customer_key(self.prefix, name)
        if parsed is not None:
            customer, kind = parsed
            wanted = kind.startswith("block:") if self.kind == "blocks" else kind == "prefs"
            return customer if wanted else None
        if not self.legacy:
            return None
        if self.kind == "blocks" and name.startswith(f"{self.prefix}:block:"):
            rest = name[len(self.prefix) + 7 :]
            return rest.split(":", 1)[1] if ":" in rest else None
        if self.kind == "prefs" and name.startswith(f"{self.prefix}:prefs:"):
            return name[len(self.prefix) + 7 :]
        return None


def watermark_key(prefix: str, topic: str, partition: int) -> str:
    """Where Redis keeps the offset up to which it holds ``topic[partition]`` (see the module docstring)."""
    return f"{prefix}:view-offset:{topic}:{partition}"


# how often the view commits what it has written to its consumer group (see _write_and_commit)
_COMMIT_INTERVAL_S = 1.0
# a write-through waits at most this long for Redis (the pipeline's next transactions wait for it), and after a
# failure none is tried for a while: the view's consumer writes those records meanwhile
_THROUGH_TIMEOUT_S = 0.5
_THROUGH_PAUSE_S = 5.0

# (topic, partition, [(offset, (key, value, headers))], offset past the transaction's commit marker): what one
# committed transaction of the pipeline wrote to one partition (streams.pipeline.CommittedRecords)
CommittedRecords = tuple[str, int, Sequence[tuple[int, tuple[bytes | None, bytes | None, Any]]], int]


@dataclass(slots=True)
class PartitionSnapshot:
    """One partition of a compacted topic read up to ``end`` (its last stable offset then)."""

    end: int
    latest: dict[bytes, tuple[int, bytes | None]] = field(default_factory=dict)  # key -> (offset, value)


@dataclass(slots=True)
class WriteResult:
    applied: bool  # False: the call starts after the watermark + 1 (Redis lacks what came before)
    sets: int = 0
    deletes: int = 0
    skipped: int = 0  # records at or below the watermark: a newer reader has written past them


class RedisView:
    """Applies records of one compacted topic to Redis keys, each write conditional on the record's offset."""

    def __init__(
        self,
        nodes: RedisNodes,
        *,
        topic: str,
        bootstrap: str,
        partitions: int,
        layout: ViewLayout,
        metrics: Metrics,
    ) -> None:
        self.nodes = nodes
        self.client = nodes.client
        self.topic = topic
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.prefix = layout.prefix
        self.layout = layout
        self.expiring = layout.kind == "blocks"
        self.metrics = metrics
        # redis-py runs them with EVALSHA and loads them again when Redis answers NOSCRIPT (a restarted Redis)
        self._progress_script = self.client.register_script(_PROGRESS_LUA)
        self._apply_scripts: dict[NodeId, AsyncScript] = {}
        self._delete_stale_scripts: dict[NodeId, AsyncScript] = {}
        self._topology: Hashable | None = None
        self._needs_reconcile = True
        self._last_check = 0.0

    def watermark_key(self, partition: int) -> str:
        return watermark_key(self.prefix, self.topic, partition)

    async def watermark(self, partition: int) -> int:
        """The offset up to which Redis holds ``partition`` (-1: nothing written yet)."""
        value = await self.client.get(self.watermark_key(partition))
        return int(value) if value is not None else -1

    async def apply(
        self,
        partition: int,
        records: Sequence[Record],
        *,
        start: int,
        end: int,
        owned_partitions: Callable[[], Iterable[int]],
    ) -> None:
        """Write the records of ``partition`` that cover its offsets ``[start, end)`` (every record there that has
        a key); on failure retry with backoff, then reconcile before going on.

        A reconcile reads the topic up to its end, past ``records``, and raises every position it writes there:
        written after it, ``records`` are skipped, so they cannot set keys back to older values (whether this
        worker still owns the partition or not).
        """
        delay = 0.2
        gap_reconciled = False
        while True:
            try:
                await self.maybe_reconcile(owned_partitions, partition)
                result = await self._write(partition, records, start=start, end=end)
                if result.applied:
                    return
                if gap_reconciled:  # the topic's end lies before the watermark + 1: recreated? (module docstring)
                    log.error(
                        "%s[%d]: Redis's watermark %d is still before offset %d after a reconcile; batch left out",
                        self.topic,
                        partition,
                        await self.watermark(partition),
                        start,
                    )
                    return
                log.warning(
                    "%s[%d]: Redis lacks the records before offset %d (it lost data?): reconciling",
                    self.topic,
                    partition,
                    start,
                )
                self._needs_reconcile = gap_reconciled = True
            except (RedisError, OSError) as error:
                self.metrics.redis_failures.inc()
                self._needs_reconcile = True
                log.warning("redis write failed (%s: %s); retrying in %.1fs", type(error).__name__, error, delay)
                await self.nodes.refresh_quietly()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def write_through(self, partition: int, records: Sequence[Record], *, start: int, end: int) -> WriteResult:
        """Records the pipeline has just committed, written once, without retrying or reconciling: a failure, or a
        gap (an aborted transaction's records before them, a Redis that lost data), leaves them to the view's
        consumer, which reads them from the topic. The same conditional script makes either order safe."""
        return await self._write(partition, records, start=start, end=end)

    async def _write(self, partition: int, records: Sequence[Record], *, start: int, end: int) -> WriteResult:
        """The records of ``[start, end)``, each above its customer's position; the watermark then ``end - 1``."""
        if end <= start:
            return WriteResult(True)
        # only a key's last record in the batch decides what Redis holds (a hot customer's block is re-decided on
        # every contact): one command per key, not per record
        latest: dict[bytes, tuple[int, bytes | None]] = {}
        for offset, key, value in records:
            latest[key] = (offset, value)
        return await self._call(partition, latest.items(), start=start, last=end - 1)

    async def _call(
        self, partition: int, items: Iterable[tuple[bytes, tuple[int, bytes | None]]], *, start: int, last: int
    ) -> WriteResult:
        now_ms = int(time.time() * 1000)
        layout = self.layout
        split, op_of = layout.split, self._op
        records = [(offset, value, *split(key)) for key, (offset, value) in items]
        pos_head, pos_tail = redis_keys.around_id(layout.position)
        groups = await self.nodes.group(records, lambda record: pos_head + record[3] + pos_tail)
        calls: list[tuple[NodeId, list[bytes | str | int]]] = []
        for node, group in groups.items():
            tags: dict[str, int] = {}
            lines: list[str] = []
            values: list[bytes | str] = []
            for offset, value, tag, customer in group:
                number = tags.get(tag)
                if number is None:
                    number = tags[tag] = len(tags) + 1
                op, payload, pxat = op_of(value, now_ms)
                lines.append(f"{offset} {op} {pxat} {number}\n")
                values.append(customer)
                values.append(payload)
            head: list[bytes | str | int] = ["".join(lines), layout.keys_per_record, len(tags), pos_head, pos_tail]
            head.append(f"{self.topic}:{partition}")
            calls.append((node, [*head, *layout.templates(tags), *values]))
        progress_keys, progress_args = [self.watermark_key(partition)], [start, last]
        if not self.nodes.cluster:
            # one round trip: the records, then the watermark, in one pipeline (EVALSHA: a Script in a pipeline
            # would cost a SCRIPT EXISTS round trip on every call)
            apply = self._apply_script(_SINGLE)
            for attempt in (1, 2):
                pipe = self.client.pipeline(transaction=False)
                for _, args in calls:
                    pipe.evalsha(apply.sha, 0, *args)
                pipe.evalsha(self._progress_script.sha, 1, *progress_keys, *progress_args)
                try:
                    *counts, status = await pipe.execute()
                    break
                except NoScriptError:  # a restarted Redis: load both, once
                    if attempt == 2:
                        raise
                    await self.client.script_load(_APPLY_LUA)
                    await self.client.script_load(_PROGRESS_LUA)
        else:
            node_calls = (self._apply_script(node)(keys=[], args=args) for node, args in calls)
            counts = list(await asyncio.gather(*node_calls))
            status = await self._progress_script(keys=progress_keys, args=progress_args)
        sets = sum(int(count[0]) for count in counts)
        deletes = sum(int(count[1]) for count in counts)
        skipped = sum(int(count[2]) for count in counts)
        self.metrics.redis_writes.labels(op="set").inc(sets)
        self.metrics.redis_writes.labels(op="del").inc(deletes)
        if skipped:
            log.debug("%s[%d]: %d records at or below their positions skipped", self.topic, partition, skipped)
        return WriteResult(int(status) >= 0, sets, deletes, skipped)

    def _apply_script(self, node: NodeId) -> AsyncScript:
        script = self._apply_scripts.get(node)
        if script is None:
            script = self._apply_scripts[node] = self.nodes.node_client(node).register_script(_APPLY_LUA)
        return script

    def _op(self, value: bytes | None, now_ms: int) -> tuple[str, bytes, int]:
        """What one record does to its key: (op, value, pxat) for the script."""
        if value is None:
            return "d", b"", 0
        if not self.expiring:
            return "s", value, 0
        decision = orjson.loads(value)
        until_ms = decision.get("until_ms")
        if decision.get("action") != "block" or (until_ms is not None and until_ms <= now_ms):
            return "d", b"", 0
        if until_ms is None:
            return "s", value, 0
        return "x", value, int(until_ms)

    async def maybe_reconcile(self, owned_partitions: Callable[[], Iterable[int]], partition: int) -> bool:
        """Reconcile when needed (a failure, a gap, or Redis restarted or failed over); True when it did.
        ``partition``, whose batch is in hand, is always among those reconciled."""
        now = time.monotonic()
        if not self._needs_reconcile and now - self._last_check < 5.0:
            return False
        self._last_check = now
        topology = await self.nodes.topology()
        if topology != self._topology:
            if self._topology is not None:
                log.warning("redis restarted or failed over (masters or run ids changed): reconciling %s", self.topic)
            self._needs_reconcile = True
        if not self._needs_reconcile:
            return False
        await self.reconcile(sorted({*owned_partitions(), partition}))
        self._topology = topology
        self._needs_reconcile = False
        return True

    async def reconcile(self, partitions: list[int]) -> None:
        """Make every Redis key of ``partitions`` equal the topic's latest committed record for it."""
        if not partitions:
            return
        started = time.monotonic()
        snapshots = await read_partitions(self.bootstrap, self.topic, partitions)
        keys, stale = await self.apply_snapshots(snapshots)
        self.metrics.redis_reconciles.inc()
        log.info(
            "reconciled %s partitions %s: %d keys, %d stale removed in %.2fs",
            self.topic,
            partitions,
            keys,
            stale,
            time.monotonic() - started,
        )

    async def apply_snapshots(self, snapshots: dict[int, PartitionSnapshot]) -> tuple[int, int]:
        """Write snapshots read by :func:`read_partitions` (however long ago: see the module docstring), then
        delete the partitions' keys they do not have; (keys in the snapshots, stale keys deleted)."""
        for partition, snapshot in snapshots.items():
            items = sorted(snapshot.latest.items(), key=lambda item: item[1][0])  # by offset
            for begin in range(0, max(len(items), 1), RECONCILE_CHUNK):
                chunk = items[begin : begin + RECONCILE_CHUNK]
                final = begin + RECONCILE_CHUNK >= len(items)
                last = snapshot.end - 1 if final else chunk[-1][1][0]
                await self._call(partition, chunk, start=0, last=last)
        # keys we own that the topic no longer has at all (e.g. tombstones already compacted away)
        wanted = {name for snapshot in snapshots.values() for key in snapshot.latest for name in self.layout.keys(key)}
        stale: dict[int, list[tuple[str, str, str]]] = {}  # partition -> (position key, stale key, its field)
        for pattern in self.layout.scan_patterns():
            for name in await self.nodes.scan(pattern):
                customer = self.layout.customer_of(name)
                if name in wanted or customer is None:
                    continue
                partition = partition_for_key(customer.encode(), self.partitions)
                if partition in snapshots:
                    position_field = self.layout.field_of(self.topic, partition, name)
                    stale.setdefault(partition, []).append((self.layout.position(customer), name, position_field))
        deleted = 0
        for partition, found in stale.items():
            read_up_to = snapshots[partition].end - 1
            for node, group in (await self.nodes.group(found, lambda entry: entry[0])).items():
                script = self._delete_stale_scripts.get(node)
                if script is None:
                    script = self.nodes.node_client(node).register_script(_DELETE_STALE_LUA)
                    self._delete_stale_scripts[node] = script
                for begin in range(0, len(group), 1000):
                    part = group[begin : begin + 1000]
                    args: list[str | int] = [read_up_to, *(name for entry in part for name in entry)]
                    deleted += int(await script(keys=[], args=args))
        self.metrics.redis_writes.labels(op="del").inc(deleted)
        return sum(len(snapshot.latest) for snapshot in snapshots.values()), deleted


async def read_partitions(bootstrap: str, topic: str, partitions: list[int]) -> dict[int, PartitionSnapshot]:
    """The latest committed record per key (with its offset) of ``partitions`` of a compacted topic, read from
    the beginning up to the end: the last stable offset, as a read_committed consumer sees it. The position
    passes transaction markers (and aborted records) too, so the read ends also where a marker comes last."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in partitions]
        consumer.assign(tps)
        end_offsets = await consumer.end_offsets(tps)  # under read_committed: the last stable offsets
        # Explicit seeks: seek_to_beginning() right after assign() races with the reset assign() starts (to the
        # end, by default), so the read could start at the end, find nothing, and the reconcile then deleted
        # every key as stale.
        beginnings = await consumer.beginning_offsets(tps)
        for tp, offset in beginnings.items():
            consumer.seek(tp, offset)
        snapshots = {tp.partition: PartitionSnapshot(end_offsets[tp]) for tp in tps}
        remaining = {tp for tp in tps if end_offsets[tp] > beginnings[tp]}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, messages in batches.items():
                latest = snapshots[tp.partition].latest
                for message in messages:
                    if message.key is not None and message.offset < end_offsets[tp]:
                        latest[message.key] = (message.offset, message.value)
            for tp in list(remaining):
                if await consumer.position(tp) >= end_offsets[tp]:
                    remaining.discard(tp)
        return snapshots
    finally:
        # bounded: a stop during a worker's shutdown must not hold the shutdown up
        with contextlib.suppress(Exception):
            await within(consumer.stop(), 10)


async def read_latest(bootstrap: str, topic: str, partitions: list[int]) -> dict[bytes, bytes | None]:
    """The latest committed record per key in ``partitions`` of a compacted topic (see :func:`read_partitions`)."""
    snapshots = await read_partitions(bootstrap, topic, partitions)
    return {key: value for snapshot in snapshots.values() for key, (_, value) in snapshot.latest.items()}


class ViewConsumer:
    """Keeps Redis following the decisions and preferences topics, with a consumer group of its own.

    Not a Faust agent on purpose. Faust tracks every delivered offset and commits only up to the first one it
    never saw acknowledged; after a restart or rebalance it delivered some offsets of these topics twice and some
    never (its read-offset filter drops records behind a stale prefetch), and the group's commits on them then
    stopped for good while the records went on: the view's lag froze and every restart re-read from there. A
    Redis write is idempotent (the latest record per key wins) and conditional on the record's offset, so a plain
    consumer that commits what it has written is all the view needs: at-least-once, resumed from its own group's
    offsets, balanced over the workers independently of the guard's input partitions. It reads committed records
    only, and hands each partition's batch to its view with the offsets it covers (from its position before the
    batch to its position after, transaction markers included), so the watermark and the group's offsets reach
    the topic's end although the last offset there is a marker no consumer sees.
    """

    def __init__(
        self,
        views: Sequence[RedisView],
        *,
        bootstrap: str,
        group_id: str,
        batch: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 100,
    ) -> None:
        self.views = {view.topic: view for view in views}
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.batch = batch
        # what "acknowledged" means: the group's offsets are committed only once every master has this many replicas
        # holding what the view wrote (RedisNodes.replicated); 0 on a Redis without replicas
        self.nodes = views[0].nodes
        self.metrics = views[0].metrics
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._unreplicated_since: float | None = None
        self._consumer: AIOKafkaConsumer | None = None
        # what is in Redis: per partition, the position after the last batch written (and committed, if it could be)
        self._written: dict[TopicPartition, int] = {}
        # held while a batch is written and committed; a revocation waits for it, so once a partition has moved
        # to another worker this one starts no more writes of it (and the watermark stops any that were under way)
        self._batch_lock = asyncio.Lock()
        self._uncommitted: dict[TopicPartition, int] = {}  # written to Redis, not yet committed to the group
        self._committed_at = 0.0
        # per partition, the offset up to which the pipeline's transactions were written through (write_through)
        self._through: dict[TopicPartition, int] = {}
        self._through_paused_until = 0.0
        self._stopping = False

    async def write_through(self, committed: Sequence[CommittedRecords]) -> None:
        """Write what a transaction of this worker's pipeline has just committed, without waiting to read it back
        from the topics: a decision reaches Redis a fetch (and the whole loop of this view) sooner. Bounded in
        time, and paused for a while after a failure, so that a slow or lost Redis never holds the pipeline up;
        whatever is not written here, the consumer writes (and retries, and reconciles) as before."""
        if time.monotonic() < self._through_paused_until:
            return
        for topic, partition, landed, end in committed:
            view = self.views.get(topic)
            if view is None or not landed:
                continue
            records = [(offset, key, value) for offset, (key, value, _) in landed if key is not None]
            try:
                result = await asyncio.wait_for(
                    view.write_through(partition, records, start=landed[0][0], end=end), timeout=_THROUGH_TIMEOUT_S
                )
            except (TimeoutError, RedisError, OSError) as error:
                self._through_paused_until = time.monotonic() + _THROUGH_PAUSE_S
                log.info("redis write-through failed (%s: %s); left to the consumer", type(error).__name__, error)
                return
            if result.applied:
                tp = TopicPartition(topic, partition)
                if end > self._through.get(tp, -1):
                    self._through[tp] = end

    async def acknowledged(self) -> bool:
        """True when Redis's replicas hold everything the view has written (always, with ``wait_replicas`` 0);
        until then the view's offsets are not committed (the bound a sender's check relies on after a failover:
        README, "Reliability")."""
        try:
            replicated = await self.nodes.replicated(self.wait_replicas, self.wait_timeout_ms)
        except (RedisError, OSError) as error:
            log.debug("redis replication barrier failed: %s", error)
            await self.nodes.refresh_quietly()  # a master gone or demoted: the next barrier asks the new one
            replicated = False
        now = time.monotonic()
        if replicated:
            if self._unreplicated_since is not None:
                log.info("redis replicas confirm again after %.1fs", now - self._unreplicated_since)
            self._unreplicated_since = None
            return True
        self.metrics.redis_unreplicated.inc()
        if self._unreplicated_since is None:
            self._unreplicated_since = now
            log.warning(
                "a Redis master has fewer than %d replica(s) confirming within %d ms: the view's offsets are held "
                "back until they do",
                self.wait_replicas,
                self.wait_timeout_ms,
            )
        return False

    def owned_partitions(self, topic: str) -> list[int]:
        consumer = self._consumer
        if consumer is None:
            return []
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)

    def stop(self) -> None:
        """Let :meth:`run` end at its next step (the worker's stop; a cancellation alone is not enough: aiokafka
        turned one into ``AssertionError: Partition is not assigned`` during a rebalance, and the loop took that for
        a failure to restart from, with a new consumer, for good)."""
        self._stopping = True

    async def run(self) -> None:
        """Consume until stopped or cancelled. A Kafka failure restarts the consumer after a pause; it never ends
        the worker."""
        delay = 1.0
        while not self._stopping:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.batch,
                isolation_level="read_committed",  # the guard's transactions: aborted ones must not reach Redis
                # a decision waits in Redis' path for this at most when the fetch found nothing new (the broker's
                # default 500 ms showed in the event -> Redis latency)
                fetch_max_wait_ms=20,
            )
            try:
                consumer.subscribe(list(self.views), listener=_WaitForBatch(self))
                await consumer.start()
                self._consumer = consumer
                log.info("redis view consuming %s as group %s", sorted(self.views), self.group_id)
                while not self._stopping:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
                    # also without records: the position may have passed a transaction marker
                    await self._write_and_commit(consumer, batches)
                    delay = 1.0
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._stopping or task is None or task.cancelling():
                    raise
                # nobody cancelled this task: a client cancelled its own work and let it out (seen during a broker
                # outage); ending here would leave the worker running without its Redis view
                log.warning(
                    "redis view consumer: a client's work was cancelled (broker away?); restarting in %.0fs", delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            except Exception as error:  # a broker outage, a fenced member: start over from the committed offsets
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    return  # what failed was the stop (the finally below still releases the consumer)
                log.warning(
                    "redis view consumer failed (%s: %s); restarting in %.0fs", type(error).__name__, error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._consumer = None
                self._written.clear()
                offsets, self._uncommitted = self._uncommitted, {}
                try:
                    if offsets and await self.acknowledged():  # what is in Redis: the next run starts there
                        await within(consumer.commit(offsets), 5)
                except Exception as error:  # read again next time; the watermark skips it in Redis
                    log.debug("committing the redis view's last offsets: %s", error)
                try:
                    # bounded: a stop during a worker's shutdown must not hold the shutdown up
                    if not await within(consumer.stop(), 10):
                        log.warning("the redis view's consumer did not stop within 10s: left behind")
                except Exception as error:  # already broken: nothing more to release
                    log.debug("stopping the redis view consumer: %s", error)

    async def _write_and_commit(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        async with self._batch_lock:
            offsets: dict[TopicPartition, int] = {}
            # batches of partitions revoked while they were fetched are dropped: their new owner writes them
            for tp in sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition)):
                messages = batches.get(tp, [])
                if not messages and consumer.last_stable_offset(tp) is None:
                    continue  # nothing fetched since the assignment: its position may not be known yet
                position = await consumer.position(tp)
                start = self._written.get(tp)
                if start is None:  # first batch since the assignment: the fetch started at the group's offset
                    start = await consumer.committed(tp) or 0
                    self._written[tp] = start
                if not messages and position <= start:
                    continue
                view = self.views[tp.topic]
                owned = functools.partial(self.owned_partitions, tp.topic)
                if self._through.get(tp, -1) >= position:
                    # written through by this worker's pipeline already (the watermark says so in Redis too); a
                    # Redis that restarted or failed over since is still noticed here, and reconciled (an empty
                    # batch: apply's retries and backoff, should Redis fail meanwhile)
                    await view.apply(tp.partition, [], start=position, end=position, owned_partitions=owned)
                else:
                    records = [(msg.offset, msg.key, msg.value) for msg in messages if msg.key is not None]
                    await view.apply(tp.partition, records, start=start, end=position, owned_partitions=owned)
                self._written[tp] = offsets[tp] = position
            self._uncommitted.update(offsets)
            now = time.monotonic()
            if not self._uncommitted or now - self._committed_at < _COMMIT_INTERVAL_S:
                return
            # committed at most once a second, not per batch (a commit is a round trip in every batch's path): what
            # was written since is read again after a restart, and the watermark skips it in Redis
            self._committed_at = now
            if not await self.acknowledged():
                return  # held back: committed once the replicas have it (or read again after a restart)
            offsets, self._uncommitted = self._uncommitted, {}
            try:
                await consumer.commit(offsets)
            except KafkaError as error:
                # the group moved on (rebalance, fenced): the records are written, the next owner skips them
                log.info(
                    "redis view commit failed (%s: %s); the records will be read again", type(error).__name__, error
                )

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._batch_lock:  # the batch in hand is written (and committed) first
            consumer = self._consumer
            offsets, self._uncommitted = self._uncommitted, {}
            if consumer is not None and offsets and await self.acknowledged():
                try:
                    await consumer.commit(offsets)
                except KafkaError as error:  # the next owner reads them again; the watermark skips them
                    log.info("redis view commit on revocation failed (%s: %s)", type(error).__name__, error)
            for tp in revoked:
                self._written.pop(tp, None)

    async def lags(self) -> dict[tuple[str, int], int]:
        """Records not yet in Redis, per assigned partition of the view's topics (committed ones: the end offsets
        are the last stable offsets)."""
        consumer = self._consumer
        if consumer is None:
            return {}
        tps = sorted(consumer.assignment(), key=lambda tp: (tp.topic, tp.partition))
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        lags: dict[tuple[str, int], int] = {}
        for tp in tps:
            done = self._written.get(tp)
            if done is None:
                done = await consumer.committed(tp) or 0
            lags[(tp.topic, tp.partition)] = max(ends[tp] - done, 0)
        return lags


class _WaitForBatch(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, owner: ViewConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self.owner.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        log.info("redis view assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))
