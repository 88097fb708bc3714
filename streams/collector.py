"""Every output record of one input partition's transaction, in one place (Kafka Streams' RecordCollector).

A task adds records while it handles its input and fires its timers; the pipeline then writes them all, with the
state changelog records and the consumed offset, in the partition's transaction (see :mod:`streams.pipeline`).
Records go to an explicit partition: outputs keyed by ``{channel}:{customer_id}`` or ``customer_id`` are placed by
Kafka's default partitioner (murmur2), so that a compacted topic keeps one key on one partition whoever writes it;
changelog records go to the input partition's own changelog partition.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from fatigue.clock import partition_for_key
from fatigue.events import Rejection

# A dead letter carries the original bytes, but one near the broker's size limit (1 MiB by default) plus our headers
# would exceed it and stall the partition's transactions for good: beyond these sizes a prefix is kept, with the
# original size (fatigue-truncated, fatigue-key-truncated) and digest (fatigue-original-sha256).
DEAD_LETTER_MAX_VALUE_BYTES: Final = 256 * 1024
DEAD_LETTER_MAX_KEY_BYTES: Final = 1024
REROUTED_HEADER: Final = "fatigue-rerouted-from"

Headers = list[tuple[str, bytes]]
# (key, value; None is a tombstone, headers)
Record = tuple["bytes | None", "bytes | None", "Headers | None"]


class Partitioner:
    """Kafka's default partitioner (murmur2) with a cache: a key's partition is asked for every input record and
    every keyed output, and murmur2's 32-bit products overflow the compiled core's fast integers (~1 us a key, the
    biggest single cost of a record on the native engine). Customers repeat, so a dict lookup answers most."""

    __slots__ = ("_cache", "partitions")

    _MAX_KEYS: Final = 1 << 20

    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self._cache: dict[bytes, int] = {}

    def __call__(self, key: bytes) -> int:
        cache = self._cache
        partition = cache.get(key)
        if partition is None:
            if len(cache) >= self._MAX_KEYS:
                cache.clear()
            partition = cache[key] = partition_for_key(key, self.partitions)
        return partition


def dead_letter_value(raw: bytes) -> bytes:
    """What the dead-letter topic holds of a rejected message's value."""
    return raw[:DEAD_LETTER_MAX_VALUE_BYTES]


@dataclass(frozen=True, slots=True)
class Topics:
    """The guard's topics and their partition counts (all co-partitioned with the input)."""

    events: str
    decisions: str
    prefs: str
    violations: str
    dlq: str
    changelog: str
    partitions: int


class RecordCollector:
    """The output records of one input partition's next transaction, grouped by topic partition, in order."""

    __slots__ = ("partition", "partition_of", "records", "topics")

    def __init__(self, topics: Topics, partition: int, partition_of: Partitioner | None = None) -> None:
        self.topics = topics
        self.partition = partition
        self.partition_of = partition_of or Partitioner(topics.partitions)
        self.records: dict[tuple[str, int], list[Record]] = {}

    def __len__(self) -> int:
        return sum(len(records) for records in self.records.values())

    def _add(self, topic: str, partition: int, key: bytes | None, value: bytes | None, headers: Headers | None) -> None:
        records = self.records.get((topic, partition))
        if records is None:
            records = self.records[(topic, partition)] = []
        records.append((key, value, headers))

    def keyed(self, topic: str, key: bytes, value: bytes | None) -> None:
        """A record placed as Kafka's default partitioner places ``key``."""
        self._add(topic, self.partition_of(key), key, value, None)

    def decision(self, key: bytes, value: bytes | None) -> None:
        """A decision (key ``{channel}:{customer_id}``) on the customer's own partition, which is this input
        partition: every output partition then has one writer, and its last stable offset moves with each of
        that writer's commits instead of waiting for other partitions' open transactions."""
        self._add(self.topics.decisions, self.partition, key, value, None)

    def prefs(self, customer_key: bytes, value: bytes | None) -> None:
        self.keyed(self.topics.prefs, customer_key, value)

    def violation(self, customer_key: bytes, value: bytes) -> None:
        self.keyed(self.topics.violations, customer_key, value)

    def changelog(self, key: bytes, value: bytes | None) -> None:
        self._add(self.topics.changelog, self.partition, key, value, None)

    def reroute(self, key: bytes, value: bytes | None, headers: Headers, to_partition: int) -> None:
        """Forward an input record to its customer's partition (a producer used another partitioner)."""
        self._add(
            self.topics.events, to_partition, key, value, [*headers, (REROUTED_HEADER, str(self.partition).encode())]
        )

    def dead_letter(self, key: bytes | None, value: bytes | None, offset: int, rejection: Rejection) -> None:
        headers: Headers = [
            ("fatigue-reason", rejection.reason.encode()),
            ("fatigue-detail", rejection.detail.encode()[:512]),
            ("fatigue-source-topic", self.topics.events.encode()),
            ("fatigue-source-partition", str(self.partition).encode()),
            ("fatigue-source-offset", str(offset).encode()),
        ]
        if rejection.event_id is not None:
            headers.append(("fatigue-event-id", rejection.event_id.encode()))
        raw = value if value is not None else b""
        if len(raw) > DEAD_LETTER_MAX_VALUE_BYTES:
            headers.append(("fatigue-truncated", str(len(raw)).encode()))
            headers.append(("fatigue-original-sha256", hashlib.sha256(raw).hexdigest().encode()))
            raw = dead_letter_value(raw)
        if key is not None and len(key) > DEAD_LETTER_MAX_KEY_BYTES:
            headers.append(("fatigue-key-truncated", str(len(key)).encode()))
            key = key[:DEAD_LETTER_MAX_KEY_BYTES]
        # on the input's own partition: dead letters of one partition stay in input order
        self._add(self.topics.dlq, self.partition, key, raw, headers)
