"""The guard's hot path: input batches in, a chain of Kafka transactions per input partition out.

The batch loop (:meth:`Pipeline.run_once`), in order:

1. set up the partitions assigned since the last batch: fence the previous owner (the partition's transactional
   producer takes its id), restore the local store from the changelog, rebuild the task (clock, deadlines, blocks
   in force) and seek to the group's committed offset; only then is the partition's input resumed;
2. fetch a batch of input records (read committed) from every partition that is ready;
3. each partition's task handles its records: outputs collected, states changed in memory only;
4. on the timer tick, each task's wall-clock timers: expired blocks tombstoned, and on a quiet partition unread
   deadlines settled by wall clock;
5. per partition with anything to write whose previous transaction has committed, its next one: outputs, the
   changed states to the changelog, the consumed offset. The partitions' transactions run concurrently and
   independently, while the loop fetches and handles on (a partition's work waits in its next transaction
   meanwhile, and the next fetch waits only briefly for input so that it is sealed soon after); a partition
   whose next transaction has grown to twice its share of a batch waits for its previous one first, which bounds
   a transaction and what is held in memory and, under load, gives the commits the loop's time. One round of
   transactions for all partitions per batch (each waiting for the slowest) cost a third more latency at 5k ev/s
   and a tenth of the throughput (bench/README.md);
6. per committed transaction: the changed states written to the local store with the changelog position, the
   counts published to the metrics, and its decisions and preference views written through to Redis (see
   :mod:`streams.redis_view`). A partition whose transaction failed is dropped (its in-memory states are
   ahead of what was committed) and set up again from step 1: after a fencing error only once a rebalance gives
   it back (another worker owns it now), after any other error after a pause.

Beside the chains, each partition checks every 10 s that what it committed has become readable; a commit marker
the broker decided and never wrote is written in the partition's chain (:mod:`streams.marker_watch`).

A revocation waits for the batch in hand and the transactions in flight to finish, so a partition leaves with
everything it handled committed. Exactly-once follows from the transaction: outputs, state and input position
become visible together or not at all, and a fenced zombie's transaction can never commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import ConsumerStoppedError, NoOffsetForPartitionError, OffsetOutOfRangeError

from fatigue.clock import partition_for_key
from fatigue.partition import CustomerEngine, Loader, PartitionDriver
from fatigue.policy import Policy
from streams.bounded import within
from streams.collector import Partitioner, Record, RecordCollector, Topics
from streams.marker_watch import MarkerWatch
from streams.metrics import ActiveBlocks, Metrics
from streams.restore import restore
from streams.settings import Settings
from streams.state_store import PartitionStore, partition_path, store_options
from streams.task import PartitionTask, Transaction, state_of
from streams.transactions import PartitionProducer, Written, is_fenced, transactional_id

log = logging.getLogger("fatigue.pipeline")

EngineFactory = Callable[[Loader], CustomerEngine]
# (topic, partition, [(offset, (key, value, headers))], offset past the transaction's commit marker there)
CommittedRecords = tuple[str, int, list[tuple[int, Record]], int]

_SETUP_RETRY_S: Final = 2.0
# how long a fetch waits for input while a partition's next transaction waits for its previous one to commit
_CHAIN_POLL_MS: Final = 2
# a partition with input to read whose position has not moved for this long is reported (warn_stalled)
_STALL_S: Final = 30.0
# a local store older than this is rebuilt from the whole changelog: half the changelog's delete.retention.ms, so a
# tombstone (an erasure) it lacks is still there to read
_STORE_MAX_AGE_MS: Final = 43_200_000


class Pipeline:
    """See the module docstring."""

    def __init__(self, settings: Settings, policy: Policy, metrics: Metrics, engine_factory: EngineFactory) -> None:
        self.settings = settings
        self.policy = policy
        self.metrics = metrics
        self.engine_factory = engine_factory
        self.topics = Topics(
            events=settings.events_topic,
            decisions=settings.decisions_topic,
            prefs=settings.prefs_topic,
            violations=settings.violations_topic,
            dlq=settings.dlq_topic,
            changelog=settings.changelog_topic,
            partitions=settings.partitions,
        )
        self.active_blocks = ActiveBlocks()
        self.partitioner = Partitioner(settings.partitions)
        self.store_options = store_options(settings.rocksdb_block_cache_bytes, settings.rocksdb_write_buffer_bytes)
        self.tasks: dict[int, PartitionTask] = {}
        self.producers: dict[int, PartitionProducer] = {}
        self.stores: dict[int, PartitionStore] = {}
        self.suspended: dict[int, PartitionTask] = {}  # tasks of revoked partitions, reused if given back untouched
        self.to_set_up: dict[int, float] = {}  # partition -> monotonic time not to set it up before
        self.lock = asyncio.Lock()  # held from handling a batch to its commit; a revocation waits for it
        self.consumer: AIOKafkaConsumer | None = None
        self._restorer: AIOKafkaConsumer | None = None
        self._stopping = False
        self._next_tick = 0.0
        # per partition, its transaction being written (at most one: a producer has one transaction at a time)
        self._in_flight: dict[int, asyncio.Future[None]] = {}
        # told what each committed transaction wrote to the topics Redis follows (the Redis view writes it through
        # at once, instead of waiting to read it back from those topics)
        self.view_topics = (self.topics.decisions, self.topics.prefs)
        self.on_committed: Callable[[list[CommittedRecords]], Awaitable[None]] | None = None
        # per partition: (next input offset, since when, last warned) for warn_stalled
        self._progress: dict[int, tuple[int | None, float, float]] = {}
        # watches that what each partition committed becomes readable; writes a commit marker the broker lost
        self.markers = MarkerWatch(settings.bootstrap, settings.app_id, settings.events_topic, metrics)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        settings = self.settings
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            group_id=settings.app_id,
            client_id=f"{settings.app_id}-pipeline",
            enable_auto_commit=False,
            # not reset silently: input deleted by retention before it was read is reported (see _read_past_deleted)
            auto_offset_reset="none",
            isolation_level="read_committed",
            max_poll_records=settings.input_batch,
            session_timeout_ms=int(settings.session_timeout_s * 1000),
            heartbeat_interval_ms=int(settings.heartbeat_interval_s * 1000),
            fetch_max_wait_ms=100,
        )
        self.consumer.subscribe([settings.events_topic], listener=_Rebalance(self))
        self._restorer = AIOKafkaConsumer(
            bootstrap_servers=settings.bootstrap,
            client_id=f"{settings.app_id}-restore",
            group_id=None,
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        await self._restorer.start()
        await self.consumer.start()
        log.info("pipeline consuming %s as group %s", settings.events_topic, settings.app_id)

    async def run(self) -> None:
        """Run batches until :meth:`stop`."""
        while not self._stopping:
            try:
                await self.run_once()
            except ConsumerStoppedError:
                return

    async def stop(self) -> None:
        """Finish the batch in hand, then leave the group (its partitions move at once) and close everything."""
        self._stopping = True
        await self.markers.stop()  # read-only checks: nothing to finish
        async with self.lock:
            await self._await_in_flight()  # the batch in hand is committed
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            try:  # revokes (see on_revoked) and leaves the group, so the partitions move at once
                if not await within(consumer.stop(), 30):
                    log.warning("the pipeline's consumer did not stop within 30s: the group drops it later")
            except Exception as error:  # the group then drops us after the session timeout
                log.warning("the pipeline's consumer did not stop cleanly: %s", error)
        async with self.lock:
            await self._stop_producers(list(self.producers))
            if self._restorer is not None:
                await self._restorer.stop()
            for store in self.stores.values():
                store.close()
            self.stores.clear()
            self.tasks.clear()

    # ------------------------------------------------------------------ the batch loop

    async def run_once(self) -> None:
        consumer = self.consumer
        if consumer is None:
            raise ConsumerStoppedError()
        # 1. partitions assigned since the last batch
        if self.to_set_up:
            await self._set_up_due()
        # 2. a batch from the ready partitions
        wait_ms = _CHAIN_POLL_MS if self._waiting() else int(self.settings.input_batch_wait_s * 1000)
        try:
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=self.settings.input_batch)
        except OffsetOutOfRangeError as error:
            positions: dict[TopicPartition, int] = error.args[0] if error.args else {}
            for tp, offset in positions.items():
                await self._read_past_deleted(tp, offset)
            return
        except NoOffsetForPartitionError as error:
            # aiokafka looks for a starting position of every assigned partition, paused ones too, and finds none
            # where the group has committed nothing (we reset nothing ourselves: see _read_past_deleted). A
            # partition waiting for its set-up gets a placeholder (it stays paused; the set-up seeks it), so the
            # other partitions' input goes on meanwhile.
            for tp in error.args:
                if isinstance(tp, TopicPartition) and tp.partition not in self.tasks:
                    consumer.seek(tp, 0)
                elif isinstance(tp, TopicPartition):
                    await consumer.seek_to_beginning(tp)
            return
        async with self.lock:
            if self._stopping:
                return
            # 3. handle
            for tp, records in batches.items():
                task = self.tasks.get(tp.partition)
                if task is not None and records:
                    task.handle(records)
            # 4. wall-clock timers
            now = time.monotonic()
            if now >= self._next_tick:
                self._next_tick = now + self.settings.tick_interval_s
                await self._punctuate(consumer)
            # 5. per partition, its next transaction
            await self._start_transactions()

    async def _start_transactions(self) -> None:
        """Per partition with anything to write, its next transaction as soon as its previous one has committed
        (they run while the loop fetches and handles on). A partition whose next transaction has grown past twice
        its share of a batch while the previous one is still being written waits for that one first: under load
        the commits then get the loop's time, and a transaction, and what is held in memory, stay bounded."""
        cap = 2 * max(self.settings.input_batch // max(len(self.tasks), 1), 1)
        consumer, reader = self.consumer, self._restorer
        for partition, task in list(self.tasks.items()):
            if consumer is not None and reader is not None:
                self.markers.schedule(partition, consumer, reader)  # read-only, beside the chain
            running = self._in_flight.get(partition)
            producer = self.producers.get(partition)
            if (running is None or running.done()) and producer is not None and self.markers.repair_due(partition):
                # in the partition's chain: no transaction of it is in flight while the repair runs (see hanging)
                running = self._in_flight[partition] = asyncio.ensure_future(self.markers.repair(partition, producer))
            if not task.pending():
                continue
            if running is not None and not running.done():
                if task.txn.handled < cap:
                    continue  # sealed once its previous transaction is done (see _waiting)
                await running
                if self.tasks.get(partition) is not task:
                    continue  # that transaction failed: the task was dropped with its work
            self._in_flight[partition] = asyncio.ensure_future(self._commit_task(task, task.seal()))

    def _waiting(self) -> bool:
        """Whether a partition's next transaction waits for its previous one: the next fetch then waits only
        briefly for input, so that the next transaction starts soon after the previous one is done."""
        for partition, task in self.tasks.items():
            running = self._in_flight.get(partition)
            if running is not None and not running.done() and task.pending():
                return True
        return False

    async def _await_in_flight(self) -> None:
        in_flight = list(self._in_flight.values())
        self._in_flight.clear()
        if in_flight:
            await asyncio.gather(*in_flight)

    async def _punctuate(self, consumer: AIOKafkaConsumer) -> None:
        wall_ms = int(time.time() * 1000)
        quiet_after = self.settings.quiet_after_s
        now = time.monotonic()
        for partition, task in list(self.tasks.items()):
            quiet = False
            if now - task.last_input_at >= quiet_after:
                tp = TopicPartition(self.topics.events, partition)
                end = consumer.last_stable_offset(tp)
                if end is None:
                    end = consumer.highwater(tp)
                position = await consumer.position(tp)
                quiet = end is not None and position >= end
                if quiet:
                    task.read_past(position)
            task.punctuate(wall_ms, self.settings.wall_settle_ms, quiet=quiet)

    async def _commit_task(self, task: PartitionTask, txn: Transaction) -> None:
        partition = task.partition
        producer = self.producers.get(partition)
        offsets = None if txn.offset is None else {TopicPartition(self.topics.events, partition): txn.offset}
        started = time.monotonic()
        try:
            if producer is None:
                raise RuntimeError("no producer: the partition was dropped while its transaction waited")
            # bounded: a transaction the broker has not committed by its timeout it aborts anyway, and one that
            # hangs in the client (seen once after a broker restart) would hold the partition up for good; a new
            # producer then fences it, and the partition is set up again from what was committed
            written = await asyncio.wait_for(
                producer.write(txn.out.records, offsets, self.settings.app_id),
                timeout=self.settings.transaction_timeout_s,
            )
        except Exception as error:
            await self._lose(partition, error)
            return
        self.metrics.transactions.labels(outcome="committed").inc()
        self.metrics.transaction_seconds.observe(time.monotonic() - started)
        self.markers.committed(partition, producer, txn.offset, written)
        changelog = written.get((self.topics.changelog, partition))
        task.committed(txn, None if changelog is None else changelog.end)
        if self.on_committed is not None:
            await self.on_committed(self._view_records(txn, written))

    def _view_records(self, txn: Transaction, written: dict[tuple[str, int], Written]) -> list[CommittedRecords]:
        """What a committed transaction wrote to the topics Redis follows, each record with its offset."""
        records = txn.out.records
        return [
            (topic, partition, list(zip(landed.offsets(), records[(topic, partition)], strict=True)), landed.end)
            for (topic, partition), landed in written.items()
            if topic in self.view_topics
        ]

    async def _lose(self, partition: int, error: BaseException) -> None:
        """A transaction failed: nothing of it is visible. Drop the partition's task and producer; set it up again
        later (after a fencing error only if a rebalance gives it back)."""
        fenced = is_fenced(error)
        self.metrics.transactions.labels(outcome="fenced" if fenced else "failed").inc()
        if fenced:
            log.warning(
                "partition %d: fenced (%s: %s): another worker has taken it over; nothing of ours since our last "
                "commit becomes visible. Dropping it until a rebalance gives it back",
                partition,
                type(error).__name__,
                error,
            )
        else:
            log.error(
                "partition %d: transaction failed (%s: %s); dropping its uncommitted work and setting it up again",
                partition,
                type(error).__name__,
                error,
            )
        self.tasks.pop(partition, None)
        self.active_blocks.drop(partition)
        self.markers.drop(partition)
        await self._stop_producers([partition])
        consumer = self.consumer
        if consumer is not None:
            tp = TopicPartition(self.topics.events, partition)
            if tp in consumer.assignment():
                consumer.pause(tp)
                # a fenced partition is someone else's: look at it again only if no rebalance took it away by then
                delay = self.settings.session_timeout_s * 2 if fenced else _SETUP_RETRY_S
                self.to_set_up[partition] = time.monotonic() + delay

    # ------------------------------------------------------------------ assignment

    def on_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        consumer = self.consumer
        mine = [tp for tp in assigned if tp.topic == self.topics.events]
        if consumer is not None and mine:
            consumer.pause(*mine)  # aiokafka may hand out records before this callback returns
        for tp in mine:
            self.to_set_up[tp.partition] = 0.0
        kept = {tp.partition for tp in mine}
        for partition in [p for p in self.suspended if p not in kept]:
            del self.suspended[partition]  # another worker owns it now: its states here are stale
        self.metrics.assigned_partitions.labels(topic=self.topics.events).set(len(mine))
        log.info("assigned input partitions %s", sorted(tp.partition for tp in mine))

    async def on_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        partitions = [tp.partition for tp in revoked if tp.topic == self.topics.events]
        async with self.lock:  # the batch in hand is committed first
            await self._await_in_flight()
            for partition in partitions:
                self.to_set_up.pop(partition, None)
                task = self.tasks.pop(partition, None)
                # kept for reuse only when everything it handled is committed: a task with work in its next
                # transaction has states ahead of the changelog (a reused one would see that input again as
                # duplicates once the partition is read from its committed offset)
                if task is not None and not task.pending():
                    self.suspended[partition] = task
                self.active_blocks.drop(partition)
                self.markers.drop(partition)
            await self._stop_producers(partitions)
        if partitions:
            log.info("revoked input partitions %s", sorted(partitions))

    async def _set_up_due(self) -> None:
        now = time.monotonic()
        due = [partition for partition, not_before in self.to_set_up.items() if not_before <= now]
        if not due:
            return
        results = await asyncio.gather(*(self._set_up(partition) for partition in due), return_exceptions=True)
        for partition, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                log.warning(
                    "partition %d: set-up failed (%s: %s); retrying in %.0fs",
                    partition,
                    type(result).__name__,
                    result,
                    _SETUP_RETRY_S,
                )
                await self._stop_producers([partition])
                if partition in self.to_set_up:
                    self.to_set_up[partition] = time.monotonic() + _SETUP_RETRY_S

    async def _set_up(self, partition: int) -> None:
        consumer, restorer = self.consumer, self._restorer
        assert consumer is not None
        assert restorer is not None
        settings = self.settings
        tp = TopicPartition(self.topics.events, partition)
        started = time.monotonic()
        # fence first: from here on no earlier owner can commit, so the changelog and offsets are final
        producer = PartitionProducer(
            settings.bootstrap,
            transactional_id(settings.app_id, self.topics.events, partition),
            transaction_timeout_ms=settings.transaction_timeout_ms,
        )
        self.producers[partition] = producer
        await producer.start()
        store = self.stores.get(partition)
        if store is None:
            store = self.stores[partition] = PartitionStore(
                partition_path(Path(settings.data_dir), partition), self.store_options
            )
        async with self.lock:
            restored = await restore(
                restorer, store, TopicPartition(self.topics.changelog, partition), max_age_ms=_STORE_MAX_AGE_MS
            )
            self.metrics.restored_records.inc(restored)
            committed = await consumer.committed(tp)
            task = self.suspended.pop(partition, None)
            reused = (
                task is not None
                and restored == 0
                and task.store_position == store.position
                and task.committed_offset == committed
                and task.next_offset == committed
                and not task.pending()
            )
            if not reused or task is None:
                task = self._new_task(partition, store)
            else:
                self.active_blocks.reset(partition, int(time.time() * 1000))
                task.recount_blocks()
            if tp not in consumer.assignment() or partition not in self.to_set_up:
                await producer.stop()  # revoked meanwhile
                self.producers.pop(partition, None)
                return
            if committed is None:
                await consumer.seek_to_beginning(tp)
            else:
                committed = await self._read_past_deleted(tp, committed)
            task.next_offset = committed
            task.committed_offset = committed
            self.tasks[partition] = task
            del self.to_set_up[partition]
            consumer.resume(tp)
        log.info(
            "partition %d ready in %.2fs: %s, %d changelog records restored, input from offset %s",
            partition,
            time.monotonic() - started,
            "in-memory state kept"
            if reused
            else f"{len(task.blocks)} blocks in force, {len(task.driver.clock)} deadlines",
            restored,
            committed,
        )

    async def _read_past_deleted(self, tp: TopicPartition, offset: int) -> int:
        """Seek ``tp`` to ``offset``, or past the records retention deleted before they were read: reported,
        never silent (a warning naming the offsets, and the metric behind the FatigueGuardInputSkipped alert)."""
        consumer = self.consumer
        assert consumer is not None
        beginning = (await consumer.beginning_offsets([tp]))[tp]
        if offset < beginning:
            log.warning(
                "input partition %d: offsets %d..%d no longer exist (deleted by retention before they were read); "
                "reading on from %d",
                tp.partition,
                offset,
                beginning - 1,
                beginning,
            )
            self.metrics.input_skipped.inc(beginning - offset)
            offset = beginning
        consumer.seek(tp, offset)
        return offset

    def _new_task(self, partition: int, store: PartitionStore) -> PartitionTask:
        def load(customer_id: str) -> bytes | None:
            return state_of(store.get(customer_id.encode()))

        driver = PartitionDriver(self.engine_factory(load), self.settings.deadline_settle_ms)
        driver.time_ms = store.clock_ms
        task = PartitionTask(
            partition,
            driver,
            store,
            RecordCollector(self.topics, partition, self.partitioner),
            self.metrics,
            self.active_blocks,
            max_event_bytes=self.policy.max_event_bytes,
            cache_customers=self.settings.state_cache_customers,
        )
        for key, value in store.states():
            task.index(key, value)
        return task

    async def _stop_producers(self, partitions: list[int]) -> None:
        producers = [self.producers.pop(partition) for partition in partitions if partition in self.producers]
        if producers:
            await asyncio.gather(*(producer.stop() for producer in producers))

    # ------------------------------------------------------------------ for gauges and the web page

    def owned(self) -> list[int]:
        return sorted(self.tasks)

    def lags(self) -> dict[tuple[str, int], int]:
        consumer = self.consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for partition, task in self.tasks.items():
            tp = TopicPartition(self.topics.events, partition)
            end = consumer.last_stable_offset(tp)
            if end is None:
                end = consumer.highwater(tp)
            done = task.next_offset if task.next_offset is not None else task.committed_offset
            if end is not None:
                lags[(self.topics.events, partition)] = max(end - (done or 0), 0)
        return lags

    def warn_stalled(self, lags: dict[tuple[str, int], int], now: float) -> None:
        """Log, at most once a minute per partition, an input partition whose committed offset has not moved for
        _STALL_S while it has input to read or handled input to commit: what it waits for, to diagnose it (seen
        after a broker restart in tests: records handled, never committed, no transaction in flight)."""
        consumer = self.consumer
        for partition, task in self.tasks.items():
            offset = task.committed_offset
            behind = lags.get((self.topics.events, partition), 0) > 0 or task.next_offset != offset
            seen = self._progress.get(partition)
            if seen is None or seen[0] != offset or not behind:
                self._progress[partition] = (offset, now, 0.0)
                continue
            _, since, warned = seen
            if now - since < _STALL_S or now - warned < 60:
                continue
            self._progress[partition] = (offset, since, now)
            running = self._in_flight.get(partition)
            paused = consumer is not None and TopicPartition(self.topics.events, partition) in consumer.paused()
            log.warning(
                "partition %d: nothing committed for %.0fs with %d records to read: next offset %s, committed %s, "
                "paused %s, transaction in flight %s, next transaction holds %d records",
                partition,
                now - since,
                lags.get((self.topics.events, partition), 0),
                task.next_offset,
                offset,
                paused,
                running is not None and not running.done(),
                task.txn.handled,
            )

    def partition_of(self, customer_id: str) -> int:
        return partition_for_key(customer_id.encode(), self.settings.partitions)

    def state_bytes(self, customer_id: str) -> bytes | None:
        """A customer's committed state on this worker (None: not here, or unknown)."""
        partition = self.partition_of(customer_id)
        store = self.stores.get(partition)
        if store is None or partition not in self.tasks:
            return None
        return state_of(store.get(customer_id.encode()))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def on_partitions_revoked(self, revoked: Iterable[Any]) -> None:
        await self.pipeline.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Iterable[Any]) -> None:
        self.pipeline.on_assigned(assigned)
