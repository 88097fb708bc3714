"""Wall-clock timers of one input partition (Kafka Streams' PunctuationQueue): expired blocks to tombstone.

A block that reaches its ``until`` emits nothing by itself; its key stays on the compacted decisions topic (and a
dialer reading it must honour ``until``). The task tombstones it once wall clock has passed its end, so the
compacted topic drops it. Unread deadlines fired by wall clock on a quiet partition are the partition clock's
(:class:`fatigue.partition.PartitionDriver.fire`); both run inside the partition's transactions.
"""

from __future__ import annotations

import heapq
from typing import Final

INDEFINITE: Final = -1  # the ``until`` of a block without end, in the index below


class BlockIndex:
    """The blocks in force on one partition, per (customer, channel), and when each ends.

    One heap entry per block, the earliest ``until`` it had: a later ``until`` (a hot customer's block is
    re-decided on every contact) waits for that entry to come due and finds the newer one. An entry per decision
    instead grew without bound for a hot key.
    """

    __slots__ = ("_heap", "_scheduled", "in_force")

    def __init__(self) -> None:
        self.in_force: dict[tuple[str, int], int] = {}  # (customer, channel index) -> until_ms or INDEFINITE
        self._heap: list[tuple[int, str, int]] = []
        self._scheduled: dict[tuple[str, int], int] = {}

    def __len__(self) -> int:
        return len(self.in_force)

    def set(self, customer: str, channel: int, until_ms: int | None) -> int | None:
        """A block was decided (``until_ms`` None: without end); returns the ``until`` it replaced, if any."""
        entry = (customer, channel)
        until = INDEFINITE if until_ms is None else until_ms
        old = self.in_force.get(entry)
        self.in_force[entry] = until
        if until != INDEFINITE:
            scheduled = self._scheduled.get(entry)
            if scheduled is None or until < scheduled:
                self._scheduled[entry] = until
                heapq.heappush(self._heap, (until, customer, channel))
        return old

    def clear(self, customer: str, channel: int) -> int | None:
        """The channel is allowed again (an allow, an erasure); returns the ``until`` it had."""
        return self.in_force.pop((customer, channel), None)

    def expired(self, bound_ms: int) -> list[tuple[str, int, int]]:
        """Forget and return (customer, channel, until) of every block that ended at or before ``bound_ms``."""
        ended: list[tuple[str, int, int]] = []
        heap = self._heap
        while heap and heap[0][0] <= bound_ms:
            until, customer, channel = heapq.heappop(heap)
            entry = (customer, channel)
            if self._scheduled.get(entry) != until:
                continue  # superseded by an earlier entry, which came due already
            del self._scheduled[entry]
            current = self.in_force.get(entry)
            if current is None or current == INDEFINITE:
                continue  # allowed since, or blocked for good
            if current > bound_ms:
                self._scheduled[entry] = current  # re-decided later: look again then
                heapq.heappush(heap, (current, customer, channel))
                continue
            del self.in_force[entry]
            ended.append((customer, channel, current))
        return ended

    def next_expiry_ms(self) -> int | None:
        return self._heap[0][0] if self._heap else None
