"""The transactional producer of one input partition: how its outputs, state changelog and input offset become
visible together or not at all, and how a partition's previous owner is fenced.

aiokafka fences by ``transactional_id`` only (no KIP-447 group-metadata fencing, see docs/adr/0002), so each input
partition has a producer of its own whose id is derived from the app and the partition: the next owner's
:meth:`PartitionProducer.start` (InitProducerId) bumps the id's epoch, which aborts the previous owner's open
transaction and makes every later request of its producer fail with a fencing error. Once a new owner has started
its producer, nothing the old one still does can become visible: no output, no changelog record, no offset.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from typing import Any, Final

import aiokafka.producer.sender
from aiokafka import AIOKafkaProducer, TopicPartition

from streams.bounded import within
from streams.collector import Record

# Right after a commit the coordinator still writes the transaction's markers, and the next transaction's first
# AddPartitionsToTxn is answered CONCURRENT_TRANSACTIONS (KAFKA-5477). aiokafka then waits a fixed 20 ms
# (BACKOFF_OVERRIDE) before asking again: 20 of the 25 ms a transaction took here, which set the pipeline's cycle and
# most of its latency. The markers take about a millisecond on this broker; asking again after 2 ms costs a few
# more small requests. aiokafka has no setting for it (see docs/adr/0001, Consequences).
aiokafka.producer.sender.BACKOFF_OVERRIDE = 0.002

# Fault tests only: hold every transaction open this long before its commit, so that a worker frozen at any moment
# holds handled, uncommitted input (tests/e2e/test_faults.py, the zombie). Never set in production.
_TEST_COMMIT_DELAY_S: Final = float(os.environ.get("FATIGUE_TEST_COMMIT_DELAY_S", "0") or 0)

# A record batch is one request to the broker, whose own limit is about 1 MiB (message.max.bytes); a dead letter
# keeps at most 256 KiB of its message (streams.collector), so a batch of this size always takes it.
_BATCH_BYTES: Final = 900_000


class Written:
    """Where one transaction's records of one topic partition landed: per batch sent, its first offset and record
    count (records of a batch have consecutive offsets), and the offset past the transaction's commit marker."""

    __slots__ = ("batches", "end")

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.end = 0

    def offsets(self) -> list[int]:
        """Each record's offset, in the order the records were given."""
        return [base + index for base, count in self.batches for index in range(count)]


def transactional_id(app_id: str, topic: str, partition: int) -> str:
    return f"{app_id}-{topic}-{partition}"


def is_fenced(error: BaseException) -> bool:
    """Whether a transaction failed because another producer took over the partition's transactional id."""
    name = type(error).__name__
    return "Fenced" in name or "ProducerEpoch" in name or "InvalidProducerIdMapping" in name


class PartitionProducer:
    """See the module docstring."""

    def __init__(self, bootstrap: str, txn_id: str, *, transaction_timeout_ms: int) -> None:
        self.txn_id = txn_id
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=txn_id,
            enable_idempotence=True,
            acks="all",
            # also paces transaction retries: the 100 ms default halved throughput at small batches (INFRA_NOTES)
            retry_backoff_ms=10,
            max_batch_size=_BATCH_BYTES,
            max_request_size=4 * 1024 * 1024,
            transaction_timeout_ms=transaction_timeout_ms,
            request_timeout_ms=30_000,
        )

    async def start(self) -> None:
        """Connect and take the transactional id (fencing any earlier holder, aborting its open transaction)."""
        await self._producer.start()

    # The producer's id, epoch and sequences, which a partition's producer state shows (DescribeProducers): what
    # streams.hanging compares to tell our committed records from anything else (aiokafka keeps them internally).
    @property
    def producer_id(self) -> int:
        return int(self._producer._txn_manager.producer_id)

    @property
    def producer_epoch(self) -> int:
        return int(self._producer._txn_manager.producer_epoch)

    def last_sequence(self, topic: str, partition: int) -> int:
        """The sequence of the last record this producer sent to the partition (-1: none)."""
        return int(self._producer._txn_manager.sequence_number(TopicPartition(topic, partition))) - 1

    async def write(
        self,
        records: Mapping[tuple[str, int], list[Record]],
        offsets: Mapping[TopicPartition, int] | None,
        group_id: str,
    ) -> dict[tuple[str, int], Written]:
        """One transaction: every record and the consumed offsets, committed together. Where each topic
        partition's records landed."""
        producer = self._producer
        await producer.begin_transaction()
        sent: list[tuple[tuple[str, int], Any, int]] = []
        for (topic, partition), batch_records in records.items():
            batch = producer.create_batch()
            count = 0
            for key, value, headers in batch_records:
                if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                    future = await producer.send_batch(batch, topic, partition=partition)
                    sent.append(((topic, partition), future, count))
                    batch = producer.create_batch()
                    count = 0
                    if batch.append(key=key, value=value, timestamp=None, headers=headers or []) is None:
                        raise ValueError(f"a record for {topic} does not fit a batch of {_BATCH_BYTES} bytes")
                count += 1
            if count:
                future = await producer.send_batch(batch, topic, partition=partition)
                sent.append(((topic, partition), future, count))
        # the offsets join the transaction while the records are produced (the coordinator handles them apart);
        # the commit must wait for both: aiokafka does not flush before EndTxn
        if offsets:
            adding_offsets = asyncio.ensure_future(producer.send_offsets_to_transaction(dict(offsets), group_id))
            delivered, _ = await asyncio.gather(asyncio.gather(*(future for _, future, _ in sent)), adding_offsets)
        else:
            delivered = await asyncio.gather(*(future for _, future, _ in sent))
        if _TEST_COMMIT_DELAY_S:
            await asyncio.sleep(_TEST_COMMIT_DELAY_S)
        await producer.commit_transaction()
        written: dict[tuple[str, int], Written] = {}
        for (where, _, count), metadata in zip(sent, delivered, strict=True):
            landed = written.get(where)
            if landed is None:
                landed = written[where] = Written()
            landed.batches.append((metadata.offset, count))
            # past this transaction's commit marker, which follows its last record on the partition (one writer
            # per partition: every other producer of its id is fenced)
            landed.end = max(landed.end, metadata.offset + count + 1)
        return written

    async def stop(self) -> None:
        # a fenced or broken producer may fail to stop cleanly: nothing of it can become visible anyway
        with contextlib.suppress(Exception):
            await within(self._producer.stop(), 10)
