"""Customer preferences at their edges: own caps vs policy caps, the latest value per field, opt-in, quiet hours."""

from __future__ import annotations

from fatigue.testing import HOUR, Scenario, at
from fatigue.timeutil import format_ms


def test_customer_channel_cap_window_is_half_open_and_until_exact():
    s = Scenario()
    s.preference(at(0), channel="email", max_contacts={"count": 2, "window": "36h"})
    s.contact(at(0, hours=1), "email")
    [d] = s.contact(at(1, hours=12) + 999, "email").decisions
    assert (d["reason"], d["rule_id"], d["until"]) == ("customer_cap", "customer_cap.email", format_ms(at(1, hours=13)))
    assert [v["rule_id"] for v in s.contact(at(1, hours=13) - 1, "email", sender="x").violations] == [
        "customer_cap.email"
    ]
    s2 = Scenario()
    s2.preference(at(0), channel="email", max_contacts={"count": 2, "window": "36h"})
    s2.contact(at(0, hours=1), "email")
    assert s2.contact(at(1, hours=13), "email").decisions == []  # first one just left (t-36h, t]


def test_stricter_customer_cap_wins_over_policy_cap_with_both_in_evidence():
    s = Scenario()
    s.preference(at(0), channel="sms", max_contacts={"count": 2, "window": "14d"})
    s.contact(at(1), "sms")
    [d] = s.contact(at(2), "sms").decisions
    assert (d["reason"], d["until"]) == ("customer_cap", format_ms(at(15)))
    assert {r["rule_id"]: r["until"] for r in d["evidence"]["rules"]} == {
        "customer_cap.sms": format_ms(at(15)),
        "cap.sms.7d": format_ms(at(8)),
    }


def test_customer_cap_count_zero_is_indefinite_and_null_lifts_it():
    s = Scenario()
    [d] = s.preference(at(0), channel="call", max_contacts={"count": 0, "window": "7d"}).decisions
    assert (d["channel"], d["reason"], d["until"]) == ("call", "customer_cap", None)
    [a] = s.preference(at(1), channel="call", max_contacts=None).decisions
    assert (a["action"], a["reason"]) == ("allow", "customer_cap_changed")


def test_all_channel_customer_cap_reason_and_rule_id():
    s = Scenario()
    s.preference(at(0), max_contacts={"count": 1, "window": "2d"})
    step = s.contact(at(1), "sms")
    assert {(d["channel"], d["rule_id"], d["until"]) for d in step.decisions} == {
        (c, "customer_cap.all", format_ms(at(3))) for c in ("email", "sms", "call")
    }


def test_quiet_hours_only_preference_keeps_customer_cap():
    s = Scenario()
    s.preference(at(0), channel="sms", max_contacts={"count": 1, "window": "7d"})
    s.preference(at(0, hours=1), channel="sms", quiet_hours={"start": "22:00", "end": "06:00"})
    s.preference(at(0, hours=2), timezone="Europe/Paris")
    [d] = s.contact(at(1), "sms").decisions
    assert d["reason"] == "customer_cap"


def test_max_contacts_only_preference_keeps_quiet_hours_and_timezone():
    s = Scenario()
    s.preference(at(0), quiet_hours={"start": "22:00", "end": "06:00"}, timezone="Asia/Tokyo")
    s.preference(at(0, hours=1), channel="sms", max_contacts={"count": 5, "window": "7d"})
    # 2026-11-03T14:00Z = 23:00 Tokyo
    [v] = s.contact(at(1, hours=5), "email").violations
    assert v["rule_id"] == "customer.quiet_hours"


def test_older_max_contacts_delivered_late_does_not_override():
    s = Scenario()
    s.preference(at(1), channel="sms", max_contacts={"count": 5, "window": "7d"})
    assert s.preference(at(1) - HOUR, channel="sms", max_contacts={"count": 1, "window": "7d"}).decisions == []
    assert s.contact(at(1, hours=1), "sms").decisions == []


def test_opt_out_false_lifts_unsubscribe_with_allow_opt_in():
    s = Scenario()
    s.unsubscribe(at(0), "email")
    [a] = s.preference(at(1), channel="email", opt_out=False).decisions
    assert (a["channel"], a["action"], a["reason"], a["until"]) == ("email", "allow", "opt_in", None)


def test_opt_out_false_without_channel_lifts_sms_stop_only_on_sms():
    s = Scenario()
    s.sms_stop(at(0))
    step = s.preference(at(1), opt_out=False)
    assert [(d["channel"], d["action"]) for d in step.decisions] == [("sms", "allow")]


def test_preference_with_opt_out_and_cap_then_opt_in_reveals_cap():
    s = Scenario()
    s.preference(at(0), channel="sms", opt_out=True, max_contacts={"count": 1, "window": "7d"})
    v = s.contact(at(1), "sms", sender="x").violations
    assert [x["reason"] for x in v] == ["opt_out"]
    [d] = s.preference(at(2), channel="sms", opt_out=False).decisions
    assert (d["action"], d["reason"], d["until"]) == ("block", "customer_cap", format_ms(at(8)))


def test_channel_quiet_hours_override_all_channel_ones_for_that_channel_only():
    s = Scenario()
    s.preference(at(0), quiet_hours={"start": "20:00", "end": "08:00"})
    s.preference(at(0, hours=1), channel="sms", quiet_hours=None)
    ts = at(0, hours=12)  # 21:00 UTC
    assert s.contact(ts, "sms").violations == []
    assert [v["rule_id"] for v in s.contact(ts + 1, "email").violations] == ["customer.quiet_hours"]


def test_customer_cap_longer_than_policy_retention_keeps_contacts():
    s = Scenario()
    s.preference(at(0), channel="email", max_contacts={"count": 2, "window": "60d"})
    s.contact(at(1), "email")
    for day in range(2, 46, 3):
        s.send({"type": "preference", "ts": at(day), "timezone": "UTC"})  # time passes (trims)
    [d] = s.contact(at(46), "email").decisions
    assert (d["reason"], d["until"]) == ("customer_cap", format_ms(at(61)))


def test_service_not_counted_toward_customer_cap_by_default():
    s = Scenario()
    s.preference(at(0), channel="sms", max_contacts={"count": 1, "window": "7d"})
    assert s.contact(at(1), "sms", category="service").decisions == []
    assert s.contact(at(1, 1), "sms", category="transactional").decisions == []
