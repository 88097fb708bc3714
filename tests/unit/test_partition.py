"""The pipeline's partition driver against its oracle, ``Replay(partitions=N)``, in lock step.

Every message goes to the driver of its key's partition (as Kafka's default partitioner places it) and to the
replay; after each one the decisions and violations (JSON bytes, the deadlines the partition clock fired for other
customers included), the rejection and the preferences view must be equal. States are committed to a store and
evicted at random points (the pipeline's cache of a RocksDB store), and the partition's clock is restored from its
stored time, as after a restart: none of it may change an output. At the end every customer's state bytes are
equal. Both engines run it (``native``: ``fatigue.native.NativeEngine``, required unless ``FATIGUE_NO_NATIVE=1``):
on generated streams, on timelines of every event type (erasure, preferences, late and duplicate events, malformed
lines) and on hostile messages; and the native engine is compared with the Python one field by field, also
through evictions, ``advance``, ``take_dirty`` and ``state_bytes``.
"""

from __future__ import annotations

import os
import random
import tracemalloc
from collections.abc import Callable, Sequence

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fatigue.clock import partition_for_key
from fatigue.engine import Guard
from fatigue.generate import generate_messages
from fatigue.partition import (
    PREFERENCE_TYPES,
    CustomerEngine,
    PartitionDriver,
    PythonEngine,
    decision_record,
    violation_record,
)
from fatigue.policy import load_policy
from fatigue.replay import Replay
from fatigue.state import CustomerState, json_bytes, preferences_view
from fatigue.testing import DAY
from tests.strategies import keyed_messages
from tests.unit.test_native_parity import NO_NATIVE_ENV, RandomChooser, make_timeline, native_problem
from tests.unit.test_state_encoding import as_written_before

POLICIES = ("default", "tcpa", "reg-f")
SETTLE_MS = 3_600_000
START_MS = 1_780_000_000_000

EngineFactory = Callable[[Guard, Callable[[str], bytes | None]], CustomerEngine]


def python_engine(guard: Guard, loader: Callable[[str], bytes | None]) -> CustomerEngine:
    return PythonEngine(guard, loader)


def native_engine(guard: Guard, loader: Callable[[str], bytes | None]) -> CustomerEngine:
    """The native engine; required (a test using it fails without it) unless FATIGUE_NO_NATIVE=1."""
    problem = native_problem()
    if problem is not None:
        if os.environ.get(NO_NATIVE_ENV) == "1":
            pytest.skip(f"{NO_NATIVE_ENV}=1: {problem}")
        pytest.fail(f"{problem}; build it (make venv) or set {NO_NATIVE_ENV}=1 to skip", pytrace=False)
    from fatigue.native import NativeEngine

    return NativeEngine(guard, loader)


ENGINES: dict[str, EngineFactory] = {"python": python_engine, "native": native_engine}


class _Partitions:
    """N drivers over one store, committed and evicted now and then, restarted (clock from its stored time)."""

    def __init__(
        self, guard: Guard, partitions: int, factory: EngineFactory, rng: random.Random, disturb: float = 0.025
    ) -> None:
        self.guard = guard
        self.factory = factory
        self.rng = rng
        self.disturb = disturb
        self.store: dict[str, bytes] = {}
        self.clock_store: dict[int, int | None] = {}
        self.drivers = [self._driver(p) for p in range(partitions)]

    def _driver(self, partition: int) -> PartitionDriver:
        driver = PartitionDriver(self.factory(self.guard, self.store.get), SETTLE_MS)
        if partition in self.clock_store:  # restarted: the clock's time and every stored deadline are restored
            driver.time_ms = self.clock_store[partition]
            for customer, raw in self.store.items():
                if partition_for_key(customer.encode(), len(self.drivers)) == partition:
                    state = CustomerState.from_bytes(raw)
                    driver.restore(customer, state.watermark_ms, state.next_deadline_ms())
        return driver

    def commit(self, partition: int) -> None:
        driver = self.drivers[partition]
        for customer, raw in driver.engine.take_dirty():
            if raw is None:
                self.store.pop(customer, None)
            else:
                self.store[customer] = raw
        self.clock_store[partition] = driver.time_ms

    def maybe_disturb(self, partition: int) -> None:
        roll = self.rng.random()
        if roll < self.disturb * 0.8:
            self.commit(partition)
            self.drivers[partition].engine.evict(self.rng.randrange(0, 50))
        elif roll < self.disturb:
            self.commit(partition)
            self.drivers[partition] = self._driver(partition)


def _lock_step(
    guard: Guard,
    messages: Sequence[tuple[bytes | None, bytes]],
    factory: EngineFactory,
    rng: random.Random,
    *,
    partitions: int = 4,
    disturb: float = 0.025,
) -> int:
    """Feeds the messages to the partitioned replay and to the drivers in lock step (see the module docstring);
    how many decisions the drivers' clocks fired for customers other than the message's."""
    replay = Replay(guard, check_key=True, partitions=partitions, settle_ms=SETTLE_MS)
    drivers = _Partitions(guard, partitions, factory, rng, disturb)
    fired_elsewhere = 0
    for number, (key, value) in enumerate(messages):
        partition = partition_for_key(key, partitions) if key is not None else rng.randrange(partitions)
        step = replay.feed(value, key)
        outcome = drivers.drivers[partition].feed(value, key)
        where = f"message {number} {value[:200]!r}"
        assert [orjson.dumps(d) for d in step.decisions] == [record[1] for record in outcome.decisions], where
        assert [orjson.dumps(v) for v in step.violations] == [record[0] for record in outcome.violations], where
        if step.rejection is None:
            assert outcome.rejection is None, where
        else:
            assert outcome.rejection is not None, where
            assert (
                outcome.rejection.reason,
                outcome.rejection.detail,
                outcome.rejection.event_id,
                outcome.rejection.customer_id,
            ) == (
                step.rejection.reason,
                step.rejection.detail,
                step.rejection.event_id,
                step.rejection.customer_id,
            ), where
        assert outcome.erased == step.erased, where
        if outcome.rejection is None and not outcome.erased and outcome.event_type in PREFERENCE_TYPES:
            assert step.state is not None and outcome.prefs is not None, where
            assert orjson.loads(outcome.prefs) == preferences_view(step.state), where
        else:
            assert outcome.prefs is None, where
        for record in outcome.decisions:
            decision = orjson.loads(record[1])
            assert record[0] == f"{decision['channel']}:{decision['customer_id']}".encode()
            assert record[2:] == (
                decision["action"],
                decision["reason"],
                decision["channel"],
                decision["until_ms"],
                decision["decided_at_ms"],
            )
            fired_elsewhere += outcome.customer_id != decision["customer_id"]
        drivers.maybe_disturb(partition)
    for partition in range(partitions):
        drivers.commit(partition)
    expected = {customer: state.to_bytes() for customer, state in replay.states.items()}
    assert drivers.store == expected
    return fired_elsewhere


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("policy_name", POLICIES)
def test_partition_drivers_equal_the_partitioned_replay(policy_name: str, engine: str) -> None:
    guard = Guard(load_policy(f"config/policies/{policy_name}.toml"))
    rng = random.Random(f"{policy_name}-{engine}")
    messages = list(generate_messages(12_000, 400, seed=5, start_ms=START_MS, span_days=20))
    fired_elsewhere = _lock_step(guard, messages, ENGINES[engine], rng)
    assert fired_elsewhere > 0, "the stream should settle quiet customers' deadlines by partition event time"


def _keyed(line: bytes) -> tuple[bytes | None, bytes]:
    """A timeline's line with its customer's id as the key (None when the line has no readable one)."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None, line
    customer = body.get("customer_id") if isinstance(body, dict) else None
    return (customer.encode() if isinstance(customer, str) else None), line


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("policy_name", POLICIES)
def test_timelines_equal_the_partitioned_replay(policy_name: str, engine: str) -> None:
    """Dense timelines of every event type (erasure, preferences, reactions, late, duplicate and malformed lines;
    tests/unit/test_native_parity.py's make_timeline), with evictions and restarts far more often."""
    guard = Guard(load_policy(f"config/policies/{policy_name}.toml"))
    for number in range(40):
        seed = f"partition-{policy_name}-{number}"
        lines = make_timeline(RandomChooser(seed), max_steps=80)
        rng = random.Random(f"{seed}-{engine}")
        _lock_step(guard, [_keyed(line) for line in lines], ENGINES[engine], rng, partitions=2, disturb=0.2)


@pytest.mark.parametrize("engine", sorted(ENGINES))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=st.lists(keyed_messages(("a", "b", "c")), min_size=1, max_size=30),
    policy_name=st.sampled_from(POLICIES),
    seed=st.integers(0, 1000),
)
def test_hostile_messages_equal_the_partitioned_replay(
    engine: str, messages: list[tuple[bytes | None, bytes]], policy_name: str, seed: int
) -> None:
    """Arbitrary bytes, event-like objects and spoilt events (tests/strategies.py), wrong and missing keys."""
    guard = Guard(load_policy(f"config/policies/{policy_name}.toml"))
    _lock_step(guard, messages, ENGINES[engine], random.Random(seed), partitions=2, disturb=0.3)


@pytest.mark.parametrize("policy_name", POLICIES)
def test_native_engine_equals_the_python_engine(policy_name: str) -> None:
    """Every field of every outcome, and advance, take_dirty, evict, resident and state_bytes, called alike on both
    engines over one store (a stream with erasures and timelines of every event type)."""
    guard = Guard(load_policy(f"config/policies/{policy_name}.toml"))
    rng = random.Random(policy_name)
    store: dict[str, bytes] = {}
    python = PythonEngine(guard, store.get)
    native = native_engine(guard, store.get)
    messages = list(generate_messages(6_000, 150, seed=11, start_ms=START_MS, span_days=10))
    for number in range(30):  # erasures, and the customers' events after them
        key, value = messages[rng.randrange(len(messages))]
        if key is not None:
            erase = {"type": "erase", "event_id": f"erase-{number}", "customer_id": key.decode(), "ts": START_MS}
            erase["ts"] = orjson.loads(value).get("ts", START_MS)
            messages.insert(rng.randrange(len(messages)), (key, orjson.dumps(erase)))
    for number in range(20):
        messages.extend(_keyed(line) for line in make_timeline(RandomChooser(f"engines-{number}")))
    for number, (key, value) in enumerate(messages):
        where = f"message {number} {value[:200]!r}"
        expected = python.process(value, key)
        got = native.process(value, key)
        assert got == expected, where
        roll = rng.random()
        customer = expected[1]
        if customer is not None and roll < 0.05:
            now = (expected[9] or START_MS) + rng.randrange(0, 5 * DAY)
            assert native.advance(customer, now) == python.advance(customer, now), where
        if roll < 0.03 or number == len(messages) - 1:
            dirty = python.take_dirty()
            assert native.take_dirty() == dirty, where
            for changed, raw in dirty:
                if raw is None:
                    store.pop(changed, None)
                else:
                    store[changed] = raw
            if roll < 0.02:
                keep = rng.randrange(0, 60)
                assert native.evict(keep) == python.evict(keep), where
            assert native.resident() == python.resident(), where
        if roll > 0.99:
            probe = rng.choice([*store, "nobody"])
            assert native.state_bytes(probe) == python.state_bytes(probe), where
            assert native.resident() == python.resident(), where


def test_wall_clock_firing_equals_the_replays_finish() -> None:
    """On a quiet partition, wall clock settles what ``Replay.finish`` settles (the e2e oracle's last step)."""
    guard = Guard(load_policy("config/policies/default.toml"))
    replay = Replay(guard, check_key=True, partitions=2, settle_ms=SETTLE_MS)
    drivers = [PartitionDriver(PythonEngine(guard, lambda _: None), SETTLE_MS) for _ in range(2)]
    for key, value in generate_messages(3_000, 200, seed=9, start_ms=START_MS, span_days=10):
        replay.feed(value, key)
        drivers[partition_for_key(key, 2) if key is not None else 0].feed(value, key)
    bound = START_MS + 30 * DAY
    expected = sorted(orjson.dumps(d) for d in replay.finish(bound))
    fired = sorted(record[1] for driver in drivers for record in driver.fire(bound))
    assert expected and fired == expected


def test_native_engine_reads_a_store_of_bytes_like_values() -> None:
    """A store may hand out bytearray or memoryview rather than bytes; a state it lacks is held as absent."""
    guard = Guard(load_policy("config/policies/default.toml"))
    python = PythonEngine(guard, lambda _: None)
    for key, value in generate_messages(500, 20, seed=3, start_ms=START_MS, span_days=5):
        python.process(value, key)
    stored = dict(python.take_dirty())
    assert stored
    for wrap in (bytes, bytearray, memoryview):
        store = {customer: wrap(raw) for customer, raw in stored.items() if raw is not None}
        native = native_engine(guard, store.get)
        for customer, raw in stored.items():
            assert native.state_bytes(customer) == raw
        assert native.state_bytes("nobody") is None
        assert native.advance("nobody", START_MS + 9 * DAY) == ([], None)
        assert native.resident() == len(stored) + 1
        assert native.take_dirty() == []
        assert native.evict(0) == len(stored) + 1
        assert native.resident() == 0


@pytest.mark.parametrize("engine", sorted(ENGINES))
@pytest.mark.parametrize("whole", [False, True], ids=["packed", "whole"])
def test_a_changelog_stored_with_evidence_restores_to_the_same_outputs(engine: str, whole: bool) -> None:
    """The previous versions stored each channel's last decision with its evidence (packed, or whole before that).
    A partition restored from such a changelog gives the outputs and leaves the states of one restored from the
    same states stored now, without the evidence."""
    guard = Guard(load_policy("config/policies/default.toml"))
    messages = list(generate_messages(8_000, 300, seed=13, start_ms=START_MS, span_days=20))
    half = len(messages) // 2
    first = PartitionDriver(PythonEngine(guard, lambda _: None), SETTLE_MS)
    published: dict[str, dict[str, dict[str, object]]] = {}  # customer -> channel -> last decision published
    for key, value in messages[:half]:
        for record in first.feed(value, key).decisions:
            decision = orjson.loads(record[1])
            published.setdefault(decision["customer_id"], {})[decision["channel"]] = decision
    store = {customer: raw for customer, raw in first.engine.take_dirty() if raw is not None}
    old_store = {
        customer: as_written_before(raw, published.get(customer, {}), whole=whole) for customer, raw in store.items()
    }
    assert sum(old != store[customer] for customer, old in old_store.items()) > 50
    drivers = []
    for stored in (store, old_store):
        driver = PartitionDriver(ENGINES[engine](guard, stored.get), SETTLE_MS)
        driver.time_ms = first.time_ms
        for customer, raw in stored.items():
            state = CustomerState.from_bytes(raw)
            driver.restore(customer, state.watermark_ms, state.next_deadline_ms())
        drivers.append(driver)
    today, before = drivers
    for number, (key, value) in enumerate(messages[half:]):
        expected, got = today.feed(value, key), before.feed(value, key)
        where = f"message {half + number} {value[:200]!r}"
        assert got.decisions == expected.decisions and got.violations == expected.violations, where
        assert (got.rejection is None) == (expected.rejection is None), where
    for customer in store:
        assert before.engine.state_bytes(customer) == today.engine.state_bytes(customer), customer
    assert before.engine.take_dirty() == today.engine.take_dirty()


def _traced_bytes_per_call(make: Callable[[], object], calls: int = 400) -> float:
    """Heap bytes each result of ``make`` keeps while held (tracemalloc), averaged over ``calls`` results."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(calls)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(kept) == calls
    return held / calls


def test_outputs_kept_in_flight_hold_no_more_heap_than_their_size() -> None:
    """The worker keeps a transaction's outputs until it commits: each must cost about its length, not the
    serializer's buffer (orjson's dumps returned 4 KiB for a 200-byte document, most of the Python engine's peak
    RSS)."""
    guard = Guard(load_policy("config/policies/default.toml"))
    engine = PythonEngine(guard, lambda _customer: None)
    decisions: list[tuple[bytes, ...]] = []
    violations: list[tuple[object, ...]] = []
    prefs: list[bytes] = []
    for key, raw in generate_messages(3_000, 50, seed=9, start_ms=START_MS, span_days=5):
        processed = engine.process(raw, key)
        decisions += processed[5]
        violations += processed[6]
        if processed[7] is not None:
            prefs.append(processed[7])
    states = [state for _, state in engine.take_dirty() if state is not None]
    assert decisions and violations and prefs and states
    decision_dicts = [orjson.loads(record[1]) for record in decisions[:50]]
    violation_dicts = [orjson.loads(record[0]) for record in violations[:50]]  # type: ignore[arg-type]
    loaded = [CustomerState.from_bytes(state) for state in states[:50]]
    for name, make, size in [
        ("decision", lambda: decision_record(decision_dicts[0])[1], len(decisions[0][1])),
        ("violation", lambda: violation_record(violation_dicts[0])[0], len(violations[0][0])),  # type: ignore[arg-type]
        ("state", loaded[0].to_bytes, len(states[0])),
        ("prefs", lambda: json_bytes(preferences_view(loaded[0])), len(prefs[0])),
    ]:
        per_call = _traced_bytes_per_call(make)
        assert per_call < size + 256, f"a {size}-byte {name} holds {per_call:.0f} bytes of heap"
