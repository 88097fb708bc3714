"""Boundary behaviour of the engine not pinned elsewhere (exact window edges, exact ``until``
instants, violations at ``until`` / ``until - 1 ms``, hang-up and unread edges, quiet hours across DST, late and
duplicate events). Each test names the spec sentence it pins.
"""

from __future__ import annotations

import pytest

from fatigue.policy import policy_from_mapping
from fatigue.testing import DAY, HOUR, MINUTE, Scenario, at
from fatigue.timeutil import format_ms, parse_iso_ms


def _iso(text: str) -> int:
    value = parse_iso_ms(text)
    assert value is not None
    return value


# ------------------------------------------------------------------ caps: window edges and until


def test_email_cap_contact_exactly_7d_old_is_outside_the_window():
    """Caps are exact sliding windows, half-open (t-W, t]: email 3 per 7d."""
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(1), "email")
    assert s.contact(at(7), "email").decisions == []  # (day 0, day 7] holds two
    s2 = Scenario()
    s2.contact(at(0), "email")
    s2.contact(at(1), "email")
    [decision] = s2.contact(at(7) - 1, "email").decisions
    assert (decision["rule_id"], decision["until"]) == ("cap.email.7d", format_ms(at(7)))


def test_call_cap_1d_edges_and_violation_at_until_minus_1ms():
    """call 1 per 1d: the block ends when the call leaves (t-1d, t]; a contact at until is not a violation."""
    s = Scenario()
    [decision] = s.contact(at(0, hours=3), "call").decisions
    assert (decision["reason"], decision["rule"], decision["until"]) == (
        "cap",
        "call <= 1 per 1d",
        format_ms(at(1, hours=3)),
    )
    step = s.contact(at(1, hours=3) - 1, "call", sender="dialer")
    assert [(v["kind"], v["rule_id"], v["sender"]) for v in step.violations] == [("blocked", "cap.call.1d", "dialer")]
    s2 = Scenario()
    s2.contact(at(0, hours=3), "call")
    assert s2.contact(at(1, hours=3), "call").violations == []


def test_call_7d_cap_third_call_exactly_7d_after_first_does_not_fire_it():
    """call 3 per 7d, half-open window: the first call exactly 7 d earlier is outside."""
    s = Scenario()
    s.contact(at(0), "call")
    s.contact(at(3), "call")
    [decision] = s.contact(at(7), "call").decisions
    assert decision["rule_id"] == "cap.call.1d"
    assert {r["rule_id"] for r in decision["evidence"]["rules"]} == {"cap.call.1d"}
    s2 = Scenario()
    s2.contact(at(0), "call")
    s2.contact(at(3), "call")
    [decision2] = s2.contact(at(7) - 1, "call").decisions
    # both fire; the 1d cap ends later (day 8 - 1 ms) and wins, the 7d cap (until day 7) is evidence
    assert (decision2["rule_id"], decision2["until"]) == ("cap.call.1d", format_ms(at(8) - 1))
    fired = {r["rule_id"]: r["until"] for r in decision2["evidence"]["rules"]}
    assert fired == {"cap.call.1d": format_ms(at(8) - 1), "cap.call.7d": format_ms(at(7))}


def _five_without_channel_caps(s: Scenario) -> None:
    # email day 0 and day 1, sms day 2, call day 3, sms day 4 (sms cap until day 9): five contacts in 7 days
    s.contact(at(0), "email")
    s.contact(at(1), "email")
    s.contact(at(2), "sms")
    s.contact(at(3), "call")
    s.contact(at(4), "sms")


def test_global_cap_contact_exactly_7d_old_is_outside_the_window():
    """all channels together 6 per 7d, half-open: the sixth contact exactly 7 d after the first does not fire."""
    s = Scenario()
    _five_without_channel_caps(s)
    step = s.contact(at(7), "call")
    assert all(d["reason"] != "global_cap" for d in step.decisions)
    assert s.current("email") is None

    s2 = Scenario()
    _five_without_channel_caps(s2)
    step2 = s2.contact(at(7) - 1, "call")
    by_channel = {d["channel"]: d for d in step2.decisions}
    # email: only the global cap blocks it, for the last ms of the window
    assert by_channel["email"]["reason"] == "global_cap"
    assert by_channel["email"]["rule_id"] == "global_cap.7d"
    assert by_channel["email"]["until"] == format_ms(at(7))
    # call: its own 1d cap ends later and wins; the global cap is listed as evidence
    assert by_channel["call"]["rule_id"] == "cap.call.1d"
    assert {r["rule_id"] for r in by_channel["call"]["evidence"]["rules"]} == {"cap.call.1d", "global_cap.7d"}
    # sms: its own cap (until day 9) already wins: nothing emitted for it
    assert "sms" not in by_channel


def _six_in_a_day(s: Scenario) -> None:
    for hour, channel in enumerate(("email", "sms", "email", "sms", "call", "email")):
        s.contact(at(0, hours=hour), channel)


def test_global_cap_violation_at_until_minus_1ms_not_at_until():
    """A contact on a channel blocked at that moment is a violation; the global block ends exactly at until."""
    s = Scenario()
    _six_in_a_day(s)
    call = s.current("call")
    assert call is not None and (call["reason"], call["until"]) == ("global_cap", format_ms(at(7)))
    step = s.contact(at(7) - 1, "call", sender="dialer")
    assert [(v["reason"], v["rule_id"], v["until"], v["sender"]) for v in step.violations] == [
        ("global_cap", "global_cap.7d", format_ms(at(7)), "dialer")
    ]
    s2 = Scenario()
    _six_in_a_day(s2)
    assert s2.contact(at(7), "call").violations == []


def test_latest_until_wins_across_channel_customer_and_global_caps():
    """Several rules: the latest until wins, every fired rule is in the evidence (cap, customer_cap, global_cap)."""
    s = Scenario()
    s.preference(at(0) - HOUR, channel="sms", max_contacts={"count": 2, "window": "10d"})
    s.contact(at(0), "email")
    s.contact(at(0, hours=1), "sms")
    s.contact(at(0, hours=2), "email")
    s.contact(at(0, hours=3), "call")
    s.contact(at(0, hours=4), "email")  # email cap until day 7
    step = s.contact(at(0, hours=5), "sms")  # sms cap 7d, customer cap 10d, global cap 7d all fire
    sms = next(d for d in step.decisions if d["channel"] == "sms")
    assert sms["reason"] == "customer_cap"
    assert sms["rule_id"] == "customer_cap.sms"
    assert sms["rule"] == "customer: sms <= 2 per 10d"
    assert sms["until"] == format_ms(at(10, hours=1))
    fired = {r["rule_id"]: r["until"] for r in sms["evidence"]["rules"]}
    assert fired == {
        "customer_cap.sms": format_ms(at(10, hours=1)),
        "cap.sms.7d": format_ms(at(7, hours=1)),
        "global_cap.7d": format_ms(at(7)),
    }


def test_customer_cap_window_is_half_open_too():
    """max_contacts adds the customer's own cap (reason customer_cap), an exact window like the policy's."""
    s = Scenario()
    s.preference(at(0) - HOUR, channel="email", max_contacts={"count": 2, "window": "3d"})
    s.contact(at(0), "email")
    assert s.contact(at(3), "email").decisions == []
    s2 = Scenario()
    s2.preference(at(0) - HOUR, channel="email", max_contacts={"count": 2, "window": "3d"})
    s2.contact(at(0), "email")
    [decision] = s2.contact(at(3) - 1, "email").decisions
    assert (decision["reason"], decision["until"]) == ("customer_cap", format_ms(at(3)))
    assert s2.contact(at(3), "email").violations == []  # at until: not a violation


def test_customer_cap_longer_than_the_policy_windows_keeps_its_contacts():
    """The customer's own cap is exact even when its window is longer than every policy window (60d > 30d)."""
    s = Scenario()
    s.preference(at(0) - HOUR, channel="sms", max_contacts={"count": 3, "window": "60d"})
    s.contact(at(0), "sms")
    for day in range(1, 20):  # plenty of events (and hourly trims) in between
        s.contact(at(day), "email", category="transactional")
    s.contact(at(20), "sms")
    for day in range(21, 40):
        s.contact(at(day), "email", category="transactional")
    [decision] = s.contact(at(40), "sms").decisions
    assert (decision["reason"], decision["until"]) == ("customer_cap", format_ms(at(60)))


def test_stricter_customer_cap_wins_over_a_laxer_policy_cap_on_the_same_channel():
    """The stricter of policy and customer wins: customer 1 per 30d beats sms 2 per 7d."""
    s = Scenario()
    s.preference(at(0) - HOUR, channel="sms", max_contacts={"count": 1, "window": "30d"})
    [first] = s.contact(at(0), "sms").decisions
    assert (first["reason"], first["until"]) == ("customer_cap", format_ms(at(30)))
    step = s.contact(at(1), "sms")
    # a violation of the customer's cap; the policy's cap now fires too (until day 7) but the customer's own
    # (now from the newer sms: day 31) ends later and wins
    assert [v["rule_id"] for v in step.violations] == ["customer_cap.sms"]
    [second] = step.decisions
    assert (second["rule_id"], second["until"]) == ("customer_cap.sms", format_ms(at(31)))
    assert {r["rule_id"] for r in second["evidence"]["rules"]} == {"customer_cap.sms", "cap.sms.7d"}


def test_late_contact_extends_the_global_cap_until_on_every_channel():
    """Out-of-order contacts inside the 24h grace change until (global cap: the limit-th newest leaves)."""
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(0, hours=1), "sms")
    s.contact(at(0, hours=2), "email")
    s.contact(at(0, hours=3), "call")
    s.contact(at(0, hours=10), "email")  # email cap until day 7
    step = s.contact(at(0, hours=20), "sms")  # sixth: global until day 7 (the first contact + 7d)
    assert {d["channel"]: d["until"] for d in step.decisions if d["reason"] == "global_cap"}["call"] == format_ms(at(7))
    late = s.contact(at(0, hours=5), "email")  # arrives 15 h late; made before the cap was reached: no violation
    assert late.violations == []
    # now seven in the window: blocked until the second-oldest (hour 1) leaves
    assert {d["channel"]: (d["reason"], d["until"]) for d in late.decisions}["call"] == (
        "global_cap",
        format_ms(at(7, hours=1)),
    )


# ------------------------------------------------------------------ short hang-ups and conversations


def test_short_hangup_29_999s_is_short_and_its_block_ends_exactly_3d_later():
    """Short hang-up = answered call_ended with duration_s < 30; one blocks calls for 3d from the hang-up."""
    s = Scenario()
    [decision] = s.call_ended(at(0), duration_s=29.999).decisions
    assert (decision["reason"], decision["until"]) == ("short_hangups", format_ms(at(3)))
    assert [v["rule_id"] for v in s.contact(at(3) - 1, "call").violations] == ["short_hangups.1_in_7d"]
    s2 = Scenario()
    s2.call_ended(at(0), duration_s=29.999)
    assert s2.contact(at(3), "call").violations == []


def test_second_short_hangup_one_ms_inside_30d_blocks_30d():
    """A second short hang-up within 30d blocks calls for 30d from it."""
    s = Scenario()
    s.call_ended(at(0), duration_s=1)
    [decision] = s.call_ended(at(30) - 1, duration_s=1).decisions
    assert decision["rule_id"] == "short_hangups.2_in_30d"
    assert decision["until"] == format_ms(at(60) - 1)
    assert decision["suggest"] == "email"


def test_unanswered_call_ended_neither_hangup_nor_counts_toward_the_second():
    """Unanswered calls are not hang-ups: they cannot be the 'second' hang-up either."""
    s = Scenario()
    s.call_ended(at(0), duration_s=5)
    assert s.call_ended(at(5), duration_s=5, answered=False).decisions == []
    [decision] = s.call_ended(at(10), duration_s=5).decisions
    assert decision["rule_id"] == "short_hangups.2_in_30d"
    assert [r["hangups"] for r in decision["evidence"]["rules"] if r["rule_id"] == "short_hangups.2_in_30d"] == [
        [format_ms(at(0)), format_ms(at(10))]
    ]


def test_duplicate_call_ended_is_not_a_second_hangup():
    """The same event_id twice counts once (a redelivered hang-up must not trigger the 2-in-30d rule)."""
    s = Scenario()
    s.call_ended(at(0), duration_s=5, event_id="hang-1")
    step = s.call_ended(at(0), duration_s=5, event_id="hang-1")
    assert step.rejection is not None and step.rejection.reason == "duplicate"
    assert step.decisions == []
    assert s.current("call")["rule_id"] == "short_hangups.1_in_7d"


def test_late_hangup_exactly_24h_old_is_accepted_and_blocks_from_its_own_time():
    """An event more than 24h older than the newest is late; exactly 24h older is accepted."""
    s = Scenario()
    s.contact(at(1), "email")
    [decision] = s.call_ended(at(0), duration_s=3).decisions
    assert (decision["until"], decision["decided_at"]) == (format_ms(at(3)), format_ms(at(0)))
    step = s.call_ended(at(0) - 1, duration_s=3)
    assert step.rejection is not None and step.rejection.reason == "late"


def test_reg_f_unanswered_long_call_is_no_conversation_and_7_calls_window_is_half_open():
    """reg-f: none in the 7 days after a call long enough to be a conversation; at most 7 calls in 7 days."""
    s = Scenario("reg-f")
    assert s.call_ended(at(0), duration_s=600, answered=False).decisions == []
    s2 = Scenario("reg-f")
    for day in range(7):
        s2.contact(at(day), "call")
    assert s2.current("call")["until"] == format_ms(at(7))
    # day 7 exactly: the day-0 call has left (day 0, day 7]; not a violation, and days 1..7 are seven again
    step = s2.contact(at(7), "call")
    assert step.violations == []
    assert [(d["rule_id"], d["until"]) for d in step.decisions] == [("reg_f.call.7_in_7d", format_ms(at(8)))]


def test_reg_f_conversation_threshold_is_configurable():
    """reg-f: threshold configurable (a conversation of >= min_duration)."""
    policy = policy_from_mapping(
        {
            "version": "rf",
            "conversation": {"id": "reg_f.conversation", "min_duration": "2m", "block": "7d"},
        }
    )
    s = Scenario(policy)
    assert s.call_ended(at(0), duration_s=119.9).decisions == []
    [decision] = s.call_ended(at(1), duration_s=120).decisions
    assert (decision["reason"], decision["until"]) == ("conversation", format_ms(at(8)))


# ------------------------------------------------------------------ unread


def _emails(s: Scenario, count: int, spacing_days: float = 4, prefix: str = "mail") -> list[int]:
    deadlines = []
    for index in range(count):
        ts = at(index * spacing_days)
        s.contact(ts, "email", event_id=f"{prefix}-{index}")
        deadlines.append(ts + 72 * HOUR)
    return deadlines


def test_event_exactly_at_the_fifth_deadline_does_not_settle_it():
    """Unread = no human open within 72h: an event at the deadline itself leaves the mail open to be read."""
    s = Scenario()
    deadlines = _emails(s, 5)
    assert s.contact(deadlines[4], "sms", category="transactional").decisions == []
    [decision] = s.contact(deadlines[4] + 1, "sms", category="transactional").decisions
    assert (decision["reason"], decision["decided_at"], decision["until"]) == (
        "unread",
        format_ms(deadlines[4]),
        format_ms(deadlines[4] + 30 * DAY),
    )


def test_open_exactly_at_the_deadline_delivered_after_it_settled_still_counts():
    """An open at the deadline exactly is within 72h, even when it arrives after a later event settled the mail."""
    s = Scenario()
    deadlines = _emails(s, 5)
    s.contact(deadlines[4] + HOUR, "sms")
    assert s.current("email") is not None
    [allow] = s.opened(deadlines[4], ref="mail-4").decisions
    assert allow["action"] == "allow"
    # one ms later is not in time
    s2 = Scenario()
    _emails(s2, 5)
    s2.contact(deadlines[4] + HOUR, "sms")
    assert s2.opened(deadlines[4] + 1, ref="mail-4").decisions == []
    assert s2.current("email") is not None


def test_machine_open_then_human_open_resets_the_streak():
    """machine opens don't count; an open (human) resets the streak."""
    s = Scenario()
    _emails(s, 3)
    s.opened(at(8, hours=1), ref="mail-2", machine=True)
    s2 = Scenario()
    _emails(s2, 3)
    s2.opened(at(8, hours=1), ref="mail-2", machine=True)
    s2.opened(at(8, hours=2), ref="mail-2")
    for scenario in (s, s2):
        scenario.contact(at(12), "email", event_id="mail-3")
        scenario.contact(at(16), "email", event_id="mail-4")
    fifth_deadline = at(16) + 72 * HOUR
    s.advance(fifth_deadline + 1)
    s2.advance(fifth_deadline + 1)
    assert [d["reason"] for d in s.decisions] == ["unread"]
    assert s2.decisions == []


def test_unread_block_violation_edges_and_service_email_not_tracked():
    """Unread blocks email for 30d from the fifth deadline; a contact at until is no violation, until-1ms is."""
    s = Scenario()
    deadlines = _emails(s, 5)
    s.advance(deadlines[4] + 1)
    until = deadlines[4] + 30 * DAY
    # service mail inside the block: neither a violation nor tracked for unread
    assert s.contact(until - DAY, "email", category="service").violations == []
    assert [v["reason"] for v in s.contact(until - 1, "email").violations] == ["unread"]
    s2 = Scenario()
    _emails(s2, 5)
    s2.advance(deadlines[4] + 1)
    s2.contact(until - DAY, "sms")
    assert s2.contact(until, "email").violations == []


def test_streak_reset_by_open_then_five_more_unread_block_from_the_tenth_deadline():
    """Five unread in a row (an open resets the streak): 4 unread, 1 read, 5 unread -> block from the last."""
    s = Scenario()
    deadlines = [at(4 * index) + 72 * HOUR for index in range(10)]
    for index in range(10):
        s.contact(at(4 * index), "email", event_id=f"mail-{index}")
        if index == 4:
            s.opened(at(16, hours=1), ref="mail-4")
    s.advance(deadlines[8] + 1)
    assert s.decisions == []
    s.advance(deadlines[9] + 1)
    [decision] = s.decisions
    assert (decision["until"], decision["cause_event_id"]) == (format_ms(deadlines[9] + 30 * DAY), "mail-9")


# ------------------------------------------------------------------ opt-outs, complaints


def test_sms_stop_lifted_by_channel_less_opt_in_emits_one_allow_for_sms():
    """sms_stop blocks with no expiry until a preference opt_out: false, which emits allow."""
    s = Scenario()
    [block] = s.sms_stop(at(0)).decisions
    assert (block["reason"], block["rule_id"], block["until"]) == ("sms_stop", "opt_out.sms_stop", None)
    assert [v["reason"] for v in s.contact(at(100), "sms").violations] == ["sms_stop"]
    step = s.preference(at(101), opt_out=False)
    assert [(d["channel"], d["action"], d["reason"]) for d in step.decisions] == [("sms", "allow", "opt_in")]
    assert s.contact(at(101), "sms").violations == []


def test_preference_opt_out_true_blocks_until_opt_in_and_the_opt_in_instant_is_open():
    """A preference opt_out: true blocks indefinitely (reason opt_out); opt_out: false emits allow."""
    s = Scenario()
    [block] = s.preference(at(0), channel="email", opt_out=True).decisions
    assert (block["reason"], block["rule_id"], block["until"]) == ("opt_out", "opt_out.opt_out", None)
    assert [v["reason"] for v in s.contact(at(5) - 1, "email").violations] == ["opt_out"]
    [allow] = s.preference(at(5), channel="email", opt_out=False).decisions
    assert (allow["action"], allow["decided_at"]) == ("allow", format_ms(at(5)))
    assert s.contact(at(5), "email").violations == []


def test_complaint_untils_and_violation_edges():
    """complaint blocks that channel 180d and every other channel 7d (exact, from the complaint)."""
    s = Scenario()
    s.complaint(at(0, hours=5), "email")
    assert s.current("email")["until"] == format_ms(at(180, hours=5))
    assert s.current("sms")["until"] == format_ms(at(7, hours=5))
    assert [v["reason"] for v in s.contact(at(7, hours=5) - 1, "sms").violations] == ["complaint"]
    assert s.contact(at(7, hours=5) + 10, "call").violations == []
    s2 = Scenario()
    s2.complaint(at(0, hours=5), "email")
    assert s2.contact(at(7, hours=5), "sms").violations == []
    s2.contact(at(179, hours=5), "sms")
    assert [v["until"] for v in s2.contact(at(180, hours=5) - 1, "email").violations] == [format_ms(at(180, hours=5))]
    assert s2.contact(at(180, hours=5), "email").violations == []


def test_transactional_contact_on_every_kind_of_block_is_never_a_violation():
    """service and transactional pass: never blocked, never violations (complaint, opt-out, global cap)."""
    s = Scenario("tcpa")
    s.complaint(at(0), "sms")
    s.unsubscribe(at(0, hours=1), "email")
    for category in ("service", "transactional"):
        for channel in ("email", "sms", "call"):
            step = s.contact(at(1, hours=14), channel, category=category)  # 23:00 UTC: tcpa quiet hours too
            assert step.violations == [] and step.decisions == []


# ------------------------------------------------------------------ quiet hours, DST


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        # 2026-03-08 is the US spring-forward day: New York is UTC-4 from 02:00 local
        ("2026-03-08T00:59:59.999Z", []),  # Mar 7 19:59:59.999 EST
        ("2026-03-09T00:59:59.999Z", []),  # 20:59:59.999 EDT
        ("2026-03-09T01:00:00Z", ["tcpa.quiet_hours"]),  # 21:00 EDT
        ("2026-03-08T11:59:59.999Z", ["tcpa.quiet_hours"]),  # 07:59:59.999 EDT (after the jump)
        ("2026-03-08T12:00:00Z", []),  # 08:00 EDT
        ("2026-03-08T01:59:59.999Z", []),  # Mar 7 20:59:59.999 EST
        ("2026-03-08T02:00:00Z", ["tcpa.quiet_hours"]),  # Mar 7 21:00 EST
        # 2026-11-01 is the fall-back day: UTC-5 from 02:00 local
        ("2026-11-01T12:59:59.999Z", ["tcpa.quiet_hours"]),  # 07:59:59.999 EST
        ("2026-11-01T13:00:00Z", []),  # 08:00 EST
        ("2026-11-01T00:59:59.999Z", []),  # Oct 31 20:59:59.999 EDT
        ("2026-11-01T01:00:00Z", ["tcpa.quiet_hours"]),  # Oct 31 21:00 EDT
    ],
)
def test_tcpa_quiet_hours_edges_across_dst_in_new_york(utc, expected):
    """tcpa: quiet hours 21:00-08:00 in the customer's time zone (start inclusive, end exclusive), DST-aware."""
    ts = _iso(utc)
    s = Scenario("tcpa")
    s.preference(ts - 12 * HOUR, timezone="America/New_York")
    assert [v["rule_id"] for v in s.contact(ts, "sms").violations] == expected


@pytest.mark.parametrize(
    ("utc", "expected"),
    [
        ("2026-03-29T04:59:59.999Z", ["customer.quiet_hours"]),  # 06:59:59.999 CEST (clocks jumped at 02:00)
        ("2026-03-29T05:00:00Z", []),  # 07:00 CEST
        ("2026-03-28T20:59:59.999Z", []),  # 21:59:59.999 CET
        ("2026-03-28T21:00:00Z", ["customer.quiet_hours"]),  # 22:00 CET
        ("2026-10-25T05:59:59.999Z", ["customer.quiet_hours"]),  # 06:59:59.999 CET (after fall-back)
        ("2026-10-25T06:00:00Z", []),  # 07:00 CET
    ],
)
def test_customer_quiet_hours_edges_across_dst_in_berlin(utc, expected):
    """quiet_hours and timezone of a preference: a marketing contact inside them is a sender violation."""
    ts = _iso(utc)
    s = Scenario()
    s.preference(ts - 20 * HOUR, quiet_hours={"start": "22:00", "end": "07:00"}, timezone="Europe/Berlin")
    step = s.contact(ts, "email", sender="nl")
    assert [v["rule_id"] for v in step.violations] == expected
    assert step.decisions == []  # quiet hours are not blocks
    if expected:
        assert step.violations[0]["sender"] == "nl"


def test_quiet_hours_half_hour_zone():
    """Quiet hours in the customer's time zone: Asia/Kolkata (UTC+5:30), 21:00 local = 15:30 UTC."""
    s = Scenario("tcpa")
    s.preference(at(0) - DAY, timezone="Asia/Kolkata")
    assert s.contact(_iso("2026-11-03T15:29:59.999Z"), "call").violations == []
    assert [v["rule_id"] for v in s.contact(_iso("2026-11-03T15:30:00Z"), "sms").violations] == ["tcpa.quiet_hours"]


def test_latest_timezone_preference_wins():
    """The latest preference per field wins: a later timezone replaces the earlier one for quiet hours."""
    s = Scenario("tcpa")
    s.preference(at(0) - DAY, timezone="Asia/Tokyo")
    s.preference(at(0) - HOUR, timezone="America/New_York")
    # 2026-11-03 02:00 UTC: 21:00 in New York (quiet), 11:00 in Tokyo (not)
    assert [v["rule_id"] for v in s.contact(_iso("2026-11-03T02:00:00Z"), "call").violations] == ["tcpa.quiet_hours"]
    # an older timezone delivered late does not override
    s.preference(at(0) - 2 * HOUR, timezone="Asia/Tokyo")
    assert [v["rule_id"] for v in s.contact(_iso("2026-11-03T02:30:00Z"), "sms").violations] == ["tcpa.quiet_hours"]


# ------------------------------------------------------------------ duplicates, late, emitted only on change


def test_redelivery_exactly_24h_later_is_still_a_duplicate():
    """The same event_id twice counts once, across the hourly id trim, up to the late boundary."""
    s = Scenario()
    s.contact(at(0), "sms", event_id="dup")
    s.contact(at(0, hours=12), "email")
    s.contact(at(1), "email")  # newest is exactly 24 h after the duplicate's time
    step = s.contact(at(0), "sms", event_id="dup")
    assert step.rejection is not None and step.rejection.reason == "duplicate"
    assert s.state is not None and s.state.logs[1] == [at(0)]


def test_nothing_is_emitted_for_redundant_signals():
    """Decisions are emitted only when they change: repeated STOP, repeated opt-out, a later shorter block."""
    s = Scenario()
    s.sms_stop(at(0))
    assert s.sms_stop(at(1)).decisions == []
    s.preference(at(2), channel="email", opt_out=True)
    assert s.preference(at(3), channel="email", opt_out=True).decisions == []
    s.contact(at(4), "call")  # call cap until day 5
    s.complaint(at(4, hours=1), "call")  # call until day 184
    assert s.call_ended(at(4, hours=2), duration_s=3).decisions == []  # hang-up block ends day 7: shorter
    assert s.contact(at(4, hours=3), "call").decisions == []
    assert len([d for d in s.decisions if d["channel"] == "call"]) == 2


# ------------------------------------------------------------------ late contacts: blocked at their own instant


def test_late_cause_does_not_make_earlier_contacts_violations():
    """Spec: 'A marketing contact on a channel that is blocked at that moment ... is a sender violation.'

    sms at day1 12:00, then (late) sms at day1 00:00: the window reaches 2 at day1 12:00, so sms was blocked only
    from day1 12:00. A further late sms made at day1 06:00 is just the second sms in time: not a violation.
    (The block must not be taken to start at its late cause's own time.)
    """
    s = Scenario()
    s.contact(at(1, hours=12), "sms")
    s.contact(at(1), "sms")  # late: block decided_at = day1 00:00, until day 8
    step = s.contact(at(1, hours=6), "sms")
    assert step.violations == []


def test_late_contact_completing_a_window_that_ends_before_the_watermark_makes_the_next_one_a_violation():
    """Spec: caps are exact sliding windows; a contact on a channel blocked at that moment is a violation.

    sms A at day 0; the customer's clock moves to day 7 + 2h (an email); late sms B at day 7 - 1h: at that moment
    A and B are in (t-7d, t], so sms is blocked until A + 7d = day 7. A late sms C at day 7 - 30 min was made
    while blocked, though no decision was ever emitted for that block (it had ended by the time B arrived).
    """
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(7, hours=2), "email")
    s.contact(at(7) - HOUR, "sms")
    step = s.contact(at(7) - 30 * MINUTE, "sms", sender="crm")
    assert [(v["kind"], v["reason"]) for v in step.violations] == [("blocked", "cap")]


def test_contact_during_an_ended_block_replaced_by_a_newer_block_is_a_violation():
    """Spec: a contact at until-1ms is a violation (here: the previous block was superseded by a new one).

    sms cap blocks sms until day 7; at day 7 + 1h an email complaint blocks sms again (until day 14 + 1h). A
    marketing sms made at day 7 - 1 ms arrives late: the cap's block was in force then, not the complaint's.
    """
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.complaint(at(7, hours=1), "email")
    step = s.contact(at(7) - 1, "sms", sender="crm")
    assert [(v["reason"], v["until"]) for v in step.violations] == [("cap", format_ms(at(7)))]


def test_contact_inside_a_late_complaints_block_before_the_previous_block_start_is_a_violation():
    """Spec: complaint blocks every other channel 7d (from the complaint); a contact then is a violation.

    sms cap block from day 1; a complaint about email made at day 1 - 2h arrives late and extends the sms block
    (other channels 7d). A marketing sms made at day 1 - 1h then arrives (late): sms was blocked by the
    complaint at that moment, before the cap's block began.
    """
    s = Scenario()
    s.contact(at(0), "sms")
    s.contact(at(1), "sms")
    s.complaint(at(1) - 2 * HOUR, "email")
    step = s.contact(at(1) - HOUR, "sms", sender="crm")
    assert [v["reason"] for v in step.violations] == ["complaint"]


def test_contact_during_an_opt_out_that_was_lifted_later_is_a_violation():
    """Spec: unsubscribe blocks with no expiry until a preference opt_out: false; contacts while blocked violate.

    unsubscribe email at day 0, opt-in at day 5 (allow); a marketing email made at day 5 - 1h arrives late
    (inside the grace): the channel was blocked at that moment. The lifted opt-out is kept for the late grace.
    """
    s = Scenario()
    s.unsubscribe(at(0), "email")
    s.preference(at(5), channel="email", opt_out=False)
    step = s.contact(at(5) - HOUR, "email", sender="crm")
    assert [(v["kind"], v["reason"], v["rule_id"], v["until"]) for v in step.violations] == [
        ("blocked", "unsubscribe", "opt_out.unsubscribe", None)
    ]
    assert s.contact(at(5), "email").violations == [], "from the opt-in on, the channel is open"
    assert s.state is not None and s.state.lifted_opt_outs == [[0, at(0), at(5), "unsubscribe"]]
    s.contact(at(6), "sms")  # the newest event a day after the opt-in: a contact before it would be late
    assert s.state.lifted_opt_outs == []


def test_late_call_inside_an_earlier_conversation_block_after_a_second_conversation_is_a_violation():
    """reg-f: no call within 7 days after a conversation. Conversations at hour 0 and hour 20; a call made at hour
    10 (inside the first one's block, before the second) arrives late: a violation of the first block."""
    s = Scenario("reg-f")
    s.call_ended(at(0), duration_s=120)
    s.call_ended(at(0, hours=20), duration_s=120)
    step = s.contact(at(0, hours=10), "call", sender="dialer")
    assert [(v["kind"], v["reason"], v["until"], v["sender"]) for v in step.violations] == [
        ("blocked", "conversation", format_ms(at(7)), "dialer")
    ]
    assert s.contact(at(0) - 1, "call").violations == [], "made before any conversation"


def test_an_earlier_conversation_delivered_late_judges_late_calls_made_in_its_block():
    s = Scenario("reg-f")
    s.call_ended(at(0, hours=20), duration_s=120)
    assert s.call_ended(at(0), duration_s=120).decisions == [], "the later conversation's block already decides"
    step = s.contact(at(0, hours=10), "call", sender="dialer")
    assert [(v["reason"], v["until"]) for v in step.violations] == [("conversation", format_ms(at(7)))]


def test_late_contact_between_two_complaints_violates_the_earlier_complaints_block():
    s = Scenario()
    s.complaint(at(0), "sms")
    s.complaint(at(0, hours=20), "sms")
    sms = s.contact(at(0, hours=10), "sms", sender="crm")
    assert [(v["reason"], v["rule_id"], v["until"]) for v in sms.violations] == [
        ("complaint", "complaint.channel", format_ms(at(180)))
    ]
    email = s.contact(at(0, hours=10), "email", sender="crm")  # the other channels: 7 days from the first
    assert [(v["reason"], v["rule_id"], v["until"]) for v in email.violations] == [
        ("complaint", "complaint.other_channels", format_ms(at(7)))
    ]
    assert s.state is not None and s.state.superseded_signals == [[1, at(0), at(0, hours=20)]]
    s.contact(at(1, hours=21), "call")  # a day after the second complaint: a contact before it would be late
    assert s.state.superseded_signals == []


def test_late_contact_made_before_a_timezone_change_is_judged_in_the_zone_of_its_instant():
    """tcpa: quiet hours 21:00-08:00 in the customer's zone. New York until 04:00Z, Tokyo from then on; an sms made
    at 03:00Z (22:00 in New York, noon in Tokyo) arrives after the change: made inside quiet hours."""
    s = Scenario("tcpa")
    s.preference(parse_iso_ms("2026-11-02T00:00:00Z"), timezone="America/New_York")
    s.preference(parse_iso_ms("2026-11-03T04:00:00Z"), timezone="Asia/Tokyo")
    step = s.contact(parse_iso_ms("2026-11-03T03:00:00Z"), "sms", sender="s")
    assert [v["rule_id"] for v in step.violations] == ["tcpa.quiet_hours"]
    # 04:00Z is 13:00 in Tokyo: in time order, the new zone applies
    assert not [
        v for v in s.contact(parse_iso_ms("2026-11-03T04:00:00Z"), "sms").violations if v["kind"] == "quiet_hours"
    ]


def test_late_contact_made_inside_quiet_hours_cleared_afterwards_is_a_violation():
    s = Scenario()
    s.preference(parse_iso_ms("2026-11-02T00:00:00Z"), quiet_hours={"start": "22:00", "end": "07:00"})
    s.preference(parse_iso_ms("2026-11-03T05:00:00Z"), quiet_hours=None)
    step = s.contact(parse_iso_ms("2026-11-02T23:00:00Z"), "email", sender="s")
    assert [v["rule_id"] for v in step.violations] == ["customer.quiet_hours"]
    assert s.contact(parse_iso_ms("2026-11-03T06:00:00Z"), "email").violations == [], "cleared from 05:00Z on"
    assert s.state is not None and [entry[0] for entry in s.state.superseded_facts] == [0, 1, 2]
    s.contact(parse_iso_ms("2026-11-04T05:00:00Z"), "sms")  # a day after the change: earlier contacts are late
    assert s.state.superseded_facts == []
