"""Bring a partition's local store up to its changelog before any of its input is handled (Kafka Streams'
StoreChangelogReader, quix-streams' state/recovery.py).

The store records the changelog offset it reflects. After the partition's producer has fenced any previous owner
(so no transaction of it is still open), everything up to the changelog's last stable offset is decided: the
records from the store's position to there, read committed, are what the store lacks (another worker's
transactions while it owned the partition, or our own last one if we crashed between its commit and the store
write). A store whose position is outside the changelog (the topic was recreated, or compaction's log start
passed it), or older than the changelog keeps tombstones (``delete.retention.ms``: an erasure could be missed),
is wiped and the whole changelog read.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.state_store import Change, PartitionStore

log = logging.getLogger("fatigue.restore")

_CHUNK: Final = 20_000  # records per local write while restoring


async def restore(consumer: AIOKafkaConsumer, store: PartitionStore, tp: TopicPartition, *, max_age_ms: int) -> int:
    """Apply the changelog records ``store`` lacks; returns how many were read. A store last written more than
    ``max_age_ms`` ago is restored from scratch (tombstones older than the changelog's retention of them may be
    gone)."""
    started = time.monotonic()
    written_at = store.written_at_ms
    if written_at is not None and time.time() * 1000 - written_at > max_age_ms:
        log.warning(
            "partition %d: the local store is older than %d ms: restoring it from the whole changelog",
            tp.partition,
            max_age_ms,
        )
        store.wipe()
    beginning = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]  # the last stable offset: the consumer reads committed
    position = store.position
    if position > end or (position < beginning and position > 0):
        log.warning(
            "partition %d: the local store is at changelog offset %d, outside the changelog's %d..%d: restoring it "
            "from the whole changelog",
            tp.partition,
            position,
            beginning,
            end,
        )
        store.wipe()
        position = 0
    if position >= end:
        return 0
    consumer.assign([tp])
    consumer.seek(tp, max(position, beginning))
    read = 0
    changes: list[Change] = []
    while await consumer.position(tp) < end:
        batches = await consumer.getmany(tp, timeout_ms=200, max_records=_CHUNK)
        for record in batches.get(tp, []):
            if record.offset >= end:
                break
            changes.append((record.key, record.value))
        if len(changes) >= _CHUNK:
            read += len(changes)
            store.apply(changes, min(await consumer.position(tp), end))
            changes = []
    read += len(changes)
    store.apply(changes, end)
    consumer.assign([])
    log.info(
        "partition %d: restored %d changelog records (offsets %d..%d) in %.2fs",
        tp.partition,
        read,
        position,
        end,
        time.monotonic() - started,
    )
    return read
