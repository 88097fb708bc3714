"""Offline replay: the engine driven by a file of events instead of Kafka, deterministically.

Messages are processed in file order, which is the per-customer order Kafka keeps for a topic keyed by
customer. Unread deadlines are settled by event time: while a customer's events arrive, and at the end of input
for everyone up to ``flush_at_ms`` (by default the newest event time in the input).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from fatigue.clock import PartitionClock, partition_for_key
from fatigue.engine import Guard, Step
from fatigue.events import Rejection, parse_event
from fatigue.state import CustomerState


def tune_gc(*, core_only: bool = False) -> None:
    """Collect cyclic garbage far less often: per-customer states are acyclic lists and dicts, and with the
    default threshold (700 allocations) the collector keeps rescanning hundreds of thousands of them, which
    costs about half of a replay's time. Reference counting still frees everything that is not a cycle.

    ``core_only``: the process runs nothing but the core (``fatigue replay``, the core benchmark). The core makes
    no reference cycles at all (tests/unit/test_replay_gc.py), so the cyclic collector would only ever rescan
    live states (still ~13% of a replay at the threshold above): it is switched off. Not for the worker, whose
    Faust, aiokafka and asyncio objects do make cycles.
    """
    gc.collect()
    gc.freeze()
    if core_only:
        gc.disable()
    else:
        gc.set_threshold(100_000, 50, 100)


@dataclass
class ReplayStats:
    events: int = 0
    accepted: int = 0
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (action, reason, channel)
    rejections: Counter[str] = field(default_factory=Counter)
    violations: Counter[tuple[str, str]] = field(default_factory=Counter)  # (kind, channel)

    def summary_lines(self) -> list[str]:
        lines = [f"events {self.events}  accepted {self.accepted}  rejected {sum(self.rejections.values())}"]
        lines.append("decisions by action / reason / channel:")
        for (action, reason, channel), count in sorted(self.decisions.items()):
            lines.append(f"  {action:<6} {reason:<14} {channel:<6} {count}")
        lines.append("rejections by reason:")
        for reason, count in sorted(self.rejections.items()):
            lines.append(f"  {reason:<24} {count}")
        lines.append("sender violations by kind / channel:")
        for (kind, channel), count in sorted(self.violations.items()):
            lines.append(f"  {kind:<12} {channel:<6} {count}")
        return lines


class Replay:
    """Feeds raw messages through parse + :class:`Guard`, keeping every customer's state in memory.

    With ``partitions``, customers are placed on partitions as Kafka's default partitioner would place their keys
    and quiet customers' deadlines fire by partition event time (:class:`PartitionClock`), exactly as the worker
    does; without it, deadlines are settled by each customer's own events and at the end of input.
    """

    def __init__(
        self, guard: Guard, *, check_key: bool = False, partitions: int | None = None, settle_ms: int = 3_600_000
    ) -> None:
        self.guard = guard
        self.check_key = check_key
        self.states: dict[str, CustomerState] = {}
        self.stats = ReplayStats()
        self.newest_ms: int | None = None
        self.partitions = partitions
        self.clocks = [PartitionClock(settle_ms) for _ in range(partitions or 0)]

    def feed(self, raw: bytes, key: bytes | None = None) -> Step:
        stats = self.stats
        stats.events += 1
        parsed = parse_event(raw, key, check_key=self.check_key, max_bytes=self.guard.policy.max_event_bytes)
        if isinstance(parsed, Rejection):
            stats.rejections[parsed.reason] += 1
            return Step(None, rejection=parsed)
        state = self.states.get(parsed.customer_id)
        step = self.guard.process(state, parsed)
        if step.rejection is not None:
            stats.rejections[step.rejection.reason] += 1
            return step
        if step.erased:
            if step.state is None:
                self.states.pop(parsed.customer_id, None)
            else:
                self.states[parsed.customer_id] = step.state
            stats.accepted += 1
            self._count(step)
            return step
        if state is None and step.state is not None:
            self.states[parsed.customer_id] = step.state
        stats.accepted += 1
        if self.newest_ms is None or parsed.ts_ms > self.newest_ms:
            self.newest_ms = parsed.ts_ms
        if self.partitions:
            self._fire_due(partition_for_key(parsed.customer_id.encode(), self.partitions), step)
        if step.decisions or step.violations:  # most steps have neither
            self._count(step)
        return step

    def _fire_due(self, partition: int, step: Step) -> None:
        """Advance the customers of ``partition`` whose deadlines its event time has passed."""
        assert step.state is not None
        clock = self.clocks[partition]
        clock.observe(step.state)
        bound = clock.fire_before_ms
        if bound is None:
            return
        for customer in clock.due(bound):
            state = self.states.get(customer)
            if state is None:
                continue  # erased since it was scheduled (the worker skips it alike)
            fired = self.guard.advance(state, bound)
            step.decisions.extend(fired.decisions)
            clock.schedule(state)

    def finish(self, flush_at_ms: int | None) -> list[dict[str, Any]]:
        """Settle unread deadlines before ``flush_at_ms`` for every customer (first-seen order)."""
        decisions: list[dict[str, Any]] = []
        if flush_at_ms is None:
            return decisions
        for state in self.states.values():
            if state.pending:
                step = self.guard.advance(state, flush_at_ms)
                self._count(step)
                decisions.extend(step.decisions)
        return decisions

    def _count(self, step: Step) -> None:
        decisions = self.stats.decisions
        for decision in step.decisions:
            decisions[(decision["action"], decision["reason"], decision["channel"])] += 1
        violations = self.stats.violations
        for violation in step.violations:
            violations[(violation["kind"], violation["channel"])] += 1


def read_lines(stream: IO[bytes], total_bytes: int | None, progress: bool) -> Iterator[tuple[int, bytes]]:
    """``(line_number, line)`` for the non-empty lines of a JSON-lines stream; optional progress bar on stderr."""
    done = 0
    last_draw = 0.0
    started = time.monotonic()
    for number, line in enumerate(stream, 1):
        done += len(line)
        stripped = line.strip()
        if stripped:
            yield number, stripped
        if progress and number % 4096 == 0:
            now = time.monotonic()
            if now - last_draw > 0.2:
                last_draw = now
                _draw_progress(done, total_bytes, number, now - started)
    if progress:
        _draw_progress(done, total_bytes, None, time.monotonic() - started)
        sys.stderr.write("\n")


def _draw_progress(done: int, total: int | None, lines: int | None, elapsed: float) -> None:
    rate = done / elapsed / 1e6 if elapsed > 0 else 0.0
    if total:
        fraction = min(done / total, 1.0)
        filled = int(fraction * 30)
        bar = "#" * filled + "-" * (30 - filled)
        sys.stderr.write(f"\rreplay [{bar}] {fraction * 100:5.1f}%  {rate:6.1f} MB/s")
    else:
        sys.stderr.write(f"\rreplay {done / 1e6:8.1f} MB  {rate:6.1f} MB/s")
    if lines is None:
        sys.stderr.write("  done")
    sys.stderr.flush()


def file_size(stream: IO[bytes]) -> int | None:
    try:
        return os.fstat(stream.fileno()).st_size or None
    except (OSError, ValueError):
        return None


def replay_lines(
    guard: Guard,
    lines: Iterable[bytes],
    flush_at: str = "end",
    partitions: int | None = None,
    settle_ms: int = 3_600_000,
) -> tuple[Replay, list[dict[str, Any]]]:
    """Replay raw lines and return the driver (states, stats) and every decision in emission order."""
    replay = Replay(guard, partitions=partitions, settle_ms=settle_ms)
    decisions: list[dict[str, Any]] = []
    for raw in lines:
        decisions.extend(replay.feed(raw).decisions)
    decisions.extend(replay.finish(resolve_flush_at(flush_at, replay.newest_ms)))
    return replay, decisions


def resolve_flush_at(flush_at: str, newest_ms: int | None) -> int | None:
    """``end`` (newest event time in the input), ``never``, an ISO instant or epoch milliseconds."""
    from fatigue.timeutil import parse_iso_ms

    if flush_at == "never":
        return None
    if flush_at == "end":
        return newest_ms
    if flush_at.isdigit():
        return int(flush_at)
    parsed = parse_iso_ms(flush_at)
    if parsed is None:
        raise ValueError(f"--flush-at: expected end, never, epoch ms or ISO-8601 with offset, got {flush_at!r}")
    return parsed
