"""The strongest oracle: the streaming guard on real Kafka + Redis decides exactly what the offline replay does.

A generated stream (all event types, malformed messages, duplicates, out-of-order and too-late events) is produced
to a real topic; real worker processes consume it. Then the decisions on the compacted topic, the dead-letter
topic, the sender violations and the blocks and preferences in Redis must equal ``Replay`` of the same messages
with the same policy (content equality; emission order may differ).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from fatigue.engine import Guard
from fatigue.generate import generate_messages
from fatigue.policy import load_policy
from fatigue.replay import Replay
from fatigue.state import preferences_view
from fatigue.testing import DAY
from tests.e2e.harness import GuardDeployment, canonical

EVENTS = 100_000
CUSTOMERS = 5_000
SETTLE_MS = 3_600_000  # the worker's default --deadline-settle
WALL_SETTLE_MS = 60_000  # the worker's default --wall-settle


def _messages(seed: int, end_ms: int) -> list[tuple[bytes | None, bytes]]:
    # event time ends four days before now: every unread deadline (72h) is past when the stream goes quiet,
    # while the longer blocks are still in force and must be in Redis
    start_ms = end_ms - 4 * DAY - 60 * DAY
    return list(generate_messages(EVENTS, CUSTOMERS, seed, start_ms, span_days=60))


def _expected(
    deployment: GuardDeployment, messages: list[tuple[bytes | None, bytes]], now_ms: int
) -> dict[str, object]:
    guard = Guard(load_policy(deployment.policy))
    replay = Replay(guard, check_key=True, partitions=deployment.partitions, settle_ms=SETTLE_MS)
    decisions: Counter[bytes] = Counter()
    rejections: Counter[tuple[str, bytes]] = Counter()
    violations: Counter[bytes] = Counter()
    preference_customers: set[str] = set()
    for key, value in messages:
        step = replay.feed(value, key)
        decisions.update(canonical(decision) for decision in step.decisions)
        violations.update(canonical(violation) for violation in step.violations)
        if step.rejection is not None:
            rejections[(step.rejection.reason, value)] += 1
        elif step.state is not None and b'"preference"' in value:
            preference_customers.add(step.state.customer_id)
    decisions.update(canonical(decision) for decision in replay.finish(now_ms - WALL_SETTLE_MS))
    blocks = {
        f"{deployment.redis_prefix}:block:{decision['channel']}:{decision['customer_id']}": decision
        for state in replay.states.values()
        for decision in guard.current_decisions(state, now_ms)
    }
    prefs = {
        f"{deployment.redis_prefix}:prefs:{customer}": preferences_view(replay.states[customer])
        for customer in preference_customers
    }
    return {
        "decisions": decisions,
        "rejections": rejections,
        "violations": violations,
        "blocks": blocks,
        "prefs": prefs,
        "stats": replay.stats,
    }


def _near(until_ms: int | None, now_ms: int) -> bool:
    return until_ms is not None and abs(until_ms - now_ms) < 120_000


def _assert_parity(deployment: GuardDeployment, messages: list[tuple[bytes | None, bytes]]) -> None:
    deployment.wait_until_settled()
    now_ms = int(time.time() * 1000)
    expected = _expected(deployment, messages, now_ms)
    stats = expected["stats"]
    print(
        f"\n{len(messages)} messages: {stats.accepted} accepted, {sum(stats.rejections.values())} rejected "  # type: ignore[attr-defined]
        f"{dict(stats.rejections)}, {sum(expected['decisions'].values())} decisions"  # type: ignore[attr-defined]
    )

    on_topic = deployment.decisions_on_topic()
    missing = expected["decisions"] - on_topic  # type: ignore[operator]
    extra = on_topic - expected["decisions"]  # type: ignore[operator]
    assert not missing and not extra, (
        f"{sum(missing.values())} decisions missing, {sum(extra.values())} extra; "
        f"e.g. missing {list(missing)[:2]} extra {list(extra)[:2]}"
    )

    dead_letters = Counter(
        (headers["fatigue-reason"].decode(), value or b"") for _, value, headers in deployment.read_topic("dlq")
    )
    assert dead_letters == expected["rejections"]
    for _, _, headers in deployment.read_topic("dlq")[:50]:
        assert {"fatigue-source-partition", "fatigue-source-offset", "fatigue-source-topic"} <= set(headers)

    violations = Counter(canonical(orjson.loads(value)) for _, value, _ in deployment.read_topic("violations") if value)
    assert violations == expected["violations"]

    in_redis = {key: value for key, value in deployment.redis_blocks().items() if not _near(value["until_ms"], now_ms)}
    wanted = {key: value for key, value in expected["blocks"].items() if not _near(value["until_ms"], now_ms)}  # type: ignore[attr-defined]
    assert set(in_redis) == set(wanted), (
        f"redis missing {sorted(set(wanted) - set(in_redis))[:5]}, stale {sorted(set(in_redis) - set(wanted))[:5]}"
    )
    assert in_redis == wanted
    assert len(wanted) > 50, "the stream should leave many blocks in force"

    import redis as redis_lib

    client = redis_lib.Redis.from_url(deployment.redis_url)
    try:
        keys = list(expected["prefs"])  # type: ignore[call-overload]
        stored = dict(zip(keys, client.mget(keys), strict=True)) if keys else {}
    finally:
        client.close()
    assert {key: orjson.loads(value) for key, value in stored.items() if value} == expected["prefs"]


@pytest.mark.slow
def test_one_worker_equals_replay(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = _messages(seed=7, end_ms=int(time.time() * 1000))
    deployment.start_worker("w1")
    produced = deployment.produce(messages)
    assert produced == EVENTS
    _assert_parity(deployment, messages)


@pytest.mark.slow
def test_two_workers_sharing_six_partitions_equal_replay(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    messages = _messages(seed=11, end_ms=int(time.time() * 1000))
    deployment.start_worker("w1")
    deployment.start_worker("w2")
    time.sleep(8)  # let the group settle on a 3 + 3 split before the load arrives
    deployment.produce(messages)
    _assert_parity(deployment, messages)
    for worker in ("w1", "w2"):
        assert "Traceback" not in deployment.log_tail(worker, 100000), deployment.log_tail(worker)
