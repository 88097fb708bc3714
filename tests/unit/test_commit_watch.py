"""CommitWatch as timelines: when an input partition counts as stuck (and gets re-read), and when it does not."""

from __future__ import annotations

from streams.commit_watch import CommitWatch

TP = ("events", 0)


def look(
    watch: CommitWatch,
    at: float,
    committed: int | None = 100,
    read: int | None = 150,
    end: int | None = 200,
    in_flight: bool = False,
) -> bool:
    return watch.stuck(TP, committed=committed, read=read, end=end, in_flight=in_flight, now=at)


def test_commits_frozen_behind_delivered_offsets_for_the_stall_time_are_stuck():
    watch = CommitWatch(stall_s=15)
    assert not look(watch, 0)  # first look: the clock starts
    assert not look(watch, 14.9)
    assert look(watch, 15)
    assert look(watch, 20)
    watch.forget(TP)  # re-read: the clock starts over
    assert not look(watch, 21)
    assert look(watch, 36)


def test_a_moving_commit_restarts_the_clock():
    watch = CommitWatch(stall_s=15)
    assert not look(watch, 0, committed=100)
    assert not look(watch, 10, committed=101)
    assert not look(watch, 24, committed=101)
    assert look(watch, 25, committed=101)


def test_work_in_hand_is_never_stuck_and_restarts_the_clock():
    watch = CommitWatch(stall_s=15)
    assert not look(watch, 0)
    assert not look(watch, 16, in_flight=True)  # a batch waiting for Kafka, say
    assert not look(watch, 17)
    assert look(watch, 32)


def test_a_consumed_partition_or_one_not_delivered_past_its_commit_is_healthy():
    watch = CommitWatch(stall_s=15)
    for at in (0, 20, 40):
        assert not look(watch, at, committed=200, read=199, end=200)  # all handled and committed
        assert not look(watch, at, committed=200, read=200, end=200)  # sought to the end after an assignment
        assert not look(watch, at, committed=100, read=99, end=200)  # nothing delivered past the commit yet
        assert not look(watch, at, committed=None)  # Faust does not know the committed offset yet
        assert not look(watch, at, read=None)
        assert not look(watch, at, end=None)


def test_forgetting_everything_after_a_rebalance():
    watch = CommitWatch(stall_s=15)
    other = ("events", 1)
    assert not look(watch, 0)
    assert not watch.stuck(other, committed=5, read=9, end=10, in_flight=False, now=0)
    watch.forget()
    assert not look(watch, 20)
    assert not watch.stuck(other, committed=5, read=9, end=10, in_flight=False, now=20)
    assert watch.stuck(other, committed=5, read=9, end=10, in_flight=False, now=35)
