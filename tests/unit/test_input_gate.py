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
    # a rebalance seeks to the committed offset 100 while fetch 2 still holds 120 121 122 from before it
    #   -> 120 is ahead of 100: seek back to 100, drop the rest of that partition's fetch
    # fetch 3: 100 .. 122 -> all delivered, in order, nothing skipped
    gate = InputOffsetGate()
    assert _run(gate, 1, list(range(100, 120))) == [D] * 20
    gate.sought([(P, 100)])
    assert _run(gate, 2, [120, 121, 122]) == [S, X, X]
    assert _run(gate, 3, list(range(100, 123))) == [D] * 23
    assert gate.expected(P) == 123


def test_the_start_up_case_from_the_real_stack() -> None:
    # restart: no read offset yet; fetch 1 delivers 1812..1831 before Faust seeks to the committed 1812, and
    # fetch 2 still holds 1832..; Faust used to deliver 1832 and drop the re-fetched 1812..1831
    gate = InputOffsetGate()
    assert _run(gate, 1, list(range(1812, 1832))) == [D] * 20
    gate.sought([(P, 1812)])
    assert _run(gate, 2, [1832, 1833]) == [S, X]
    assert _run(gate, 3, list(range(1812, 1840))) == [D] * 28


def test_a_record_delivered_while_a_seek_was_under_way_comes_again_rather_than_being_skipped() -> None:
    # Seen in the two-worker test: offset 1 was delivered while Faust's seek to the committed offset 1 was still
    # running in the consumer thread; then the seek's target became the next offset, and offset 2 came next.
    # The gate seeks back: 1 comes again (the agent skips what it handled), nothing is skipped.
    gate = InputOffsetGate()
    assert _run(gate, 1, [1]) == [D]
    gate.sought([(P, 1)])
    assert _run(gate, 2, [2]) == [S]
    assert _run(gate, 3, [1, 2, 3]) == [D, D, D]


def test_a_hole_is_real_when_a_fetch_after_the_gates_own_seek_still_starts_past_it() -> None:
    # committed 50, retention deleted up to 80: aiokafka resets to the log start
    # fetch 2: 80 81 -> seek back to 50, drop     fetch 3: 80 81 -> the hole is real, read on
    # a transaction marker at 91: fetch 4: 90 92 -> seek back to 91     fetch 5: 92 -> real
    gate = InputOffsetGate()
    gate.sought([(P, 50)])
    assert _run(gate, 2, [80, 81]) == [S, X]
    assert _run(gate, 3, [80, 81]) == [H, D]
    assert _run(gate, 4, [82, 90, 92]) == [D, S, X]
    assert _run(gate, 5, [92, 93]) == [H, D]
    assert gate.expected(P) == 94


def test_a_seek_by_someone_else_after_the_gates_own_starts_the_check_over() -> None:
    # the gate seeks back to 12; before the next fetch the commit watch seeks to 10: 10..12 come again, and a
    # record past the expected offset is a fresh suspect, not a confirmed hole
    gate = InputOffsetGate()
    assert _run(gate, 1, [10, 11, 15]) == [D, D, S]
    gate.sought([(P, 10)])
    assert _run(gate, 2, [15]) == [S]
    assert _run(gate, 3, [10, 11, 12]) == [D, D, D]


@pytest.mark.parametrize("no_commit", [None, -1])
def test_a_seek_without_a_committed_offset_takes_the_first_record(no_commit: int | None) -> None:
    gate = InputOffsetGate()
    assert _run(gate, 1, [3, 4]) == [D, D]
    gate.sought([(P, no_commit)])
    assert _run(gate, 2, [0, 1]) == [D, D]


def test_partitions_are_independent_and_revoked_ones_start_over() -> None:
    # p0 sought to 5, p1 delivering at 99; p1 moves to another worker and comes back at 300
    p1 = ("fatigue.events.v1", 1)
    gate = InputOffsetGate()
    gate.sought([(P, 5)])
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


def test_the_run_start_is_where_the_gates_unbroken_deliveries_began() -> None:
    """What the agent checks a gap in its input against (GuardService._missed): offsets from the run's start up to
    the last delivered all went to Faust, so a gap among them was lost inside Faust; a gap before it was not."""
    gate = InputOffsetGate()
    assert gate.run_start(P) is None
    _run(gate, 1, [5, 6])
    assert gate.run_start(P) == 5  # the first record after an assignment
    gate.sought([(P, 3)])
    assert gate.run_start(P) == 3  # a seek: the run starts at its target
    assert _run(gate, 2, [3, 4, 5, 6]) == [D] * 4 and gate.run_start(P) == 3
    assert _run(gate, 3, [9]) == [S]  # a hole to confirm: the run goes on from 7
    assert _run(gate, 4, [9]) == [H]
    assert gate.run_start(P) == 9  # a confirmed hole: 7 and 8 never reached Faust
    gate.sought([(P, None)])
    assert gate.run_start(P) is None
    gate.sought([(P, 2)])
    gate.forget([P])
    assert gate.run_start(P) is None
