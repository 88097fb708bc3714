"""Delivers input records to Faust in offset order, once, with no hole: the fix for Faust's start-up input loss.

Faust's fetch loop keeps a *read offset* per partition and delivers a record when its offset is at or above it.
After a seek to the committed offset ``C`` the read offset is ``C`` (the next to read); after a delivery it is the
offset delivered (the last read). Records fetched before the seek but handed over after it (Faust iterates a batch
it already took from aiokafka while a rebalance seeks underneath) therefore land *ahead* of the read offset: Faust
delivers them, moves its read offset past ``C``, files ``C+1 ..`` as a "gap" it treats as acknowledged (meant for
compacted topics and transaction markers) and drops the re-fetched records ``C ..`` as already read. Their events
are never handled and, with the gap counted as acknowledged, the commits even move past them. Seen on the real
stack after restarts: decisions of a few hundred events missing, ``DROPPED MESSAGE ROFF`` in Faust's dev log.

The input topic (ours, not compacted, written without transactions) has no holes, so the gate expects every
partition's offsets to follow one another. A record behind the expected offset is a repeat and is dropped. A record
ahead of it is stale or the fetch skipped: it is dropped, and the partition is sought back to the expected offset
so aiokafka fetches the missing records again (aiokafka discards what it buffered for the old position). Records
of the same batch behind the seek are stale too and dropped. Only when fetches that started after several seeks
still begin past the expected offset is the hole taken as real (records deleted by retention, a producer's
transaction markers) and the records delivered from there on.

:class:`InputOffsetGate` is the decision, pure and unit-tested as timelines; :func:`gated_consumer_class` fits
it into Faust's aiokafka consumer.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, Message

log = logging.getLogger("fatigue.worker")

# seeks back, each in a later fetch than the one before, before a hole in the input is taken as real
SEEKS_BEFORE_ACCEPTING_A_HOLE = 3


class Verdict(enum.Enum):
    DELIVER = "deliver"  # the expected record
    DROP = "drop"  # a repeat, or a stale record behind a seek this gate asked for
    SEEK = "seek"  # a hole: drop the record and seek the partition back to the expected offset
    ACCEPT_HOLE = "accept_hole"  # a hole that survived the seeks: deliver, the records before it do not exist


@dataclass(slots=True)
class _Seek:
    offset: int  # where the gate sought the partition to
    fetch: int  # the fetch during which it did
    count: int  # seeks to this offset so far


class InputOffsetGate:
    """Per partition, the next offset to deliver; decides for each fetched record (``fetch`` numbers the fetches,
    one per call of Faust's ``getmany``, increasing)."""

    def __init__(self, seeks_before_accepting_a_hole: int = SEEKS_BEFORE_ACCEPTING_A_HOLE) -> None:
        self.seeks_before_accepting_a_hole = seeks_before_accepting_a_hole
        self._next: dict[Hashable, int] = {}
        self._seeks: dict[Hashable, _Seek] = {}

    def expected(self, tp: Hashable) -> int | None:
        return self._next.get(tp)

    def sought(self, offsets: Iterable[tuple[Hashable, int | None]]) -> None:
        """The consumer was sought (by Faust or the commit watch): deliver from there (``None``: from whatever
        comes first, the group has no committed offset yet)."""
        for tp, offset in offsets:
            self._seeks.pop(tp, None)
            if offset is None or offset < 0:
                self._next.pop(tp, None)
            else:
                self._next[tp] = offset

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: whoever gets them next starts from the committed offset."""
        for tp in tps:
            self._next.pop(tp, None)
            self._seeks.pop(tp, None)

    def admit(self, tp: Hashable, offset: int, fetch: int) -> Verdict:
        expected = self._next.get(tp)
        if expected is None or offset == expected:
            self._next[tp] = offset + 1
            self._seeks.pop(tp, None)
            return Verdict.DELIVER
        if offset < expected:
            return Verdict.DROP
        seek = self._seeks.get(tp)
        if seek is None or seek.offset != expected:
            self._seeks[tp] = _Seek(expected, fetch, 1)
            return Verdict.SEEK
        if seek.fetch >= fetch:
            return Verdict.DROP  # taken from aiokafka before the seek
        if seek.count < self.seeks_before_accepting_a_hole:
            seek.fetch, seek.count = fetch, seek.count + 1
            return Verdict.SEEK
        self._next[tp] = offset + 1
        del self._seeks[tp]
        return Verdict.ACCEPT_HOLE


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

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        self.gate.forget(revoked)
        await super().on_partitions_revoked(revoked)


def gated_consumer_class(topics: Iterable[str], on_hole: HoleListener | None = None) -> type[GatedConsumer]:
    """A :class:`GatedConsumer` for ``topics`` (only topics without holes: not the changelogs, which are compacted)."""
    attributes: dict[str, Any] = {"gated_topics": frozenset(topics)}
    if on_hole is not None:
        attributes["on_hole"] = staticmethod(on_hole)
    return type("GatedConsumer", (GatedConsumer,), attributes)
