"""Kafka broker faults on the cluster profile (3 brokers, topics with 3 replicas and min.insync.replicas 2) while a
stream runs through a guard worker: the leader of some input partitions SIGKILLed mid-stream and restarted later,
and a rolling restart of all three brokers. Each test prints what it injected and what it verified; the oracle is
the replay of the same messages (`tests/e2e/parity.py`): every decision, violation and dead letter exactly once,
read committed, and Redis equal to the replay's blocks in force and preference views.

The generated stream's event time is weeks behind the wall clock, and a partition whose leader is gone receives no
input for several seconds: a worker that took that for a quiet partition would let the wall clock fire its unread
deadlines early, as no replay of the stream would. The workers run with ``--quiet-after`` out of reach, and the
replay without the final wall-clock settle (`wall_clock=False`, as the Redis outage test does).

Run with the cluster profile's environment (`make test` does), one test at a time (`-n 0`): a broker fault hits
every client of the cluster.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.cluster.cluster_profile import CLUSTER_IN_USE, HOW_TO_RUN, KafkaCluster, PacedProducer
from tests.e2e.harness import GuardDeployment
from tests.e2e.parity import assert_exact_parity, make_messages

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.integration,
    pytest.mark.e2e,
    pytest.mark.skipif(not CLUSTER_IN_USE, reason=f"the cluster profile is not in use: {HOW_TO_RUN}"),
]

NO_WALL_CLOCK = ("--quiet-after", "1e9")  # never treat a partition as quiet (see above)


def _guard_topics(deployment: GuardDeployment) -> list[str]:
    """Every topic of the guard: input, outputs and the state changelog."""
    return [*deployment.topics.values(), f"{deployment.name}-customer-state-v1-changelog"]


def _start_guard(deployment: GuardDeployment, cluster: KafkaCluster, timeout_s: float = 60.0) -> None:
    """Create the topics (the brokers' defaults: 3 replicas, min.insync.replicas 2, checked), start worker w1, and
    wait until every input partition is set up on it."""
    deployment.create_topics()
    topics = _guard_topics(deployment)
    cluster.wait_until_healthy(topics, timeout_s=30)
    deadline = time.monotonic() + 30
    while len(states := cluster.describe(topics)) < len(topics) * deployment.partitions:  # a broker behind
        assert time.monotonic() < deadline, f"partitions missing from the metadata: {sorted(states)}"
        time.sleep(0.25)
    assert all(len(state.replicas) == 3 for state in states.values()), states
    deployment.start_worker("w1", *NO_WALL_CLOCK)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        log = deployment.log_tail("w1", 100_000)
        last = log.rfind("assigned input partitions")
        ready = {int(p) for p in re.findall(r"partition (\d+) ready in", log[last:])} if last >= 0 else set()
        if ready == set(range(deployment.partitions)):
            return
        assert deployment.workers["w1"].poll() is None, f"the worker exited:\n{deployment.log_tail()}"
        time.sleep(0.25)
    raise AssertionError(f"the worker's partitions are not ready after {timeout_s}s:\n{deployment.log_tail()}")


def _committed(deployment: GuardDeployment) -> int:
    return sum(deployment.committed_offsets("events").values())


def _assert_input_is_the_stream(deployment: GuardDeployment, sent: int, made: int) -> None:
    """The oracle replays the generated messages: the input topic must hold each exactly once (an idempotent
    producer, across the leader changes)."""
    on_topic = deployment.end_offsets("events")
    assert sent == made and on_topic == made, f"{sent} sent, {on_topic} on the input topic, {made} made"


def _verify(deployment: GuardDeployment, messages: list[tuple[bytes | None, bytes]], started: float) -> None:
    expected = assert_exact_parity(deployment, messages, min_blocks=20, wall_clock=False, settle_timeout_s=180)
    print(
        f"  verified: {sum(expected.decisions.values())} decisions, {sum(expected.violations.values())} violations, "
        f"{sum(expected.rejections.values())} dead letters each exactly once (read committed); Redis holds the "
        f"replay's {len(expected.blocks)} blocks in force and {len(expected.prefs)} preference views; "
        f"{time.monotonic() - started:.0f}s in all"
    )
    assert deployment.workers["w1"].poll() is None, "the worker must ride out broker faults"


def test_leader_of_input_partitions_sigkilled_mid_stream_and_restarted_exactly_once(
    cluster_deployment_factory: Callable[..., GuardDeployment], kafka_cluster: KafkaCluster
) -> None:
    started = time.monotonic()
    deployment = cluster_deployment_factory()
    _start_guard(deployment, kafka_cluster)
    events = deployment.topics["events"]
    topics = _guard_topics(deployment)
    messages = make_messages(20_000, 1_500, seed=61)
    # ~30 s of stream: the kill comes at about a quarter of it, the restart 15 s later
    producer = PacedProducer(deployment, messages, chunk=500, pause_s=0.6).start()
    deployment.wait_until_committed(len(messages) // 4, timeout_s=90)

    victim = kafka_cluster.leader(events, 0)
    led = kafka_cluster.led_by(victim, topics)
    committed_before = _committed(deployment)
    kafka_cluster.kill(victim)
    killed_at = time.monotonic()
    print(
        f"\nSIGKILL broker {victim} at +{killed_at - started:.1f}s, {committed_before}/{len(messages)} input offsets "
        f"committed, {producer.sent} produced; it led input partitions {led.get(events, [])}, and of the outputs "
        + ", ".join(f"{topic.removeprefix(deployment.name)} {parts}" for topic, parts in led.items() if topic != events)
    )
    moved_s = kafka_cluster.wait_until_led_without(victim, topics)
    print(f"  its partitions had new leaders {moved_s:.1f}s after the kill")
    time.sleep(max(0.0, 15 - (time.monotonic() - killed_at)))  # the stream goes on without it for 15 s
    committed_while_down = _committed(deployment) - committed_before
    print(
        f"  {committed_while_down} input offsets committed in the {time.monotonic() - killed_at:.1f}s after the kill "
        f"({producer.sent} produced); restarting broker {victim}"
    )
    restart_at = time.monotonic()
    kafka_cluster.start(victim)
    in_sync_s = kafka_cluster.wait_until_healthy(topics)
    print(
        f"  broker {victim} serving {time.monotonic() - restart_at - in_sync_s:.1f}s after its restart, every "
        f"replica of the guard's topics in sync {in_sync_s:.1f}s later"
    )

    _assert_input_is_the_stream(deployment, producer.join(), len(messages))
    _verify(deployment, messages, started)
    assert committed_while_down > 0, "the guard should go on while one of three brokers is down"


def test_rolling_restart_of_all_three_brokers_mid_stream_exactly_once(
    cluster_deployment_factory: Callable[..., GuardDeployment], kafka_cluster: KafkaCluster
) -> None:
    started = time.monotonic()
    deployment = cluster_deployment_factory()
    _start_guard(deployment, kafka_cluster)
    topics = _guard_topics(deployment)
    messages = make_messages(12_000, 1_000, seed=67)
    # A quarter before the first stop, then a quarter released at each stop, paced (~200 messages/s): input flows
    # while each broker is down, however long its restart takes (15-45 s on a loaded 2-core machine).
    quarter = len(messages) // 4
    producer = PacedProducer(deployment, messages, chunk=150, pause_s=0.5, limit=quarter).start()
    deployment.wait_until_committed(quarter // 2, timeout_s=90)
    print()
    committed_during: list[int] = []
    for node in (1, 2, 3):
        led = kafka_cluster.led_by(node, topics)
        committed_before = _committed(deployment)
        stop_at = time.monotonic()
        producer.release(quarter if node < 3 else len(messages))
        kafka_cluster.stop(node)
        stopped_s = time.monotonic() - stop_at
        kafka_cluster.start(node)
        serving_s = time.monotonic() - stop_at
        kafka_cluster.wait_until_healthy(topics)
        committed_during.append(_committed(deployment) - committed_before)
        print(
            f"broker {node}: leading {sum(len(p) for p in led.values())} of the guard's {len(topics) * 6} partitions, "
            f"stopped (SIGTERM) at +{stop_at - started:.1f}s in {stopped_s:.1f}s, serving again after "
            f"{serving_s:.1f}s, every replica in sync after {time.monotonic() - stop_at:.1f}s; "
            f"{committed_during[-1]} input offsets committed meanwhile, {producer.sent} produced"
        )
    _assert_input_is_the_stream(deployment, producer.join(), len(messages))
    print(f"  stream fully produced at +{time.monotonic() - started:.1f}s")
    _verify(deployment, messages, started)
    assert all(committed_during), f"the guard should go on through each restart: {committed_during} committed"
