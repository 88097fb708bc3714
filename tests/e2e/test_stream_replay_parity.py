"""The strongest oracle: the streaming guard on real Kafka + Redis decides exactly what the offline replay does.

A generated stream (all event types, malformed messages, duplicates, out-of-order and too-late events) is produced
to a real topic; real worker processes consume it. Then the decisions on the compacted topic, the dead-letter
topic, the sender violations and the blocks and preferences in Redis must equal ``Replay`` of the same messages
with the same policy (content equality; emission order may differ).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.harness import GuardDeployment
from tests.e2e.parity import Messages, assert_exact_parity, make_messages

EVENTS = 100_000
CUSTOMERS = 5_000

NO_WALL_CLOCK = ("--quiet-after", "1e9")  # never treat a partition as quiet: no wall-clock firing


def _messages(seed: int, end_ms: int) -> Messages:
    return make_messages(EVENTS, CUSTOMERS, seed, end_ms)


@pytest.mark.slow
def test_one_worker_equals_replay(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = _messages(seed=7, end_ms=int(time.time() * 1000))
    deployment.start_worker("w1")
    produced = deployment.produce(messages)
    assert produced == EVENTS
    assert_exact_parity(deployment, messages)


@pytest.mark.slow
def test_two_workers_sharing_six_partitions_equal_replay(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = _messages(seed=11, end_ms=int(time.time() * 1000))
    deployment.start_worker("w1")
    deployment.start_worker("w2")
    time.sleep(8)  # let the group settle on a 3 + 3 split before the load arrives
    deployment.produce(messages)
    assert_exact_parity(deployment, messages)
    for worker in ("w1", "w2"):
        assert "Traceback" not in deployment.log_tail(worker, 100000), deployment.log_tail(worker)


@pytest.mark.slow
def test_input_written_in_transactions_equals_replay(deployment_factory: Callable[..., GuardDeployment]):
    """A sender that writes the input in Kafka transactions leaves a commit marker at one offset per partition and
    transaction; no consumer ever sees it. The pipeline reads committed, handles every record once and, once a
    partition is caught up, commits its position past the last marker (so the group's lag reads 0)."""
    deployment = deployment_factory()
    deployment.create_topics()
    messages = make_messages(8_000, 800, seed=13, end_ms=int(time.time() * 1000))
    deployment.start_worker("w1")
    deployment.produce(messages, transaction_size=300)
    assert_exact_parity(deployment, messages)
    ends = deployment.end_offsets_by_partition("events")
    committed = deployment.committed_input()
    assert committed == ends, f"committed {committed}, ends {ends}"
    print(f"  verified: outputs equal replay; committed offsets at the partitions' ends (markers included) {ends}")


@pytest.mark.slow
def test_workers_joining_and_leaving_mid_stream_equal_replay(deployment_factory: Callable[..., GuardDeployment]):
    """Rebalances while the input flows: w2 joins a third of the way in (the partitions are split again), w1
    leaves gracefully two thirds in (w2 takes them all). Each revocation waits for the batch in hand to commit;
    each new owner fences, restores and resumes at the committed offset. Outputs equal the replay exactly.

    The workers never take a partition for quiet (``--quiet-after`` out of reach): the pauses between the thirds
    last as long as the machine takes, and on a loaded one a pause past 5 s let wall clock fire unread deadlines
    mid-stream that the replay fires by event time (a deterministic 338 decisions of difference, seen under load).
    Wall-clock firing has tests of its own; this one is about rebalances."""
    deployment = deployment_factory()
    deployment.create_topics()
    messages = _messages(seed=43, end_ms=int(time.time() * 1000))[:30_000]
    thirds = [messages[:10_000], messages[10_000:20_000], messages[20_000:]]
    deployment.start_worker("w1", *NO_WALL_CLOCK)
    deployment.produce(thirds[0])
    deployment.wait_until_committed(5_000)
    deployment.start_worker("w2", *NO_WALL_CLOCK)
    deadline = time.monotonic() + 60
    while "ready in" not in deployment.log_tail("w2", 100_000):  # w2 owns partitions: the group was split
        assert time.monotonic() < deadline, deployment.log_tail("w2")
        time.sleep(0.2)
    deployment.produce(thirds[1])
    deployment.wait_until_committed(15_000)
    assert deployment.stop_worker("w1") == 0
    deployment.produce(thirds[2])
    expected = assert_exact_parity(deployment, messages, min_blocks=20, wall_clock=False)
    log = deployment.log_tail("w2", 100_000)
    assert log.count("assigned input partitions") >= 2, "w2 should have been assigned partitions twice"
    print(
        f"  verified: w2 joined and w1 left mid-stream; {sum(expected.decisions.values())} decisions, dead letters, "
        f"violations, Redis blocks and prefs exactly as the replay"
    )
