"""Watching that what each partition committed becomes readable, and writing a commit marker the coordinator lost.

Per input partition: what its committed transactions left on each output partition and which input offset they
committed (:meth:`MarkerWatch.committed`); a read-only check every CHECK_S that the output partitions' last stable
offsets and the group's committed offset have moved past that (:meth:`MarkerWatch.schedule`); and, once one has
stayed behind for STUCK_S, the repair of :mod:`streams.hanging` (:meth:`MarkerWatch.repair`).

The check runs beside the partition's chain of transactions, never in it: a chain slot held by a check is a
moment in which the partition has nothing in flight, which a frozen worker's zombie test saw (docs/adr/0004). The
repair must run in the chain, where no transaction of the partition is in flight: the pipeline starts it there
when :meth:`MarkerWatch.repair_due` says so and the chain is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import hanging
from streams.hanging import OffsetsMark, OutputMark
from streams.metrics import Metrics
from streams.transactions import PartitionProducer, Written

log = logging.getLogger("fatigue.pipeline")

# How often a partition checks that its committed transactions are readable (one ListOffsets request and one
# OffsetFetch), and how long a last stable offset (or the group's committed offset) must stay behind what it
# committed before the missing commit marker is written: far longer than the coordinator takes to write a marker
# after the commit returns (milliseconds), shorter than the transaction timeout.
CHECK_S: Final = 10.0
STUCK_S: Final = 20.0
REPAIR_TIMEOUT_S: Final = 15.0

_OFFSETS_KEY: Final = (hanging.OFFSETS_TOPIC, -1)


class MarkerWatch:
    """See the module docstring. ``consumer`` is the group's, ``reader`` any read-committed consumer."""

    def __init__(self, bootstrap: str, group_id: str, events_topic: str, metrics: Metrics) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.events_topic = events_topic
        self.metrics = metrics
        self._outputs: dict[int, dict[tuple[str, int], OutputMark]] = {}
        self._offsets: dict[int, OffsetsMark] = {}
        self._behind_since: dict[int, dict[tuple[str, int], tuple[int, float]]] = {}  # key -> (value, since)
        self._next_check: dict[int, float] = {}
        self._checks: dict[int, asyncio.Task[None]] = {}
        self._due: dict[int, list[tuple[str, int]]] = {}

    def committed(
        self, partition: int, producer: PartitionProducer, offset: int | None, written: dict[tuple[str, int], Written]
    ) -> None:
        """Remember what a committed transaction left where, to tell its records apart should their commit marker
        be missing (streams.hanging)."""
        producer_id, epoch = producer.producer_id, producer.producer_epoch
        marks = self._outputs.setdefault(partition, {})
        for (topic, output_partition), landed in written.items():
            if not landed.batches or landed.batches[0][0] < 0:
                continue  # no offset reported (a duplicate a retry resolved): nothing to compare with
            first = landed.batches[0][0]
            last = max(base + count - 1 for base, count in landed.batches)
            known = marks.get((topic, output_partition))
            if known is not None and known.producer_id == producer_id and known.epoch == epoch:
                first = known.first_offset
            marks[(topic, output_partition)] = OutputMark(
                producer_id, epoch, first, last, producer.last_sequence(topic, output_partition)
            )
        if offset is not None:
            self._offsets[partition] = OffsetsMark(producer_id, epoch, offset)

    def drop(self, partition: int) -> None:
        """The partition is no longer run here (revoked, fenced, failed): its check stops. What its transactions
        committed stays known: set up here again, it may still find records of an earlier producer of it left
        open (the repair then tells them apart by producer id, epoch and sequence)."""
        check = self._checks.pop(partition, None)
        if check is not None:
            check.cancel()
        for pending in (self._behind_since, self._next_check, self._due):
            pending.pop(partition, None)

    def schedule(self, partition: int, consumer: AIOKafkaConsumer, reader: AIOKafkaConsumer) -> None:
        """Start the partition's check if it is due and none is running."""
        now = time.monotonic()
        running = self._checks.get(partition)
        if (running is not None and not running.done()) or now < self._next_check.get(partition, 0.0):
            return
        self._next_check[partition] = now + CHECK_S
        if partition in self._outputs or partition in self._offsets:
            self._checks[partition] = asyncio.create_task(self._check(partition, consumer, reader))

    def repair_due(self, partition: int) -> bool:
        return partition in self._due

    async def stop(self) -> None:
        checks = list(self._checks.values())
        self._checks.clear()
        for check in checks:
            check.cancel()
        for check in checks:
            with contextlib.suppress(BaseException):
                await check

    async def _check(self, partition: int, consumer: AIOKafkaConsumer, reader: AIOKafkaConsumer) -> None:
        """Read-only; never fails (the broker away, say: the next check tries again)."""
        try:
            await asyncio.wait_for(self._find_stuck(partition, consumer, reader), timeout=REPAIR_TIMEOUT_S)
        except Exception as error:
            log.info(
                "partition %d: checking its commit markers failed (%s: %s)", partition, type(error).__name__, error
            )

    async def _find_stuck(self, partition: int, consumer: AIOKafkaConsumer, reader: AIOKafkaConsumer) -> None:
        """An output partition whose last stable offset stays at or below the last record we committed there (or
        a group whose committed offset stays behind ours) for STUCK_S misses a commit marker the coordinator
        decided and never wrote (docs/adr/0004, 2026-12-07): the repair is then due."""
        outputs = dict(self._outputs.get(partition, {}))
        offsets_mark = self._offsets.get(partition)
        behind: dict[tuple[str, int], int] = {}
        if outputs:
            tps = [TopicPartition(topic, output_partition) for topic, output_partition in outputs]
            stable = await reader.end_offsets(tps)  # read committed: the last stable offsets
            for tp in tps:
                if stable[tp] <= outputs[(tp.topic, tp.partition)].last_offset:
                    behind[(tp.topic, tp.partition)] = stable[tp]
        if offsets_mark is not None:
            committed = await consumer.committed(TopicPartition(self.events_topic, partition))
            # None: the group has no offset at all (the first offsets we committed are the ones left pending)
            committed = -1 if committed is None else committed
            if committed < offsets_mark.offset:
                behind[_OFFSETS_KEY] = committed
        now = time.monotonic()
        since = self._behind_since.setdefault(partition, {})
        for key in [key for key in since if key not in behind]:
            del since[key]
        for key, value in behind.items():
            if since.get(key, (None, 0.0))[0] != value:
                since[key] = (value, now)
        due = [key for key, (_, first_seen) in since.items() if now - first_seen >= STUCK_S]
        if not due:
            return
        for key in due:
            del since[key]  # looked at again once it has stayed behind that long again
        log.warning(
            "partition %d: committed records not readable for %.0fs on %s: looking for missing commit markers",
            partition,
            STUCK_S,
            ", ".join(
                f"the group's offsets (committed {behind[key]}, ours {offsets_mark.offset if offsets_mark else None})"
                if key == _OFFSETS_KEY
                else f"{key[0]}[{key[1]}] (stable offset {behind[key]})"
                for key in due
            ),
        )
        self._due[partition] = due

    async def repair(self, partition: int, producer: PartitionProducer) -> None:
        """Write the missing markers found by the last check: in the partition's chain, nothing of it in flight.
        Never fails the chain."""
        due = self._due.pop(partition, [])
        outputs = self._outputs.get(partition, {})
        offsets_mark = self._offsets.get(partition)
        offsets = None
        if _OFFSETS_KEY in due and offsets_mark is not None:
            offsets = (self.group_id, offsets_mark, producer.producer_epoch)
        try:
            repaired = await asyncio.wait_for(
                asyncio.to_thread(
                    hanging.commit_lost_markers,
                    self.bootstrap,
                    {key: outputs[key] for key in due if key in outputs},
                    offsets,
                ),
                timeout=REPAIR_TIMEOUT_S,
            )
        except Exception as error:  # the next check finds it again if it is still stuck
            log.info(
                "partition %d: writing missing commit markers failed (%s: %s)", partition, type(error).__name__, error
            )
            return
        self.metrics.commit_markers_written.inc(len(repaired))
