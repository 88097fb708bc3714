"""Policy files at their edges: validation, durations, rule ids, counting service, policy change, emission."""

from __future__ import annotations

import tomllib

import orjson
import pytest

from fatigue.engine import Guard
from fatigue.events import Rejection, parse_event
from fatigue.policy import PolicyError, policy_from_mapping
from fatigue.state import CustomerState
from fatigue.testing import POLICY_DIR, Scenario, at, policy_named
from fatigue.timeutil import format_ms


def _raw(name: str) -> dict:
    return tomllib.loads((POLICY_DIR / f"{name}.toml").read_text())


@pytest.mark.parametrize("name", ["default", "reg-f", "tcpa"])
@pytest.mark.parametrize("table", ["counting", "input", "state", "customer", "short_hangups", "unread", "complaint"])
def test_unknown_key_in_any_table_is_rejected(name, table):
    data = _raw(name)
    data[table]["tpyo"] = 1
    with pytest.raises(PolicyError, match="tpyo"):
        policy_from_mapping(data)


@pytest.mark.parametrize(("name", "table"), [("reg-f", "conversation"), ("tcpa", "quiet_hours")])
def test_unknown_key_in_preset_tables_is_rejected(name, table):
    data = _raw(name)
    data[table]["channel"] = "call"
    with pytest.raises(PolicyError, match=table):
        policy_from_mapping(data)


def test_unknown_top_level_key_and_cap_key_rejected():
    data = _raw("default")
    data["quiet_hour"] = {}
    with pytest.raises(PolicyError):
        policy_from_mapping(data)
    data = _raw("default")
    data["caps"][0]["windw"] = "7d"
    with pytest.raises(PolicyError, match="windw"):
        policy_from_mapping(data)


@pytest.mark.parametrize("bad", ["7D", "1.5h", "7 d", "-1d", "0s", "d", "", 7, "7days", "P7D"])
def test_bad_durations_rejected(bad):
    data = _raw("reg-f")
    data["conversation"]["min_duration"] = bad
    with pytest.raises(PolicyError, match=r"conversation\.min_duration"):
        policy_from_mapping(data)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30_000),
        ("15m", 900_000),
        ("72h", 259_200_000),
        ("7d", 604_800_000),
        ("4w", 2_419_200_000),
        ("500ms", 500),
    ],
)
def test_good_durations(text, ms):
    data = _raw("default")
    data["caps"][0]["window"] = text
    assert policy_from_mapping(data).caps[0].window_ms == ms


def test_version_is_required_and_stamped():
    data = _raw("reg-f")
    del data["version"]
    with pytest.raises(PolicyError, match="version"):
        policy_from_mapping(data)
    s = Scenario("reg-f")
    [d] = s.call_ended(at(0), duration_s=40).decisions
    assert d["policy_version"] == "reg-f-2026.11.1"


def test_preset_rule_ids_are_stable():
    assert policy_named("reg-f").rule_ids == (
        "cap.sms.7d",
        "cap.sms.30d",
        "cap.email.7d",
        "cap.email.30d",
        "reg_f.call.7_in_7d",
        "short_hangups.1_in_7d",
        "short_hangups.2_in_30d",
        "unread.5_in_a_row",
        "complaint",
        "reg_f.conversation",
    )
    assert "tcpa.quiet_hours" in policy_named("tcpa").rule_ids


def test_duplicate_rule_ids_rejected():
    data = _raw("reg-f")
    data["conversation"]["id"] = "complaint"
    with pytest.raises(PolicyError, match="duplicate"):
        policy_from_mapping(data)


def test_transactional_can_not_be_counted_and_marketing_is_required():
    for cats in (["marketing", "transactional"], ["service"], []):
        data = _raw("default")
        data["counting"]["categories"] = cats
        with pytest.raises(PolicyError, match=r"counting\.categories"):
            policy_from_mapping(data)


def test_service_opted_in_counts_blocks_and_violates():
    data = _raw("tcpa")
    data["counting"]["categories"] = ["marketing", "service"]
    s = Scenario(policy_from_mapping(data))
    s.contact(at(0), "sms", category="service")
    [d] = s.contact(at(1), "sms", category="service").decisions
    assert (d["reason"], d["rule_id"]) == ("cap", "cap.sms.7d")
    step = s.contact(at(1, hours=12), "sms", category="service", sender="svc")  # 21:00 UTC
    assert sorted((v["kind"], v["category"]) for v in step.violations) == [
        ("blocked", "service"),
        ("quiet_hours", "service"),
    ]
    assert s.contact(at(1, hours=13), "sms", category="transactional").violations == []


def _ev(body):
    parsed = parse_event(orjson.dumps(body))
    assert not isinstance(parsed, Rejection)
    return parsed


def test_state_from_default_processed_under_reg_f_without_migration():
    g1 = Guard(policy_named("default"))
    state = None
    for i, day in enumerate([0, 1, 2]):
        state = g1.process(
            state, _ev({"type": "contact", "event_id": f"a{i}", "customer_id": "c", "ts": at(day), "channel": "call"})
        ).state
    raw = state.to_bytes()
    g2 = Guard(policy_named("reg-f"))
    state = CustomerState.from_bytes(raw)
    decisions = []
    for i, day in enumerate([3, 4, 5]):
        decisions += g2.process(
            state, _ev({"type": "contact", "event_id": f"b{i}", "customer_id": "c", "ts": at(day), "channel": "call"})
        ).decisions
    # the default policy's cap.call.7d block (until day 7) is lifted under reg-f at the first call evaluated
    assert [(d["action"], d["reason"], d["rule_id"], d["policy_version"]) for d in decisions] == [
        ("allow", "lifted", "cap.call.7d", "reg-f-2026.11.1")
    ]
    [d] = g2.process(
        state, _ev({"type": "contact", "event_id": "b9", "customer_id": "c", "ts": at(6), "channel": "call"})
    ).decisions
    assert d["policy_version"] == "reg-f-2026.11.1"
    # 7 calls, but the 7th... 0..6 = 7 calls in (day -1, day 6]: blocked until day 7
    assert (d["rule_id"], d["until"]) == ("reg_f.call.7_in_7d", format_ms(at(7)))


def test_state_from_reg_f_with_conversation_processed_under_default():
    g1 = Guard(policy_named("reg-f"))
    state = g1.process(
        None, _ev({"type": "call_ended", "event_id": "e1", "customer_id": "c", "ts": at(0), "duration_s": 100})
    ).state
    state = CustomerState.from_bytes(state.to_bytes())
    g2 = Guard(policy_named("default"))
    step = g2.process(
        state, _ev({"type": "contact", "event_id": "e2", "customer_id": "c", "ts": at(3), "channel": "sms"})
    )
    assert step.rejection is None
    assert Guard(policy_named("default")).current_decisions(state, at(3))[0]["reason"] == "conversation"


# ---------------------------------------------------------------- emission only on change


def test_cap_block_reemitted_only_when_until_changes():
    s = Scenario()
    s.contact(at(0), "sms")
    [d1] = s.contact(at(1), "sms").decisions
    step = s.contact(at(1, hours=1), "sms")  # blocked: until moves to day 8 + 1h
    [d2] = step.decisions
    assert d1["until"] == format_ms(at(7)) and d2["until"] == format_ms(at(8))
    assert s.preference(at(1, hours=2), channel="sms", quiet_hours={"start": "01:00", "end": "02:00"}).decisions == []


def test_hangup_inside_longer_conversation_block_emits_nothing_but_evidence_unchanged():
    s = Scenario("reg-f")
    s.call_ended(at(0), duration_s=100)  # until day 7
    assert s.call_ended(at(1), duration_s=5).decisions == []  # hang-up until day 4: winner unchanged
    [d] = s.call_ended(at(5), duration_s=5).decisions  # second hang-up in 30d: until day 35
    assert (d["reason"], d["until"]) == ("short_hangups", format_ms(at(35)))
    assert {r["reason"] for r in d["evidence"]["rules"]} == {"short_hangups", "conversation"}


def test_latest_until_wins_and_every_fired_rule_listed():
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(0, hours=1), "sms")  # cap.sms.7d until day 7
    s.complaint(at(1), "email")
    sms = [x for x in s.decisions if x["channel"] == "sms"][-1]
    assert (sms["reason"], sms["until"]) == ("complaint", format_ms(at(8)))
    assert {r["rule_id"] for r in sms["evidence"]["rules"]} == {"complaint.other_channels", "cap.sms.7d"}


def test_equal_until_tie_goes_to_complaint_over_cap_and_both_in_evidence():
    s = Scenario()
    s.contact(at(0), "sms")
    [cap] = s.contact(at(0, hours=1), "sms").decisions  # cap.sms.7d until day 7
    assert cap["until"] == format_ms(at(7))
    s.contact(at(0, hours=2), "email")
    step = s.complaint(at(0), "email")  # late (2h): other channels blocked until day 7 exactly
    sms = [d for d in step.decisions if d["channel"] == "sms"]
    assert [(d["reason"], d["rule_id"], d["until"]) for d in sms] == [
        ("complaint", "complaint.other_channels", format_ms(at(7)))
    ]
    assert {r["rule_id"] for r in sms[0]["evidence"]["rules"]} == {"complaint.other_channels", "cap.sms.7d"}


def test_late_contact_that_does_not_change_the_winner_emits_nothing():
    s = Scenario()
    s.complaint(at(0), "sms")  # sms until day 180
    s.contact(at(1), "email")
    step = s.contact(at(0, hours=12), "sms", sender="x")  # late, blocked by the complaint
    assert step.decisions == []
    assert [v["reason"] for v in step.violations] == ["complaint"]
