"""Sender-side clients: what dialers and email platforms embed to honour the guard's decisions.

- :class:`BlockFollower` (dialers): bootstraps the full current block set from the compacted decisions topic, then
  follows it live, keeping an in-memory suppression map with expiries (kafka-python, no consumer group needed),
  reading committed records only (the guard's transactions can abort).
- :class:`PreSendCheck` (email platforms): ``is_allowed`` for one customer and a pipelined bulk ``filter`` over an
  audience, from the Redis keys the guard maintains (streams.redis_keys), honouring the customer's quiet hours in
  their time zone; on a single Redis or a Redis Cluster.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, ClusterError, RedisClusterException, RedisError, ResponseError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fatigue.events import CATEGORIES, CHANNELS, is_known_timezone, parse_clock_minute
from fatigue.policy import Policy
from fatigue.timeutil import parse_iso_ms
from streams.redis_keys import block_key, check_prefix, customer_tag, prefs_key, sync_client

Decision = dict[str, Any]
ChangeHook = Callable[[str, Decision | None], None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _in_force(decision: Decision, at_ms: int) -> bool:
    """A block is in force on [decided, until): ``until_ms`` is our extension, ``until`` the contract's field."""
    if decision.get("action") != "block":
        return False
    until = decision.get("until_ms")
    if until is None and isinstance(decision.get("until"), str):
        until = parse_iso_ms(decision["until"])
    return until is None or until > at_ms


def _check_channel(channel: str) -> None:
    # a misspelt channel has no key in Redis and would read as "allowed"
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: one of {', '.join(CHANNELS)}")


class BlockFollower:
    """The current blocks, as a dialer needs them: ``{channel}:{customer_id}`` -> decision, kept live."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "fatigue.blocks.v1",
        *,
        channel: str | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        if channel is not None and channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
        self.topic = topic
        self.channel = channel
        self.on_change = on_change
        self.blocks: dict[str, Decision] = {}
        # read_committed: the guard writes decisions in transactions, and an aborted one's records (still in the
        # log) must never lift or impose a block; the end offsets are then the last stable ones
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            self._consumer.close()
            raise ValueError(f"topic {topic} does not exist")
        self._partitions = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def bootstrap(self, timeout_s: float = 60.0) -> int:
        """Read the topic up to its current end (its last stable offset); returns how many blocks are in force.

        The position passes transaction markers and aborted records too, so this ends also when the last offset
        before the end is a marker, which no consumer ever receives.
        """
        ends = self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + timeout_s
        while any(self._consumer.position(tp) < ends[tp] for tp in self._partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"bootstrap of {self.topic} did not reach the end in {timeout_s}s")
            self.poll(500)
        return len(self.active())

    def poll(self, timeout_ms: int = 1000) -> int:
        """Apply whatever arrived; returns the number of records read."""
        read = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms, max_records=10_000).values():
            for record in records:
                read += 1
                if record.key is not None:
                    self._apply(record.key.decode(), record.value)
        return read

    def _apply(self, key: str, value: bytes | None) -> None:
        channel = key.split(":", 1)[0]
        if self.channel is not None and channel != self.channel:
            return
        decision = orjson.loads(value) if value is not None else None
        if decision is not None and decision.get("action") == "block":
            self.blocks[key] = decision
        else:
            self.blocks.pop(key, None)  # an allow or a tombstone lifts it
        if self.on_change is not None:
            self.on_change(key, decision)

    def follow(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Keep applying new decisions until ``stop()`` says so."""
        while not stop():
            self.poll(500)

    def active(self, at_ms: int | None = None) -> dict[str, Decision]:
        at = _now_ms() if at_ms is None else at_ms
        return {key: decision for key, decision in self.blocks.items() if _in_force(decision, at)}

    def blocked(self, customer_id: str, channel: str, at_ms: int | None = None) -> Decision | None:
        """The block in force on ``channel`` for this customer, or None when the channel is open."""
        _check_channel(channel)
        if self.channel is not None and channel != self.channel:
            # this follower never read that channel's decisions: None would wrongly read as "open"
            raise ValueError(f"this follower follows {self.channel} only, not {channel}")
        decision = self.blocks.get(f"{channel}:{customer_id}")
        at = _now_ms() if at_ms is None else at_ms
        return decision if decision is not None and _in_force(decision, at) else None

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None  # a block reason, or "quiet_hours"
    until: str | None = None


ALLOWED = Verdict(True)


RedisClient = redis.Redis | RedisCluster
Values = tuple[bytes | str | None, bytes | str | None]  # a customer's (block, prefs) values

log = logging.getLogger(__name__)

# On a Redis Cluster, one script call on a node answers a batch of that node's customers (MGET across customers
# fails there with CROSSSLOT, and a command per customer costs redis-py too much CPU): the node builds each
# customer's two keys from the id (the layout's head and tail around the id, passed in, so the format stays in
# redis_keys) and returns (index, block, prefs) only for customers with something stored, most having nothing.
# The keys are not declared: Redis 7 refuses declared keys of several slots even with allow-cross-slot-keys,
# which lets a script read undeclared keys of any slot the node serves; a key of a slot it does not serve (a stale
# slot map, a failover, a migration) fails the whole call ("non local key"), never a wrong nil. The ids come
# joined by a separator none contains (one argument: far less for the client to encode), or one per argument
# when ``sep`` is empty.
LOOKUP_SCRIPT = """#!lua flags=no-writes,allow-cross-slot-keys
local block_head, block_tail, prefs_head, prefs_tail, sep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local out, n = {}, 0
local function look(index, id)
  local values = redis.call('MGET', block_head .. id .. block_tail, prefs_head .. id .. prefs_tail)
  if values[1] or values[2] then
    out[n + 1], out[n + 2], out[n + 3] = index, values[1], values[2]
    n = n + 3
  end
end
if sep == '' then
  for i = 6, #ARGV do look(i - 5, ARGV[i]) end
else
  local ids, index, pos = ARGV[6], 0, 1
  local stop = #ids + 1
  while pos <= stop do
    local found = string.find(ids, sep, pos, true)
    local last = found and found - 1 or stop - 1
    index = index + 1
    look(index, string.sub(ids, pos, last))
    pos = last + 1 + #sep
  end
end
return out
"""
SEPARATORS = ("\n", "\x00", "\x1f")
CLUSTER_ATTEMPTS = 3  # script rounds per chunk (refreshing the slot map between them) before the slow fallback
# ids per script call: a call holds its node for 1-6 us an id, so a call of 1000 holds it for a few ms at most
# and the view's writes and other senders' checks interleave between calls
SCRIPT_IDS = 1000


def _around_id(render: Callable[[str], str]) -> tuple[str, str]:
    """The text before and after the id in a key of the layout (``render`` builds the key from an id)."""
    marker = "\x00id\x00"
    head, _, tail = render(marker).partition(marker)
    return head, tail


def _packed_ids(ids: list[str]) -> tuple[str, ...]:
    """``(sep, joined)`` with a separator no id contains, else ``("", *ids)``."""
    for sep in SEPARATORS:
        joined = sep.join(ids)
        if joined.count(sep) == len(ids) - 1:
            return sep, joined
    return ("", *ids)


def _hits(reply: list[Any], indexes: list[int], into: dict[int, Values]) -> None:
    """Adds a script reply's (1-based position in ``indexes``, block, prefs) triples to ``into``, by chunk index."""
    for at in range(0, len(reply), 3):
        into[indexes[reply[at] - 1]] = (reply[at + 1], reply[at + 2])


def _get_each(client: RedisCluster, keys: list[str]) -> list[Any]:
    """The values of ``keys`` by single-key GETs in a cluster pipeline, which follow MOVED and ASK. While a slot is
    being resharded a customer's keys can sit on two nodes (one migrated, one not yet), and a multi-key command on
    them gets TRYAGAIN until the slot's migration ends; one key at a time is always answered."""
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
    for key in keys:
        pipe.get(key)
    values: list[Any] = pipe.execute()
    return values


def _topology_error(error: Exception) -> bool:
    """An error that a fresh slot map may cure: the node no longer serves the slot, is down, or is unreachable."""
    if isinstance(
        error,
        RedisConnectionError | RedisTimeoutError | AskError | TryAgainError | ClusterError | RedisClusterException,
    ):
        return True  # AskError covers MovedError
    # what a script is told when it reads a key of a slot its node does not serve (any more), or mid-failover
    return any(sign in str(error) for sign in ("non local key", "cluster is down"))


class PreSendCheck:
    """Pre-send lookups against the guard's Redis view (one customer, or an audience in bulk).

    ``category`` is the message's, as in the contract: only the categories the policy counts (marketing; service
    when the policy opts it in) are ever held back. Bills, OTPs and reminders are always allowed, blocks and quiet
    hours notwithstanding, without a lookup.

    ``client`` is a plain ``redis.Redis`` or a ``redis.cluster.RedisCluster`` (:meth:`from_url` builds either from
    a URL, ``?cluster=1`` for a cluster). One instance serves one thread at a time.
    """

    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "fatigue",
        policy: Policy | None = None,
        default_timezone: str = "UTC",
    ) -> None:
        self.client = client
        self.prefix = check_prefix(prefix)
        self.policy_quiet = policy.quiet_hours if policy is not None else None
        self.default_timezone = policy.default_timezone if policy is not None else default_timezone
        self.guarded_categories = policy.counted_categories if policy is not None else frozenset({"marketing"})
        self._owns_client = False
        # why the cluster lookup script cannot be used here (a Redis before 7.0, an ACL without EVAL), once seen
        self.script_unusable: str | None = None
        # the cluster's slot -> primary, copied from the client's map and rebuilt when the client replaces it
        self._slots_seen: object = None
        self._slot_owner: list[str] = []
        self._nodes: dict[str, ClusterNode] = {}

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "fatigue",
        policy: Policy | None = None,
        default_timezone: str = "UTC",
        **client_options: Any,
    ) -> PreSendCheck:
        """A check on its own client for ``url`` (one node, or ``redis://HOST:PORT/0?cluster=1&addr=...``);
        :meth:`close` closes it."""
        check = cls(sync_client(url, **client_options), prefix=prefix, policy=policy, default_timezone=default_timezone)
        check._owns_client = True
        return check

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> PreSendCheck:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _guards(self, channel: str, category: str) -> bool:
        _check_channel(channel)
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}: one of {', '.join(CATEGORIES)}")
        return category in self.guarded_categories

    def is_allowed(
        self, customer_id: str, channel: str, at_ms: int | None = None, *, category: str = "marketing"
    ) -> Verdict:
        if not self._guards(channel, category):
            return ALLOWED
        at = _now_ms() if at_ms is None else at_ms
        keys = [block_key(self.prefix, channel, customer_id), prefs_key(self.prefix, customer_id)]
        try:
            # both keys carry the customer's hash tag: one slot, so one MGET on a cluster too
            block, prefs = self.client.mget(keys)
        except (TryAgainError, ClusterError):
            if not isinstance(self.client, RedisCluster):
                raise
            block, prefs = _get_each(self.client, keys)
        return self._verdict(block, prefs, channel, at)

    def filter(
        self,
        customer_ids: Iterable[str],
        channel: str,
        at_ms: int | None = None,
        batch: int = 5_000,
        *,
        category: str = "marketing",
    ) -> Iterator[tuple[str, Verdict]]:
        """``(customer_id, verdict)`` for every id, in order, looked up ``batch`` ids per round trip (on a cluster,
        one call per node, all nodes at once)."""
        if not self._guards(channel, category):
            for customer_id in customer_ids:
                yield customer_id, ALLOWED
            return
        at = _now_ms() if at_ms is None else at_ms
        chunk: list[str] = []
        for customer_id in customer_ids:
            chunk.append(customer_id)
            if len(chunk) >= batch:
                yield from self._filter_chunk(chunk, channel, at)
                chunk = []
        if chunk:
            yield from self._filter_chunk(chunk, channel, at)

    def _filter_chunk(self, chunk: list[str], channel: str, at: int) -> Iterator[tuple[str, Verdict]]:
        # the verdict of a customer with nothing stored is the same for all (the policy's quiet hours, if any)
        empty = self._verdict(None, None, channel, at)
        if isinstance(self.client, RedisCluster):
            hits = self._lookup_cluster(chunk, channel)
            for index, customer_id in enumerate(chunk):
                values = hits.get(index)
                yield customer_id, empty if values is None else self._verdict(values[0], values[1], channel, at)
            return
        # one Redis: two MGETs in one round trip. Cheapest for the server (0.2 us an id; the lookup script costs
        # 4-6 us an id and would hold a Redis the view writes to for tens of ms per batch), and as fast here
        # the keys as head + id + tail (from the redis_keys functions): as cheap as the old layout's prefix + id
        block_head, block_tail = _around_id(lambda customer_id: block_key(self.prefix, channel, customer_id))
        prefs_head, prefs_tail = _around_id(lambda customer_id: prefs_key(self.prefix, customer_id))
        blocks, prefs = self._two_mgets(
            [block_head + customer_id + block_tail for customer_id in chunk],
            [prefs_head + customer_id + prefs_tail for customer_id in chunk],
        )
        for customer_id, block, pref in zip(chunk, blocks, prefs, strict=True):
            if block is None and pref is None:
                yield customer_id, empty  # the common case: nothing stored about this customer
            else:
                yield customer_id, self._verdict(block, pref, channel, at)

    def _two_mgets(self, first: list[str], second: list[str]) -> tuple[list[Any], list[Any]]:
        """Two MGETs in one round trip on one Redis, packed here: redis-py's packing (an encode and isinstance
        checks per argument) was three quarters of the client's time. Retried on a lost connection as redis-py
        retries its own commands."""
        assert isinstance(self.client, redis.Redis)
        pool = self.client.connection_pool
        encoder = pool.get_encoder()
        encoding, errors = encoder.encoding, encoder.encoding_errors

        def packed(keys: list[str]) -> bytes:
            encoded = [key.encode(encoding, errors) for key in keys]
            arguments = b"".join([b"$%d\r\n%b\r\n" % (len(key), key) for key in encoded])
            return b"*%d\r\n$4\r\nMGET\r\n%b" % (len(keys) + 1, arguments)

        request = [packed(first), packed(second)]
        connection: Any = pool.get_connection()  # untyped in redis-py

        def exchange() -> tuple[list[Any], list[Any]]:
            connection.send_packed_command(request)
            return connection.read_response(), connection.read_response()

        try:
            # a failed exchange leaves the connection closed: no reply of it is ever read as another command's
            result: tuple[list[Any], list[Any]] = connection.retry.call_with_retry(
                exchange, lambda _: connection.disconnect()
            )
            return result
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)

    def _script_args(self, channel: str, ids: list[str]) -> tuple[str, ...]:
        return (
            *_around_id(lambda customer_id: block_key(self.prefix, channel, customer_id)),
            *_around_id(lambda customer_id: prefs_key(self.prefix, customer_id)),
            *_packed_ids(ids),
        )

    def _give_up_script(self, error: Exception) -> None:
        self.script_unusable = str(error)
        log.warning("the bulk lookup script fails here (%s): looking customers up key by key instead", error)

    def _lookup_cluster(self, chunk: list[str], channel: str) -> dict[int, Values]:
        """chunk index -> (block, prefs) of the customers with something stored, on a Redis Cluster: the ids
        grouped by the primary serving their slot, script calls of at most ``SCRIPT_IDS`` ids, sent to every
        primary before any reply is read. The ids of a call that fails (moved slots, a failover, a lost
        connection, a slot being resharded) are retried on a fresh slot map, a few times, then looked up key by
        key (:func:`_get_each`: single-key GETs follow MOVED and ASK)."""
        assert isinstance(self.client, RedisCluster)
        hits: dict[int, Values] = {}
        pending = list(range(len(chunk)))
        for attempt in range(CLUSTER_ATTEMPTS):
            if not pending or self.script_unusable is not None:
                break
            if attempt:
                try:
                    self.client.nodes_manager.initialize()
                except (RedisError, RedisClusterException) as error:
                    log.warning("cannot refresh the cluster's slot map (%s)", error)
            pending = self._script_round(chunk, pending, channel, hits)
        if pending:
            keys: list[str] = []
            for index in pending:
                keys += (block_key(self.prefix, channel, chunk[index]), prefs_key(self.prefix, chunk[index]))
            values = _get_each(self.client, keys)
            for at, index in enumerate(pending):
                block, pref = values[2 * at], values[2 * at + 1]
                if block is not None or pref is not None:
                    hits[index] = (block, pref)
        return hits

    def _script_round(self, chunk: list[str], pending: list[int], channel: str, hits: dict[int, Values]) -> list[int]:
        """The script calls for the ``pending`` chunk indexes, all sent before any is read; adds what they answer
        to ``hits`` and returns the indexes left unanswered."""
        assert isinstance(self.client, RedisCluster)
        owner = self._slot_map()
        groups: dict[str, list[int]] = {}
        for index in pending:
            name = owner[key_slot(customer_tag(chunk[index]).encode())]
            group = groups.get(name)
            if group is None:
                groups[name] = group = []
            group.append(index)
        failed: list[int] = []
        sent: list[tuple[Any, Any, list[list[int]]]] = []  # (pool, connection, the ids of each call), in order
        try:
            for name, indexes in groups.items():
                node = self._nodes.get(name)
                if node is None:  # a slot no node serves
                    failed += indexes
                    continue
                calls = [indexes[start : start + SCRIPT_IDS] for start in range(0, len(indexes), SCRIPT_IDS)]
                pool = self.client.get_redis_connection(node).connection_pool
                try:
                    connection: Any = pool.get_connection()  # untyped in redis-py
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    failed += indexes
                    continue
                try:
                    commands = [
                        ("EVAL", LOOKUP_SCRIPT, 0, *self._script_args(channel, [chunk[i] for i in call]))
                        for call in calls
                    ]
                    connection.send_packed_command(connection.pack_commands(commands))
                except (RedisConnectionError, RedisTimeoutError, OSError):
                    connection.disconnect()
                    pool.release(connection)
                    failed += indexes
                    continue
                sent.append((pool, connection, calls))
            while sent:
                pool, connection, calls = sent[0]
                for done, call in enumerate(calls):
                    try:
                        reply = connection.read_response()
                    except ResponseError as error:  # this call's reply: the connection reads on
                        if not _topology_error(error):
                            self._give_up_script(error)
                        failed += call
                    except (RedisConnectionError, RedisTimeoutError, OSError):
                        connection.disconnect()  # its replies may still come: never read as another command's
                        for lost in calls[done:]:
                            failed += lost
                        break
                    else:
                        _hits(reply, call, hits)
                pool.release(connection)
                sent.pop(0)
        finally:
            for pool, connection, _ in sent:  # replies left unread after an unexpected error: drop them
                connection.disconnect()
                pool.release(connection)
        return failed

    def _slot_map(self) -> list[str]:
        assert isinstance(self.client, RedisCluster)
        manager = self.client.nodes_manager
        if manager.slots_cache is not self._slots_seen:
            slots = manager.slots_cache
            # "" for a slot no node serves (mid-failover): its ids fail the round and are retried
            self._slot_owner = [nodes[0].name if (nodes := slots.get(slot)) else "" for slot in range(16384)]
            self._nodes = {node.name: node for node in manager.nodes_cache.values()}
            self._slots_seen = slots
        return self._slot_owner

    def _verdict(self, block: bytes | str | None, prefs: bytes | str | None, channel: str, at: int) -> Verdict:
        if block is not None:
            decision = orjson.loads(block)
            if _in_force(decision, at):
                return Verdict(False, decision["reason"], decision.get("until"))
        view = orjson.loads(prefs) if prefs is not None else {}
        zone = view.get("timezone") or self.default_timezone
        ranges: list[tuple[int, int]] = []
        own = (view.get("quiet_hours") or {}).get(channel)
        if own:
            start, end = parse_clock_minute(own.get("start")), parse_clock_minute(own.get("end"))
            if start is not None and end is not None:
                ranges.append((start, end))
        if self.policy_quiet is not None and channel in self.policy_quiet.channels:
            ranges.append((self.policy_quiet.start_minute, self.policy_quiet.end_minute))
        if not ranges:
            return ALLOWED
        if not is_known_timezone(zone):  # a zone this machine's tz database lacks: as if the customer had none
            zone = self.default_timezone if is_known_timezone(self.default_timezone) else "UTC"
        return Verdict(False, "quiet_hours") if _inside_any(ranges, at, zone) else ALLOWED


def _inside_any(ranges: list[tuple[int, int]], at_ms: int, zone: str) -> bool:
    local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    return any((start <= minute < end) if start <= end else (minute >= start or minute < end) for start, end in ranges)


def removed_by_reason(verdicts: Iterable[tuple[str, Verdict]]) -> tuple[list[str], Counter[str]]:
    """Split verdicts into the allowed ids and a count of removed ids per reason."""
    allowed: list[str] = []
    removed: Counter[str] = Counter()
    for customer_id, verdict in verdicts:
        if verdict.allowed:
            allowed.append(customer_id)
        else:
            removed[verdict.reason or "blocked"] += 1
    return allowed, removed
