"""Redis as a materialised view of a compacted topic, for email platforms' pre-send lookups.

Each record is applied idempotently (SET with PXAT at the block's ``until``, DEL for allows and tombstones), in
pipelined batches retried until Redis answers, so an outage only delays the view: consumption of the decisions
topic pauses while the guard itself goes on. After a failure, and whenever Redis restarts (its run_id changes),
the view is reconciled from the compacted topic: every key we own ends up exactly as the topic's latest record.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from fatigue.clock import partition_for_key
from streams.metrics import Metrics

log = logging.getLogger("fatigue.redis")

Record = tuple[bytes, bytes | None]


def block_key(prefix: str, decision_key: bytes) -> str:
    """``{channel}:{customer_id}`` on the topic -> ``fatigue:block:{channel}:{customer_id}`` in Redis."""
    return f"{prefix}:block:{decision_key.decode()}"


def prefs_key(prefix: str, customer_key: bytes) -> str:
    return f"{prefix}:prefs:{customer_key.decode()}"


class RedisView:
    """Applies records of one compacted topic to Redis keys."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        topic: str,
        bootstrap: str,
        partitions: int,
        redis_key: Callable[[bytes], str],
        scan_pattern: str,
        expiring: bool,
        metrics: Metrics,
    ) -> None:
        self.client = client
        self.topic = topic
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.redis_key = redis_key
        self.scan_pattern = scan_pattern
        self.expiring = expiring
        self.metrics = metrics
        self._run_id: str | None = None
        self._needs_reconcile = True
        self._last_check = 0.0

    async def apply(self, records: Sequence[Record], owned_partitions: Callable[[], Iterable[int]]) -> None:
        """Write ``records`` in order; on failure retry with backoff, then reconcile before going on.

        A reconcile reads the topic up to its end, past ``records``: it writes their keys' latest records (or
        newer ones), so ``records`` are not written after it. Written then, they would set keys back until the
        consumer reaches the newer records again, or for good for a partition that has moved to another worker
        while Redis was away.
        """
        delay = 0.2
        while True:
            try:
                if not await self._maybe_reconcile(owned_partitions):
                    await self._write(records)
                return
            except (RedisError, OSError) as error:
                self.metrics.redis_failures.inc()
                self._needs_reconcile = True
                log.warning("redis write failed (%s: %s); retrying in %.1fs", type(error).__name__, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, records: Sequence[Record]) -> None:
        if not records:
            return
        now_ms = int(time.time() * 1000)
        pipe = self.client.pipeline(transaction=False)
        sets = deletes = 0
        # only a key's last record in the batch decides what Redis holds (a hot customer's block is re-decided
        # on every contact): one command per key, not per record
        latest = dict(records)
        for key, value in latest.items():
            if self._queue(pipe, key, value, now_ms):
                sets += 1
            else:
                deletes += 1
        await pipe.execute()
        self.metrics.redis_writes.labels(op="set").inc(sets)
        self.metrics.redis_writes.labels(op="del").inc(deletes)

    def _queue(self, pipe: Any, key: bytes, value: bytes | None, now_ms: int) -> bool:
        """Queue the command for one record; True for a SET, False for a DEL."""
        redis_key = self.redis_key(key)
        if value is None:
            pipe.delete(redis_key)
            return False
        if not self.expiring:
            pipe.set(redis_key, value)
            return True
        decision = orjson.loads(value)
        until_ms = decision.get("until_ms")
        if decision.get("action") != "block" or (until_ms is not None and until_ms <= now_ms):
            pipe.delete(redis_key)
            return False
        if until_ms is None:
            pipe.set(redis_key, value)
        else:
            pipe.set(redis_key, value, pxat=until_ms)
        return True

    async def _maybe_reconcile(self, owned_partitions: Callable[[], Iterable[int]]) -> bool:
        """Reconcile when needed (a failure, or Redis restarted); True when it did."""
        now = time.monotonic()
        if not self._needs_reconcile and now - self._last_check < 5.0:
            return False
        self._last_check = now
        info = await self.client.info("server")
        run_id = str(info.get("run_id"))
        if run_id != self._run_id:
            if self._run_id is not None:
                log.warning("redis restarted (run_id changed): reconciling %s", self.topic)
            self._needs_reconcile = True
        if not self._needs_reconcile:
            return False
        await self.reconcile(sorted(owned_partitions()))
        self._run_id = run_id
        self._needs_reconcile = False
        return True

    async def reconcile(self, partitions: list[int]) -> None:
        """Make every Redis key of ``partitions`` equal the topic's latest record for it."""
        if not partitions:
            return
        started = time.monotonic()
        latest = await read_latest(self.bootstrap, self.topic, partitions)
        wanted = {self.redis_key(key): (key, value) for key, value in latest.items()}
        await self._write(list(latest.items()))
        # keys we own that the topic no longer has at all (e.g. tombstones already compacted away)
        stale: list[str] = []
        owned = set(partitions)
        async for raw_key in self.client.scan_iter(match=self.scan_pattern, count=1000):
            name = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if name in wanted:
                continue
            topic_key = name.split(":", 2)[2].encode()
            if partition_for_key(topic_key, self.partitions) in owned:
                stale.append(name)
        for start in range(0, len(stale), 1000):
            await self.client.delete(*stale[start : start + 1000])
        self.metrics.redis_reconciles.inc()
        log.info(
            "reconciled %s partitions %s: %d keys, %d stale removed in %.2fs",
            self.topic,
            partitions,
            len(latest),
            len(stale),
            time.monotonic() - started,
        )


async def read_latest(bootstrap: str, topic: str, partitions: list[int]) -> dict[bytes, bytes | None]:
    """The latest record per key in ``partitions`` of a compacted topic, read from the beginning to the end."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in partitions]
        consumer.assign(tps)
        end_offsets = await consumer.end_offsets(tps)
        # Explicit seeks: seek_to_beginning() right after assign() races with the reset assign() starts (to the
        # end, by default), so the read could start at the end, find nothing, and the reconcile then deleted
        # every key as stale.
        for tp, offset in (await consumer.beginning_offsets(tps)).items():
            consumer.seek(tp, offset)
        latest: dict[bytes, bytes | None] = {}
        remaining = {tp for tp in tps if end_offsets[tp] > 0}
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, messages in batches.items():
                for message in messages:
                    if message.key is not None and message.offset < end_offsets[tp]:
                        latest[message.key] = message.value
            for tp in list(remaining):
                if await consumer.position(tp) >= end_offsets[tp]:
                    remaining.discard(tp)
        return latest
    finally:
        await consumer.stop()


class ViewConsumer:
    """Keeps Redis following the decisions and preferences topics, with a consumer group of its own.

    Not a Faust agent on purpose. Faust tracks every delivered offset and commits only up to the first one it
    never saw acknowledged; after a restart or rebalance it delivered some offsets of these topics twice and some
    never (its read-offset filter drops records behind a stale prefetch), and the group's commits on them then
    stopped for good while the records went on: the view's lag froze and every restart re-read from there. A
    Redis write is idempotent (the latest record per key wins), so a plain consumer that commits what it has
    written is all the view needs: at-least-once, resumed from its own group's offsets, balanced over the workers
    independently of the guard's input partitions.
    """

    def __init__(self, views: Sequence[RedisView], *, bootstrap: str, group_id: str, batch: int) -> None:
        self.views = {view.topic: view for view in views}
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.batch = batch
        self._consumer: AIOKafkaConsumer | None = None
        # what is in Redis: per partition, the offset after the last record written (and committed, if it could be)
        self._written: dict[TopicPartition, int] = {}
        # held while a batch is written and committed; a revocation waits for it, so once a partition has moved
        # to another worker this one writes nothing more of it (an older record cannot overwrite a newer one)
        self._batch_lock = asyncio.Lock()

    def owned_partitions(self, topic: str) -> list[int]:
        consumer = self._consumer
        if consumer is None:
            return []
        return sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)

    async def run(self) -> None:
        """Consume until cancelled. A Kafka failure restarts the consumer after a pause; it never ends the worker."""
        delay = 1.0
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.batch,
            )
            try:
                consumer.subscribe(list(self.views), listener=_WaitForBatch(self))
                await consumer.start()
                self._consumer = consumer
                log.info("redis view consuming %s as group %s", sorted(self.views), self.group_id)
                while True:
                    batches = await consumer.getmany(timeout_ms=500, max_records=self.batch)
                    if batches:
                        await self._write_and_commit(consumer, batches)
                    delay = 1.0
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a broker outage, a fenced member: start over from the committed offsets
                log.warning(
                    "redis view consumer failed (%s: %s); restarting in %.0fs", type(error).__name__, error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
            finally:
                self._consumer = None
                self._written.clear()
                try:
                    await consumer.stop()
                except Exception as error:  # already broken: nothing more to release
                    log.debug("stopping the redis view consumer: %s", error)

    async def _write_and_commit(self, consumer: AIOKafkaConsumer, batches: dict[Any, list[Any]]) -> None:
        async with self._batch_lock:
            assigned = consumer.assignment()
            for tp, messages in batches.items():
                if tp not in assigned:  # revoked while this batch was fetched: its new owner writes it
                    continue
                view = self.views[tp.topic]
                records = [(message.key, message.value) for message in messages if message.key is not None]
                await view.apply(records, functools.partial(self.owned_partitions, tp.topic))
                self._written[tp] = messages[-1].offset + 1
            offsets = {tp: self._written[tp] for tp in batches if tp in self._written and tp in assigned}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except KafkaError as error:
                # the group moved on (rebalance, fenced): the records are written, the next owner writes them again
                log.info(
                    "redis view commit failed (%s: %s); the records will be written again", type(error).__name__, error
                )

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._batch_lock:  # the batch in hand is written (and committed) first
            for tp in revoked:
                self._written.pop(tp, None)

    async def lags(self) -> dict[tuple[str, int], int]:
        """Records not yet in Redis, per assigned partition of the view's topics."""
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
