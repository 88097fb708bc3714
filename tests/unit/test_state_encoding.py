"""Stored states: what is kept of the last decision per channel, and that it comes back exactly.

The state keeps each channel's last decision without its evidence (docs/adr/0003-state-keeps-no-evidence.md): the
evidence is published with the decision and never feeds a later one. A state read back from its bytes, or from
the bytes an earlier version wrote (with the evidence), must equal the one in memory and behave alike.
"""

from __future__ import annotations

from typing import Any

import orjson

from fatigue.engine import Guard
from fatigue.generate import generate_events, generate_messages
from fatigue.replay import Replay
from fatigue.state import CustomerState
from fatigue.testing import Scenario, at, policy_named

START_MS = 1_780_000_000_000


def without_evidence(decision: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in decision.items() if key != "evidence"}


def as_written_before(raw: bytes, published: dict[str, dict[str, Any]], *, whole: bool = False) -> bytes:
    """``raw`` as the previous version stored it: each kept decision with the evidence it was published with
    (``published``: the last decision published per channel), in the packed layout, or stored ``whole`` as the
    version before that did."""
    data = orjson.loads(raw)
    for channel, record in zip(("email", "sms", "call"), data.get("e") or [None] * 3, strict=True):
        if record is None:
            continue
        packed = record[1]
        decision = published[channel]
        assert packed[5] is None  # the evidence's slot, kept empty
        if whole:
            record[1] = decision
        else:
            packed[5] = decision["evidence"]
    return orjson.dumps(data)


def test_the_state_keeps_the_published_decision_without_its_evidence():
    replay = Replay(Guard(policy_named("default")))
    published: dict[tuple[str, str], dict[str, Any]] = {}
    for line in generate_events(20_000, 800, seed=3):
        for decision in replay.feed(line).decisions:
            published[decision["customer_id"], decision["channel"]] = decision
    checked = suggested = 0
    for state in replay.states.values():
        restored = CustomerState.from_bytes(state.to_bytes())
        assert restored == state
        for live, back in zip(state.emitted, restored.emitted, strict=True):
            assert (live is None) == (back is None)
            if live is None or back is None:
                continue
            sent = published[state.customer_id, live[1]["channel"]]
            assert sent["evidence"]["rules" if sent["action"] == "block" else "lifted_reason"]
            # the same keys, in the same order, with the same values as the decision sent, less its evidence
            assert orjson.dumps(live[1]) == orjson.dumps(without_evidence(sent))
            assert back[0] == live[0]
            assert orjson.dumps(back[1]) == orjson.dumps(live[1])
            checked += 1
            suggested += "suggest" in live[1]
    assert checked > 500 and suggested > 0  # blocks, allows and suggestions were all exercised


def test_a_stored_decision_leaves_out_what_the_state_already_knows_and_the_evidence():
    scenario = Scenario("default", customer_id="cust-frugal")
    for day in range(3):
        scenario.contact(at(days=day), "sms")
    sent = scenario.last()
    assert len(orjson.dumps(sent["evidence"])) > 150
    assert scenario.state is not None and scenario.state.emitted[1] is not None
    assert scenario.state.emitted[1][1] == without_evidence(sent)
    stored = orjson.loads(scenario.state.to_bytes())["e"][1][1]
    assert stored[5] is None  # the evidence's slot: where the previous version stored it
    assert sent["customer_id"] not in stored and sent["until"] not in stored
    assert sent["decided_at"] not in stored and "sms" not in stored
    assert len(orjson.dumps(stored)) < len(orjson.dumps(without_evidence(sent))) - 80


def _blocked_and_lifted() -> Scenario:
    """A decision kept on every channel: sms capped, email unsubscribed, call lifted (kept for the late grace)."""
    scenario = Scenario("default", customer_id="cust-old")
    for day in range(3):
        scenario.contact(at(days=day), "sms")
    scenario.unsubscribe(at(3), "email")
    scenario.unsubscribe(at(3), "call")
    scenario.preference(at(3, hours=1), channel="call", opt_out=False)
    return scenario


def _published(scenario: Scenario) -> dict[str, dict[str, Any]]:
    return {decision["channel"]: decision for decision in scenario.decisions}


def test_a_state_stored_with_evidence_by_an_earlier_version_loads_without_it():
    scenario = _blocked_and_lifted()
    state = scenario.state
    assert state is not None and None not in state.emitted
    raw = state.to_bytes()
    for whole in (False, True):
        old = as_written_before(raw, _published(scenario), whole=whole)
        assert len(old) > len(raw) + 200
        restored = CustomerState.from_bytes(old)
        assert restored == state and restored.to_bytes() == raw
        assert restored.emitted == state.emitted  # in memory too: no evidence kept
        assert all("evidence" not in record[1] for record in restored.emitted if record is not None)
        assert scenario.guard.latest_decisions(restored) == scenario.guard.latest_decisions(state)


def test_a_state_stored_with_evidence_gives_the_same_outputs_as_todays():
    """The old state and today's are fed the same later events: the same decisions, violations and states."""
    scenario = _blocked_and_lifted()
    assert scenario.state is not None
    raw = scenario.state.to_bytes()
    for whole in (False, True):
        old = Scenario("default", customer_id="cust-old")
        old.state = CustomerState.from_bytes(as_written_before(raw, _published(scenario), whole=whole))
        new = Scenario("default", customer_id="cust-old")
        new.state = CustomerState.from_bytes(raw)
        for run in (old, new):
            # judged, lifted and replaced by the decisions restored
            run.contact(at(3, hours=2), "sms", event_id="sms")
            run.contact(at(3, hours=2), "email", event_id="mail")
            run.preference(at(3, hours=3), channel="email", opt_out=False, event_id="email-in")
            run.preference(at(3, hours=4), channel="sms", opt_out=True, event_id="sms-out")
            run.preference(at(4), channel="sms", opt_out=False, event_id="sms-in")
        assert not old.rejections
        assert [(v["channel"], v["reason"]) for v in old.violations] == [("sms", "cap"), ("email", "unsubscribe")]
        assert [(d["channel"], d["action"], d["reason"]) for d in old.decisions] == [
            ("sms", "block", "cap"),  # the fourth contact moves the cap's end
            ("email", "allow", "opt_in"),
            ("sms", "block", "opt_out"),
            ("sms", "block", "cap"),
        ]
        assert orjson.dumps(old.violations) == orjson.dumps(new.violations)
        assert orjson.dumps(old.decisions) == orjson.dumps(new.decisions)
        assert old.state == new.state


def test_states_reloaded_before_every_event_behave_as_states_kept_in_memory():
    """The worker evicts and reloads states, the replay keeps them: their outputs and what they remember agree."""
    guard = Guard(policy_named("default"))
    kept = Replay(guard)
    reloaded = Replay(guard)
    for key, value in generate_messages(15_000, 300, seed=21, start_ms=START_MS, span_days=20):
        customer = key.decode() if key is not None else None
        if customer in reloaded.states:
            reloaded.states[customer] = CustomerState.from_bytes(reloaded.states[customer].to_bytes())
        expected, got = kept.feed(value, key), reloaded.feed(value, key)
        assert orjson.dumps(got.decisions) == orjson.dumps(expected.decisions)
        assert orjson.dumps(got.violations) == orjson.dumps(expected.violations)
        assert (got.rejection is None) == (expected.rejection is None)
        if customer in kept.states:
            one, other = kept.states[customer], reloaded.states[customer]
            assert orjson.dumps(guard.current_decisions(other)) == orjson.dumps(guard.current_decisions(one))
            assert orjson.dumps(guard.latest_decisions(other)) == orjson.dumps(guard.latest_decisions(one))
    assert kept.states == reloaded.states
    assert sum(len(guard.latest_decisions(state)) for state in kept.states.values()) > 50
