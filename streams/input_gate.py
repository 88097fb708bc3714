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
compacted: their holes are real). Every partition's offsets are delivered in sequence, once:

- a record behind the next expected offset is a repeat: dropped;
- a record ahead of it, in a fetch that was under way when the partition was last sought (by Faust, the commit
  watch or the gate), may have been taken from aiokafka before that seek: dropped, and the partition is sought
  back to the expected offset (aiokafka then discards whatever it buffered for another position), so the next
  fetch brings the missing records;
- a record ahead of it in a fetch begun after the last seek is what aiokafka read from the expected position on:
  the records in between do not exist (a producer's transaction markers, records deleted by retention before they
  were read), and reading goes on from there.

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
    DROP = "drop"  # a repeat, or a stale record in a fetch the gate already sought back from
    SEEK = "seek"  # ahead of the expected offset in a fetch taken before a seek: drop it and seek back
    ACCEPT_HOLE = "accept_hole"  # ahead of it in a fetch taken after the last seek: the records between do not exist


class InputOffsetGate:
    """Per partition, the next offset to deliver; decides for each fetched record.

    ``fetch`` numbers the fetches (one per call of Faust's ``getmany``, increasing), and every seek is recorded
    with the number of the fetch under way when it happened. A record ahead of the expected offset in a fetch
    that began after the partition's last seek is what aiokafka read from the expected position on, so the
    records in between do not exist (retention, transaction markers). One in a fetch that was under way at the
    seek may have been taken from aiokafka before it: stale.
    """

    def __init__(self) -> None:
        self._next: dict[Hashable, int] = {}
        self._last_seek_fetch: dict[Hashable, int] = {}
        self._own_seek_fetch: dict[Hashable, int] = {}

    def expected(self, tp: Hashable) -> int | None:
        return self._next.get(tp)

    def sought(self, offsets: Iterable[tuple[Hashable, int | None]], fetch: int) -> None:
        """The consumer was sought (by Faust or the commit watch) during ``fetch``: deliver from there (``None``:
        from whatever comes first, the group has no committed offset yet)."""
        for tp, offset in offsets:
            self._last_seek_fetch[tp] = fetch
            if offset is None or offset < 0:
                self._next.pop(tp, None)
            else:
                self._next[tp] = offset

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: whoever gets them next starts from the committed offset."""
        for tp in tps:
            self._next.pop(tp, None)
            self._last_seek_fetch.pop(tp, None)
            self._own_seek_fetch.pop(tp, None)

    def admit(self, tp: Hashable, offset: int, fetch: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            self._next[tp] = offset + 1
            return Verdict.DELIVER
        if offset < expected:
            return Verdict.DROP
        last_seek = self._last_seek_fetch.get(tp)
        if last_seek is None or fetch > last_seek:
            self._next[tp] = offset + 1
            return Verdict.ACCEPT_HOLE
        if self._own_seek_fetch.get(tp) == fetch:
            return Verdict.DROP
        # Seeking again is belt and braces: whoever sought last already moved aiokafka to the expected offset.
        # It also makes the next fetch the one that decides.
        self._own_seek_fetch[tp] = fetch
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
                self.gate.sought([(tp, expected)], fetch)
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
        self.gate.sought(offsets.items(), self._fetches)
        return offsets

    async def seek(self, partition: TP, offset: int) -> None:
        await super().seek(partition, offset)
        self.gate.sought([(partition, offset)], self._fetches)

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        # Faust's recovery seeks changelogs this way; recorded in case it ever seeks an input partition
        await super().seek_wait(partitions)
        self.gate.sought(partitions.items(), self._fetches)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.gate.forget(revoked)
        await super().on_partitions_revoked(revoked)


def gated_consumer_class(topics: Iterable[str], on_hole: HoleListener | None = None) -> type[GatedConsumer]:
    """A :class:`GatedConsumer` for ``topics`` (only topics without holes: not the changelogs, which are compacted)."""
    attributes: dict[str, Any] = {"gated_topics": frozenset(topics)}
    if on_hole is not None:
        attributes["on_hole"] = staticmethod(on_hole)
    return type("GatedConsumer", (GatedConsumer,), attributes)
