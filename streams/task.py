"""One input partition's processing (Kafka Streams' StreamTask): its records in, its transaction's records out.

A task owns the partition's :class:`fatigue.partition.PartitionDriver` (engine and event-time clock), its local
store, the index of blocks in force (for expiry tombstones and the active-blocks gauge) and the counts of what its
pending transaction will publish. It never talks to Kafka: :mod:`streams.pipeline` gives it records and writes what
it collected. After a transaction commits, :meth:`committed` writes the changed states to the local store and
publishes the counts to the metrics; after one fails, the task is thrown away (its in-memory states are ahead of
what was committed) and the partition is set up again from the store and the changelog.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Final

from fatigue.events import CHANNEL_INDEX, CHANNELS, MAX_ID_CHARS, Rejection
from fatigue.partition import DecisionRecord, PartitionDriver, RejectionFields
from fatigue.state import CustomerState
from streams.collector import REROUTED_HEADER, Headers, RecordCollector
from streams.metrics import ActiveBlocks, Metrics
from streams.state_store import CLOCK_KEY, Change, PartitionStore, encode_int
from streams.timers import INDEFINITE, BlockIndex

# Changelog (and local store) values: the input offset the state was last written at, then the core's state bytes
# (the layout of the previous, Faust-table worker's changelog, so an upgraded worker restores its states).
OFFSET_BYTES: Final = 8
_MAX_KEY_BYTES: Final = 4 * MAX_ID_CHARS  # the UTF-8 of the longest valid customer id


def state_of(value: bytes | None) -> bytes | None:
    """The core's state bytes in a changelog value (None: no state; a bare offset was an erasure's marker)."""
    if value is None or len(value) <= OFFSET_BYTES:
        return None
    return value[OFFSET_BYTES:]


class InputRecord:
    """What a task needs of an input record (aiokafka's ConsumerRecord has these attributes)."""

    key: bytes | None
    value: bytes | None
    offset: int
    headers: Sequence[tuple[str, bytes]]


class PartitionTask:
    """See the module docstring."""

    def __init__(
        self,
        partition: int,
        driver: PartitionDriver,
        store: PartitionStore,
        collector: RecordCollector,
        metrics: Metrics,
        active_blocks: ActiveBlocks,
        *,
        max_event_bytes: int,
        cache_customers: int,
    ) -> None:
        self.partition = partition
        self.driver = driver
        self.store = store
        self.metrics = metrics
        self.max_event_bytes = max_event_bytes
        self.cache_customers = cache_customers
        self.blocks = BlockIndex()
        self.next_offset: int | None = None  # the next input offset to handle (and to commit)
        self.committed_offset: int | None = None  # the input offset the last committed transaction stored
        self.last_input_at = time.monotonic()
        self.store_position = store.position
        self.active_blocks = active_blocks
        active_blocks.reset(partition, int(time.time() * 1000))
        self._clock_sealed = driver.time_ms
        # the native engine routes runs of records itself (see _handle_runs)
        self._handle_run: Callable[..., tuple[Any, ...]] | None = getattr(driver.engine, "handle_run", None)
        self.txn = Transaction(collector)

    # ------------------------------------------------------------------ restore

    def index(self, key: bytes, value: bytes) -> None:
        """Account for a stored state (on restore): its deadline on the partition clock, its blocks in force."""
        raw = state_of(value)
        if raw is None:
            return
        state = CustomerState.from_bytes(raw)
        self.driver.restore(state.customer_id, state.watermark_ms, state.next_deadline_ms())
        for channel, record in enumerate(state.emitted):
            if record is not None and record[1]["action"] == "block":
                until = record[1]["until_ms"]
                self.blocks.set(state.customer_id, channel, until)
                self.active_blocks.change_one(self.partition, channel, None, INDEFINITE if until is None else until)

    def recount_blocks(self) -> None:
        """Count this partition's blocks in force into the gauge again (the task was kept across a rebalance)."""
        for (_, channel), until in self.blocks.in_force.items():
            self.active_blocks.change_one(self.partition, channel, None, until)

    # ------------------------------------------------------------------ input

    def handle(self, records: Sequence[Any]) -> None:
        """Handle a run of this partition's input records, in offset order."""
        skip_below = self.next_offset if self.next_offset is not None else -1
        if self._handle_run is not None:
            self._handle_runs(records if isinstance(records, list) else list(records), skip_below)
        else:
            self._handle_each(records, skip_below)
        if records and records[-1].offset >= skip_below:
            self.next_offset = records[-1].offset + 1
            self.txn.offset = self.next_offset
            self.txn.handled += len(records)
            self.last_input_at = time.monotonic()

    def _handle_each(self, records: Sequence[Any], skip_below: int) -> None:
        """Records one by one through the partition driver. The routing of an outcome is inlined here (and the
        names it uses are locals): it runs for every input record."""
        feed = self.driver.feed_fields
        txn = self.txn
        out = txn.out
        counts = txn.counts
        partition_of = out.partition_of
        own = self.partition
        max_event_bytes = self.max_event_bytes
        violation = out.violation
        sender_label = self.metrics.sender_label
        for record in records:
            offset = record.offset
            if offset < skip_below:
                continue  # fetched before the partition was sought back to its committed offset
            key = record.key
            value = record.value
            if (
                key is not None
                and len(key) <= _MAX_KEY_BYTES
                and (value is None or len(value) <= max_event_bytes)
                and partition_of(key) != own
                and not any(name == REROUTED_HEADER for name, _ in record.headers or ())
            ):
                self._reroute(record)
                continue
            (rejection, _, event_type, channel, category, decisions, violations, prefs, erased, _, _) = feed(
                value if value is not None else b"", key
            )
            if rejection is not None:
                self._reject(record, rejection)
                continue
            assert key is not None
            assert event_type is not None
            counts[("events", (event_type, channel or "all", category or "marketing"))] += 1
            if decisions:
                self._decisions(decisions, event_driven=True)
            for value_bytes, kind, violation_channel, sender in violations:
                violation(key, value_bytes)
                counts[("violations", (kind, violation_channel, sender_label(sender)))] += 1
            if erased:
                self._erased(key, decisions)
            elif prefs is not None:
                out.prefs(key, prefs)

    def _handle_runs(self, records: list[Any], skip_below: int) -> None:
        """The native engine's path: :meth:`_handle_each` done in Rust (``NativePartition.handle_run``, which holds
        the two equal: tests/unit/test_task.py), up to an erasure, which the Python core applies (it goes through
        :meth:`_handle_each`), then on after it. What it leaves to do here is per run, or per decision."""
        assert self._handle_run is not None
        txn = self.txn
        out = txn.out
        counts = txn.counts
        topics = out.topics
        start = 0
        while True:
            (stop, rejections, reroutes, events, decisions, violations, block_changes, decided_at, prefs) = (
                self._handle_run(
                    records,
                    start,
                    skip_below,
                    self.driver.clock,
                    out.records,
                    topics.decisions,
                    topics.violations,
                    self.partition,
                    topics.partitions,
                    _MAX_KEY_BYTES,
                    self.max_event_bytes,
                    REROUTED_HEADER,
                )
            )
            now = time.time()  # the latencies are measured at the end of the run (Rust reads no clock)
            for index, rejection in rejections:
                self._reject(records[index], rejection)
            for index in reroutes:
                self._reroute(records[index])
            for labels, count in events:
                counts[("events", labels)] += count
            for labels, count in decisions:
                counts[("decisions", labels)] += count
            for (kind, channel, sender), count in violations:
                counts[("violations", (kind, channel, self.metrics.sender_label(sender)))] += count
            blocks = self.blocks
            changes = txn.block_changes
            for customer, index, block, until_ms in block_changes:
                if block:
                    old = blocks.set(customer, index, until_ms)
                    changes.append((index, old, INDEFINITE if until_ms is None else until_ms))
                else:
                    changes.append((index, blocks.clear(customer, index), None))
            txn.latencies.extend([max(now - decided_at_ms / 1000, 0.0) for decided_at_ms in decided_at])
            for key, value in prefs:
                out.prefs(key, value)
            if stop >= len(records):
                return
            self._handle_each(records[stop : stop + 1], skip_below)
            start = stop + 1

    def _reroute(self, record: Any) -> None:
        """A producer with another partitioner (librdkafka's default is crc32) put this customer on the wrong
        partition; its state lives with the murmur2 partition, so forward it there once. One that cannot be valid
        is dead-lettered where it is: a copy of a huge one might not fit the producer."""
        out = self.txn.out
        headers: Headers = list(record.headers or ())
        out.reroute(record.key, record.value, headers, out.partition_of(record.key))
        self.txn.counts[("rerouted", ())] += 1

    def _reject(self, record: Any, rejection: RejectionFields) -> None:
        self.txn.out.dead_letter(record.key, record.value, record.offset, Rejection(*rejection))
        self.txn.counts[("rejected", (rejection[0].split(":", 1)[0],))] += 1

    def read_past(self, position: int) -> None:
        """The consumer's position moved past offsets that hold no record for us (transaction markers, aborted
        records): commit it, so the group's lag reads 0 on a caught-up partition."""
        if self.next_offset is None or position > self.next_offset:
            self.next_offset = position
            self.txn.offset = position

    def _erased(self, key: bytes, decisions: list[DecisionRecord]) -> None:
        """The customer was erased: every decision key without a decision here and the preferences view are
        tombstoned."""
        kept = {record[4] for record in decisions}
        customer = key.decode()
        for channel in CHANNELS:
            if channel not in kept:
                self.txn.out.decision(f"{channel}:{customer}".encode(), None)
                index = CHANNEL_INDEX[channel]
                self.txn.block_changes.append((index, self.blocks.clear(customer, index), None))
        self.txn.out.prefs(key, None)
        self.txn.counts[("erasures", ())] += 1

    def _decisions(self, decisions: list[DecisionRecord], *, event_driven: bool) -> None:
        """Collect decisions and account for the blocks they set or lift (and, for those an input caused, the
        latency from the event to now)."""
        txn = self.txn
        decision = txn.out.decision
        counts = txn.counts
        blocks = self.blocks
        block_changes = txn.block_changes
        now = time.time()
        for topic_key, value, action, reason, channel, until_ms, decided_at_ms in decisions:
            decision(topic_key, value)
            counts[("decisions", (action, reason, channel))] += 1
            customer = topic_key[len(channel) + 1 :].decode()  # the key is {channel}:{customer_id}
            index = CHANNEL_INDEX[channel]
            if action == "block":
                old = blocks.set(customer, index, until_ms)
                block_changes.append((index, old, INDEFINITE if until_ms is None else until_ms))
            else:
                block_changes.append((index, blocks.clear(customer, index), None))
            if event_driven:
                txn.latencies.append(max(now - decided_at_ms / 1000, 0.0))

    # ------------------------------------------------------------------ wall clock

    def punctuate(self, wall_ms: int, settle_ms: int, *, quiet: bool) -> None:
        """Wall clock: tombstone blocks that ended before ``wall_ms - settle_ms``; on a quiet partition also settle
        the unread deadlines before it (event time no longer moves there)."""
        bound = wall_ms - settle_ms
        if quiet:
            fired = self.driver.fire(bound)
            if fired:
                self.txn.counts[("deadlines", ("wall_clock",))] += len(fired)
                self._decisions(fired, event_driven=False)
        for customer, channel, until in self.blocks.expired(bound):
            self.txn.out.decision(f"{CHANNELS[channel]}:{customer}".encode(), None)
            self.txn.block_changes.append((channel, until, None))
            self.txn.counts[("tombstones", ())] += 1

    # ------------------------------------------------------------------ transaction

    def pending(self) -> bool:
        """Whether the next transaction has anything to write."""
        return self.txn.offset is not None or len(self.txn.out) > 0

    def seal(self) -> Transaction:
        """The transaction to write now, with the changed states (and the partition clock's time) added to its
        records; what the task handles from here on goes to the next one."""
        txn = self.txn
        last_offset = self.next_offset - 1 if self.next_offset is not None else -1
        prefix = last_offset.to_bytes(OFFSET_BYTES, "big", signed=True)
        sizes: list[int] = []
        changes = txn.changes
        out = txn.out
        for customer, raw in self.driver.engine.take_dirty():
            key = customer.encode()
            value = None if raw is None else prefix + raw
            if raw is not None:
                sizes.append(len(raw))
            out.changelog(key, value)
            changes.append((key, value))
        self.metrics.state_bytes.observe_all(sizes)
        clock = self.driver.time_ms
        if clock != self._clock_sealed:
            self._clock_sealed = clock
            value = encode_int(clock)
            out.changelog(CLOCK_KEY, value)
            changes.append((CLOCK_KEY, value))
        txn.clock_ms = clock
        self.txn = Transaction(RecordCollector(out.topics, self.partition, out.partition_of))
        return txn

    def committed(self, txn: Transaction, changelog_end: int | None) -> None:
        """``txn`` committed: store its states locally and publish its counts. Transactions of a task commit one
        at a time, in order (the pipeline awaits one before it seals the next)."""
        if changelog_end is not None:
            self.store.apply(txn.changes, changelog_end)
            self.store_position = changelog_end
        if txn.offset is not None:
            self.committed_offset = txn.offset
        self._publish(txn)
        engine = self.driver.engine
        # only states of transactions committed and stored are clean: those of the one being handled are dirty
        if engine.resident() > self.cache_customers * 1.1:  # a margin, so eviction runs now and then, not per batch
            engine.evict(self.cache_customers)

    def _publish(self, txn: Transaction) -> None:
        metrics = self.metrics
        series = {
            "events": metrics.events,
            "rejected": metrics.rejected,
            "decisions": metrics.decisions,
            "violations": metrics.violations,
            "deadlines": metrics.deadlines_fired,
        }
        singles = {
            "rerouted": metrics.rerouted,
            "erasures": metrics.erasures,
            "tombstones": metrics.tombstones,
        }
        for (name, labels), count in txn.counts.items():
            if name in series:
                series[name].labels(*labels).inc(count)
            else:
                singles[name].inc(count)
        metrics.latency.observe_all(txn.latencies)
        for channel, old, new in txn.block_changes:
            if old != new:
                self.active_blocks.change_one(self.partition, channel, old, new)
        if txn.clock_ms is not None:
            metrics.partition_event_time.labels(str(self.partition)).set(txn.clock_ms / 1000)


class Transaction:
    """What one transaction of a partition carries: its output records, the state changes for the local store,
    the input offset it commits, and the counts the metrics get once it has committed."""

    __slots__ = ("block_changes", "changes", "clock_ms", "counts", "handled", "latencies", "offset", "out")

    def __init__(self, out: RecordCollector) -> None:
        self.out = out
        self.handled = 0  # input records in it
        self.changes: list[Change] = []
        self.offset: int | None = None  # the input offset to commit (None: no input consumed)
        self.counts: Counter[tuple[str, tuple[str, ...]]] = Counter()  # (metric, labels) -> increment
        self.latencies: list[float] = []
        # (channel, until before, until after) of blocks in force, counted into the gauge once committed
        self.block_changes: list[tuple[int, int | None, int | None]] = []
        self.clock_ms: int | None = None
