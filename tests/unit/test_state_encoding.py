"""Stored states: what is kept of the last decision per channel, and that it comes back byte-for-byte.

After a crash the worker re-sends a customer's latest decisions from the stored state, so a decision restored
from the state's bytes must serialise exactly as the one the engine emitted (same keys, same order, same values).
"""

from __future__ import annotations

import orjson

from fatigue.engine import Guard
from fatigue.generate import generate_events
from fatigue.replay import Replay
from fatigue.state import CustomerState
from fatigue.testing import Scenario, at, policy_named


def test_restored_decisions_are_byte_identical_to_the_emitted_ones():
    replay = Replay(Guard(policy_named("default")))
    for line in generate_events(20_000, 800, seed=3):
        replay.feed(line)
    checked = suggested = 0
    for state in replay.states.values():
        restored = CustomerState.from_bytes(state.to_bytes())
        for live, back in zip(state.emitted, restored.emitted, strict=True):
            assert (live is None) == (back is None)
            if live is None or back is None:
                continue
            assert back[0] == live[0]
            assert orjson.dumps(back[1]) == orjson.dumps(live[1])
            checked += 1
            suggested += "suggest" in live[1]
    assert checked > 500 and suggested > 0  # blocks, allows and suggestions were all exercised


def test_a_stored_decision_leaves_out_what_the_state_already_knows():
    scenario = Scenario("default", customer_id="cust-frugal")
    for day in range(3):
        scenario.contact(at(days=day), "sms")
    assert scenario.state is not None and scenario.state.emitted[1] is not None
    decision = scenario.state.emitted[1][1]
    stored = orjson.loads(scenario.state.to_bytes())["e"][1][1]
    assert decision["customer_id"] not in stored and decision["until"] not in stored
    assert decision["decided_at"] not in stored and "sms" not in stored
    assert len(orjson.dumps(stored)) < len(orjson.dumps(decision)) - 100


def test_a_state_stored_by_an_earlier_version_with_whole_decisions_still_loads():
    scenario = Scenario("default", customer_id="cust-old")
    for day in range(3):
        scenario.contact(at(days=day), "sms")
    assert scenario.state is not None
    legacy = scenario.state.to_dict()
    legacy["e"] = [None if record is None else [record[0], record[1]] for record in scenario.state.emitted]
    restored = CustomerState.from_dict(orjson.loads(orjson.dumps(legacy)))
    assert restored.emitted == scenario.state.emitted
