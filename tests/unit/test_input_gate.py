"""The input gate as timelines: what Faust's fetch loop gets to deliver, fetch by fetch.

Notation: ``fetch n: offsets`` is one call of Faust's ``getmany``; ``seek during n`` is a seek made while fetch
``n`` was under way (its records may have been taken from aiokafka before the seek). The stale-fetch timeline is
the one that lost decisions on the real stack before the gate existed.
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
    # fetch 1: 100..119 delivered
    # seek during 2 to the committed offset 100 (a rebalance); fetch 2 still holds 120 121 122 from before it
    #   -> 120 is ahead of 100 in a fetch under way at the seek: seek back to 100, drop the rest of it
    # fetch 3: 100 .. 122 -> all delivered, in order, nothing skipped
    gate = InputOffsetGate()
    assert _run(gate, 1, list(range(100, 120))) == [D] * 20
    gate.sought([(P, 100)], fetch=2)
    assert _run(gate, 2, [120, 121, 122]) == [S, X, X]
    assert _run(gate, 3, list(range(100, 123))) == [D] * 23
    assert gate.expected(P) == 123


def test_the_start_up_case_from_the_real_stack() -> None:
    # restart: no read offset yet; fetch 1 delivers 1812..1831 before Faust seeks to the committed 1812 (during
    # fetch 2, which still holds 1832..); Faust used to deliver 1832 and drop the re-fetched 1812..1831
    gate = InputOffsetGate()
    assert _run(gate, 1, list(range(1812, 1832))) == [D] * 20
    gate.sought([(P, 1812)], fetch=2)
    assert _run(gate, 2, [1832, 1833]) == [S, X]
    assert _run(gate, 3, list(range(1812, 1840))) == [D] * 28


def test_a_hole_in_a_fetch_begun_after_the_last_seek_is_real() -> None:
    # committed 50, retention deleted up to 80: aiokafka resets to the log start and the fetch after the seek
    # begins at 80. A transaction marker leaves a one-offset hole (91) in the middle of a fetch.
    # seek during 1 to 50;  fetch 2: 80 81  -> the hole is real, read on
    # fetch 3: 90 92        -> 92 after 90: real too, no seek
    gate = InputOffsetGate()
    gate.sought([(P, 50)], fetch=1)
    assert _run(gate, 2, [80, 81]) == [H, D]
    assert _run(gate, 3, [82, 90]) == [D, H]
    assert _run(gate, 3, [92]) == [H]
    assert gate.expected(P) == 93


def test_the_fetch_after_the_gates_own_seek_decides() -> None:
    # seek during 1 to 10; fetch 1: 15 16 -> seek back (once), drop
    # fetch 2: 15 16 again -> begun after the gate's seek: 10..14 do not exist
    gate = InputOffsetGate()
    gate.sought([(P, 10)], fetch=1)
    assert _run(gate, 1, [15, 16]) == [S, X]
    assert _run(gate, 2, [15, 16]) == [H, D]


def test_a_seek_from_outside_moves_the_next_offset() -> None:
    # delivered 10 11; the commit watch seeks to 8 (during 2): 8 and 9 come again, and are delivered again
    gate = InputOffsetGate()
    assert _run(gate, 1, [10, 11]) == [D, D]
    gate.sought([(P, 8)], fetch=2)
    assert _run(gate, 2, [12]) == [S]
    assert _run(gate, 3, [8, 9, 10, 11, 12]) == [D] * 5


@pytest.mark.parametrize("no_commit", [None, -1])
def test_a_seek_without_a_committed_offset_takes_the_first_record(no_commit: int | None) -> None:
    gate = InputOffsetGate()
    assert _run(gate, 1, [3, 4]) == [D, D]
    gate.sought([(P, no_commit)], fetch=1)
    assert _run(gate, 2, [0, 1]) == [D, D]


def test_partitions_are_independent_and_revoked_ones_start_over() -> None:
    # p0 sought to 5 during fetch 1, p1 delivering at 99; p1 moves to another worker and comes back at 300
    p1 = ("fatigue.events.v1", 1)
    gate = InputOffsetGate()
    gate.sought([(P, 5)], fetch=1)
    assert _run(gate, 1, [99], tp=p1) == [D]
    gate.forget([p1])
    assert _run(gate, 1, [300], tp=p1) == [D]
    assert _run(gate, 1, [5, 7]) == [D, S]


def test_faust_still_fetches_and_seeks_where_the_gate_sits() -> None:
    """The gate overrides Faust internals (faust-streaming 0.15): an upgrade that moves them must fail here,
    not silently bypass the gate."""
    import inspect

    from faust.transport.consumer import Consumer as FaustConsumer
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

    from streams.input_gate import GatedConsumer

    drain = inspect.getsource(FaustConsumer._drain_messages)
    assert "getmany = self.getmany" in drain  # the delivery loop fetches through the method the gate overrides
    assert "offset >= r_offset" in drain  # the read-offset filter whose stale-fetch case the gate closes
    perform_seek = inspect.getsource(FaustConsumer.perform_seek)
    assert "self.seek_to_committed()" in perform_seek  # every seek to committed passes the gate's override
    for name in ("getmany", "seek_to_committed", "seek", "seek_wait", "on_partitions_revoked"):
        assert name in GatedConsumer.__dict__
        assert callable(getattr(AIOKafkaConsumer, name)), name
    assert "_seek" in dir(AIOKafkaConsumer)
