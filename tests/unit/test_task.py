"""A partition task (streams/task.py) over in-memory records, both engines: what its transactions collect (every
output record, the changelog, the counts for the metrics, the blocks in force) is equal for the Python and the
native engine, and its decisions, violations and dead letters are ``Replay(partitions=N)``'s. The task inlines the
routing of an outcome into its per-record loop, so this holds that loop to the oracle without Kafka."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from fatigue.clock import partition_for_key
from fatigue.engine import Guard
from fatigue.generate import generate_messages
from fatigue.partition import PREFERENCE_TYPES, PartitionDriver
from fatigue.policy import load_policy
from fatigue.replay import Replay
from fatigue.state import json_bytes, preferences_view
from streams.collector import REROUTED_HEADER, Partitioner, Record, RecordCollector, Topics
from streams.metrics import ActiveBlocks, Metrics
from streams.state_store import PartitionStore, store_options
from streams.task import PartitionTask, state_of
from tests.unit.test_native_parity import RandomChooser, make_timeline
from tests.unit.test_partition import ENGINES, SETTLE_MS, START_MS, _keyed

PARTITIONS = 3
TOPICS = Topics("events", "decisions", "prefs", "violations", "dlq", "changelog", PARTITIONS)


class _Record:
    """An input record as aiokafka hands it out (the attributes a task reads)."""

    __slots__ = ("headers", "key", "offset", "value")

    def __init__(self, key: bytes | None, value: bytes | None, offset: int, headers: list[tuple[str, bytes]]) -> None:
        self.key = key
        self.value = value
        self.offset = offset
        self.headers = headers


def _messages(seed: int) -> list[tuple[bytes | None, bytes]]:
    rng = random.Random(seed)
    messages = list(generate_messages(3_000, 120, seed=seed, start_ms=START_MS, span_days=8))
    for number in range(12):  # erasures amid the customers' events
        key, value = messages[rng.randrange(len(messages))]
        if key is not None:
            ts = orjson.loads(value).get("ts", START_MS)
            erase = {"type": "erase", "event_id": f"erase-{number}", "customer_id": key.decode(), "ts": ts}
            messages.insert(rng.randrange(len(messages)), (key, orjson.dumps(erase)))
    for number in range(6):  # an opt-out lifted again: its block and then an allow
        customer = f"opt-in-{number}"  # a customer of its own: its events are not late
        for step, opt_out in enumerate((True, False)):
            ts = START_MS + (number + 1) * 3_600_000 + step * 60_000
            event = {"type": "preference", "event_id": f"pref-{number}-{step}", "customer_id": customer, "ts": ts}
            messages.append((customer.encode(), orjson.dumps(event | {"channel": "sms", "opt_out": opt_out})))
    for number in range(15):  # timelines of every event type, allows among their decisions
        messages.extend(_keyed(line) for line in make_timeline(RandomChooser(f"task-{seed}-{number}")))
    return messages


def _loader(store: PartitionStore) -> Callable[[str], bytes | None]:
    """The pipeline's loader: a customer's state as the local store has it."""
    return lambda customer: state_of(store.get(customer.encode()))


def _run(engine: str, messages: list[tuple[bytes | None, bytes]], tmp_path: Path, seed: int) -> dict[str, Any]:
    """Every partition's task over its records in runs of random length, a transaction sealed after each run and
    committed; what they collected, per partition."""
    guard = Guard(load_policy("config/policies/default.toml"))
    rng = random.Random(seed)
    inputs: dict[int, list[_Record]] = {partition: [] for partition in range(PARTITIONS)}
    for number, (key, value) in enumerate(messages):
        partition = partition_for_key(key, PARTITIONS) if key is not None else number % PARTITIONS
        if key is not None and number % 97 == 0:
            partition = (partition + 1) % PARTITIONS  # another partitioner put it on the wrong partition
        inputs[partition].append(_Record(key, value, len(inputs[partition]), []))
    metrics = Metrics()
    collected: dict[str, Any] = {}
    for partition, records in inputs.items():
        store = PartitionStore(tmp_path / f"{engine}-{partition}.db", store_options(8 << 20, 1 << 20))
        task = PartitionTask(
            partition,
            PartitionDriver(ENGINES[engine](guard, _loader(store)), SETTLE_MS),
            store,
            RecordCollector(TOPICS, partition, Partitioner(PARTITIONS)),
            metrics,
            ActiveBlocks(),
            max_event_bytes=guard.policy.max_event_bytes,
            cache_customers=40,  # states evicted and loaded back from the store
        )
        outputs: dict[tuple[str, int], list[Record]] = {}
        counts: Counter[tuple[str, tuple[str, ...]]] = Counter()
        latencies = 0
        position = 0
        start = 0
        while start < len(records):
            run = records[start : start + rng.randrange(1, 400)]
            start += len(run)
            task.handle(run)
            txn = task.seal()
            for where, written in txn.out.records.items():
                outputs.setdefault(where, []).extend(written)
            counts += txn.counts
            latencies += len(txn.latencies)
            position += len(txn.changes) + 1
            task.committed(txn, position)
        collected[f"partition {partition}"] = {
            "outputs": outputs,
            "counts": counts,
            "blocks": dict(task.blocks.in_force),
            "next_offset": task.next_offset,
            "event-driven latencies": latencies,
        }
        store.close()
    return collected


@pytest.mark.parametrize("seed", [5, 6])
def test_the_tasks_outputs_are_equal_on_both_engines_and_the_replays(seed: int, tmp_path: Path) -> None:
    messages = _messages(seed)
    python = _run("python", messages, tmp_path, seed)
    native = _run("native", messages, tmp_path, seed)
    assert native == python

    guard = Guard(load_policy("config/policies/default.toml"))
    replay = Replay(guard, check_key=True, partitions=PARTITIONS, settle_ms=SETTLE_MS)
    expected: dict[str, list[bytes]] = {"decisions": [], "violations": [], "dlq": [], "prefs": []}
    rerouted = 0
    for number, (key, value) in enumerate(messages):
        if key is not None and number % 97 == 0:
            rerouted += 1
            continue  # forwarded to its partition's input (checked below), not handled where it landed
        step = replay.feed(value, key)
        expected["decisions"] += [orjson.dumps(decision) for decision in step.decisions]
        expected["violations"] += [orjson.dumps(violation) for violation in step.violations]
        expected["dlq"] += [value] if step.rejection is not None else []
        if step.rejection is None and not step.erased and orjson.loads(value)["type"] in PREFERENCE_TYPES:
            assert step.state is not None
            expected["prefs"].append(json_bytes(preferences_view(step.state)))
    got: dict[str, list[bytes]] = {"decisions": [], "violations": [], "dlq": [], "prefs": []}
    forwarded = []
    for partition in range(PARTITIONS):
        outputs = python[f"partition {partition}"]["outputs"]
        for (topic, _), records in sorted(outputs.items()):
            if topic == "events":
                forwarded += [(key, dict(headers or [])[REROUTED_HEADER]) for key, _, headers in records]
            elif topic in got:
                got[topic] += [value for _, value, _ in records if value is not None]
    # tombstones (of erasures) are left out: the replay has no record for them
    assert sorted(got["decisions"]) == sorted(expected["decisions"])
    assert sorted(got["violations"]) == sorted(expected["violations"])
    assert sorted(got["dlq"]) == sorted(expected["dlq"])
    assert sorted(got["prefs"]) == sorted(expected["prefs"]) != []
    assert len(forwarded) == rerouted > 0
    assert all(partition_for_key(key, PARTITIONS) != int(source) for key, source in forwarded)
