"""Spots input partitions whose commits Faust has stopped advancing for good, so the worker can re-read them.

Faust commits an input partition only up to the first offset it has not seen acknowledged. After a rebalance or a
restart it used to deliver an offset twice, or move its read offset past offsets it then never delivered (a stale
fetch; its read-offset filter dropped the re-fetched records behind it), and from then on the committed offset
stayed where it was. Seen on the real stack in the SIGKILL and two-worker fault tests. The input gate
(:mod:`streams.input_gate`) now keeps both from reaching Faust's delivery loop; this watch stays as a safety net
for whatever else can leave Faust's acknowledgement bookkeeping behind.

The watch is deliberately conservative. A partition counts as stuck only when Faust has delivered at or past its
committed offset, nothing of it is in flight (delivered and not yet acknowledged), the agent is not in a batch,
and the committed offset has not moved for ``stall_s``. The cure is a re-read from the committed offset with
Faust's acknowledgement bookkeeping for the partition cleared, so its commits count again. Records this process
handled already are skipped on the way (the service remembers its last handled offset per partition); with the
gate in place every offset up to that one was delivered and handled.
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
