"""The customer's rights: access (inspect) and erasure, in the pure core."""

from __future__ import annotations

import json
from importlib.resources import files

import orjson
from jsonschema import Draft202012Validator

from fatigue.engine import Guard
from fatigue.inspect import explain
from fatigue.policy import Policy
from fatigue.replay import Replay
from fatigue.testing import DAY, Scenario, at, policy_named
from fatigue.timeutil import format_ms

DECISION_SCHEMA = Draft202012Validator(
    json.loads((files("fatigue") / "schema" / "decision.schema.json").read_text("utf-8"))
)


def test_inspect_explains_counts_signals_preferences_and_blocks():
    s = Scenario()
    s.contact(at(0), "sms", event_id="s1")
    s.contact(at(1), "sms", event_id="s2")
    s.call_ended(at(1, hours=1), duration_s=4)
    s.preference(at(1, hours=2), channel="email", quiet_hours={"start": "21:00", "end": "08:00"})
    s.opened(at(1, hours=3), ref="mail-not-seen-yet")
    assert s.state is not None
    view = explain(s.guard, s.state)
    assert view["signals"]["opens_awaiting_their_email"] == [
        {"email_event_id": "mail-not-seen-yet", "opened_at": format_ms(at(1, hours=3))}
    ]
    assert view["customer_id"] == "cust-1"
    assert view["window_counts"]["cap.sms.7d"]["count"] == 2
    assert view["window_counts"]["global_cap.7d"]["count"] == 2
    assert view["signals"]["short_hangups"] == [format_ms(at(1, hours=1))]
    assert view["preferences"]["quiet_hours"] == {"email": {"start": "21:00", "end": "08:00"}}
    assert {(b["channel"], b["reason"]) for b in view["active_blocks"]} == {("sms", "cap"), ("call", "short_hangups")}
    # the state keeps no evidence: each block's is rendered at `at` from the facts kept
    blocks = {b["channel"]: b for b in view["active_blocks"]}
    published = {d["channel"]: d for d in s.decisions}
    assert "evidence" not in s.guard.current_decisions(s.state)[0]
    assert blocks["call"]["evidence"] == published["call"]["evidence"]
    [sms_rule] = published["sms"]["evidence"]["rules"]
    # the window has slid since the block was decided (the newest event is 3 h later)
    assert blocks["sms"]["evidence"] == {"rules": [{**sms_rule, "window_start": format_ms(at(1, hours=3) - 7 * DAY)}]}
    assert blocks["sms"]["evidence"] == s.guard.evidence(s.state, "sms", at(1, hours=3))
    # a week later the sms block has ended and the window is empty
    later = explain(s.guard, s.state, at(9))
    assert later["window_counts"]["cap.sms.7d"]["count"] == 0
    assert {b["channel"] for b in later["active_blocks"]} == set()
    orjson.dumps(view)  # it is served as JSON


def test_erase_forgets_everything():
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.preference(at(1), timezone="Europe/Paris")
    step = s.send({"type": "erase", "ts": at(2)})
    assert step.erased
    assert step.state is None
    assert step.decisions == []


def test_erased_customer_who_opted_out_stays_suppressed_with_nothing_else():
    s = Scenario()
    s.contact(at(0), "email", sender="crm")
    s.unsubscribe(at(1), "email")
    s.complaint(at(1), "call")
    step = s.send({"type": "erase", "ts": at(2), "event_id": "erase-1"})
    assert step.erased
    [decision] = step.decisions
    assert (decision["channel"], decision["action"], decision["reason"], decision["until"]) == (
        "email",
        "block",
        "unsubscribe",
        None,
    )
    assert decision["evidence"] == {
        "rules": [
            {
                "rule_id": "opt_out.unsubscribe",
                "reason": "unsubscribe",
                "rule": "customer unsubscribed from email",
                "until": None,
                "source": "unsubscribe",
            }
        ],
        "erased": True,
    }
    assert list(DECISION_SCHEMA.iter_errors(decision)) == []
    assert decision["cause_event_id"] == "erase-1"
    kept = step.state
    assert kept is not None
    data = kept.to_dict()
    assert set(data) == {"c", "w", "o", "e"}  # id, no watermark, the opt-out, its decision: nothing else
    assert data["w"] is None
    # inspect shows the suppression's evidence as it was published, though the state keeps only the decision
    [block] = explain(s.guard, kept, at(2))["active_blocks"]
    assert block["evidence"] == decision["evidence"]
    assert "evidence" not in s.guard.current_decisions(kept, at(2))[0]
    # still suppressed afterwards, and a later opt-in lifts it
    assert s.contact(at(3), "email").violations
    [allow] = s.preference(at(4), channel="email", opt_out=False).decisions
    assert allow["action"] == "allow"


def test_a_partitioned_replay_goes_on_past_an_erased_customer_whose_unread_deadline_was_pending():
    """The partition clock still holds the erased customer's deadline; when the partition's event time passes it,
    there is nobody to advance (it used to stop the replay with a KeyError)."""

    def line(**fields: object) -> bytes:
        return orjson.dumps({"category": "marketing", **fields})

    replay = Replay(Guard(policy_named("default")), partitions=1)
    replay.feed(line(event_id="m1", type="contact", customer_id="gone", channel="email", ts=format_ms(at(0))))
    erased = replay.feed(orjson.dumps({"event_id": "e1", "type": "erase", "customer_id": "gone", "ts": at(1)}))
    assert erased.erased and erased.state is None
    # the partition's clock passes the erased customer's 72 h deadline (plus the settle time) with someone else
    for day in (2, 5, 9):
        step = replay.feed(line(event_id=f"o{day}", type="contact", customer_id="other", channel="sms", ts=at(day)))
        assert step.rejection is None
    assert "gone" not in replay.states
    assert replay.finish(replay.newest_ms) == []


def test_inspect_shows_what_a_block_says_when_the_facts_kept_no_longer_show_it():
    """Under a policy without the rules that decided the blocks in force, inspect names each block's own rule."""
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.call_ended(at(1, hours=1), duration_s=4)
    assert s.state is not None
    view = explain(Guard(Policy(version="bare")), s.state)
    published = {d["channel"]: d for d in s.decisions}
    assert {b["channel"] for b in view["active_blocks"]} == {"sms", "call"}
    for block in view["active_blocks"]:
        decision = published[block["channel"]]
        fields = ("rule_id", "reason", "rule", "until")
        assert block["evidence"] == {"rules": [{field: decision[field] for field in fields}]}
