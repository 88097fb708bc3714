"""The replay oracle of the end-to-end tests: what ``Replay`` of the same messages says the guard must publish,
what the guard did publish, and the comparisons (exact, or the at-least-once ones a crash allows)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from fatigue.engine import Guard
from fatigue.events import CHANNELS
from fatigue.generate import generate_messages
from fatigue.policy import load_policy
from fatigue.replay import Replay, ReplayStats
from fatigue.state import preferences_view
from fatigue.testing import DAY
from streams import redis_keys
from streams.collector import dead_letter_value
from tests.e2e.harness import GuardDeployment, Tally, read_redis_keys

SETTLE_MS = 3_600_000  # the worker's default --deadline-settle
WALL_SETTLE_MS = 60_000  # the worker's default --wall-settle
# the reasons a redelivered (already accepted) event is rejected with the second time round
REDELIVERY_REASONS = frozenset({"duplicate", "late"})
# the event types after which the worker publishes the customer's preferences view
PREFERENCE_TYPES = frozenset({"preference", "unsubscribe", "sms_stop"})

Messages = list[tuple[bytes | None, bytes]]


def make_messages(count: int, customers: int, seed: int, end_ms: int | None = None) -> Messages:
    """A generated stream whose event time ends four days before ``end_ms`` (default now).

    Every unread deadline (72h) is then past when the stream goes quiet, while the longer blocks are still in
    force and must be in Redis.
    """
    end_ms = int(time.time() * 1000) if end_ms is None else end_ms
    start_ms = end_ms - 4 * DAY - 60 * DAY
    return list(generate_messages(count, customers, seed, start_ms, span_days=60))


@dataclass
class Expected:
    """What the guard must have published once it has consumed ``messages`` and gone quiet at ``now_ms``."""

    decisions: Tally
    rejections: Counter[tuple[str, bytes]]  # (reason, raw message)
    violations: Tally
    blocks: dict[str, dict[str, Any]]  # Redis key -> decision in force at now_ms, as published (with its evidence)
    prefs: dict[str, dict[str, Any]]  # Redis key -> preferences view, for every customer that has one
    accepted_ids: set[str]
    # decisions-topic key -> the digest (in ``decisions``) and the last decision emitted for it: what compaction keeps
    # (an erasure tombstones the keys of its customer it emits no decision for: they are left out)
    latest: dict[str, tuple[bytes, dict[str, Any]]]
    stats: ReplayStats
    now_ms: int

    def summary(self) -> str:
        stats = self.stats
        return (
            f"{stats.events} messages: {stats.accepted} accepted, {sum(stats.rejections.values())} rejected "
            f"{dict(sorted(stats.rejections.items()))}, {sum(self.decisions.values())} decisions, "
            f"{sum(self.violations.values())} violations, {len(self.blocks)} blocks in force, "
            f"{len(self.prefs)} preference views"
        )


def expected_outputs(
    deployment: GuardDeployment, messages: Messages, now_ms: int, *, wall_clock: bool = True
) -> Expected:
    """``Replay`` of ``messages`` with the worker's partitioning and deadline settling.

    With ``wall_clock`` the stream has gone quiet and wall clock has taken over (unread deadlines up to
    ``now_ms`` minus the wall settle fired); without it only event time has moved (a worker run with
    ``--quiet-after`` out of reach).
    """
    guard = Guard(load_policy(deployment.policy))
    replay = Replay(guard, check_key=True, partitions=deployment.partitions, settle_ms=SETTLE_MS)
    decisions = Tally()
    rejections: Counter[tuple[str, bytes]] = Counter()
    violations = Tally()
    preference_customers: set[str] = set()
    accepted_ids: set[str] = set()
    latest: dict[str, tuple[bytes, dict[str, Any]]] = {}

    def emitted(batch: list[dict[str, Any]]) -> None:
        for decision in batch:
            latest[_topic_key(decision)] = (decisions.add(decision), decision)

    for key, value in messages:
        step = replay.feed(value, key)
        emitted(step.decisions)
        for violation in step.violations:
            violations.add(violation)
        if step.rejection is not None:
            rejections[(step.rejection.reason, dead_letter_value(value))] += 1
            continue
        if step.state is not None or step.erased:
            body = orjson.loads(value)
            accepted_ids.add(body["event_id"])
            if body["type"] in PREFERENCE_TYPES:
                preference_customers.add(body["customer_id"])
            elif body["type"] == "erase":
                preference_customers.discard(body["customer_id"])  # the view is deleted with the customer
                # and so is every decision key the erasure publishes no decision for (a tombstone)
                kept = {_topic_key(decision) for decision in step.decisions}
                for channel in CHANNELS:
                    if f"{channel}:{body['customer_id']}" not in kept:
                        latest.pop(f"{channel}:{body['customer_id']}", None)
    if wall_clock:
        emitted(replay.finish(now_ms - WALL_SETTLE_MS))
    # the states keep their decisions without the evidence Redis holds: the last one published per key instead
    # (the one its customer's state keeps), if it blocks at now_ms
    blocks = {
        redis_keys.block_key(deployment.redis_prefix, *key.split(":", 1)): decision
        for key, (_, decision) in latest.items()
        if _in_force(decision, now_ms)
    }
    prefs = {
        redis_keys.prefs_key(deployment.redis_prefix, customer): preferences_view(replay.states[customer])
        for customer in preference_customers
    }
    return Expected(decisions, rejections, violations, blocks, prefs, accepted_ids, latest, replay.stats, now_ms)


def _topic_key(decision: dict[str, Any]) -> str:
    return f"{decision['channel']}:{decision['customer_id']}"


# ---------------------------------------------------------------------- what the guard published


def dead_letters(deployment: GuardDeployment) -> list[tuple[str, bytes, dict[str, bytes]]]:
    """``(reason, raw message, headers)`` of every dead letter."""
    records = deployment.read_topic("dlq")
    return [(headers["fatigue-reason"].decode(), value or b"", headers) for _, value, headers in records]


def violations_on_topic(deployment: GuardDeployment) -> Tally:
    tally = Tally()
    for _, value, _ in deployment.read_topic("violations"):
        if value:
            tally.add(orjson.loads(value))
    return tally


def redis_prefs(deployment: GuardDeployment) -> dict[str, dict[str, Any]]:
    """Every preferences view of the deployment in Redis."""
    stored = read_redis_keys(deployment.redis_url, f"{deployment.redis_prefix}:{{c:*}}:prefs")
    return {key: orjson.loads(value) for key, value in stored.items()}


def _in_force(decision: dict[str, Any], now_ms: int) -> bool:
    return bool(decision["action"] == "block" and (decision["until_ms"] is None or decision["until_ms"] > now_ms))


def _near(until_ms: int | None, now_ms: int) -> bool:
    """A block ending within two minutes of ``now_ms`` may or may not have expired yet in Redis."""
    return until_ms is not None and abs(until_ms - now_ms) < 120_000


# ---------------------------------------------------------------------- comparisons


def assert_decisions_exact(deployment: GuardDeployment, expected: Expected) -> int:
    """The decisions topic holds exactly the replay's decisions, each as many times (no recount, nothing lost)."""
    on_topic = deployment.decisions_on_topic()
    missing = expected.decisions - on_topic
    extra = on_topic - expected.decisions
    assert not missing and not extra, (
        f"{sum(missing.values())} decisions missing, {sum(extra.values())} extra; "
        f"e.g. missing {expected.decisions.examples(missing)} extra {on_topic.examples(extra)}\n"
        f"{what_happened_to(deployment, expected.decisions, missing)}"
    )
    return sum(on_topic.values())


def what_happened_to(deployment: GuardDeployment, tally: Tally, lost: Iterable[bytes], count: int = 5) -> str:
    """For a failure message: where the events behind some lost decisions sit on the input topic, what the worker
    dead-lettered them as (if it did), and the worker logs' warnings and errors. A flaky loss is then diagnosable
    from the CI output alone, after the test's topics and logs are gone."""
    causes = sorted({orjson.loads(tally.text(digest)).get("cause_event_id") or "?" for digest in lost})[:count]
    positions = deployment.input_positions()
    letters: dict[str, list[str]] = {}
    for _, _, headers in deployment.read_topic("dlq"):
        event_id = headers.get("fatigue-event-id", b"").decode()
        if event_id in causes:
            letters.setdefault(event_id, []).append(headers["fatigue-reason"].decode())
    lines = [
        f"  cause {cause}: input (partition, offset) {positions.get(cause, [])}, dead-lettered as {letters.get(cause)}"
        for cause in causes
    ]
    return "\n".join(["what happened to them:", *lines, deployment.log_problems()])


@dataclass
class AtLeastOnce:
    records: int  # decision records on the topic
    resent: int  # records beyond the replay's count: decisions sent again after the crash


def assert_decisions_at_least_once(
    deployment: GuardDeployment, expected: Expected, redelivered_from: dict[int, int]
) -> AtLeastOnce:
    """After a crash: nothing the replay does not decide is published; the latest record of every key (what the
    compacted topic keeps and Redis mirrors) is the replay's latest decision, or a tombstone where that decision is
    no longer in force (an expired block, or an allow); and every replay decision is published at least once,
    superseded ones included (a batch's states are stored only after its outputs were delivered, so the input
    redelivered from ``redelivered_from`` sends again whatever the crash cut off)."""
    on_topic = Tally()
    latest: dict[str, bytes | None] = {}  # key -> digest of its latest record; None: a tombstone
    for key, value, _ in deployment.read_topic("decisions"):  # in offset order per partition, hence per key
        if key is None:
            continue
        if value is None:
            latest[key.decode()] = None  # an expired block cleaned up, or a crash repair: the key holds no block
            continue
        latest[key.decode()] = on_topic.add(orjson.loads(value))
    extra = set(on_topic) - set(expected.decisions)
    assert not extra, f"{len(extra)} decisions the replay does not make, e.g. {on_topic.examples(extra)}"

    def ended_and_tombstoned(key: str) -> bool:
        want = expected.latest.get(key)
        return key in latest and latest[key] is None and (want is None or not _in_force(want[1], expected.now_ms))

    wrong = sorted(
        key
        for key in expected.latest.keys() | latest.keys()
        if latest.get(key) != (expected.latest[key][0] if key in expected.latest else None)
        and not ended_and_tombstoned(key)
    )
    assert not wrong, f"{len(wrong)} keys whose latest record differs from the replay's, e.g. {wrong[:3]}"
    missing = set(expected.decisions) - set(on_topic)
    latest_missing = sorted(
        digest for key, (digest, _) in expected.latest.items() if digest in missing and not ended_and_tombstoned(key)
    )
    assert not latest_missing, (
        f"{len(latest_missing)} keys' latest decisions lost, e.g. {expected.decisions.examples(latest_missing)}"
    )
    if missing:
        positions = deployment.input_positions()
        causes = {orjson.loads(expected.decisions.text(lost))["cause_event_id"] for lost in missing}
        in_window = sorted(
            cause
            for cause in causes
            if any(offset >= redelivered_from[partition] for partition, offset in positions.get(cause, []))
        )
        raise AssertionError(
            f"{len(missing)} decisions never published ({len(in_window)} of their {len(causes)} causes redelivered), "
            f"e.g. {expected.decisions.examples(missing)}"
        )
    records = sum(on_topic.values())
    resent = sum(max(count - expected.decisions[decision], 0) for decision, count in on_topic.items())
    return AtLeastOnce(records, resent)


def assert_dead_letters_exact(deployment: GuardDeployment, expected: Expected) -> int:
    letters = dead_letters(deployment)
    published = Counter((reason, value) for reason, value, _ in letters)
    missing = expected.rejections - published
    extra = published - expected.rejections
    assert not missing and not extra, (
        f"{sum(missing.values())} dead letters missing, {sum(extra.values())} extra; e.g. missing "
        f"{[(reason, value[:160]) for reason, value in list(missing)[:3]]} extra "
        f"{[(reason, value[:160]) for reason, value in list(extra)[:3]]}\n{deployment.log_problems()}"
    )
    for _, _, headers in letters[:50]:
        assert {"fatigue-source-partition", "fatigue-source-offset", "fatigue-source-topic"} <= set(headers)
    return len(letters)


def assert_dead_letters_at_least_once(
    deployment: GuardDeployment, expected: Expected, redelivered_from: dict[int, int]
) -> Counter[str]:
    """At-least-once after a crash: every replay rejection is dead-lettered, and the only extras are input the
    crashed worker had processed but not committed (offsets from ``redelivered_from``, per partition), seen again:
    an accepted event is now a ``duplicate`` (or ``late``), a rejected message is rejected again the same way.

    Returns the extras by reason.
    """
    letters = dead_letters(deployment)
    seen = Counter((reason, value) for reason, value, _ in letters)
    missing = expected.rejections - seen
    assert not missing, f"{sum(missing.values())} rejections missing, e.g. {list(missing)[:2]}"
    extras = seen - expected.rejections
    extra_reasons: Counter[str] = Counter()
    for (reason, value), count in extras.items():
        if (reason, value) not in expected.rejections:
            assert reason in REDELIVERY_REASONS, f"unexpected extra dead letter {reason}: {value[:200]!r}"
            event_id = orjson.loads(value).get("event_id")
            assert event_id in expected.accepted_ids, f"extra {reason} for an event never accepted: {value[:200]!r}"
        extra_reasons[reason] += count
    # an input message is dead-lettered more than once only if it was redelivered, i.e. not committed at the crash
    per_source = Counter(
        (int(headers["fatigue-source-partition"]), int(headers["fatigue-source-offset"])) for _, _, headers in letters
    )
    for (partition, offset), count in per_source.items():
        assert count == 1 or offset >= redelivered_from[partition], (
            f"input {partition}:{offset} dead-lettered {count} times, but it was committed before the crash"
        )
    return extra_reasons


def assert_violations_exact(deployment: GuardDeployment, expected: Expected) -> int:
    violations = violations_on_topic(deployment)
    missing = expected.violations - violations
    extra = violations - expected.violations
    assert not missing and not extra, (
        f"{sum(missing.values())} violations missing, {sum(extra.values())} extra; "
        f"e.g. missing {expected.violations.examples(missing)} extra {violations.examples(extra)}"
    )
    return sum(violations.values())


def assert_violations_at_least_once(deployment: GuardDeployment, expected: Expected) -> None:
    """After a crash: every violation the replay finds is on the topic at least once, and no other."""
    violations = violations_on_topic(deployment)
    extra = set(violations) - set(expected.violations)
    assert not extra, f"{len(extra)} violations the replay does not find, e.g. {violations.examples(extra)}"
    missing = set(expected.violations) - set(violations)
    assert not missing, f"{len(missing)} violations never published, e.g. {expected.violations.examples(missing)}"


def assert_redis_blocks_exact(deployment: GuardDeployment, expected: Expected, min_blocks: int = 50) -> int:
    now_ms = expected.now_ms
    in_redis = {key: value for key, value in deployment.redis_blocks().items() if not _near(value["until_ms"], now_ms)}
    wanted = {key: value for key, value in expected.blocks.items() if not _near(value["until_ms"], now_ms)}
    assert set(in_redis) == set(wanted), (
        f"redis missing {sorted(set(wanted) - set(in_redis))[:5]}, stale {sorted(set(in_redis) - set(wanted))[:5]}"
    )
    assert in_redis == wanted
    assert len(wanted) > min_blocks, "the stream should leave many blocks in force"
    return len(wanted)


def assert_redis_prefs_exact(deployment: GuardDeployment, expected: Expected) -> int:
    """Redis holds exactly the replay's preferences views: one per customer with a preference, unsubscribe or
    SMS STOP event, each equal to the view of the customer's final state, and no other."""
    stored = redis_prefs(deployment)
    missing = sorted(set(expected.prefs) - set(stored))
    extra = sorted(set(stored) - set(expected.prefs))
    wrong = sorted(key for key in stored.keys() & expected.prefs.keys() if stored[key] != expected.prefs[key])
    assert not missing and not extra and not wrong, (
        f"redis prefs missing {missing[:5]}, extra {extra[:5]}, different {wrong[:5]}"
    )
    return len(stored)


def assert_legacy_keys_mirror(deployment: GuardDeployment) -> None:
    """On a single Redis the view also writes the layout before hash tags (docs/contract.md, migration): the same
    values under the legacy names, and nothing else there."""
    if redis_keys.is_cluster_url(deployment.redis_url):
        return
    prefix = deployment.redis_prefix
    current = {
        **read_redis_keys(deployment.redis_url, f"{prefix}:{{c:*}}:block:*"),
        **read_redis_keys(deployment.redis_url, f"{prefix}:{{c:*}}:prefs"),
    }
    mirrored: dict[str, bytes] = {}
    for name, value in current.items():
        parsed = redis_keys.parse_customer_key(prefix, name)
        assert parsed is not None, name
        customer, kind = parsed
        legacy = (
            redis_keys.legacy_prefs_key(prefix, customer)
            if kind == "prefs"
            else redis_keys.legacy_block_key(prefix, kind.removeprefix("block:"), customer)
        )
        mirrored[legacy] = value
    legacy_held = {
        **read_redis_keys(deployment.redis_url, f"{prefix}:block:*"),
        **read_redis_keys(deployment.redis_url, f"{prefix}:prefs:*"),
    }
    # blocks ending right now may have expired under one name and not yet the other
    assert set(legacy_held) ^ set(mirrored) <= {
        name for name, value in {**legacy_held, **mirrored}.items() if b'"until_ms"' in value and _near_raw(value)
    }, f"legacy keys differ: {sorted(set(legacy_held) ^ set(mirrored))[:5]}"
    assert all(legacy_held[name] == mirrored[name] for name in set(legacy_held) & set(mirrored))


def _near_raw(value: bytes) -> bool:
    decision = orjson.loads(value)
    return _near(decision.get("until_ms"), int(time.time() * 1000))


def assert_exact_parity(
    deployment: GuardDeployment,
    messages: Messages,
    min_blocks: int = 50,
    *,
    wall_clock: bool = True,
    settle_timeout_s: float = 240.0,
) -> Expected:
    """Settle, then every output equals the replay of ``messages`` exactly (the parity tests' oracle).

    ``wall_clock=False`` for workers run with ``--quiet-after`` out of reach (see :func:`expected_outputs`).
    """
    started = time.monotonic()
    deployment.wait_until_settled(timeout_s=settle_timeout_s)
    settled = time.monotonic()
    expected = expected_outputs(deployment, messages, int(time.time() * 1000), wall_clock=wall_clock)
    replayed = time.monotonic()
    print(f"\n{expected.summary()}")
    assert_decisions_exact(deployment, expected)
    assert_dead_letters_exact(deployment, expected)
    assert_violations_exact(deployment, expected)
    assert_redis_blocks_exact(deployment, expected, min_blocks)
    assert_redis_prefs_exact(deployment, expected)
    assert_legacy_keys_mirror(deployment)
    print(
        f"parity: settled after {settled - started:.1f}s, replayed in {replayed - settled:.1f}s, "
        f"outputs compared in {time.monotonic() - replayed:.1f}s"
    )
    return expected
