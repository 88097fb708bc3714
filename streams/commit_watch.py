"""Spots input partitions whose commits Faust has stopped advancing for good, so the worker can re-read them.

Faust commits an input partition only up to the first offset it has not seen acknowledged. After a rebalance or a
restart it sometimes delivers an offset twice, or moves its read offset past offsets it then never delivers (a
stale prefetch; its read-offset filter drops the re-fetched records behind it). From then on the committed offset
stays where it is while the records behind the read offset may never have been handled: the lag never clears
and, if they were dropped, neither do their blocks. Seen on the real stack in the SIGKILL and two-worker fault tests.

The watch is deliberately conservative. A partition counts as stuck only when Faust has delivered at or past its
committed offset, nothing of it is in flight (delivered and not yet acknowledged), the agent is not in a batch,
and the committed offset has not moved for ``stall_s``. The cure is a re-read from the committed offset with
Faust's acknowledgement bookkeeping for the partition cleared, so its commits count again. Records this process
handled already are skipped on the way (the service remembers its last handled offset per partition), so a
record Faust skipped *below* that offset is not recovered by this: that gap is known and open.
"""

from __future__ import annotations

from collections.abc import Hashable


class CommitWatch:
    def __init__(self, stall_s: float) -> None:
        self.stall_s = stall_s
        self._unchanged_since: dict[Hashable, tuple[int, float]] = {}

    def stuck(
        self, tp: Hashable, *, committed: int | None, read: int | None, end: int | None, in_flight: bool, now: float
    ) -> bool:
        """Whether ``tp`` is stuck, from one look at it (``committed``: the next offset to read, as the group has
        it; ``read``: the last offset Faust delivered, or where it was last sought to; ``end``: the partition's high
        watermark; ``now``: monotonic seconds)."""
        if committed is None or read is None or end is None or read < committed or end <= committed or in_flight:
            # nothing left to commit, nothing delivered past the commit, or work in hand: healthy
            self._unchanged_since.pop(tp, None)
            return False
        seen = self._unchanged_since.get(tp)
        if seen is None or seen[0] != committed:
            self._unchanged_since[tp] = (committed, now)
            return False
        return now - seen[1] >= self.stall_s

    def forget(self, tp: Hashable | None = None) -> None:
        """Start over for ``tp`` (after re-reading it), or for every partition (after a rebalance)."""
        if tp is None:
            self._unchanged_since.clear()
        else:
            self._unchanged_since.pop(tp, None)
