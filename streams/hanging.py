"""Commit markers the transaction coordinator decided and never wrote (issue #22, docs/adr/0004, 2026-12-07).

Seen on Kafka 4.3.1 when the broker is stopped mid-stream: a partition producer's ``EndTxn(COMMIT)`` is accepted
(PrepareCommit in the transaction log), the broker's controlled shutdown begins, and the coordinator moves the
transaction to CompleteCommit a millisecond later without writing the commit markers to its partitions (it drops
partitions whose leader it cannot resolve as if they had been deleted). Our side saw the commit succeed; the data
partitions keep that producer's records as an open transaction (their last stable offset stops there, so every
read-committed reader stops, the Redis view and the restore of a changelog included), and the group keeps its
input offsets pending (the group's committed offset stays behind). Nothing ends it: the coordinator knows no open
transaction, and only a marker of that producer ends it on a partition (its next transaction there does that by
chance; a partition it does not write again stays stuck for good). KIP-890's verification does not help: no
record arrives late, the markers are missing.

The repair writes the missing COMMIT marker (WriteTxnMarkers, what Kafka's ``kafka-transactions.sh abort``
sends, with the commit result) on a partition only when the records it ends are known to be committed:

- this producer (id and epoch) wrote them, and the partition's open transaction of it starts at or after the
  first record this producer instance (epoch) wrote there and no later than the last record of a transaction
  we saw commit there;
- the partition's last sequence of this producer is the last one of that committed transaction (nothing of a
  later, uncommitted transaction of it is there), and no transaction of the partition is in flight (the
  pipeline runs the repair in the partition's chain of transactions);
- for the group's offsets partition: the group's committed offset is behind the one we committed, and the
  producer instance that committed it is still the partition's (each of its transactions committed: a failed
  one replaces the producer).

A partition's open transaction that does not meet these is left alone and reported (an operator decides, with
``kafka-transactions.sh``): aborting or committing what we do not know would break exactly-once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger("fatigue.hanging")

OFFSETS_TOPIC: Final = "__consumer_offsets"


@dataclass(frozen=True)
class OutputMark:
    """What the latest committed transaction of a producer left on one output partition."""

    producer_id: int
    epoch: int
    first_offset: int  # the first record this producer instance (epoch) wrote on the partition
    last_offset: int  # the last record of the committed transaction
    last_sequence: int  # the producer's sequence of that record


@dataclass(frozen=True)
class OffsetsMark:
    """The input offset the latest committed transaction of a producer committed for the group."""

    producer_id: int
    epoch: int
    offset: int


def offsets_partition(group_id: str, partitions: int) -> int:
    """The group's partition of __consumer_offsets: Java's ``Utils.abs(groupId.hashCode()) % partitions``."""
    value = 0
    data = group_id.encode("utf-16-be")  # Java hashes UTF-16 code units
    for index in range(0, len(data), 2):
        value = (31 * value + int.from_bytes(data[index : index + 2], "big")) & 0xFFFFFFFF
    signed = value - (1 << 32) if value >= 1 << 31 else value
    # Utils.abs is Math.abs with MIN_VALUE mapped to 0, not a sign mask: masking moves every group whose hash is
    # negative (half of them) to a partition the group coordinator does not use.
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions


def commit_lost_markers(
    bootstrap: str,
    outputs: dict[tuple[str, int], OutputMark],
    offsets: tuple[str, OffsetsMark, int] | None,
) -> list[tuple[str, int]]:
    """Write a COMMIT marker on each partition whose open transaction is one of ours known to be committed (see
    the module docstring). ``offsets``: (group id, mark, current producer epoch), when the group's committed offset
    is behind ours. Blocking (kafka-python's admin client: aiokafka has no DescribeProducers/WriteTxnMarkers); the
    partitions repaired."""
    from kafka import KafkaAdminClient, TopicPartition

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="fatigue-marker-repair", request_timeout_ms=10_000)
    try:
        wanted: dict[Any, tuple[int, int, Any]] = {}  # tp -> (producer id, epoch, mark or None)
        for (topic, partition), mark in outputs.items():
            wanted[TopicPartition(topic, partition)] = (mark.producer_id, mark.epoch, mark)
        if offsets is not None:
            group_id, offsets_mark, current_epoch = offsets
            if current_epoch == offsets_mark.epoch:
                described = admin.describe_topics([OFFSETS_TOPIC])
                count = len(described[0]["partitions"]) if described else 0
                if count:
                    tp = TopicPartition(OFFSETS_TOPIC, offsets_partition(group_id, count))
                    wanted[tp] = (offsets_mark.producer_id, offsets_mark.epoch, None)
            else:
                log.warning(
                    "group %s: its committed offset is behind ours (%d), but the producer that committed it "
                    "(epoch %d) has been replaced (epoch %d): left alone",
                    group_id,
                    offsets_mark.offset,
                    offsets_mark.epoch,
                    current_epoch,
                )
        if not wanted:
            return []
        states = admin.describe_producers(list(wanted))
        repaired: list[tuple[str, int]] = []
        for tp, (producer_id, epoch, mark) in wanted.items():
            state = next(
                (p for p in states[tp].active_producers if p.producer_id == producer_id),
                None,
            )
            start = -1 if state is None else state.current_transaction_start_offset
            if state is None or start < 0:
                continue  # nothing of ours open there (the marker came meanwhile)
            known = state.producer_epoch == epoch and (
                mark is None
                or (mark.first_offset <= start <= mark.last_offset and state.last_sequence == mark.last_sequence)
            )
            if not known:
                log.warning(
                    "%s[%d]: producer %d (epoch %d, last sequence %d) has a transaction open from offset %d that is "
                    "not one we saw commit (%s): left alone, see kafka-transactions.sh",
                    tp.topic,
                    tp.partition,
                    producer_id,
                    state.producer_epoch,
                    state.last_sequence,
                    start,
                    mark,
                )
                continue
            _write_commit_marker(admin, tp, producer_id, epoch, state.coordinator_epoch)
            log.warning(
                "%s[%d]: producer %d (epoch %d) had a committed transaction open there from offset %d: its commit "
                "marker was never written (the broker completed the commit without it); wrote it",
                tp.topic,
                tp.partition,
                producer_id,
                epoch,
                start,
            )
            repaired.append((tp.topic, tp.partition))
        return repaired
    finally:
        admin.close()


def _write_commit_marker(admin: Any, tp: Any, producer_id: int, epoch: int, coordinator_epoch: int) -> None:
    """KafkaAdminClient.abort_transaction with the commit result (kafka-python exposes only the abort)."""
    import kafka.errors as errors
    from kafka.protocol.producer.transaction import WriteTxnMarkersRequest

    marker_type = WriteTxnMarkersRequest.WritableTxnMarker
    request = WriteTxnMarkersRequest(
        markers=[
            marker_type(
                producer_id=producer_id,
                producer_epoch=epoch,
                transaction_result=True,  # COMMIT
                topics=[marker_type.WritableTxnMarkerTopic(name=tp.topic, partition_indexes=[tp.partition])],
                coordinator_epoch=coordinator_epoch,
            )
        ]
    )

    async def send() -> None:
        leaders = await admin._async_get_leader_for_partitions([tp])
        response = await admin._manager.send(request, node_id=next(iter(leaders)))
        for result in response.markers:
            for topic in result.topics:
                for partition in topic.partitions:
                    error = errors.for_code(partition.error_code)
                    if error is not errors.NoError:
                        raise error(f"WriteTxnMarkers (commit) failed for {tp}")

    admin._manager.run(send)
