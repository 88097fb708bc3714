"""`fatigue replay` runs with the cyclic garbage collector off, which is only sound while the core makes no cycles.

Reference counting frees every object that is not part of a reference cycle; a cycle made per event with the
collector off would be a leak that grows with the input. These replays go through every path of the core a
realistic stream reaches (all event types, rejections of every kind, duplicates, late events, deadlines,
erasures, partition clocks) and then ask the collector what it would have found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import orjson
import pytest

from fatigue.engine import Guard
from fatigue.generate import generate_events
from fatigue.policy import load_policy
from fatigue.replay import Replay, tune_gc

POLICIES = Path(__file__).resolve().parents[2] / "config" / "policies"


@contextmanager
def collector_off() -> Iterator[None]:
    """The collector off for the block, after collecting what the test runner left (it makes cycles)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@cache
def _stream_with_erasures(every: int = 997) -> tuple[bytes, ...]:
    """A generated stream with an erasure of the customer of every ``every``-th well-formed line, right after it."""
    out: list[bytes] = []
    for index, line in enumerate(generate_events(30_000, 400, seed=11)):
        out.append(line)
        if index % every:
            continue
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(event, dict) and isinstance(event.get("customer_id"), str) and "ts" in event:
            erase = {"event_id": f"erase-{index}", "type": "erase", "customer_id": event["customer_id"]}
            out.append(orjson.dumps({**erase, "ts": event["ts"]}))
    return tuple(out)


@pytest.mark.parametrize("policy_name", ["default", "reg-f", "tcpa"])
@pytest.mark.parametrize("partitions", [None, 4])
def test_a_replay_leaves_no_cyclic_garbage(policy_name: str, partitions: int | None) -> None:
    lines = _stream_with_erasures()
    policy = load_policy(POLICIES / f"{policy_name}.toml")
    outputs = erased = 0
    with collector_off():
        replay = Replay(Guard(policy), partitions=partitions)
        for line in lines:
            step = replay.feed(line)
            outputs += len(step.decisions) + len(step.violations) + (step.rejection is not None)
            erased += step.erased
        outputs += len(replay.finish(replay.newest_ms))
        found = gc.collect()
    assert found == 0, "the core made reference cycles: the collector cannot stay off in `fatigue replay`"
    assert replay.stats.rejections["duplicate"] > 0 and replay.stats.rejections["late"] > 0
    assert sum(1 for (action, _, _) in replay.stats.decisions.elements() if action == "allow") > 0
    assert outputs > len(lines) // 10
    assert erased > 10 and len(replay.states) > 0


def test_a_cycle_would_be_found() -> None:
    """The check above can fail: a cycle made while the collector is off is reported."""
    with collector_off():
        node: list[object] = []
        node.append(node)
        del node
        found = gc.collect()
    assert found == 1


def test_core_only_tuning_switches_the_collector_off_and_the_worker_tuning_keeps_it() -> None:
    thresholds = gc.get_threshold()
    try:
        tune_gc(core_only=True)
        assert not gc.isenabled()
        gc.enable()
        tune_gc()
        assert gc.isenabled() and gc.get_threshold()[0] == 100_000
    finally:
        gc.unfreeze()
        gc.enable()
        gc.set_threshold(*thresholds)
