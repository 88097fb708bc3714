"""The worker's crash repair, without Kafka: the real :class:`GuardService` over in-memory stand-ins for Faust's
table, topics and consumer, killed at many points and restarted, against the same service run without a crash.

The crash model is the worst Faust allows with at-least-once: the table holds every state change the killed
worker made (RocksDB is written at once), the group committed each input partition somewhere behind what was
handled, every output caused by committed input was published (Faust flushes before it commits), and of the
outputs caused after the committed offset only a prefix of the send order survived, possibly none. The restarted
service gets the same table, the committed offsets, and the input again from them, then wall clock ticks at the
end. Ticks are also interleaved in the stream, so wall-clock deadlines and tombstones of expired blocks happen
inside crash windows, and a few customers are erased.

What must hold after the restart, for every kill point::

    partition p:  0 ........ committed C_p ....... handled H_p | ... rest of the input ... | tick(now)
                  outputs published               outputs lost (any suffix)
                                                  ^ redelivered from C_p after the restart

- Redis as the decisions topic leaves it: exactly the blocks in force of the run without a crash;
- Redis as the preferences topic leaves it: exactly the views of the run without a crash;
- every key's latest record on the decisions topic is the uncrashed run's, or a tombstone where that one is not
  in force (an expired block or an allow), and no decision the uncrashed run does not make is ever published.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError
from faust.types import TP

from fatigue.clock import partition_for_key
from fatigue.events import CHANNELS, Rejection, parse_event
from fatigue.generate import generate_messages
from fatigue.state import CustomerState
from fatigue.testing import DAY, at, policy_named
from streams.app import CONTROL_HEADER, EXPIRE_TICK, TICK, GuardService
from streams.input_gate import InputOffsetGate
from streams.metrics import Metrics
from streams.settings import Settings

PARTITIONS = 3
SETTINGS = Settings(partitions=PARTITIONS, deadline_settle_ms=3_600_000, wall_settle_ms=60_000)
EVENTS = SETTINGS.events_topic
# the stream ends ten days ago: the final ticks (wall clock) settle every deadline, many blocks are still in force
START_MS = int(time.time() * 1000) - 70 * DAY


@dataclass
class Sent:
    topic: str
    key: bytes | None
    value: bytes | None
    origin: tuple[int, int]  # the input (partition, offset) being handled when it was sent


@dataclass
class World:
    """What one worker process sends, and the input message it is handling."""

    sent: list[Sent] = field(default_factory=list)
    current: tuple[int, int] = (-1, -1)


class FakeTopic:
    def __init__(self, name: str, world: World) -> None:
        self.name = name
        self.world = world

    def get_topic_name(self) -> str:
        return self.name

    def send_soon(
        self,
        key: bytes | None = None,
        value: bytes | None = None,
        partition: int | None = None,
        headers: Any = None,
    ) -> None:
        self.world.sent.append(Sent(self.name, key, value, self.world.current))


class FakeTable:
    """Faust's table as the service uses it: one dict per partition, like its one RocksDB per partition."""

    def __init__(self, dbs: dict[int, dict[bytes, bytes]]) -> None:
        self.dbs = dbs
        self.data = self

    def _db_for_partition(self, partition: int) -> dict[bytes, bytes]:
        return self.dbs[partition]

    def _db(self, key: bytes) -> dict[bytes, bytes]:
        return self.dbs[partition_for_key(key, PARTITIONS)]

    def get(self, key: bytes) -> bytes | None:
        return self._db(key).get(key)

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._db(key)[key] = value

    def __contains__(self, key: bytes) -> bool:
        return key in self._db(key)

    def __delitem__(self, key: bytes) -> None:
        del self._db(key)[key]


class FakeConsumer:
    def __init__(self, committed: dict[int, int]) -> None:
        # like Faust's: keyed by TP, offset 0 stored as None
        self._committed_offset = {TP(EVENTS, p): (offset or None) for p, offset in committed.items()}

    def assignment(self) -> set[TP]:
        return {TP(EVENTS, p) for p in range(PARTITIONS)}


class Killed(BaseException):
    """SIGKILL: nothing after it runs (BaseException: the service's error handling does not catch it)."""


class FakeProducer:
    """The producer the worker delivers a batch's outputs with; ``kill_at``: the send that never happens, where
    the disk (the table's dicts) is snapshotted and the process dies."""

    def __init__(self, world: World, table: FakeTable) -> None:
        self.world = world
        self.table = table
        self.kill_at: int | None = None
        self.failures = 0  # the next sends that fail (a broker away)
        self.ack_delay_s = 0.0  # how long Kafka takes to acknowledge a record
        self.sends = 0
        self.disk_at_kill: dict[int, dict[bytes, bytes]] | None = None

    async def send(
        self, topic: str, key: bytes | None, value: bytes | None, partition: int | None, timestamp: Any, headers: Any
    ) -> asyncio.Future[None]:
        if self.failures:
            self.failures -= 1
            raise KafkaTimeoutError("the broker is away")
        if self.sends == self.kill_at:
            self.disk_at_kill = copy.deepcopy(self.table.dbs)
            raise Killed
        self.sends += 1
        record = Sent(topic, key, value, self.world.current)
        delivered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def acknowledge() -> None:
            self.world.sent.append(record)
            delivered.set_result(None)

        asyncio.get_running_loop().call_later(self.ack_delay_s, acknowledge)
        return delivered


class FakeMonitor:
    def __init__(self) -> None:
        self.send_errors = 0

    def on_send_error(self, producer: Any, error: BaseException, started: float) -> None:
        self.send_errors += 1


class FakeApp:
    def __init__(self, world: World, table: FakeTable, committed: dict[int, int]) -> None:
        self.world = world
        self.table = table
        self.consumer = FakeConsumer(committed)
        self.producer = FakeProducer(world, table)
        self.monitor = FakeMonitor()
        self.consumer_generation_id: int | None = None

    def topic(self, name: str, **kwargs: Any) -> FakeTopic:
        return FakeTopic(name, self.world)

    def Table(self, name: str, **kwargs: Any) -> FakeTable:  # Faust's name
        return self.table


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    generation_id: int | None = None

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class FakeEvent:
    message: FakeMessage


Input = list[tuple[bytes | None, bytes, list[tuple[str, bytes]] | None]]


def _inputs(seed: int) -> dict[int, Input]:
    """Per input partition: a generated stream (all event types, malformed messages, duplicates, late events),
    a few erasures, and a tick every so often carrying a wall clock a day ahead of the partition's event time."""
    rng = random.Random(seed)
    start_ms = START_MS
    inputs: dict[int, Input] = {p: [] for p in range(PARTITIONS)}
    newest: dict[int, int] = {}
    for key, value in generate_messages(3_000, 120, seed, start_ms, span_days=60):
        partition = partition_for_key(key, PARTITIONS) if key is not None else 0
        inputs[partition].append((key, value, None))
        parsed = parse_event(value, key)
        if not isinstance(parsed, Rejection):
            newest[partition] = max(newest.get(partition, 0), parsed.ts_ms)
        if key is not None and rng.random() < 0.004:
            erase = {"type": "erase", "event_id": f"erase-{rng.random()}", "customer_id": key.decode()}
            erase["ts"] = newest.get(partition, start_ms)
            inputs[partition].append((key, orjson.dumps(erase), None))
        if rng.random() < 0.01 and partition in newest:
            wall_ms = newest[partition] + DAY
            inputs[partition].append((b"\x00fatigue-tick", str(wall_ms).encode(), [(CONTROL_HEADER, TICK)]))
    return inputs


def _order(inputs: dict[int, Input], starts: dict[int, int], rng: random.Random) -> Iterator[tuple[int, int]]:
    """(partition, offset) in the order one consumer hands them out: partitions interleaved in random runs."""
    positions = dict(starts)
    while True:
        open_partitions = [p for p in range(PARTITIONS) if positions[p] < len(inputs[p])]
        if not open_partitions:
            return
        partition = rng.choice(open_partitions)
        for _ in range(rng.randint(1, 40)):
            if positions[partition] >= len(inputs[partition]):
                break
            yield partition, positions[partition]
            positions[partition] += 1


class Worker:
    def __init__(
        self, service_class: type[GuardService], dbs: dict[int, dict[bytes, bytes]], committed: dict[int, int]
    ):
        self.world = World()
        app = FakeApp(self.world, FakeTable(dbs), committed)
        self.service = service_class(SETTINGS, policy_named("default"), app, Metrics())  # type: ignore[arg-type]

    def handle(self, inputs: dict[int, Input], partition: int, offset: int) -> None:
        self.deliver(partition, offset, *inputs[partition][offset])

    def deliver(
        self, partition: int, offset: int, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None
    ) -> None:
        self.world.current = (partition, offset)
        self.service.handle(FakeEvent(FakeMessage(EVENTS, partition, offset, key, value, headers)))  # type: ignore[arg-type]

    def final_ticks(self, inputs: dict[int, Input]) -> None:
        """Wall clock takes over at the end: one tick per partition, appended to its input."""
        for partition in range(PARTITIONS):
            inputs[partition].append(
                (b"\x00fatigue-tick", str(int(time.time() * 1000)).encode(), [(CONTROL_HEADER, TICK)])
            )
            self.handle(inputs, partition, len(inputs[partition]) - 1)


@dataclass
class Published:
    decisions: dict[bytes, bytes | None]  # latest record per key (None: tombstone)
    prefs: dict[bytes, bytes | None]
    decision_values: set[bytes]

    @classmethod
    def of(cls, records: list[Sent]) -> Published:
        assert not any(record.topic == EVENTS for record in records), "nothing is rerouted in this stream"
        decisions: dict[bytes, bytes | None] = {}
        prefs: dict[bytes, bytes | None] = {}
        values: set[bytes] = set()
        for record in records:
            if record.topic == SETTINGS.decisions_topic:
                assert record.key is not None
                decisions[record.key] = record.value
                if record.value is not None:
                    values.add(record.value)
            elif record.topic == SETTINGS.prefs_topic:
                assert record.key is not None
                prefs[record.key] = record.value
        return cls(decisions, prefs, values)

    def blocks_in_force(self, now_ms: int) -> dict[bytes, bytes]:
        return {key: value for key, value in self.decisions.items() if value is not None and _in_force(value, now_ms)}

    def views(self) -> dict[bytes, bytes]:
        return {key: value for key, value in self.prefs.items() if value is not None}


def _in_force(value: bytes, now_ms: int) -> bool:
    decision = orjson.loads(value)
    return bool(decision["action"] == "block" and (decision["until_ms"] is None or decision["until_ms"] > now_ms))


def run_clean(service_class: type[GuardService], seed: int) -> Published:
    inputs = _inputs(seed)
    worker = Worker(service_class, {p: {} for p in range(PARTITIONS)}, {})
    for partition, offset in _order(inputs, dict.fromkeys(range(PARTITIONS), 0), random.Random(seed)):
        worker.handle(inputs, partition, offset)
    worker.final_ticks(inputs)
    return Published.of(worker.world.sent)


@dataclass
class Crash:
    published: Published
    window: int  # input messages handled but not committed at the kill
    lost: int  # outputs of those that never got out


def run_crash(service_class: type[GuardService], seed: int, kill_seed: int) -> Crash:
    inputs = _inputs(seed)
    rng = random.Random(kill_seed)
    total = sum(len(messages) for messages in inputs.values())
    kill_at = rng.randint(total // 10, total * 9 // 10)
    first = Worker(service_class, {p: {} for p in range(PARTITIONS)}, {})
    handled = dict.fromkeys(range(PARTITIONS), 0)
    for count, (partition, offset) in enumerate(_order(inputs, handled, random.Random(seed))):
        if count == kill_at:
            break
        first.handle(inputs, partition, offset)
        handled[partition] = offset + 1
    # the group committed somewhere behind what was handled (up to 40% of it: commits lag a busy worker)
    committed = {p: rng.randint(handled[p] - handled[p] * 2 // 5, handled[p]) for p in range(PARTITIONS)}
    sent = first.world.sent
    cut = rng.choice([0, rng.randint(0, len(sent)), len(sent)])  # outputs after the cut were never flushed
    survived = [s for index, s in enumerate(sent) if index < cut or s.origin[1] < committed[s.origin[0]]]

    # restart: same table (the killed worker's RocksDB), input redelivered from the committed offsets
    dbs = copy.deepcopy(first.service.table.dbs)  # type: ignore[attr-defined]
    # Faust's record of committed offsets may or may not be filled in when the first messages arrive
    second = Worker(service_class, dbs, committed if rng.random() < 0.5 else {})
    for partition, offset in _order(inputs, committed, random.Random(kill_seed)):
        second.handle(inputs, partition, offset)
    second.final_ticks(inputs)
    window = sum(handled[p] - committed[p] for p in range(PARTITIONS))
    return Crash(Published.of(survived + second.world.sent), window, len(sent) - len(survived))


def _short(value: bytes | None) -> str:
    return "absent" if value is None else value[:160].decode(errors="replace")


def compare(clean: Published, crashed: Published, now_ms: int) -> list[str]:
    """What differs in what consumers see; empty when the crash left no trace."""
    problems: list[str] = []
    invented = crashed.decision_values - clean.decision_values
    if invented:
        problems.append(f"{len(invented)} decisions the uncrashed run never makes, e.g. {_short(min(invented))}")
    clean_blocks, crashed_blocks = clean.blocks_in_force(now_ms), crashed.blocks_in_force(now_ms)
    for key in sorted(clean_blocks.keys() | crashed_blocks.keys()):
        if clean_blocks.get(key) != crashed_blocks.get(key):
            problems.append(
                f"block {key!r}: {_short(crashed_blocks.get(key))} instead of {_short(clean_blocks.get(key))}"
            )
    clean_views, crashed_views = clean.views(), crashed.views()
    for key in sorted(clean_views.keys() | crashed_views.keys()):
        if clean_views.get(key) != crashed_views.get(key):
            problems.append(
                f"prefs {key!r}: {_short(crashed_views.get(key))} instead of {_short(clean_views.get(key))}"
            )
    for key in sorted(clean.decisions.keys() | crashed.decisions.keys()):
        want, got = clean.decisions.get(key), crashed.decisions.get(key)
        if got != want and not (got is None and (want is None or not _in_force(want, now_ms))):
            problems.append(f"latest of {key!r}: {_short(got)} instead of {_short(want)}")
    return problems


@pytest.mark.parametrize("seed", [3, 5])
def test_a_crash_anywhere_leaves_what_the_uncrashed_worker_leaves(seed: int):
    clean = run_clean(GuardService, seed)
    kills = windows = lost = 0
    for kill_seed in range(12):
        crash = run_crash(GuardService, seed, 1000 * seed + kill_seed)
        problems = compare(clean, crash.published, int(time.time() * 1000))
        assert not problems, f"kill {kill_seed} (window {crash.window}, {crash.lost} outputs lost): {problems[:5]}"
        kills += 1
        windows += crash.window
        lost += crash.lost
    print(f"\n{kills} kills, {windows} input messages in crash windows, {lost} outputs lost, all repaired")
    assert lost > 0, "the kills should lose outputs"


def _batches(order: Iterator[tuple[int, int]], rng: random.Random) -> Iterator[list[tuple[int, int]]]:
    """The consumer's order cut into batches of random sizes, as ``take_events`` hands them to the agent."""
    batch: list[tuple[int, int]] = []
    for position in order:
        batch.append(position)
        if len(batch) >= rng.randint(1, 60):
            yield batch
            batch = []
    if batch:
        yield batch


def _run_batches(worker: Worker, inputs: dict[int, Input], batches: Iterator[list[tuple[int, int]]]) -> list[int]:
    """Run batches through the service as its agent does; returns the input positions completed per batch."""
    done: list[int] = []

    async def run() -> None:
        for batch in batches:
            events = [
                FakeEvent(FakeMessage(EVENTS, partition, offset, *inputs[partition][offset]))
                for partition, offset in batch
            ]
            await worker.service.run_batch(events)  # type: ignore[arg-type]
            done.append(len(batch))

    with contextlib.suppress(Killed):
        asyncio.run(run())
    return done


def _values(records: list[Sent], topic: str) -> set[bytes]:
    return {record.value for record in records if record.topic == topic and record.value is not None}


@pytest.mark.parametrize("seed", [3, 5])
def test_a_kill_anywhere_in_a_batch_loses_no_output_at_all(seed: int):
    """The agent's order (handle a batch, deliver its outputs, then store its states) keeps every state behind
    what is on the topics: after a kill at any send, the redelivered input re-sends whatever the kill cut off, so
    not only the latest decisions survive but every decision and every violation the uncrashed worker publishes."""
    inputs = _inputs(seed)
    clean = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    _run_batches(
        clean,
        inputs,
        _batches(_order(inputs, dict.fromkeys(range(PARTITIONS), 0), random.Random(seed)), random.Random(seed)),
    )
    clean.final_ticks(inputs)
    clean_sent = clean.world.sent
    total_sends = clean.service.app.producer.sends  # type: ignore[attr-defined]
    kills = redelivered = 0
    for kill_seed in range(10):
        inputs = _inputs(seed)
        rng = random.Random(1000 * seed + kill_seed)
        first = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
        producer = first.service.app.producer  # type: ignore[attr-defined]
        producer.kill_at = rng.randint(1, total_sends - 1)
        order = list(_order(inputs, dict.fromkeys(range(PARTITIONS), 0), random.Random(seed)))
        done = _run_batches(first, inputs, _batches(iter(order), random.Random(seed)))
        assert producer.disk_at_kill is not None, "the kill happened"
        # Faust commits acknowledged input, i.e. completed batches, and may lag behind them
        completed = dict.fromkeys(range(PARTITIONS), 0)
        for partition, offset in order[: sum(done)]:
            completed[partition] = offset + 1
        committed = {p: rng.randint(completed[p] // 2, completed[p]) for p in range(PARTITIONS)}
        second = Worker(GuardService, producer.disk_at_kill, committed if rng.random() < 0.5 else {})
        _run_batches(second, inputs, _batches(_order(inputs, committed, rng), rng))
        second.final_ticks(inputs)
        survived = first.world.sent + second.world.sent
        problems = compare(Published.of(clean_sent), Published.of(survived), int(time.time() * 1000))
        assert not problems, f"kill {kill_seed} at send {producer.kill_at}: {problems[:5]}"
        for topic in (SETTINGS.decisions_topic, SETTINGS.violations_topic):
            missing = _values(clean_sent, topic) - _values(survived, topic)
            invented = _values(survived, topic) - _values(clean_sent, topic)
            assert not missing, f"kill {kill_seed}: {len(missing)} lost on {topic}, e.g. {_short(min(missing))}"
            assert not invented, f"kill {kill_seed}: {len(invented)} never made on {topic}: {_short(min(invented))}"
        kills += 1
        redelivered += sum(len(inputs[p]) for p in range(PARTITIONS)) - sum(committed.values())
    print(f"\n{kills} kills mid-batch, {redelivered} input messages redelivered, every output of the clean run out")


def test_outputs_kafka_does_not_take_are_sent_again_before_the_states_are_stored():
    """A broker away: the batch's sends fail three times; the agent retries the whole batch's outputs (backing
    off) and stores the states only once they are all delivered."""
    inputs: dict[int, Input] = {0: [_event(A, "c1", at(0), "contact", channel="call")], 1: [], 2: []}
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    worker.service.settings = replace(SETTINGS, delivery_retry_max_s=0.01)
    producer = worker.service.app.producer  # type: ignore[attr-defined]
    producer.failures = 3
    stored: list[bytes | None] = []
    real_deliver = worker.service._deliver

    async def deliver_and_look(outputs: Any) -> None:
        await real_deliver(outputs)
        stored.append(worker.service.table.get(A.encode()))  # right after delivery, before the write-back

    worker.service._deliver = deliver_and_look  # type: ignore[method-assign]
    _run_batches(worker, inputs, iter([[(0, 0)]]))
    assert worker.service.app.monitor.send_errors == 3  # type: ignore[attr-defined]
    assert stored == [None], "nothing stored before the outputs were out"
    assert worker.service.table.get(A.encode()) is not None
    block = orjson.loads(worker.world.sent[0].value or b"")
    assert [s.topic for s in worker.world.sent] == [SETTINGS.decisions_topic]
    assert block["action"] == "block" and block["channel"] == "call"


def test_a_batch_cancelled_while_its_outputs_are_on_their_way_stores_its_states_after_they_arrive():
    """A stop or rebalance cancels the agent mid-delivery: the records already handed to the producer are waited
    for (a while) before the states are stored, then the cancellation goes on."""
    inputs: dict[int, Input] = {0: [_event(A, "c1", at(0), "contact", channel="call")], 1: [], 2: []}
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    producer = worker.service.app.producer  # type: ignore[attr-defined]
    producer.ack_delay_s = 0.2
    seen_at_store: list[int] = []
    real_write_back = worker.service.write_back

    def look_then_write_back() -> None:
        seen_at_store.append(len(worker.world.sent))
        real_write_back()

    worker.service.write_back = look_then_write_back  # type: ignore[method-assign]

    async def run_and_cancel() -> None:
        event = FakeEvent(FakeMessage(EVENTS, 0, 0, *inputs[0][0]))
        task = asyncio.ensure_future(worker.service.run_batch([event]))  # type: ignore[list-item]
        await asyncio.sleep(0.05)  # the block is handed to the producer, not acknowledged yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_and_cancel())
    assert seen_at_store == [1], "the state is stored once the block is on the topic"
    assert worker.service.table.get(A.encode()) is not None


def test_a_hot_customers_blocks_are_looked_at_when_they_can_end_not_once_per_decision():
    """A sender calls every minute for a day: the call block (and the all-channel cap's blocks) are re-decided on
    every contact, a later ``until`` each time. The worker keeps one expiry entry per block in force; wall clock
    past the first ``until`` finds it re-decided and looks again at the latest one, which is when the tombstone
    goes out, and nothing is due in between."""
    calls = [_event(A, f"c{n}", at(0, minutes=n), "contact", channel="call") for n in range(1440)]
    inputs: dict[int, Input] = {0: calls, 1: [], 2: []}
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    for offset in range(len(calls)):
        worker.handle(inputs, 0, offset)
    service = worker.service
    blocks = [orjson.loads(s.value or b"") for s in worker.world.sent if s.topic == SETTINGS.decisions_topic]
    latest = {block["channel"]: block["until_ms"] for block in blocks}
    assert len(blocks) > 1000 and blocks[0]["until_ms"] < latest["call"]
    assert sorted(channel for _, _, channel in service.expiries[0]) == [0, 1, 2], "one entry per block in force"
    settle = SETTINGS.wall_settle_ms

    def tick(wall_ms: int) -> list[tuple[bytes | None, bytes | None]]:
        inputs[0].append(_tick(wall_ms))
        before = len(worker.world.sent)
        worker.handle(inputs, 0, len(inputs[0]) - 1)
        return [(s.key, s.value) for s in worker.world.sent[before:]]

    after_first = blocks[0]["until_ms"] + settle + 1
    assert service.has_due_work(0, after_first)
    assert tick(after_first) == [], "re-decided since: no tombstone yet"
    # the call's entry now waits for its latest until; the all-channel cap's sms and email entries for their first
    assert (latest["call"], A, 2) in service.expiries[0]
    assert tick(max(until for until, _, channel in service.expiries[0] if channel != 2) + settle) == []
    assert not service.has_due_work(0, min(latest.values()) + settle - 1), "nothing due until a latest until"
    assert sorted(service.expiries[0]) == sorted((until, A, CHANNELS.index(c)) for c, until in latest.items())
    tombstones = tick(max(latest.values()) + settle)
    assert sorted(tombstones) == sorted((f"{channel}:{A}".encode(), None) for channel in latest)
    # the ended blocks stay in the state for the late grace, then they are forgotten without another tombstone
    grace = service.guard.policy.late_grace_ms
    assert sorted(service.expiries[0]) == sorted((until + grace, A, CHANNELS.index(c)) for c, until in latest.items())
    assert tick(max(latest.values()) + grace + settle) == []
    state = service.table.get(A.encode())
    assert state is not None and CustomerState.from_bytes(state[8:]).emitted == [None, None, None]
    assert service.expiries[0] == [] and not service.has_due_work(0, max(latest.values()) + 30 * DAY)


def test_a_contact_made_before_a_block_ended_is_a_violation_after_its_tombstone_went_out():
    """A quiet partition's tick tombstones a call block at its end; a contact made a second before the end, which
    the sender published late, is still a violation of that block (and starts a new one)."""
    inputs: dict[int, Input] = {0: [_event(A, "c1", at(0), "contact", channel="call")], 1: [], 2: []}
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    worker.handle(inputs, 0, 0)
    [block] = [orjson.loads(s.value or b"") for s in worker.world.sent if s.topic == SETTINGS.decisions_topic]
    assert block["until_ms"] == at(1)
    inputs[0].append(_tick(at(1) + SETTINGS.wall_settle_ms))
    worker.handle(inputs, 0, 1)
    assert (worker.world.sent[-1].key, worker.world.sent[-1].value) == (f"call:{A}".encode(), None)
    inputs[0].append(_event(A, "c2", at(1) - 1_000, "contact", channel="call", sender="dialer-b"))
    worker.handle(inputs, 0, 2)
    violations = [orjson.loads(s.value or b"") for s in worker.world.sent if s.topic == SETTINGS.violations_topic]
    assert [(v["event_id"], v["until"], v["sender"]) for v in violations] == [("c2", block["until"], "dialer-b")]


def test_a_busy_partitions_ended_blocks_are_tombstoned_by_an_expire_tick_which_changes_nothing_else():
    """A partition that never goes quiet gets no tick; once a block on it has ended by wall clock, the timer sends
    it an expire tick (at most one a minute), which tombstones the block and does nothing else: no deadline fires
    and the state keeps the ended block (the core forgets it by event time, as the replay does)."""
    events = [
        _event(A, "m1", at(0), "contact", channel="email"),  # unread deadline at day 3: must not fire here
        _event(A, "c1", at(0, hours=1), "contact", channel="call"),  # call blocked until day 1 + 1h
    ]
    inputs: dict[int, Input] = {0: events, 1: [], 2: []}
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    for offset in range(len(events)):
        worker.handle(inputs, 0, offset)
    service = worker.service
    [block] = [orjson.loads(s.value or b"") for s in worker.world.sent if s.topic == SETTINGS.decisions_topic]
    ended = block["until_ms"] + SETTINGS.wall_settle_ms
    assert service.busy_partitions_with_ended_blocks(ended - 1, quiet=[]) == []
    assert service.busy_partitions_with_ended_blocks(ended + 30 * DAY, quiet=[0]) == [], "quiet ones get a tick"
    assert service.busy_partitions_with_ended_blocks(ended + 30 * DAY, quiet=[]) == [0]
    service.send_expire_tick(0, ended + 30 * DAY)
    assert service.busy_partitions_with_ended_blocks(ended + 30 * DAY, quiet=[]) == [], "one a minute at most"
    [sent_tick] = [s for s in worker.world.sent if s.topic == SETTINGS.events_topic]
    assert (sent_tick.key, sent_tick.value) == (b"\x00fatigue-tick", str(ended + 30 * DAY).encode())
    inputs[0].append((sent_tick.key, sent_tick.value, [(CONTROL_HEADER, EXPIRE_TICK)]))
    before = len(worker.world.sent)
    worker.handle(inputs, 0, len(inputs[0]) - 1)
    assert [(s.key, s.value) for s in worker.world.sent[before:]] == [(f"call:{A}".encode(), None)]
    state = service.table.get(A.encode())
    assert state is not None
    kept = CustomerState.from_bytes(state[8:])
    assert kept.emitted[CHANNELS.index("call")] is not None and kept.pending, "nothing else changed"


# ---------------------------------------------------------------------- the crash window's holes, one by one
#
# One input partition, every message handled, then a kill with the group committed at offset C and every output
# of the messages from C on lost; the restarted worker gets the same table and the input again from C.


def _customers(count: int) -> list[str]:
    """Customer ids that all land on input partition 0."""
    names = (f"cust-{n}" for n in range(1000))
    return [name for name in names if partition_for_key(name.encode(), PARTITIONS) == 0][:count]


A, B, C, D = _customers(4)


def _event(customer: str, event_id: str, ts: int, event_type: str, **fields: Any) -> tuple[bytes, bytes, None]:
    body = {"type": event_type, "event_id": event_id, "customer_id": customer, "ts": ts, **fields}
    return customer.encode(), orjson.dumps(body), None


def _tick(wall_ms: int) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    return b"\x00fatigue-tick", str(wall_ms).encode(), [(CONTROL_HEADER, TICK)]


@dataclass
class Restart:
    first: list[Sent]  # what the killed worker got out: the outputs of the committed input
    second: list[Sent]  # what the restarted worker sent
    worker: Worker

    def latest(self, topic: str, key: bytes) -> bytes | None:
        for record in reversed(self.first + self.second):
            if record.topic == topic and record.key == key:
                return record.value
        raise AssertionError(f"nothing on {topic} for {key!r}")

    def decision(self, channel: str, customer: str) -> dict[str, Any] | None:
        value = self.latest(SETTINGS.decisions_topic, f"{channel}:{customer}".encode())
        return orjson.loads(value) if value is not None else None

    def resent_decisions(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(s.value) for s in self.second if s.topic == SETTINGS.decisions_topic and s.value is not None
        ]


def _kill_and_restart(messages: Input, committed: int, faust_knows: bool = True) -> Restart:
    """``faust_knows``: whether Faust's record of committed offsets is filled in before the first message."""
    inputs: dict[int, Input] = {0: messages, 1: [], 2: []}
    first = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    for offset in range(len(messages)):
        first.handle(inputs, 0, offset)
    survived = [s for s in first.world.sent if s.origin[1] < committed]
    dbs = copy.deepcopy(first.service.table.dbs)  # type: ignore[attr-defined]
    second = Worker(GuardService, dbs, {0: committed} if faust_knows else {})
    for offset in range(committed, len(messages)):
        second.handle(inputs, 0, offset)
    return Restart(survived, second.world.sent, second)


def test_a_preference_whose_redelivery_is_late_is_republished():
    """
    offset  0  A  preference timezone              committed
    offset  1  A  preference quiet hours           <- C
    offset  2  A  contact, 2 days later            (A's watermark passes the late grace: offset 1 comes back late)
    """
    restart = _kill_and_restart(
        [
            _event(A, "p1", at(0), "preference", timezone="Europe/Paris"),
            _event(A, "p2", at(0, hours=1), "preference", quiet_hours={"start": "21:00", "end": "08:00"}),
            _event(A, "c1", at(2), "contact", channel="sms"),
        ],
        committed=1,
    )
    view = orjson.loads(restart.latest(SETTINGS.prefs_topic, A.encode()) or b"null")
    assert view["timezone"] == "Europe/Paris"
    assert view["quiet_hours"] == {channel: {"start": "21:00", "end": "08:00"} for channel in ("email", "sms", "call")}


def test_a_deadline_fired_for_a_quiet_customer_is_republished():
    """
    offset  0-4  A  five marketing emails, never opened     committed
    offset  5    B  contact 3 days and 2 hours later        <- C: partition event time fires A's deadlines
                                                             (five unread in a row: A's email blocked 30 days)
    """
    emails = [_event(A, f"e{n}", at(0, hours=n), "contact", channel="email") for n in range(5)]
    restart = _kill_and_restart([*emails, _event(B, "b1", at(3, hours=6), "contact", channel="sms")], committed=5)
    block = restart.decision("email", A)
    assert block is not None and block["reason"] == "unread" and block["action"] == "block"
    assert block in restart.resent_decisions()


def test_a_tombstone_of_an_expired_block_is_republished():
    """
    offset  0  A  call: blocked for a day (call <= 1 per 1d)  committed
    offset  1  tick, wall clock 2 days later                   <- C: the block has expired, tombstoned
    """
    restart = _kill_and_restart([_event(A, "c1", at(0), "contact", channel="call"), _tick(at(2))], committed=1)
    assert restart.decision("call", A) is None
    assert restart.latest(SETTINGS.decisions_topic, f"call:{A}".encode()) is None


def test_an_allow_forgotten_inside_the_window_leaves_no_stale_block():
    """
    offset  0  A  unsubscribe email: blocked until lifted  committed
    offset  1  A  preference email opt_out false: allow    <- C
    offset  2  A  sms contact 3 days later                  (the allow is past the late grace: the state forgets it)

    The allow is lost and cannot be re-sent; without a tombstone the opt-out block would stay on the topic (and in
    Redis) for good.
    """
    restart = _kill_and_restart(
        [
            _event(A, "u1", at(0), "unsubscribe", channel="email"),
            _event(A, "p1", at(0, hours=1), "preference", channel="email", opt_out=False),
            _event(A, "s1", at(3), "contact", channel="sms"),
        ],
        committed=1,
    )
    assert restart.decision("email", A) is None


def test_events_before_an_erasure_are_not_applied_again():
    """
    offset  0  B  contact                                   committed
    offset  1  A  call contact (blocked a day)              <- C
    offset  2  A  erase: no opt-out kept, the state goes
    offset  3  B  contact

    Redelivered, offset 1 must not rebuild A from nothing (a block published after the erasure); the erasure's
    marker says A's state already went past it. Once offset 2 is committed the marker goes too.
    """
    restart = _kill_and_restart(
        [
            _event(B, "b1", at(0), "contact", channel="sms"),
            _event(A, "a1", at(0, hours=1), "contact", channel="call"),
            _event(A, "a2", at(0, hours=2), "erase"),
            _event(B, "b2", at(0, hours=3), "contact", channel="sms"),
        ],
        committed=1,
    )
    assert not [d for d in restart.resent_decisions() if d["customer_id"] == A]
    assert restart.decision("call", A) is None and restart.latest(SETTINGS.prefs_topic, A.encode()) is None
    dead = [orjson.loads(s.value or b"") for s in restart.second if s.topic == SETTINGS.dlq_topic]
    assert {d["event_id"] for d in dead} >= {"a1", "a2", "b2"}  # all three seen again, as duplicates
    service = restart.worker.service
    assert service.table.get(A.encode()) is not None  # the marker, until its offset is committed
    service.app.consumer._committed_offset[TP(EVENTS, 0)] = 4  # type: ignore[attr-defined]
    restart.worker.deliver(0, 4, *_event(C, "c1", at(1), "contact", channel="sms"))
    assert service.table.get(A.encode()) is None


def test_a_restart_after_everything_was_committed_repairs_nothing():
    messages = [_event(A, "c1", at(0), "contact", channel="call"), _event(D, "p1", at(1), "preference", timezone="UTC")]
    restart = _kill_and_restart(messages, committed=len(messages))
    restart.worker.deliver(0, 2, *_event(C, "c2", at(2), "contact", channel="sms"))  # the partition is indexed
    assert restart.worker.world.sent == []
    assert restart.worker.service.metrics.registry.get_sample_value("fatigue_redelivery_repairs_total") == 0


def test_the_first_offset_after_the_restart_marks_the_window_when_faust_has_not_caught_up():
    """Faust fills in its record of committed offsets only after asking the broker for every partition, while the
    first messages already flow: the first offset delivered is where the group resumed.

    offset  0  B  contact   committed
    offset  1  A  contact   <- C: only A is repaired
    """
    messages = [_event(B, "b1", at(0), "contact", channel="sms"), _event(A, "a1", at(1), "contact", channel="sms")]
    restart = _kill_and_restart(messages, committed=1, faust_knows=False)
    assert {s.key for s in restart.second if s.topic == SETTINGS.prefs_topic} == {A.encode()}
    assert restart.worker.service.metrics.registry.get_sample_value("fatigue_redelivery_repairs_total") == 4


def test_faust_still_records_committed_offsets_where_the_worker_reads_them():
    """Erasure markers go once Faust's private record of committed offsets passes them (see
    GuardService._committed): an upgrade that drops it must fail here, not keep them until the next restart."""
    from faust.transport.consumer import Consumer

    assert "_committed_offset" in Consumer.__annotations__


def test_input_from_before_a_rebalance_is_handled_only_for_partitions_still_owned():
    """Faust's take buffer can hand the agent records fetched in the previous consumer generation. Partition 1
    went to another worker in the rebalance: its record is the new owner's, nothing of it is written here. Partition
    0 stayed: its record is handled (Faust re-fetches it from the committed offset, and the copy is skipped)."""
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    app = worker.service.app
    app.consumer_generation_id = 8  # type: ignore[attr-defined]
    app.consumer.assignment = lambda: {TP(EVENTS, p) for p in range(PARTITIONS) if p != 1}  # type: ignore[attr-defined]
    stayed, moved = (
        A,
        next(f"cust-{n}" for n in range(1000) if partition_for_key(f"cust-{n}".encode(), PARTITIONS) == 1),
    )
    assert partition_for_key(stayed.encode(), PARTITIONS) == 0
    events = [
        FakeEvent(FakeMessage(EVENTS, 0, 0, *_event(stayed, "s1", at(0), "complaint", channel="sms"), generation_id=7)),
        FakeEvent(FakeMessage(EVENTS, 1, 0, *_event(moved, "m1", at(0), "complaint", channel="sms"), generation_id=7)),
    ]
    asyncio.run(worker.service.run_batch(events))  # type: ignore[arg-type]
    decided = {
        orjson.loads(s.value or b"")["customer_id"] for s in worker.world.sent if s.topic == SETTINGS.decisions_topic
    }
    assert decided == {stayed}
    assert worker.service.table.get(moved.encode()) is None
    assert worker.service.table.get(stayed.encode()) is not None


def test_records_lost_between_the_input_gate_and_the_agent_are_read_again():
    """Once on CI a restarted worker never handled one input record: the contact before a short hang-up vanished,
    and the hang-up was decided without it. Whatever drops a record between the input gate and the agent, the
    agent sees the gap: it handles nothing past it, seeks back to the first missing offset, and the re-read hands
    the records over in order (records fetched before the seek are skipped on the way)."""
    events = [
        _event(A, "a0", at(0), "contact", channel="email", category="marketing"),
        _event(A, "a1", at(0, minutes=1), "contact", channel="call", category="marketing"),
        _event(A, "a2", at(0, minutes=1, seconds=20), "call_ended", ref="a1", duration_s=4, answered=True),
        _event(A, "a3", at(0, minutes=2), "contact", channel="sms", category="marketing"),
    ]
    tp = TP(EVENTS, partition_for_key(A.encode(), PARTITIONS))

    def worker_with_gate() -> tuple[Worker, InputOffsetGate, list[int]]:
        worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
        gate = InputOffsetGate()
        sought: list[int] = []

        async def seek(partition: TP, offset: int) -> None:
            sought.append(offset)
            gate.sought([(partition, offset)])

        consumer: Any = worker.service.app.consumer
        consumer.gate, consumer.seek = gate, seek
        gate.sought([(tp, 0)])
        return worker, gate, sought

    def decisions(worker: Worker) -> list[bytes]:
        return [s.value or b"" for s in worker.world.sent if s.topic == SETTINGS.decisions_topic]

    reference, _, _ = worker_with_gate()
    for offset in range(4):
        reference.deliver(tp.partition, offset, *events[offset])
    assert len(decisions(reference)) >= 2  # the call cap block, then the hang-up block with the cap in evidence

    worker, gate, sought = worker_with_gate()
    for offset in (0, 2, 3):  # the gate delivered 0..3 to Faust (its run began at 0); 1 never reached the agent
        gate.admit(tp, offset, 1)
        message = FakeMessage(EVENTS, tp.partition, offset, *events[offset])
        worker.service.handle(FakeEvent(message))  # type: ignore[arg-type]
        # what is not handled must not count as acknowledged: Faust would commit past the missing record
        assert getattr(message, "acked", False) == (offset > 1)
    assert decisions(worker) == []  # nothing past the gap was handled
    assert worker.service.rereading == {tp.partition: (1, None, 0)}
    asyncio.run(worker.service.reread_missed_inputs())
    assert sought == [1] and gate.run_start(tp) == 1
    for offset in (2, 3, 1, 2, 3):  # stale records still on their way, then the re-read
        worker.deliver(tp.partition, offset, *events[offset])
    assert decisions(worker) == decisions(reference)
    assert worker.service.rereading == {}
    assert worker.service.metrics.input_holes.labels(action="dropped")._value.get() == 1


def test_a_gap_the_input_gate_started_past_is_not_a_loss():
    """A seek forward (the group committed past what this worker handled, e.g. another worker handled it before a
    rebalance) or a hole the gate confirmed starts the gate's run past the gap: the record is handled."""
    tp = TP(EVENTS, partition_for_key(A.encode(), PARTITIONS))
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    gate = InputOffsetGate()
    consumer: Any = worker.service.app.consumer
    consumer.gate = gate
    gate.sought([(tp, 0)])
    worker.deliver(tp.partition, 0, *_event(A, "a0", at(0), "contact", channel="call", category="marketing"))
    gate.sought([(tp, 5)])
    worker.deliver(tp.partition, 5, *_event(A, "a5", at(3), "contact", channel="call", category="marketing"))
    assert worker.service.last_offset[tp.partition] == 5 and worker.service.rereading == {}
    decided = [
        orjson.loads(s.value or b"")["cause_event_id"] for s in worker.world.sent if s.topic == SETTINGS.decisions_topic
    ]
    assert decided == ["a0", "a5"]


def test_a_record_no_re_read_brings_is_given_up_rather_than_stalling_its_partition():
    tp = TP(EVENTS, partition_for_key(A.encode(), PARTITIONS))
    worker = Worker(GuardService, {p: {} for p in range(PARTITIONS)}, {})
    gate = InputOffsetGate()
    sought: list[int] = []

    async def seek(partition: TP, offset: int) -> None:
        sought.append(offset)
        gate.sought([(partition, offset)])

    consumer: Any = worker.service.app.consumer
    consumer.gate, consumer.seek = gate, seek
    gate.sought([(tp, 0)])
    first = _event(A, "a0", at(0), "contact", channel="call", category="marketing")
    after = _event(A, "a2", at(2), "contact", channel="call", category="marketing")
    worker.deliver(tp.partition, 0, *first)
    for _ in range(3):  # offset 1 never comes, however often the partition is re-read
        worker.deliver(tp.partition, 2, *after)
        asyncio.run(worker.service.reread_missed_inputs(retry_after_s=0))
    assert sought == [1, 1, 1] and worker.service.last_offset[tp.partition] == 0
    asyncio.run(worker.service.reread_missed_inputs(retry_after_s=0))  # gives up
    worker.deliver(tp.partition, 2, *after)
    assert worker.service.last_offset[tp.partition] == 2 and worker.service.rereading == {}
    assert worker.service.metrics.input_holes.labels(action="accepted")._value.get() == 1
