"""Exact sliding-window caps of the default policy, at their boundaries.

Windows are half-open, (t - W, t]: a contact exactly W old no longer counts.
"""

from __future__ import annotations

import pytest

from fatigue.testing import DAY, HOUR, Scenario, at
from fatigue.timeutil import format_ms


def test_second_sms_in_7d_blocks_until_first_leaves_the_window():
    #  day 0        day 1                     day 7
    #  sms          sms -> block              block ends (first sms leaves (t-7d, t])
    s = Scenario()
    assert s.contact(at(0), "sms").decisions == []
    step = s.contact(at(1), "sms")
    [decision] = step.decisions
    assert decision["action"] == "block"
    assert decision["channel"] == "sms"
    assert decision["reason"] == "cap"
    assert decision["rule"] == "sms <= 2 per 7d"
    assert decision["rule_id"] == "cap.sms.7d"
    assert decision["until"] == format_ms(at(7))
    assert decision["decided_at"] == format_ms(at(1))
    assert decision["cause_event_id"] == "ev-2"
    assert decision["policy_version"] == "default-2026.11.1"
    [evidence] = decision["evidence"]["rules"]
    assert evidence["count"] == 2
    assert evidence["limit"] == 2
    assert evidence["contacts"] == [format_ms(at(0)), format_ms(at(1))]


def test_contact_one_ms_before_the_end_is_a_violation_and_at_the_end_is_not():
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.contact(at(7) - 1, "sms", sender="crm-nightly")
    [violation] = s.violations
    assert violation["kind"] == "blocked"
    assert violation["sender"] == "crm-nightly"
    assert violation["reason"] == "cap"
    assert violation["until"] == format_ms(at(7))

    s2 = Scenario()
    s2.contact(at(0), "sms")
    s2.contact(at(1), "sms")
    s2.contact(at(7), "sms")
    assert s2.violations == []


def test_a_contact_made_while_blocked_is_a_violation_even_when_it_arrives_after_the_block_ended():
    # sms blocked until day 7; events of day 7 + 2 h move the customer's clock past the end (and the hourly trim
    # runs); then a contact made one ms before the end arrives late, within the 24 h grace: still a violation
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.contact(at(7, hours=2), "email")
    s.contact(at(7, hours=3), "call")
    late = s.contact(at(7) - 1, "sms", sender="crm-nightly")
    assert late.rejection is None
    [violation] = late.violations
    assert (violation["kind"], violation["until"], violation["sender"]) == ("blocked", format_ms(at(7)), "crm-nightly")
    # that late contact is the second sms in (day 0 + 3 h, day 7 + 3 h]: blocked again, until day 8
    assert [(d["channel"], d["until"]) for d in late.decisions] == [("sms", format_ms(at(8)))]
    # an ended block is kept for the grace after its end, then forgotten
    s.contact(at(9) - 1, "email")
    assert s.state is not None and s.state.emitted[1] is not None
    s.contact(at(9, hours=1), "email")
    assert s.state.emitted[1] is None


def test_block_ends_exactly_at_until():
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    assert s.current("sms", at(7) - 1) is not None
    assert s.current("sms", at(7)) is None


def test_contact_exactly_a_window_later_does_not_count_the_first():
    # day 0 sms, day 7 sms: (day0, day7] holds only the second one.
    s = Scenario()
    s.contact(at(0), "sms")
    assert s.contact(at(7), "sms").decisions == []
    # ... but one more ms before day 7 would have reached the limit
    s2 = Scenario()
    s2.contact(at(0), "sms")
    assert s2.contact(at(7) - 1, "sms").decisions[0]["until"] == format_ms(at(7))


def test_contact_over_the_limit_extends_until_count_drops_below_limit():
    # three sms in the window: blocked until the second-oldest leaves, not the oldest
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    step = s.contact(at(2), "sms")
    assert step.decisions[0]["until"] == format_ms(at(8))
    assert len(step.violations) == 1


def test_sms_30d_cap_fires_when_7d_cap_never_does():
    # five sms, each just over 7 days apart: the 7d cap never holds two, the 30d cap reaches five
    s = Scenario()
    times = [at(0) + i * (7 * DAY + 1) for i in range(5)]
    for ts in times[:4]:
        assert s.contact(ts, "sms").decisions == []
    [decision] = s.contact(times[4], "sms").decisions
    assert decision["rule_id"] == "cap.sms.30d"
    assert decision["rule"] == "sms <= 5 per 30d"
    assert decision["until"] == format_ms(times[0] + 30 * DAY)


def test_email_caps():
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(1), "email")
    [decision] = s.contact(at(2), "email").decisions
    assert (decision["rule_id"], decision["until"]) == ("cap.email.7d", format_ms(at(7)))

    # 10 in 30d cannot happen without 3 in some 7d; the 30d cap wins when it ends later
    s2 = Scenario()
    spacing = 3 * DAY + 5 * HOUR - 1  # 3 emails span 6.4d, so the 7d cap fires from the third on
    times = [at(0) + i * spacing for i in range(10)]
    for index, ts in enumerate(times[:9]):
        s2.contact(ts, "email", event_id=f"mail-{index}")
        s2.opened(ts + HOUR, ref=f"mail-{index}")  # read mail: no unread streak
    [tenth] = s2.contact(times[9], "email").decisions
    assert tenth["rule_id"] == "cap.email.30d"
    assert tenth["until"] == format_ms(times[0] + 30 * DAY)
    fired = {rule["rule_id"]: rule["until"] for rule in tenth["evidence"]["rules"]}
    assert fired == {"cap.email.30d": format_ms(times[0] + 30 * DAY), "cap.email.7d": format_ms(times[7] + 7 * DAY)}


def test_one_call_blocks_calls_for_a_day_and_three_in_7d_for_longer():
    s = Scenario()
    [first] = s.contact(at(0), "call").decisions
    assert (first["rule_id"], first["until"]) == ("cap.call.1d", format_ms(at(1)))
    assert s.contact(at(1), "call").decisions[0]["until"] == format_ms(at(2))
    [third] = s.contact(at(2), "call").decisions
    assert third["rule_id"] == "cap.call.7d"
    assert third["until"] == format_ms(at(7))
    assert {rule["rule_id"] for rule in third["evidence"]["rules"]} == {"cap.call.1d", "cap.call.7d"}
    assert s.violations == []


def test_global_cap_blocks_every_channel_with_the_latest_until():
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(0, hours=1), "email")
    s.contact(at(0, hours=2), "sms")
    s.contact(at(1), "email")  # email cap: until day 7
    s.contact(at(2), "sms")  # sms cap: until day 7 + 2h
    step = s.contact(at(3), "call")  # sixth contact in 7 days
    by_channel = {d["channel"]: d for d in step.decisions}
    # email's own cap also ends on day 7: on a tie the global cap is reported; call gets the global cap too
    assert set(by_channel) == {"email", "call"}
    for decision in by_channel.values():
        assert decision["reason"] == "global_cap"
        assert decision["rule"] == "all channels <= 6 per 7d"
        assert decision["until"] == format_ms(at(7))
    # sms: its own cap ends later (day 7 + 2h), so the latest until still wins and nothing changes for sms
    sms = s.current("sms")
    assert sms is not None
    assert sms["reason"] == "cap"
    assert sms["until"] == format_ms(at(7, hours=2))


def test_global_cap_latest_until_wins_and_every_fired_rule_is_evidence():
    s = Scenario()
    for hour in range(5):
        s.contact(at(0, hours=hour), "email" if hour % 2 else "sms")
    step = s.contact(at(0, hours=5), "call")
    call = next(d for d in step.decisions if d["channel"] == "call")
    assert call["reason"] == "global_cap"
    assert call["until"] == format_ms(at(7))
    fired = {rule["rule_id"]: rule["until"] for rule in call["evidence"]["rules"]}
    assert fired == {"global_cap.7d": format_ms(at(7)), "cap.call.1d": format_ms(at(1, hours=5))}


@pytest.mark.parametrize("category", ["service", "transactional"])
def test_service_and_transactional_never_count_nor_violate(category):
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")  # blocked
    for hour in range(10):
        step = s.contact(at(2, hours=hour), "sms", category=category)
        assert step.decisions == [] and step.violations == []
    assert s.state is not None
    assert len(s.state.logs[1]) == 2


def test_policy_may_count_service(tmp_path):
    text = (s := (tmp_path / "p.toml"))
    text.write_text(
        'version = "svc"\n[counting]\ncategories = ["marketing", "service"]\n'
        '[[caps]]\nid = "cap.sms.7d"\nchannel = "sms"\nlimit = 2\nwindow = "7d"\n'
    )
    from fatigue.policy import load_policy

    scenario = Scenario(load_policy(s))
    scenario.contact(at(0), "sms", category="service")
    [decision] = scenario.contact(at(1), "sms", category="marketing").decisions
    assert decision["until"] == format_ms(at(7))
    assert scenario.contact(at(2), "sms", category="transactional").violations == []


def test_out_of_order_contact_within_grace_counts_at_its_own_time():
    # arrival: day1 12:00, then day1 00:00 (12h late): both in the window -> block until day 8
    s = Scenario()
    s.contact(at(1, hours=12), "sms")
    [decision] = s.contact(at(1), "sms").decisions
    assert decision["until"] == format_ms(at(8))
    assert decision["decided_at"] == format_ms(at(1))


def test_out_of_order_contact_is_counted_in_the_window_at_the_watermark():
    # day 0 11:00 sms, day 7 12:00 sms (the first has left the window), then day 7 10:00 arrives 2h late:
    # the window at the watermark, (day 0 12:00, day 7 12:00], holds the two day-7 contacts.
    s = Scenario()
    s.contact(at(0, hours=2), "sms")
    assert s.contact(at(7, hours=3), "sms").decisions == []
    [decision] = s.contact(at(7, hours=1), "sms").decisions
    assert decision["until"] == format_ms(at(14, hours=1))
    assert [c for c in decision["evidence"]["rules"][0]["contacts"]] == [
        format_ms(at(7, hours=1)),
        format_ms(at(7, hours=3)),
    ]


def test_decisions_are_emitted_only_when_they_change():
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(0, hours=1), "email")
    s.contact(at(0, hours=2), "email")  # block until day 7
    assert len(s.decisions) == 1
    s.contact(at(0, hours=3), "sms")  # other channel, no change
    s.opened(at(0, hours=4), ref="ev-1")
    assert len(s.decisions) == 1
