"""Delivers input records to Faust in offset order, once, with no hole: the fix for Faust's start-up input loss.

Faust's fetch loop keeps a *read offset* per partition and delivers a record when its offset is at or above it.
After a seek to the committed offset ``C`` the read offset is ``C`` (the next to read); after a delivery it is the
offset delivered (the last read). Records fetched before the seek but handed over after it (Faust iterates a batch
it already took from aiokafka while a rebalance seeks underneath) therefore land *ahead* of the read offset: Faust
delivers them, moves its read offset past ``C``, files ``C+1 ..`` as a "gap" it treats as acknowledged (meant for
compacted topics and transaction markers) and drops the re-fetched records ``C ..`` as already read. Their events
are never handled and, with the gap counted as acknowledged, the commits even move past them. Seen on the real
stack after restarts: decisions of a few hundred events missing, ``DROPPED MESSAGE ROFF`` in Faust's dev log.

The gate sits between aiokafka's fetches and Faust's delivery loop, for the input topic only (changelogs are
compacted: their holes are real). Every partition's offsets are delivered in sequence:

- a record behind the next expected offset is a repeat: dropped;
- a record ahead of it is not trusted at first sight: it may have been taken from aiokafka before a seek, or come
  from a position that a seek racing with the delivery left ahead of the expected offset. It is dropped, with the
  rest of that fetch for the partition, and the gate seeks the partition back to the expected offset itself
  (aiokafka then discards whatever it buffered for another position);
- if a fetch begun after that seek, with no other seek since, still starts past the expected offset, the records
  in between do not exist (a producer's transaction markers, records deleted by retention before they were read),
  and reading goes on from there.

A seek by someone else (Faust after an assignment or recovery, the commit watch) sets the expected offset to its
target; records delivered at or past it come again and are delivered again, and the agent skips offsets it has
already handled. First seen on the real stack: a record delivered while Faust's seek to the committed offset was
still under way in the consumer thread, then the seek's target taken as the next offset.

:class:`InputOffsetGate` is the decision, pure and unit-tested as timelines; :func:`gated_consumer_class` fits
it into Faust's aiokafka consumer.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

log = logging.getLogger("fatigue.worker")


class Verdict(enum.Enum):
    DELIVER = "deliver"  # the expected record
    DROP = "drop"  # a repeat, or a record ahead of the expected offset in the fetch the gate sought back from
    SEEK = "seek"  # ahead of the expected offset: drop it and seek back, the next fetch decides
    ACCEPT_HOLE = "accept_hole"  # still ahead in a fetch begun after the gate's own seek: the records between are gone


class InputOffsetGate:
    """Per partition, the next offset to deliver; decides for each fetched record.

    ``fetch`` numbers the fetches (one per call of Faust's ``getmany``, increasing). A record ahead of the expected
    offset is never trusted at first sight: it may be stale (taken from aiokafka before a seek), or come from a
    position another seek moved while records were being handed over. The gate seeks the partition back to the
    expected offset itself (aiokafka then drops whatever it buffered for another position) and drops the rest of
    that fetch's records for it. If a fetch begun after that seek, with no other seek since, still starts past the
    expected offset, the records in between do not exist (transaction markers, retention) and reading goes on.
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}
        self._own_seek: dict[Hashable, tuple[int, int]] = {}  # (offset sought to, fetch during which)
        self._run_start: dict[Hashable, int] = {}

    def expected(self, tp: Hashable) -> int | None:
        return self._next.get(tp)

    def run_start(self, tp: Hashable) -> int | None:
        """Where the gate's current unbroken run of deliveries for ``tp`` began (a seek's target, the first record
        after an assignment, the record after an accepted hole): every offset from there up to the last one
        delivered went to Faust's delivery loop, in order. ``None``: nothing is known."""
        return self._run_start.get(tp)

    def sought(self, offsets: Iterable[tuple[Hashable, int | None]]) -> None:
        """The consumer was sought by someone else (Faust, the commit watch): deliver from there (``None``: from
        whatever comes first, the group has no committed offset yet). A record already delivered at or past that
        offset will come again and be delivered again (the agent skips offsets it has handled)."""
        for tp, offset in offsets:
            self._own_seek.pop(tp, None)
            if offset is None or offset < 0:
                self._next.pop(tp, None)
                self._run_start.pop(tp, None)
            else:
                self._next[tp] = offset
                self._run_start[tp] = offset

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: whoever gets them next starts from the committed offset."""
        for tp in tps:
            self._next.pop(tp, None)
            self._own_seek.pop(tp, None)
            self._run_start.pop(tp, None)

    def admit(self, tp: Hashable, offset: int, fetch: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            if expected is None:
                self._run_start[tp] = offset
            self._next[tp] = offset + 1
            self._own_seek.pop(tp, None)
            return Verdict.DELIVER
        if offset < expected:
            return Verdict.DROP
        own = self._own_seek.get(tp)
        if own is not None and own[0] == expected:
            if own[1] == fetch:
                return Verdict.DROP  # the rest of the fetch the gate sought back from
            del self._own_seek[tp]
            self._next[tp] = offset + 1
            self._run_start[tp] = offset
            return Verdict.ACCEPT_HOLE
        self._own_seek[tp] = (expected, fetch)  # the caller seeks
        return Verdict.SEEK


# (partition, expected offset, offset fetched, verdict): for logs and metrics
HoleListener = Callable[[TP, int, int, Verdict], None]


class GatedConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer with :class:`InputOffsetGate` between its fetches and its delivery loop."""

    gated_topics: frozenset[str] = frozenset()
    on_hole: HoleListener | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = InputOffsetGate()
        self._fetches = 0

    async def getmany(self, timeout: float) -> AsyncIterator[tuple[TP, Message]]:
        self._fetches += 1
        fetch = self._fetches
        gated = self.gated_topics
        admit = self.gate.admit
        async for tp, message in super().getmany(timeout):
            if tp.topic not in gated:
                yield tp, message
                continue
            expected = self.gate.expected(tp)
            verdict = admit(tp, message.offset, fetch)
            if verdict is Verdict.DELIVER:
                yield tp, message
            elif verdict is Verdict.DROP:
                continue
            elif verdict is Verdict.SEEK:
                assert expected is not None
                self._notify(tp, expected, message.offset, verdict)
                await self._seek(tp, expected)  # aiokafka's seek only: Faust's read offset already expects it
            else:
                # Faust files the hole as acknowledged itself (from its read offset + 1 on)
                assert expected is not None
                self._notify(tp, expected, message.offset, verdict)
                yield tp, message

    def _notify(self, tp: TP, expected: int, offset: int, verdict: Verdict) -> None:
        if self.on_hole is not None:
            self.on_hole(tp, expected, offset, verdict)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        # what Faust's perform_seek (after an assignment, a recovery, a flow stop) seeks with
        offsets = await super().seek_to_committed()
        self.gate.sought(offsets.items())
        return offsets

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self.gate.sought([(partition, offset)])

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        # Faust's recovery seeks changelogs this way; recorded in case it ever seeks an input partition
        await super().seek_wait(partitions)
        self.gate.sought(partitions.items())

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.gate.forget(revoked)
        await super().on_partitions_revoked(revoked)


def gated_consumer_class(topics: Iterable[str], on_hole: HoleListener | None = None) -> type[GatedConsumer]:
    """A :class:`GatedConsumer` for ``topics`` (only topics without holes: not the changelogs, which are compacted)."""
    attributes: dict[str, Any] = {"gated_topics": frozenset(topics)}
    if on_hole is not None:
        attributes["on_hole"] = staticmethod(on_hole)
    return type("GatedConsumer", (GatedConsumer,), attributes)
