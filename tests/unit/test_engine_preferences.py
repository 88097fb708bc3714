"""Opt-outs, the customer's own caps and quiet hours, sender violations, presets, duplicates and late events."""

from __future__ import annotations

import pytest

from fatigue.testing import DAY, HOUR, Scenario, at
from fatigue.timeutil import format_ms


def test_unsubscribe_blocks_indefinitely_until_opt_in_emits_allow():
    s = Scenario()
    [block] = s.unsubscribe(at(0), "email").decisions
    assert (block["action"], block["reason"], block["until"]) == ("block", "unsubscribe", None)
    assert s.current("email", at(400)) is not None
    [allow] = s.preference(at(30), channel="email", opt_out=False).decisions
    assert allow["action"] == "allow"
    assert allow["reason"] == "opt_in"
    assert allow["channel"] == "email"
    assert allow["until"] is None
    assert allow["decided_at"] == format_ms(at(30))
    assert s.current("email") is None


def test_sms_stop_blocks_sms_only():
    s = Scenario()
    [block] = s.sms_stop(at(0)).decisions
    assert (block["channel"], block["reason"], block["until"]) == ("sms", "sms_stop", None)


def test_preference_opt_out_without_channel_blocks_every_channel():
    s = Scenario()
    step = s.preference(at(0), opt_out=True)
    assert sorted(d["channel"] for d in step.decisions) == ["call", "email", "sms"]
    assert {d["reason"] for d in step.decisions} == {"opt_out"}
    step = s.preference(at(1), opt_out=False)
    assert sorted((d["channel"], d["action"]) for d in step.decisions) == [
        ("call", "allow"),
        ("email", "allow"),
        ("sms", "allow"),
    ]


def test_opt_in_reveals_a_remaining_block_instead_of_allowing():
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")  # cap until day 7
    s.sms_stop(at(2))
    [decision] = s.preference(at(3), channel="sms", opt_out=False).decisions
    assert decision["action"] == "block"
    assert decision["reason"] == "cap"
    assert decision["until"] == format_ms(at(7))


def test_opt_in_when_nothing_is_blocked_emits_nothing():
    s = Scenario()
    assert s.preference(at(0), channel="sms", opt_out=False).decisions == []


def test_latest_preference_by_event_time_wins():
    s = Scenario()
    s.preference(at(1), channel="email", opt_out=False)
    # an older opt-out arriving late does not override the newer opt-in
    assert s.unsubscribe(at(1) - HOUR, "email").decisions == []
    assert s.current("email") is None


def test_opt_in_does_not_lift_a_complaint():
    s = Scenario()
    s.complaint(at(0), "email")
    s.unsubscribe(at(0, hours=1), "email")
    [decision] = s.preference(at(1), channel="email", opt_out=False).decisions
    assert (decision["action"], decision["reason"]) == ("block", "complaint")
    assert decision["until"] == format_ms(at(180))


def test_customer_cap_is_the_customers_own_limit():
    # "one SMS a week"
    s = Scenario()
    s.preference(at(0), channel="sms", max_contacts={"count": 1, "window": "7d"})
    [decision] = s.contact(at(1), "sms").decisions
    assert decision["reason"] == "customer_cap"
    assert decision["rule"] == "customer: sms <= 1 per 7d"
    assert decision["until"] == format_ms(at(8))


def test_stricter_of_policy_and_customer_cap_wins():
    s = Scenario()
    s.preference(at(0), channel="sms", max_contacts={"count": 5, "window": "1d"})  # laxer than 2 per 7d
    s.contact(at(1), "sms")
    [decision] = s.contact(at(2), "sms").decisions
    assert decision["reason"] == "cap"
    assert decision["until"] == format_ms(at(8))


def test_customer_cap_set_after_contacts_blocks_at_once_and_relaxing_it_allows():
    s = Scenario()
    s.contact(at(0), "sms")
    [decision] = s.preference(at(1), channel="sms", max_contacts={"count": 1, "window": "7d"}).decisions
    assert (decision["reason"], decision["until"]) == ("customer_cap", format_ms(at(7)))
    [allow] = s.preference(at(2), channel="sms", max_contacts=None).decisions
    assert allow["action"] == "allow"


def test_customer_cap_without_channel_counts_all_channels_together():
    s = Scenario()
    s.preference(at(0), max_contacts={"count": 2, "window": "7d"})
    s.contact(at(1), "email")
    step = s.contact(at(2), "call")
    reasons = {d["channel"]: d["reason"] for d in step.decisions}
    assert reasons == {"email": "customer_cap", "sms": "customer_cap", "call": "customer_cap"}
    assert {d["until"] for d in step.decisions} == {format_ms(at(8))}


def test_quiet_hours_in_the_customers_time_zone_are_violations_not_blocks():
    s = Scenario()
    s.preference(at(0), quiet_hours={"start": "20:00", "end": "09:00"}, timezone="Asia/Singapore")
    # T0 is 09:00 UTC = 17:00 in Singapore: fine. 13:00 UTC = 21:00 Singapore: quiet.
    assert s.contact(at(1), "email", sender="newsletter").violations == []
    step = s.contact(at(1, hours=4), "email", sender="newsletter")
    assert step.decisions == []
    [violation] = step.violations
    assert violation["kind"] == "quiet_hours"
    assert violation["sender"] == "newsletter"
    # 01:00 UTC = 09:00 Singapore: the end is exclusive
    assert s.contact(at(3) - 8 * HOUR, "sms").violations == []


def test_contact_on_a_blocked_channel_is_a_violation_with_its_sender():
    s = Scenario()
    s.unsubscribe(at(0), "email")
    step = s.contact(at(1), "email", sender="crm", campaign="black-friday")
    [violation] = step.violations
    assert violation == {
        "customer_id": "cust-1",
        "channel": "email",
        "kind": "blocked",
        "reason": "unsubscribe",
        "rule_id": "opt_out.unsubscribe",
        "until": None,
        "sender": "crm",
        "campaign": "black-friday",
        "category": "marketing",
        "event_id": step.violations[0]["event_id"],
        "ts": format_ms(at(1)),
        "policy_version": "default-2026.11.1",
    }
    # transactional mail to an unsubscribed customer is allowed and not a violation
    assert s.contact(at(2), "email", category="transactional").violations == []


def test_same_event_id_counts_once():
    s = Scenario()
    s.contact(at(0), "sms", event_id="dup")
    step = s.contact(at(0), "sms", event_id="dup")
    assert step.rejection is not None and step.rejection.reason == "duplicate"
    assert s.state is not None and s.state.logs[1] == [at(0)]


def test_event_more_than_24h_older_than_newest_is_late():
    s = Scenario()
    s.contact(at(5), "email")
    assert s.contact(at(4), "email").rejection is None  # exactly 24h older: still accepted
    step = s.contact(at(4) - 1, "email")
    assert step.rejection is not None and step.rejection.reason == "late"


def test_reg_f_allows_seven_calls_in_seven_days():
    s = Scenario("reg-f")
    times = [at(day) for day in range(6)] + [at(6, hours=12)]
    for ts in times[:6]:
        assert s.contact(ts, "call").decisions == []
    [decision] = s.contact(times[6], "call").decisions
    assert decision["rule"] == "call <= 7 per 7d"
    assert decision["until"] == format_ms(at(7))
    assert s.contact(at(7), "call").violations == []


def test_reg_f_no_call_within_7_days_after_a_conversation():
    s = Scenario("reg-f")
    s.contact(at(0), "call", event_id="c1")
    [decision] = s.call_ended(at(0, minutes=5), duration_s=240, ref="c1").decisions
    assert decision["reason"] == "conversation"
    assert decision["rule_id"] == "reg_f.conversation"
    assert decision["until"] == format_ms(at(7, minutes=5))
    assert s.contact(at(7, minutes=5) - 1, "call").violations != []
    assert s.contact(at(7, minutes=5), "call").violations == []


@pytest.mark.parametrize(("duration", "reason"), [(29, "short_hangups"), (30, "conversation")])
def test_reg_f_conversation_threshold(duration, reason):
    s = Scenario("reg-f")
    [decision] = s.call_ended(at(0), duration_s=duration).decisions
    assert decision["reason"] == reason


def _tcpa_violations(ts: int, channel: str, timezone: str | None = "America/New_York") -> list[str]:
    s = Scenario("tcpa")
    if timezone is not None:
        s.preference(at(0) - DAY, timezone=timezone)
    return [v["rule_id"] for v in s.contact(ts, channel).violations]


@pytest.mark.parametrize(
    ("ts", "channel", "expected"),
    [
        # New York is UTC-5 in November: 02:00 UTC is 21:00 local, 13:00 UTC is 08:00 local
        (at(1) - 7 * HOUR - 1, "call", []),  # 20:59:59.999
        (at(1) - 7 * HOUR, "call", ["tcpa.quiet_hours"]),  # 21:00 starts quiet hours
        (at(1) - 7 * HOUR, "sms", ["tcpa.quiet_hours"]),
        (at(1, hours=4) - 1, "sms", ["tcpa.quiet_hours"]),  # 07:59:59.999
        (at(1, hours=4), "sms", []),  # 08:00 ends them
        (at(1) - 7 * HOUR, "email", []),  # email is not covered by the preset
    ],
)
def test_tcpa_quiet_hours_21_to_8_local_time(ts, channel, expected):
    assert _tcpa_violations(ts, channel) == expected


def test_tcpa_uses_the_default_time_zone_without_a_preference():
    assert _tcpa_violations(at(0, hours=12), "call", timezone=None) == ["tcpa.quiet_hours"]  # 21:00 UTC
    assert _tcpa_violations(at(0, hours=11), "call", timezone=None) == []


def test_latest_decisions_remember_a_recent_allow_without_its_evidence():
    s = Scenario()
    s.unsubscribe(at(0), "email")
    [allow] = s.preference(at(1), channel="email", opt_out=False).decisions
    assert allow["evidence"] == {"lifted_reason": "unsubscribe", "lifted_until": None}  # published with it
    assert s.state is not None
    assert s.guard.latest_decisions(s.state) == [{key: value for key, value in allow.items() if key != "evidence"}]
    assert s.current("email") is None  # an allow is not a block in force
    s.contact(at(2, hours=1), "sms")  # more than the late grace later: the allow is forgotten
    assert s.guard.latest_decisions(s.state) == []
