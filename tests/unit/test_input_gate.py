"""The input gate as timelines: what Faust's fetch loop gets to deliver, fetch by fetch.

Notation: ``fetch n: offsets`` is one call of Faust's ``getmany``; the gate answers per record. The stale-fetch
timeline is the one that lost decisions on the real stack before the gate existed.
"""

from __future__ import annotations

import pytest

from streams.input_gate import InputOffsetGate, Verdict

D, X, S, H = Verdict.DELIVER, Verdict.DROP, Verdict.SEEK, Verdict.ACCEPT_HOLE
P = ("fatigue.events.v1", 0)


def _run(gate: InputOffsetGate, fetch: int, offsets: list[int], tp: object = P) -> list[Verdict]:
    return [gate.admit(tp, offset, fetch) for offset in offsets]


def test_in_order_records_are_delivered_once_and_repeats_dropped() -> None:
    # fetch 1: 5 6 7      (no committed offset: the first record sets the pace)
    # fetch 2: 7 8        (7 again: Faust would deliver it a second time)
    gate = InputOffsetGate()
    assert _run(gate, 1, [5, 6, 7]) == [D, D, D]
    assert _run(gate, 2, [7, 8]) == [X, D]
    assert gate.expected(P) == 9


def test_a_stale_fetch_after_a_seek_to_committed_is_re_read_not_skipped() -> None:
    # delivered 100..104; a rebalance seeks to the committed offset 100 while Faust still iterates records
    # 140..142 it took from aiokafka before the seek.
    # fetch 1: 140 141 142   -> 140 is ahead of 100: seek back to 100, drop the rest of that partition's batch
    # fetch 2: 100 .. 142    -> all delivered, in order, nothing skipped
    gate = InputOffsetGate()
    assert _run(gate, 0, [100, 101, 102, 103, 104]) == [D] * 5
    gate.sought([(P, 100)])
    assert _run(gate, 1, [140, 141, 142]) == [S, X, X]
    assert _run(gate, 2, list(range(100, 143))) == [D] * 43
    assert gate.expected(P) == 143


def test_records_ahead_of_the_next_offset_without_a_seek_are_fetched_again() -> None:
    # fetch 1: 10 11 | 15 16   -> a hole at 12: seek back to 12, drop 15 and 16
    # fetch 2: 12 13 14 15 16  -> delivered
    gate = InputOffsetGate()
    assert _run(gate, 1, [10, 11, 15, 16]) == [D, D, S, X]
    assert _run(gate, 2, [12, 13, 14, 15, 16]) == [D] * 5


def test_a_hole_that_survives_three_seeks_is_real_and_reading_goes_on_after_it() -> None:
    # committed 50, but retention deleted up to 80: every fetch after a seek to 50 starts at 80
    # fetch 1: 80 81  -> seek (1)      fetch 2: 80 81 -> seek (2)      fetch 3: 80 81 -> seek (3)
    # fetch 4: 80 81  -> the hole is real: 80 and 81 are delivered, and the next hole starts over
    gate = InputOffsetGate(seeks_before_accepting_a_hole=3)
    gate.sought([(P, 50)])
    assert _run(gate, 1, [80, 81]) == [S, X]
    assert _run(gate, 2, [80, 81]) == [S, X]
    assert _run(gate, 3, [80, 81]) == [S, X]
    assert _run(gate, 4, [80, 81]) == [H, D]
    assert _run(gate, 5, [82, 90]) == [D, S]


def test_records_of_the_fetch_in_hand_when_the_gate_sought_do_not_count_as_a_retry() -> None:
    # fetch 1: 7 | 9 9 9  -> one seek; the repeats of the same stale batch are only dropped
    gate = InputOffsetGate(seeks_before_accepting_a_hole=1)
    assert _run(gate, 1, [7, 9, 9, 9]) == [D, S, X, X]
    assert _run(gate, 2, [8]) == [D]


def test_a_seek_from_outside_resets_the_retries_and_moves_the_next_offset() -> None:
    # the commit watch (or Faust) seeks to 20 in the middle of the gate's own retries for 12
    gate = InputOffsetGate(seeks_before_accepting_a_hole=1)
    assert _run(gate, 1, [10, 11, 30]) == [D, D, S]
    gate.sought([(P, 20)])
    assert _run(gate, 2, [30]) == [S]  # a fresh hole at 20, not the second look at the one at 12
    assert _run(gate, 3, [20, 21]) == [D, D]


@pytest.mark.parametrize("no_commit", [None, -1])
def test_a_seek_without_a_committed_offset_takes_the_first_record(no_commit: int | None) -> None:
    gate = InputOffsetGate()
    assert _run(gate, 1, [3, 4]) == [D, D]
    gate.sought([(P, no_commit)])
    assert _run(gate, 2, [0, 1]) == [D, D]


def test_partitions_are_independent_and_revoked_ones_start_over() -> None:
    # p0 is at 5, p1 at 100; p1 moves to another worker and comes back at its committed offset 300
    p1 = ("fatigue.events.v1", 1)
    gate = InputOffsetGate()
    assert _run(gate, 1, [4]) + _run(gate, 1, [99], tp=p1) == [D, D]
    gate.forget([p1])
    assert _run(gate, 2, [300], tp=p1) == [D]
    assert _run(gate, 2, [5, 7]) == [D, S]
