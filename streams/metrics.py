"""Prometheus metrics of the worker. Labels never carry customer ids (unbounded, and personal data).

Every label has a bounded set of values: event types, channels, categories, reject reasons and decision reasons come
from the contract and the policy; partitions and topics from the deployment; senders are capped (see
:meth:`Metrics.sender_label`).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from fatigue.events import CHANNELS
from fatigue.state import CustomerState

# Violations are labelled by sender so ops can see who contacts blocked customers; a sender id comes from the
# input, so only the first this-many distinct senders get their own series and the rest share "other".
DEFAULT_MAX_SENDER_LABELS = 50
OTHER_SENDER = "other"
UNKNOWN_SENDER = "unknown"
# how prometheus_client writes a bucket's bound in ``le`` (untyped there)
_le_text: Callable[[float], str] = floatToGoString


class BulkHistogram:
    """A Prometheus histogram observed a transaction's values at a time: prometheus_client's Histogram takes a lock
    and walks its buckets for each value (0.7 us), and the pipeline has about one value per input record (its
    decisions' latencies, its changed states' sizes). Exposed as a custom collector, with the same samples
    (``_bucket`` per ``le`` up to ``+Inf``, ``_count``, ``_sum``)."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = tuple(sorted(float(bound) for bound in buckets))
        self._counts = [0] * (len(self._bounds) + 1)  # per bucket, not cumulative; the last is +Inf's
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        self.observe_all((value,))

    def observe_all(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = self._counts
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # the first bucket whose bound is >= value (le)
            total += value
        self._sum += total

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip((*self._bounds, math.inf), self._counts, strict=True):
            cumulative += count
            buckets.append((_le_text(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=self._sum)


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, max_sender_labels: int = DEFAULT_MAX_SENDER_LABELS
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.max_sender_labels = max_sender_labels
        self._senders: set[str] = set()
        self._lag_series: set[tuple[str, str]] = set()
        self._state_series: set[tuple[str, str]] = set()
        r = self.registry
        self.events = Counter(
            "fatigue_events_total", "Accepted input events", ["type", "channel", "category"], registry=r
        )
        self.rejected = Counter(
            "fatigue_rejected_total", "Inputs sent to the dead-letter topic", ["reason"], registry=r
        )
        self.decisions = Counter(
            "fatigue_decisions_total", "Decisions emitted", ["action", "reason", "channel"], registry=r
        )
        self.violations = Counter(
            "fatigue_violations_total",
            "Sender violations (contact while blocked or in quiet hours)",
            ["kind", "channel", "sender"],
            registry=r,
        )
        self.rerouted = Counter(
            "fatigue_rerouted_total",
            "Inputs forwarded to their customer's partition (producer used another partitioner)",
            registry=r,
        )
        self.erasures = Counter("fatigue_erasures_total", "Customers erased on request", registry=r)
        self.tombstones = Counter(
            "fatigue_tombstones_total", "Expired blocks tombstoned on the decisions topic", registry=r
        )
        self.deadlines_fired = Counter(
            "fatigue_deadline_advances_total", "Customers advanced by a partition clock", ["clock"], registry=r
        )
        self.latency = BulkHistogram(
            "fatigue_event_to_decision_seconds",
            "Wall-clock time from an event's timestamp to its decision (for live traffic)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.redis_writes = Counter("fatigue_redis_writes_total", "Redis keys written or deleted", ["op"], registry=r)
        self.redis_failures = Counter("fatigue_redis_failures_total", "Failed Redis batches (retried)", registry=r)
        self.redis_reconciles = Counter("fatigue_redis_reconciles_total", "Full Redis reconciliations", registry=r)
        self.redis_unreplicated = Counter(
            "fatigue_redis_unreplicated_total",
            "Redis view commits held back: a master's replicas did not confirm its writes in time",
            registry=r,
        )
        self.transactions = Counter(
            "fatigue_transactions_total",
            "Transactions of the pipeline (one per input partition and batch): committed, fenced (another worker took "
            "the partition over: nothing of it became visible), failed (aborted; the partition is set up again)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("committed", "fenced", "failed"):
            self.transactions.labels(outcome=outcome)
        self.commit_markers_written = Counter(
            "fatigue_commit_markers_written_total",
            "Commit markers the pipeline wrote itself: the broker completed one of our commits without writing them "
            "(docs/adr/0004), which left committed output unreadable",
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "fatigue_transaction_seconds",
            "Time to write and commit one partition's transaction",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.input_skipped = Counter(
            "fatigue_input_skipped_records_total",
            "Input offsets deleted by retention before the worker read them (their events were never handled)",
            registry=r,
        )
        self.restored_records = Counter(
            "fatigue_restored_records_total",
            "State changelog records read to bring local stores up to date on partition assignment",
            registry=r,
        )
        self.state_bytes = BulkHistogram(
            "fatigue_state_bytes",
            "Serialised per-customer state size",
            buckets=(64, 128, 256, 512, 1024, 2048, 4096, 16384, 65536),
            registry=r,
        )
        self.partition_event_time = Gauge(
            "fatigue_partition_event_time_seconds",
            "Newest accepted event time per input partition",
            ["partition"],
            registry=r,
        )
        # --- operations (updated by the worker's gauge timer, see streams.app) ---
        self.active_blocks = Gauge(
            "fatigue_active_blocks",
            "Blocks in force now (wall clock) on this worker's partitions, by channel (see ActiveBlocks)",
            ["channel"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "fatigue_consumer_lag_messages",
            "Records not yet processed per assigned input partition (high watermark - next offset to process)",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "fatigue_assigned_partitions", "Input partitions assigned to this worker", ["topic"], registry=r
        )
        self.state_customers = Gauge(
            "fatigue_state_customers",
            "Customers stored per owned input partition (counted when indexed, then kept up to date)",
            ["partition"],
            registry=r,
        )
        self.state_store_bytes = Gauge(
            "fatigue_state_store_bytes",
            "RocksDB SST files plus memtables per owned input partition",
            ["partition"],
            registry=r,
        )
        self.policy_info = Gauge(
            "fatigue_policy_info", "The policy this worker runs (value 1)", ["version"], registry=r
        )
        self.core_info = Gauge(
            "fatigue_core_info",
            "The decision core this worker runs (value 1): native (the Rust port), python-compiled (mypyc) or "
            "python-pure; all give the same outputs",
            ["flavour"],
            registry=r,
        )
        self.refreshes = Counter(
            "fatigue_metric_refreshes_total",
            "Runs of the timer that refreshes lag, state size and active blocks (stalls when the worker does)",
            registry=r,
        )
        # memory and CPU of the worker (our registry is not the default one, which would carry it)
        ProcessCollector(registry=r)
        # series with known label values exist from the start, so rate() and alerts see their first increase
        for channel in CHANNELS:
            self.active_blocks.labels(channel=channel).set(0)
        for clock in ("event_time", "wall_clock"):
            self.deadlines_fired.labels(clock=clock)
        for op in ("set", "del"):
            self.redis_writes.labels(op=op)

    def sender_label(self, sender: str | None) -> str:
        """The ``sender`` label value: the sender id for the first ``max_sender_labels`` senders, else "other"."""
        if sender is None:
            return UNKNOWN_SENDER
        if sender in self._senders:
            return sender
        if len(self._senders) < self.max_sender_labels:
            self._senders.add(sender)
            return sender
        return OTHER_SENDER

    def set_consumer_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Replace the lag series: partitions no longer assigned here disappear instead of going stale."""
        current = {(topic, str(partition)) for topic, partition in lags}
        for topic, label in self._lag_series - current:
            self.consumer_lag.remove(topic, label)
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)
        self._lag_series = current

    def set_state_size(self, customers: Mapping[int, int], store_bytes: Mapping[int, int]) -> None:
        """Per owned partition: customers and store bytes; partitions moved away are removed."""
        current = {("customers", str(partition)) for partition in customers}
        current |= {("bytes", str(partition)) for partition in store_bytes}
        for kind, label in self._state_series - current:
            (self.state_customers if kind == "customers" else self.state_store_bytes).remove(label)
        for partition, count in customers.items():
            self.state_customers.labels(partition=str(partition)).set(count)
        for partition, size in store_bytes.items():
            self.state_store_bytes.labels(partition=str(partition)).set(size)
        self._state_series = current


# Per channel: the ``until_ms`` of the block last emitted, INDEFINITE for a block without end, None for none.
BlockUntils = tuple[int | None, ...]
INDEFINITE = -1
NO_BLOCKS: BlockUntils = (None,) * len(CHANNELS)


def block_untils(state: CustomerState | None) -> BlockUntils:
    """What :class:`ActiveBlocks` needs of a state: per channel, when its last emitted block ends."""
    if state is None:
        return NO_BLOCKS
    out: list[int | None] = []
    for record in state.emitted:
        if record is None or record[1]["action"] != "block":
            out.append(None)
        else:
            until = record[1]["until_ms"]
            out.append(INDEFINITE if until is None else until)
    return tuple(out)


class _PartitionBlocks:
    __slots__ = ("buckets", "heaps", "indefinite", "swept_ms", "timed")

    def __init__(self, now_ms: int) -> None:
        channels = len(CHANNELS)
        self.indefinite = [0] * channels
        self.timed = [0] * channels
        # per channel: expiry second -> blocks ending in it, plus a min-heap of those seconds for the sweep
        self.buckets: list[dict[int, int]] = [{} for _ in range(channels)]
        self.heaps: list[list[int]] = [[] for _ in range(channels)]
        # every bucket ending at or before this instant has been dropped (its blocks are over)
        self.swept_ms = now_ms


class ActiveBlocks:
    """Blocks in force per channel on the partitions this worker owns, without per-customer memory.

    A partition's counts are rebuilt exactly from its stored states when the worker indexes it (after every
    assignment), then follow each state change (``before`` -> ``after`` of a customer's last emitted blocks).
    Timed blocks are counted in one-second expiry buckets that the gauge timer drops as wall clock passes them,
    because a block that simply reaches its ``until`` emits no message. Approximations: a block may be counted up
    to one second plus one timer interval after its ``until``, and a partition counts nothing between a rebalance
    and its re-indexing (its first message or quiet tick).
    """

    def __init__(self) -> None:
        self._partitions: dict[int, _PartitionBlocks] = {}

    def forget(self) -> None:
        self._partitions.clear()

    def reset(self, partition: int, now_ms: int) -> None:
        self._partitions[partition] = _PartitionBlocks(now_ms)

    def change(self, partition: int, before: BlockUntils, after: BlockUntils) -> None:
        if before == after:
            return
        blocks = self._partitions.get(partition)
        if blocks is None:
            return  # not indexed yet: the rebuild will count the stored state
        for channel, (old, new) in enumerate(zip(before, after, strict=True)):
            if old != new:
                if old is not None:
                    self._count(blocks, channel, old, -1)
                if new is not None:
                    self._count(blocks, channel, new, 1)

    def change_one(self, partition: int, channel: int, old: int | None, new: int | None) -> None:
        """One channel's block of one customer changed (``until_ms``, INDEFINITE, or None for no block)."""
        blocks = self._partitions.get(partition)
        if blocks is None or old == new:
            return
        if old is not None:
            self._count(blocks, channel, old, -1)
        if new is not None:
            self._count(blocks, channel, new, 1)

    def drop(self, partition: int) -> None:
        """The partition moved away: its blocks are counted by its new owner."""
        self._partitions.pop(partition, None)

    @staticmethod
    def _count(blocks: _PartitionBlocks, channel: int, until_ms: int, delta: int) -> None:
        if until_ms == INDEFINITE:
            blocks.indefinite[channel] = max(blocks.indefinite[channel] + delta, 0)
            return
        second = -(-until_ms // 1000)  # ceil: the bucket is dropped only once every block in it has ended
        if second * 1000 <= blocks.swept_ms:
            return  # over already: it was (or would have been) dropped with its bucket
        bucket = blocks.buckets[channel]
        count = bucket.get(second)
        if count is None:
            if delta < 0:
                return
            heapq.heappush(blocks.heaps[channel], second)
            count = 0
        bucket[second] = max(count + delta, 0)
        blocks.timed[channel] += bucket[second] - count

    def counts(self, now_ms: int) -> list[int]:
        """Blocks in force per channel (index as in CHANNELS) at wall-clock ``now_ms``, dropping ended buckets."""
        totals = [0] * len(CHANNELS)
        for blocks in self._partitions.values():
            if now_ms > blocks.swept_ms:
                for channel, heap in enumerate(blocks.heaps):
                    bucket = blocks.buckets[channel]
                    while heap and heap[0] * 1000 <= now_ms:
                        blocks.timed[channel] -= bucket.pop(heapq.heappop(heap))
                blocks.swept_ms = now_ms
            for channel in range(len(CHANNELS)):
                totals[channel] += blocks.indefinite[channel] + blocks.timed[channel]
        return totals

    def publish(self, gauge: Gauge, now_ms: int) -> None:
        for channel, count in zip(CHANNELS, self.counts(now_ms), strict=True):
            gauge.labels(channel=channel).set(count)
