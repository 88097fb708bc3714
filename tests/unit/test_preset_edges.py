"""The reg-f and tcpa presets at their exact boundaries: the 7th call, conversations, quiet hours across DST."""

from __future__ import annotations

import pytest

from fatigue.policy import policy_from_mapping
from fatigue.testing import DAY, Scenario, at
from fatigue.timeutil import format_ms, parse_iso_ms


def iso(text: str) -> int:
    value = parse_iso_ms(text)
    assert value is not None
    return value


# ---------------------------------------------------------------- reg-f: 7 calls in 7 days


def test_reg_f_seventh_call_1ms_inside_window_blocks_until_first_plus_7d():
    s = Scenario("reg-f")
    for day in range(6):
        assert s.contact(at(day), "call").decisions == []
    [d] = s.contact(at(7) - 1, "call").decisions
    assert (d["reason"], d["rule_id"], d["until"]) == ("cap", "reg_f.call.7_in_7d", format_ms(at(7)))
    assert d["evidence"]["rules"][0]["count"] == 7
    # 8th call 1 ms before until: a violation; at until: not
    assert [v["rule_id"] for v in s.contact(at(7) - 1, "call", sender="x").violations] == ["reg_f.call.7_in_7d"]


def test_reg_f_eighth_call_in_block_extends_until_to_second_call_plus_7d():
    s = Scenario("reg-f")
    for day in range(7):
        s.contact(at(day, hours=day), "call")
    assert s.current("call")["until"] == format_ms(at(7))
    step = s.contact(at(6, hours=10), "call", sender="dialer")
    assert [v["sender"] for v in step.violations] == ["dialer"]
    [d] = step.decisions
    assert d["until"] == format_ms(at(8, hours=1))


def test_reg_f_service_and_transactional_calls_do_not_count():
    s = Scenario("reg-f")
    for day in range(6):
        s.contact(at(day), "call")
    assert s.contact(at(6), "call", category="service").decisions == []
    assert s.contact(at(6, 1), "call", category="transactional").decisions == []
    [d] = s.contact(at(6, 2), "call").decisions
    assert d["reason"] == "cap"


def test_reg_f_has_no_daily_call_cap_and_no_global_cap():
    s = Scenario("reg-f")
    for hour in range(6):
        assert s.contact(at(0, hours=hour), "call").decisions == []
    for i in range(3):
        s.contact(at(0, hours=7 + i), "email" if i < 2 else "sms")
    assert s.current("call") is None


@pytest.mark.parametrize(
    ("duration", "expected"),
    [(29.999, "short_hangups"), (30, "conversation"), (30.0001, "conversation"), (3600, "conversation")],
)
def test_reg_f_conversation_threshold_inclusive(duration, expected):
    s = Scenario("reg-f")
    [d] = s.call_ended(at(0), duration_s=duration).decisions
    assert d["reason"] == expected


def test_reg_f_conversation_block_runs_from_call_end_instant_exactly_7d():
    s = Scenario("reg-f")
    s.contact(at(0), "call", event_id="c1")
    [d] = s.call_ended(at(0, minutes=10, seconds=7) + 123, duration_s=607.1, ref="c1").decisions
    end = at(0, minutes=10, seconds=7) + 123
    assert (d["reason"], d["rule_id"], d["until"]) == ("conversation", "reg_f.conversation", format_ms(end + 7 * DAY))
    assert d["evidence"]["rules"][0]["conversation_at"] == format_ms(end)
    assert [v["reason"] for v in s.contact(end + 7 * DAY - 1, "call", sender="a").violations] == ["conversation"]
    assert s.contact(end + 7 * DAY, "call").violations == []


def test_reg_f_unanswered_long_call_and_answered_zero_are_not_conversations():
    s = Scenario("reg-f")
    assert s.call_ended(at(0), duration_s=900, answered=False).decisions == []
    s2 = Scenario("reg-f")
    [d] = s2.call_ended(at(0), duration_s=0).decisions
    assert d["reason"] == "short_hangups"


def test_reg_f_second_conversation_moves_until():
    s = Scenario("reg-f")
    s.call_ended(at(0), duration_s=60)
    [d] = s.call_ended(at(2), duration_s=60).decisions
    assert d["until"] == format_ms(at(9))
    # an older conversation delivered late does not shorten or change it
    assert s.call_ended(at(1, hours=12), duration_s=60).decisions == []
    assert s.current("call")["until"] == format_ms(at(9))


def test_reg_f_conversation_blocks_only_calls():
    s = Scenario("reg-f")
    [d] = s.call_ended(at(0), duration_s=60).decisions
    assert d["channel"] == "call"
    assert s.contact(at(1), "sms").violations == []
    assert s.contact(at(1), "email").violations == []


def test_reg_f_cap_and_conversation_both_fire_latest_until_wins_both_in_evidence():
    s = Scenario("reg-f")
    for day in range(7):
        s.contact(at(day), "call")  # cap until day 7
    [d] = s.call_ended(at(6, hours=1), duration_s=120).decisions  # conversation until day 13 + 1h
    assert (d["reason"], d["until"]) == ("conversation", format_ms(at(13, hours=1)))
    assert {r["rule_id"]: r["until"] for r in d["evidence"]["rules"]} == {
        "reg_f.conversation": format_ms(at(13, hours=1)),
        "reg_f.call.7_in_7d": format_ms(at(7)),
    }


def test_reg_f_conversation_then_cap_with_earlier_until_emits_nothing():
    s = Scenario("reg-f")
    for hour in range(6):
        s.contact(at(0, hours=1 + hour), "call")
    s.call_ended(at(0, hours=7), duration_s=120)  # conversation: until day 7 + 7h
    step = s.contact(at(0, hours=8), "call", sender="d")  # 7th call: cap until day 7 + 1h, earlier
    assert step.decisions == []  # the winner did not change
    assert [v["reason"] for v in step.violations] == ["conversation"]
    assert s.current("call")["reason"] == "conversation"


def test_reg_f_min_duration_in_ms_and_minutes_configurable():
    policy = policy_from_mapping(
        {"version": "x", "conversation": {"id": "conv", "min_duration": "1500ms", "block": "72h"}}
    )
    s = Scenario(policy)
    assert s.call_ended(at(0), duration_s=1.499).decisions == []
    [d] = s.call_ended(at(1), duration_s=1.5).decisions
    assert (d["rule_id"], d["until"]) == ("conv", format_ms(at(4)))


# ---------------------------------------------------------------- tcpa quiet hours


def _tcpa(ts: int, channel: str = "call", tz: str | None = None, pref_at: int | None = None, **pref):
    s = Scenario("tcpa")
    if tz is not None or pref:
        fields = dict(pref)
        if tz is not None:
            fields["timezone"] = tz
        s.preference(pref_at if pref_at is not None else ts - 2 * DAY, **fields)
    step = s.contact(ts, channel, sender="snd")
    return [v["rule_id"] for v in step.violations]


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        ("2026-11-02T20:59:59.999Z", []),
        ("2026-11-02T21:00:00Z", ["tcpa.quiet_hours"]),
        ("2026-11-03T07:59:59.999Z", ["tcpa.quiet_hours"]),
        ("2026-11-03T08:00:00Z", []),
        ("2026-11-03T00:00:00Z", ["tcpa.quiet_hours"]),
    ],
)
def test_tcpa_default_timezone_utc_edges(utc, expected):
    assert _tcpa(iso(utc)) == expected


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        ("2026-07-01T00:59:59.999Z", []),  # 20:59:59.999 EDT
        ("2026-07-01T01:00:00Z", ["tcpa.quiet_hours"]),  # 21:00 EDT
        ("2026-07-01T11:59:59.999Z", ["tcpa.quiet_hours"]),  # 07:59:59.999 EDT
        ("2026-07-01T12:00:00Z", []),  # 08:00 EDT
        ("2026-12-01T01:59:59.999Z", []),  # 20:59:59.999 EST
        ("2026-12-01T02:00:00Z", ["tcpa.quiet_hours"]),
        ("2026-12-01T12:59:59.999Z", ["tcpa.quiet_hours"]),
        ("2026-12-01T13:00:00Z", []),
    ],
)
def test_tcpa_new_york_summer_and_winter(utc, expected):
    assert _tcpa(iso(utc), tz="America/New_York") == expected


def test_tcpa_fall_back_repeated_hour_is_quiet_both_times():
    # 2026-11-01 01:30 EDT (05:30Z) and 01:30 EST (06:30Z)
    assert _tcpa(iso("2026-11-01T05:30:00Z"), tz="America/New_York") == ["tcpa.quiet_hours"]
    assert _tcpa(iso("2026-11-01T06:30:00Z"), tz="America/New_York") == ["tcpa.quiet_hours"]


def test_tcpa_email_is_not_covered_and_service_is_not_a_violation():
    ts = iso("2026-11-02T23:00:00Z")
    assert _tcpa(ts, "email") == []
    s = Scenario("tcpa")
    assert s.contact(ts, "call", category="service").violations == []
    assert s.contact(ts + 1, "sms", category="transactional").violations == []


def test_tcpa_violation_fields():
    s = Scenario("tcpa")
    step = s.contact(iso("2026-11-02T22:00:00Z"), "sms", sender="team-a", campaign="promo")
    [v] = step.violations
    assert (v["kind"], v["reason"], v["rule_id"], v["until"], v["sender"], v["campaign"]) == (
        "quiet_hours",
        "quiet_hours",
        "tcpa.quiet_hours",
        None,
        "team-a",
        "promo",
    )
    assert v["policy_version"] == "tcpa-2026.11.1"


def test_tcpa_timezone_cleared_falls_back_to_policy_default():
    s = Scenario("tcpa")
    s.preference(iso("2026-11-02T00:00:00Z"), timezone="Asia/Tokyo")
    s.preference(iso("2026-11-02T01:00:00Z"), timezone=None)
    # 22:00 UTC = 07:00 Tokyo (quiet in Tokyo, quiet in UTC too) -> choose 13:00Z = 22:00 Tokyo, 13:00 UTC
    assert s.contact(iso("2026-11-02T13:00:00Z"), "call").violations == []


def test_policy_default_timezone_applies_without_preference():
    policy = policy_from_mapping(
        {
            "version": "x",
            "customer": {"default_timezone": "America/Los_Angeles"},
            "quiet_hours": {"id": "q", "start": "21:00", "end": "08:00", "channels": ["call"]},
        }
    )
    s = Scenario(policy)
    # 2026-11-03T05:00Z = 21:00 PST
    assert [v["rule_id"] for v in s.contact(iso("2026-11-03T05:00:00Z"), "call").violations] == ["q"]
    assert s.contact(iso("2026-11-03T04:59:59.999Z"), "call").violations == []


def test_tcpa_customer_quiet_hours_and_policy_quiet_hours_both_apply():
    # customer: 12:00-14:00 (all channels); policy: 21:00-08:00 (call, sms)
    s = Scenario("tcpa")
    s.preference(iso("2026-11-02T00:00:00Z"), quiet_hours={"start": "12:00", "end": "14:00"})

    def quiet(ts, channel):
        return [v["rule_id"] for v in s.contact(iso(ts), channel).violations if v["kind"] == "quiet_hours"]

    assert quiet("2026-11-02T12:00:00Z", "email") == ["customer.quiet_hours"]
    assert quiet("2026-11-02T13:59:59.999Z", "call") == ["customer.quiet_hours"]
    assert quiet("2026-11-02T14:00:00Z", "sms") == []
    assert quiet("2026-11-02T21:00:00Z", "sms") == ["tcpa.quiet_hours"]


def test_customer_quiet_hours_narrower_than_tcpa_do_not_relax_tcpa():
    s = Scenario("tcpa")
    s.preference(iso("2026-11-02T00:00:00Z"), quiet_hours={"start": "23:00", "end": "06:00"})
    assert len(s.contact(iso("2026-11-02T21:30:00Z"), "sms").violations) == 1
    assert len(s.contact(iso("2026-11-03T07:30:00Z"), "sms").violations) == 1


def test_quiet_hours_violation_and_block_violation_both_reported():
    s = Scenario("tcpa")
    s.contact(iso("2026-11-02T10:00:00Z"), "call")  # cap.call.1d
    step = s.contact(iso("2026-11-02T22:00:00Z"), "call", sender="d")
    assert sorted(v["kind"] for v in step.violations) == ["blocked", "quiet_hours"]


def test_timezone_preference_with_channel_still_sets_customer_zone():
    s = Scenario("tcpa")
    s.preference(iso("2026-11-02T00:00:00Z"), channel="sms", timezone="America/New_York")
    # 02:00Z = 21:00 New York, call channel too (the zone is the customer's)
    assert [v["rule_id"] for v in s.contact(iso("2026-11-03T02:00:00Z"), "call").violations] == ["tcpa.quiet_hours"]


def test_reg_f_late_seventh_call_blocks_until_oldest_plus_7d():
    s = Scenario("reg-f")
    for day in (0, 1, 2, 3, 4, 5):
        s.contact(at(day), "call")
    s.contact(at(6), "email")  # watermark day 6
    [d] = s.contact(at(5, hours=12), "call").decisions  # late by 12h: seventh call in (day -1, day 6]
    assert (d["rule_id"], d["until"], d["decided_at"]) == (
        "reg_f.call.7_in_7d",
        format_ms(at(7)),
        format_ms(at(5, hours=12)),
    )


def test_reg_f_late_call_made_before_a_conversation_is_not_a_violation():
    s = Scenario("reg-f")
    s.call_ended(at(0, hours=20), duration_s=120)
    assert s.contact(at(0, hours=19), "call").violations == []  # made before the conversation
    assert [v["reason"] for v in s.contact(at(0, hours=21), "call", sender="x").violations] == ["conversation"]


def test_reg_f_late_call_inside_single_conversation_block_is_a_violation():
    s = Scenario("reg-f")
    s.call_ended(at(0), duration_s=120)
    s.contact(at(0, hours=20), "email")
    assert [v["reason"] for v in s.contact(at(0, hours=10), "call", sender="x").violations] == ["conversation"]
