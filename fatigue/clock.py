"""Event-time clocks per Kafka partition, so that quiet customers' unread deadlines fire without their own events.

A customer's deadlines are settled by the customer's own events (in the engine). Between them, a driver uses
this clock: once the newest accepted event time in a partition passes a pending deadline by ``settle_ms``, the
customer is due for ``Guard.advance``. The worker and ``fatigue replay --partitions N`` use the same rule on the same
per-partition order, so they fire the same deadlines at the same points and their decisions stay equal.
``settle_ms`` leaves room for a customer's own events that trail the rest of the partition (a late open).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from fatigue.state import CustomerState


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's and kafka-python's default partitioner for keyed messages)."""
    length = len(data)
    seed = 0x9747B28C
    m = 0x5BD1E995
    r = 24
    h = (seed ^ length) & 0xFFFFFFFF
    length4 = length // 4
    for i in range(length4):
        i4 = i * 4
        k = data[i4] | (data[i4 + 1] << 8) | (data[i4 + 2] << 16) | (data[i4 + 3] << 24)
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    extra = length % 4
    tail = length4 * 4
    if extra >= 3:
        h ^= data[tail + 2] << 16
    if extra >= 2:
        h ^= data[tail + 1] << 8
    if extra >= 1:
        h ^= data[tail]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def partition_for_key(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class PartitionClock:
    """The event-time clock of one partition and the pending deadlines of the customers in it."""

    __slots__ = ("_heap", "_scheduled", "settle_ms", "time_ms")

    def __init__(self, settle_ms: int) -> None:
        self.settle_ms = settle_ms
        self.time_ms: int | None = None
        self._heap: list[tuple[int, str]] = []
        self._scheduled: dict[str, int] = {}

    def observe(self, state: CustomerState) -> None:
        """Account for a customer's state after an accepted event (or after advancing it)."""
        self.observe_times(state.customer_id, state.watermark_ms, state.next_deadline_ms())

    def observe_times(self, customer: str, watermark_ms: int | None, next_deadline_ms: int | None) -> None:
        """:meth:`observe` for an engine that reports a state's watermark and next deadline, not the state."""
        if watermark_ms is not None and (self.time_ms is None or watermark_ms > self.time_ms):
            self.time_ms = watermark_ms
        self.schedule_at(customer, next_deadline_ms)

    def observe_due(self, customer: str, watermark_ms: int | None, next_deadline_ms: int | None) -> int | None:
        """:meth:`observe_times`, then the event-time bound if a deadline is due before it (else None): one call
        per input record instead of three."""
        self.observe_times(customer, watermark_ms, next_deadline_ms)
        heap = self._heap
        if self.time_ms is None or not heap:
            return None
        bound = self.time_ms - self.settle_ms
        return bound if heap[0][0] < bound else None

    def schedule(self, state: CustomerState) -> None:
        """Keep one live entry per customer, at or before its next deadline.

        A later deadline does not get an entry of its own: the earlier one comes due, advancing the customer then
        changes nothing, and it is scheduled again at its real next deadline. A hot customer's next deadline
        moves on with every email (its oldest unsettled one is dropped at the cap), and an entry per move grew the
        heap by one per email, each of them coming due later and waking a wall-clock tick.
        """
        self.schedule_at(state.customer_id, state.next_deadline_ms())

    def schedule_at(self, customer: str, deadline: int | None) -> None:
        """:meth:`schedule` for a customer whose next deadline is ``deadline`` (None: none pending)."""
        if deadline is None:
            self._scheduled.pop(customer, None)
            return
        current = self._scheduled.get(customer)
        if current is None or deadline < current:
            self._scheduled[customer] = deadline
            heapq.heappush(self._heap, (deadline, customer))

    @property
    def fire_before_ms(self) -> int | None:
        """Deadlines strictly before this instant are due by event time."""
        return None if self.time_ms is None else self.time_ms - self.settle_ms

    def due(self, before_ms: int | None = None) -> Iterator[str]:
        """Customers with a deadline before ``before_ms`` (default: the event-time bound), earliest first."""
        bound = self.fire_before_ms if before_ms is None else before_ms
        heap = self._heap
        while heap and bound is not None and heap[0][0] < bound:
            deadline, customer = heapq.heappop(heap)
            if self._scheduled.get(customer) == deadline:
                del self._scheduled[customer]
                yield customer

    def __len__(self) -> int:
        return len(self._scheduled)
