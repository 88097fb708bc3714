"""Negative-reaction signals of the default policy: short hang-ups, unread mail, complaints."""

from __future__ import annotations

from dataclasses import replace

from fatigue.testing import DAY, HOUR, Scenario, at, policy_named
from fatigue.timeutil import format_ms


def test_one_short_hangup_blocks_calls_for_3d_from_the_hangup():
    #  day 2: call (cap 1 per 1d until day 3), hang-up after 12 s -> calls blocked until day 5
    s = Scenario()
    s.contact(at(2), "call", event_id="call-1")
    [decision] = s.call_ended(at(2, seconds=20), duration_s=12, ref="call-1").decisions
    assert decision["channel"] == "call"
    assert decision["reason"] == "short_hangups"
    assert decision["rule_id"] == "short_hangups.1_in_7d"
    assert decision["until"] == format_ms(at(5, seconds=20))
    assert decision["evidence"]["rules"][0]["hangups"] == [format_ms(at(2, seconds=20))]
    assert decision["suggest"] == "email"


def test_second_short_hangup_within_30d_blocks_calls_for_30d():
    s = Scenario()
    s.call_ended(at(0), duration_s=5)
    [decision] = s.call_ended(at(29), duration_s=29.9).decisions
    assert decision["reason"] == "short_hangups"
    assert decision["rule_id"] == "short_hangups.2_in_30d"
    assert decision["until"] == format_ms(at(59))
    fired = {rule["rule_id"] for rule in decision["evidence"]["rules"]}
    assert fired == {"short_hangups.1_in_7d", "short_hangups.2_in_30d"}


def test_second_hangup_exactly_30d_later_is_outside_the_window():
    s = Scenario()
    s.call_ended(at(0), duration_s=5)
    [decision] = s.call_ended(at(30), duration_s=5).decisions
    assert decision["rule_id"] == "short_hangups.1_in_7d"
    assert decision["until"] == format_ms(at(33))


def test_thirty_seconds_is_not_a_short_hangup_and_unanswered_calls_never_are():
    s = Scenario()
    assert s.call_ended(at(0), duration_s=30).decisions == []
    assert s.call_ended(at(1), duration_s=2, answered=False).decisions == []
    assert s.call_ended(at(2), duration_s=0, answered=False).decisions == []
    assert s.state is not None and s.state.hangups == []


def test_suggest_prefers_the_least_pressured_open_channel():
    s = Scenario()
    s.contact(at(0), "email")
    s.contact(at(0, hours=1), "email")  # email at 2/3 of its 7d cap
    s.contact(at(0, hours=2), "sms")  # sms at 1/2
    [decision] = s.call_ended(at(0, hours=3), duration_s=3).decisions
    # pressure = count / limit of the tightest cap: email 2/3, sms 1/2
    assert decision["suggest"] == "sms"
    s.contact(at(0, hours=4), "sms")  # sms now blocked (2 per 7d): email is the only open channel
    [again] = s.call_ended(at(0, hours=5), duration_s=3).decisions
    assert again["suggest"] == "email"


def test_suggest_skips_blocked_channels_and_is_null_when_none_is_open():
    s = Scenario()
    s.unsubscribe(at(0), "email")
    s.sms_stop(at(0, hours=1))
    [decision] = s.call_ended(at(1), duration_s=3).decisions
    assert decision["suggest"] is None


def _unread_emails(s: Scenario, count: int, first_day: float = 0, spacing_days: float = 4) -> list[int]:
    """Marketing emails spaced so the email caps never fire; returns their deadlines (send + 72h)."""
    deadlines = []
    for index in range(count):
        ts = at(first_day + index * spacing_days)
        s.contact(ts, "email", event_id=f"mail-{index}")
        deadlines.append(ts + 72 * HOUR)
    return deadlines


def test_five_unread_in_a_row_block_email_30d_from_the_fifth_deadline():
    #  mails at day 0, 4, 8, 12, 16; each deadline is send + 72h; the fifth deadline is day 19
    s = Scenario()
    deadlines = _unread_emails(s, 5)
    assert s.decisions == []
    s.advance(deadlines[4])  # exactly at the deadline: an open could still count
    assert s.decisions == []
    s.advance(deadlines[4] + 1)
    [decision] = s.decisions
    assert decision["channel"] == "email"
    assert decision["reason"] == "unread"
    assert decision["rule_id"] == "unread.5_in_a_row"
    assert decision["until"] == format_ms(deadlines[4] + 30 * DAY)
    assert decision["decided_at"] == format_ms(deadlines[4])
    assert decision["cause_event_id"] == "mail-4"
    assert decision["suggest"] in ("sms", "call")


def test_unread_deadline_fires_when_a_later_event_passes_it_with_the_same_content():
    by_event = Scenario()
    deadlines = _unread_emails(by_event, 5)
    by_event.contact(deadlines[4] + HOUR, "sms")
    by_timer = Scenario()
    _unread_emails(by_timer, 5)
    by_timer.advance(deadlines[4] + 5 * DAY)
    unread_by_event = [d for d in by_event.decisions if d["reason"] == "unread"]
    assert unread_by_event == by_timer.decisions


def test_a_human_open_resets_the_streak():
    s = Scenario()
    _unread_emails(s, 3)
    s.opened(at(8, hours=5), ref="mail-2")
    _unread_emails_from = [at(12 + 4 * i) for i in range(4)]
    for index, ts in enumerate(_unread_emails_from):
        s.contact(ts, "email", event_id=f"later-{index}")
    s.advance(_unread_emails_from[-1] + 72 * HOUR + 1)
    # 2 unread, 1 read, 4 unread: never five in a row
    assert [d for d in s.decisions if d["reason"] == "unread"] == []
    assert s.state is not None and s.state.streak == 4


def test_machine_opens_and_opens_after_the_deadline_are_not_reads():
    s = Scenario()
    deadlines = _unread_emails(s, 5)
    s.opened(at(0, hours=1), ref="mail-0", machine=True)
    s.opened(deadlines[1] + 1, ref="mail-1")  # one ms too late... but the deadline already settled it
    s.advance(deadlines[4] + 1)
    assert [d["reason"] for d in s.decisions] == ["unread"]


def test_open_exactly_at_the_deadline_counts():
    s = Scenario()
    deadlines = _unread_emails(s, 5)
    s.opened(deadlines[4], ref="mail-4")
    s.advance(deadlines[4] + DAY)
    assert s.decisions == []


def test_unread_streak_continues_past_five_and_extends_the_block():
    s = Scenario()
    deadlines = _unread_emails(s, 6)
    s.advance(deadlines[5] + 1)
    assert [d["until"] for d in s.decisions if d["reason"] == "unread"] == [
        format_ms(deadlines[4] + 30 * DAY),
        format_ms(deadlines[5] + 30 * DAY),
    ]


def test_only_marketing_email_is_tracked_for_unread():
    s = Scenario()
    for index in range(6):
        s.contact(at(index * 4), "email", category="service")
    s.advance(at(40))
    assert s.decisions == []


def test_complaint_blocks_its_channel_180d_and_every_other_channel_7d():
    s = Scenario()
    step = s.complaint(at(3), "sms")
    by_channel = {d["channel"]: d for d in step.decisions}
    assert by_channel["sms"]["until"] == format_ms(at(183))
    assert by_channel["email"]["until"] == format_ms(at(10))
    assert by_channel["call"]["until"] == format_ms(at(10))
    assert {d["reason"] for d in step.decisions} == {"complaint"}
    assert by_channel["sms"]["rule_id"] == "complaint.channel"
    assert by_channel["email"]["rule_id"] == "complaint.other_channels"
    assert by_channel["email"]["evidence"]["rules"][0]["complaint_channel"] == "sms"


def test_hangup_block_shorter_than_an_active_complaint_changes_nothing():
    s = Scenario()
    s.complaint(at(0), "call")
    assert s.call_ended(at(1), duration_s=3).decisions == []


def test_hangup_threshold_is_policy(tmp_path):
    from fatigue.policy import load_policy

    path = tmp_path / "p.toml"
    path.write_text(
        'version = "t"\n[short_hangups]\nthreshold = "10s"\n'
        '[[short_hangups.rules]]\nid = "h"\ncount = 1\nwindow = "7d"\nblock = "1d"\n'
    )
    s = Scenario(load_policy(path))
    assert s.call_ended(at(0), duration_s=10).decisions == []
    assert s.call_ended(at(1), duration_s=9.5).decisions[0]["until"] == format_ms(at(2))


def test_a_30d_hangup_block_outlives_the_first_hangup_by_its_own_length():
    # Hang-ups on day 0 and day 20 block calls until day 50, although the first one leaves its 30 d window on
    # day 30: the state must keep hang-ups for window + block, or the block silently shrinks to whatever else
    # is in force when the customer's next event is evaluated.
    s = Scenario()
    s.call_ended(at(0), duration_s=5)
    [blocked] = s.call_ended(at(20), duration_s=5).decisions
    assert blocked["rule_id"] == "short_hangups.2_in_30d"
    assert blocked["until"] == format_ms(at(50))
    # day 35: a dialer calls anyway (a violation; call cap 1 per 1d would end on day 36: shorter, no change)
    step = s.contact(at(35), "call")
    assert step.decisions == []
    assert [violation["rule_id"] for violation in step.violations] == ["short_hangups.2_in_30d"]
    # day 36: an email complaint blocks the other channels for 7 d (until day 43): still shorter than day 50
    decisions = s.complaint(at(36), "email").decisions
    assert {decision["channel"] for decision in decisions} == {"email", "sms"}
    # day 50 exactly: the hang-up block is over; a call now only meets the complaint's block (until day 43: over)
    assert s.contact(at(50), "call").violations == []


def test_an_open_in_time_that_arrives_after_its_deadline_was_settled_lifts_the_unread_block():
    # Five mails unread; an SMS an hour after the fifth deadline settles it and blocks email. Then the open of the
    # fifth mail arrives, made 2 h before its deadline but delivered late (within the 24 h grace): the mail was
    # read in time, there were only four unread in a row, and the block is lifted.
    s = Scenario()
    deadlines = _unread_emails(s, 5)
    [blocked] = s.contact(deadlines[4] + HOUR, "sms").decisions
    assert (blocked["reason"], blocked["until"]) == ("unread", format_ms(deadlines[4] + 30 * DAY))
    [lifted] = s.opened(deadlines[4] - 2 * HOUR, ref="mail-4").decisions
    assert lifted["channel"] == "email"
    assert lifted["action"] == "allow"
    assert lifted["reason"] == "lifted"
    assert lifted["evidence"] == {"lifted_reason": "unread", "lifted_until": blocked["until"]}
    assert lifted["decided_at"] == format_ms(deadlines[4] - 2 * HOUR)  # the open's own time
    assert s.state is not None and s.state.streak == 0 and s.state.unread_block is None
    # a marketing mail now is no violation
    assert s.contact(deadlines[4] + 2 * HOUR, "email").violations == []


def test_a_late_open_in_the_middle_of_a_streak_counts_the_rest_again():
    s = Scenario()
    deadlines = _unread_emails(s, 6)
    s.contact(deadlines[5] + HOUR, "sms")
    assert [d["until"] for d in s.decisions if d["reason"] == "unread"] == [
        format_ms(deadlines[4] + 30 * DAY),  # the fifth in a row
        format_ms(deadlines[5] + 30 * DAY),  # the sixth moves the end
    ]
    # the sixth mail was opened in time after all: the block is the fifth's again (its end moves back)
    [back] = s.opened(deadlines[5] - HOUR, ref="mail-5").decisions
    assert (back["action"], back["reason"]) == ("block", "unread")
    assert back["until"] == format_ms(deadlines[4] + 30 * DAY)
    assert back["evidence"]["rules"][0]["email_event_id"] == "mail-4"
    assert s.state is not None and s.state.streak == 0


def test_a_late_open_of_an_earlier_mail_breaks_the_streak_into_two_short_ones():
    s = Scenario()
    deadlines = _unread_emails(s, 6, spacing_days=0.25)  # four a day: the 7d email cap fires too
    s.contact(deadlines[5] + HOUR, "sms")
    assert any(d["reason"] == "unread" for d in s.decisions)
    # mail-2 was read: 2 unread, 1 read, 3 unread -> never five in a row; the email cap still blocks
    [after] = s.opened(deadlines[2] - HOUR, ref="mail-2").decisions
    assert after["reason"] == "cap"
    assert s.state is not None and s.state.streak == 3 and s.state.unread_block is None


def test_opens_too_late_to_count_or_to_be_accepted_change_nothing():
    s = Scenario()
    deadlines = _unread_emails(s, 5)
    s.contact(deadlines[4] + HOUR, "sms")
    assert s.opened(deadlines[4] + 1, ref="mail-4").decisions == []  # after its deadline: not a read
    s.contact(deadlines[4] + 2 * DAY, "sms")  # the newest event moves 2 days on
    step = s.opened(deadlines[4] - HOUR, ref="mail-4")  # in time, but more than 24 h older than the newest
    assert step.rejection is not None and step.rejection.reason == "late"
    assert s.current("email") is not None


def test_an_open_delivered_before_its_email_is_a_read():
    #  day 0 10:00  open of mail-4 delivered (the mail platform is faster than the sender's contact event)
    #  day 0 09:00  mail-4 itself (an hour older, delivered after its open): read, so never five unread in a row
    s = Scenario()
    deadlines = _unread_emails(s, 4)
    fifth = deadlines[3] + DAY
    s.opened(fifth + HOUR, ref="mail-4")
    assert s.state is not None and s.state.early_opens == {"mail-4": fifth + HOUR}
    s.contact(fifth, "email", event_id="mail-4")
    assert s.state.early_opens == {}
    s.advance(fifth + 30 * DAY)
    assert [d for d in s.decisions if d["reason"] == "unread"] == []
    assert s.state.streak == 0


def test_an_early_open_after_its_emails_deadline_is_no_read():
    # with the default 72 h deadline and 24 h grace an open delivered first is always in time for a mail that can
    # still be accepted; a policy with a deadline shorter than the grace shows the check
    default = policy_named("default")
    assert default.unread is not None
    s = Scenario(replace(default, unread=replace(default.unread, deadline_ms=HOUR)))
    s.opened(at(0, hours=1, ms=1), ref="mail")  # 1 ms after the deadline of the mail it is for
    s.contact(at(0), "email", event_id="mail")
    assert s.state is not None and s.state.pending == [[at(0, hours=1), "mail", 0]]
    s.opened(at(0, hours=2), ref="mail-2")
    s.contact(at(0, hours=1), "email", event_id="mail-2")  # opened exactly at its deadline: a read
    # the newest event (2 h) settled "mail" as unread (streak 1); "mail-2" waits, already read
    assert s.state.settled == [[at(0, hours=1), "mail", 1]]
    assert s.state.pending == [[at(0, hours=2), "mail-2", 1]]


def test_an_early_open_is_forgotten_once_its_email_could_no_longer_be_accepted():
    # the open is kept while a mail sent before it can still arrive: for the 24 h late grace of the newest event
    s = Scenario()
    s.opened(at(0), ref="never-sent")
    s.contact(at(1), "sms")  # exactly 24 h newer: a mail at day 0 would still be accepted
    assert s.state is not None and s.state.early_opens == {"never-sent": at(0)}
    s.contact(at(1, hours=1), "sms")  # the hourly trim: a mail at day 0 would now be late
    assert s.state.early_opens == {}
    assert s.contact(at(0), "email", event_id="never-sent").rejection.reason == "late"  # type: ignore[union-attr]
