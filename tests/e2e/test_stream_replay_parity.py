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
