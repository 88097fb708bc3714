"""The backtest's figures, on small hand-made histories and checked against ``fatigue replay`` on generated ones."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from typing import Any

import orjson
import pytest

from fatigue.backtest import Backtest, WeekDistribution, backtest_policy, week_start_ms
from fatigue.engine import Guard
from fatigue.generate import Disorder, generate_events
from fatigue.replay import replay_lines
from fatigue.testing import DAY, HOUR, T0, at, policy_named
from fatigue.timeutil import parse_iso_ms


def line(kind: str, event_id: str, ts: int, customer: str = "c1", **extra: Any) -> bytes:
    return orjson.dumps({"type": kind, "event_id": event_id, "customer_id": customer, "ts": ts, **extra})


def contact(event_id: str, ts: int, channel: str, customer: str = "c1", **extra: Any) -> bytes:
    return line("contact", event_id, ts, customer, channel=channel, **extra)


def call_ended(event_id: str, ts: int, ref: str, duration_s: float, customer: str = "c1", **extra: Any) -> bytes:
    return line("call_ended", event_id, ts, customer, ref=ref, duration_s=duration_s, **extra)


# ---------------------------------------------------------------------------------------------- hand-made


def test_a_blocked_contact_is_suppressed_and_does_not_count_toward_later_caps():
    # default: sms <= 2 per 7d. d0 and d1 block sms until d7; d2 is sent while blocked.
    # Before (history as it happened) d2 counts, so d7.5 still finds 2 SMS in its window: a second violation.
    # After, d2 never went out: d7.5 finds only d1 in (d0.5, d7.5] and goes out.
    history = [
        contact("s0", at(0), "sms", sender="crm"),
        contact("s1", at(1), "sms", sender="crm"),
        contact("s2", at(2), "sms", sender="gateway", campaign="promo"),
        contact("s3", at(7, hours=12), "sms", sender="crm"),
    ]
    result = backtest_policy(policy_named("default"), history, label="default")
    assert result.suppressed == 1
    assert result.suppressed_by_reason_channel == Counter({("cap", "sms"): 1})
    assert result.suppressed_by_rule == Counter({("cap.sms.7d", "cap"): 1})
    assert result.suppressed_by_sender == Counter({"gateway": 1})
    assert result.suppressed_by_campaign == Counter({"promo": 1})
    assert result.violations == Counter({("gateway", "blocked", "cap", "sms"): 1, ("crm", "blocked", "cap", "sms"): 1})
    assert result.customers_protected == 1 and result.before.customers == 1
    assert (result.before.counted, result.after.counted) == (4, 3)
    assert result.suppressed_rate == pytest.approx(0.25)
    # T0 is a Monday: d0-d2 are one ISO week, d7.5 the next
    assert result.before.per_week.histogram == {3: 1, 1: 1}
    assert result.after.per_week.histogram == {2: 1, 1: 1}
    assert result.before.weekly_volume == {week_start_ms(T0): 3, week_start_ms(T0) + 7 * DAY: 1}


def test_outcomes_of_a_suppressed_call_are_dropped_with_it():
    # default: call <= 1 per 1d. The second call of the day is blocked; its short hang-up never happened.
    history = [
        contact("k1", at(0), "call"),
        call_ended("k1-end", at(0, minutes=5), "k1", 200),
        contact("k2", at(0, hours=3), "call"),
        call_ended("k2-end", at(0, hours=3, seconds=20), "k2", 8),
        contact("k2", at(0, hours=3), "call"),  # a redelivery of the blocked call
        contact("k3", at(3), "call"),
        call_ended("k3-end", at(3, seconds=40), "k3", 12, answered=False),
    ]
    kept: list[bytes] = []
    result = backtest_policy(policy_named("default"), history, keep=kept.append)
    assert result.suppressed == 1
    assert result.outcomes_dropped == 1
    assert result.redeliveries_dropped == 1
    assert kept == [history[0], history[1], history[5], history[6]]
    before, after = result.before.outcomes, result.after.outcomes
    assert (before.calls, before.calls_with_outcome, before.answered, before.short_hangups) == (3, 3, 2, 1)
    assert (after.calls, after.calls_with_outcome, after.answered, after.short_hangups) == (2, 2, 1, 0)
    assert before.short_hangup_rate == pytest.approx(1 / 3)
    assert after.short_hangup_rate == 0.0
    # the before world saw the short hang-up and blocked calls for 3 days; the after world never did
    assert result.before.decisions[("block", "short_hangups", "call")] == 1
    assert result.after.decisions[("block", "short_hangups", "call")] == 0
    assert result.before.rejections == Counter({"duplicate": 1})


def test_quiet_hours_suppress_with_reason_quiet_hours():
    # tcpa: no calls or SMS 21:00-08:00 in the customer's time zone (UTC by default)
    history = [
        contact("late-call", at(0, hours=13), "call", sender="dialer"),  # T0 + 13h = 22:00 UTC
        contact("day-call", at(1, hours=2), "call", sender="dialer"),  # 11:00 UTC
        contact("late-mail", at(1, hours=13), "email", sender="crm"),  # email has no quiet hours in tcpa
    ]
    result = backtest_policy(policy_named("tcpa"), history)
    assert result.suppressed_by_reason_channel == Counter({("quiet_hours", "call"): 1})
    assert result.suppressed_by_rule == Counter({("tcpa.quiet_hours", "quiet_hours"): 1})
    # before, the late call went out and blocked calls for a day (call <= 1 per 1d): the day call was a violation;
    # after, the late call never happened, so the day call goes out
    assert result.violations == Counter(
        {("dialer", "quiet_hours", "quiet_hours", "call"): 1, ("dialer", "blocked", "cap", "call"): 1}
    )
    assert result.suppressed == 1
    assert result.after.counted == 2


def test_transactional_contacts_are_never_suppressed_nor_counted():
    history = [contact(f"t{index}", at(0, hours=index), "sms", category="transactional") for index in range(6)]
    result = backtest_policy(policy_named("default"), history)
    assert result.suppressed == 0
    assert (result.before.contacts, result.before.counted, result.before.customers) == (6, 0, 0)
    assert result.before.per_week.customer_weeks == 0


def test_unread_rate_counts_settled_marketing_emails_and_human_opens_in_time():
    history = [
        contact("m1", at(0), "email"),
        contact("m2", at(0, hours=1), "email"),
        contact("m3", at(0, hours=2), "email"),
        line("email_opened", "o1", at(1), ref="m1"),  # read in time
        line("email_opened", "o2", at(1), ref="m2", machine=True),  # a proxy, not a read
        line("email_opened", "o3", at(5), ref="m3"),  # after the 72 h deadline: unread
        contact("m4", at(6), "email"),  # its deadline is after the end of the history: pending
        contact("x", at(6, hours=1), "sms"),
    ]
    result = backtest_policy(policy_named("default"), history)
    outcomes = result.before.outcomes
    assert (outcomes.emails, outcomes.emails_settled, outcomes.unread) == (4, 3, 2)
    assert outcomes.unread_rate == pytest.approx(2 / 3)


def test_week_distribution_percentiles_are_nearest_rank():
    dist = WeekDistribution.of([1] * 90 + [5] * 9 + [40])
    assert (dist.customer_weeks, dist.p50, dist.p90, dist.p99, dist.max) == (100, 1, 1, 5, 40)
    assert dist.mean == pytest.approx((90 + 45 + 40) / 100)
    assert WeekDistribution.of([3]).p90 == 3
    assert WeekDistribution.of([]).mean is None


def test_week_start_is_monday_utc():
    monday = parse_iso_ms("2026-11-02T00:00:00Z")
    assert week_start_ms(parse_iso_ms("2026-11-08T23:59:59Z") or 0) == monday
    assert week_start_ms(parse_iso_ms("2026-11-09T00:00:00Z") or 0) == (monday or 0) + 7 * DAY
    assert week_start_ms(T0 + 5 * HOUR) == monday


# ---------------------------------------------------------------------------------------------- against replay


@pytest.mark.parametrize("policy_name", ["default", "reg-f", "tcpa"])
@pytest.mark.parametrize("disorder", [Disorder.clean(), Disorder()], ids=["clean", "disordered"])
def test_figures_agree_with_replay(policy_name, disorder):
    policy = policy_named(policy_name)
    history = list(generate_events(4000, 150, seed=11, disorder=disorder))
    kept: list[bytes] = []
    result = backtest_policy(policy, history, label=policy_name, keep=kept.append)

    # before: exactly `fatigue replay` on the history
    replay, decisions = replay_lines(Guard(policy), history)
    stats = replay.stats
    assert result.before.events == stats.events == len(history)
    assert result.before.accepted == stats.accepted
    assert result.before.rejections == stats.rejections
    assert result.before.decisions == stats.decisions
    by_kind_channel: Counter[tuple[str, str]] = Counter()
    for (_sender, kind, _reason, channel), count in result.violations.items():
        by_kind_channel[(kind, channel)] += count
    assert by_kind_channel == stats.violations
    assert result.violations_total == sum(stats.violations.values()) > 0

    # after: exactly `fatigue replay` on the after stream, which has no violation left
    after_replay, after_decisions = replay_lines(Guard(policy), kept)
    assert after_replay.stats.violations == Counter()
    assert result.after.events == after_replay.stats.events == len(kept)
    assert result.after.accepted == after_replay.stats.accepted
    assert result.after.rejections == after_replay.stats.rejections
    assert result.after.decisions == after_replay.stats.decisions
    assert len(history) - len(kept) == result.suppressed + result.outcomes_dropped + result.redeliveries_dropped
    assert result.suppressed > 0
    # every contact of the after world went out when the before world saw it, and the blocked ones are the rest
    if disorder == Disorder.clean():
        assert result.before.counted - result.after.counted == result.suppressed
        assert sum(result.suppressed_by_reason_channel.values()) == result.suppressed
    del decisions, after_decisions

    # counted contacts per customer-week, recomputed from the parsed streams
    assert sum(count * weeks for count, weeks in result.before.per_week.histogram.items()) == result.before.counted
    assert sum(count * weeks for count, weeks in result.after.per_week.histogram.items()) == result.after.counted
    assert result.before.per_week.customer_weeks == result.after.per_week.customer_weeks


def test_backtest_is_deterministic_and_json_serialisable():
    history = list(generate_events(1500, 60, seed=5))
    first = Backtest("h.jsonl", [backtest_policy(policy_named("default"), history, label="default")])
    second = Backtest("h.jsonl", [backtest_policy(policy_named("default"), history, label="default")])
    assert orjson.dumps(first.to_dict()) == orjson.dumps(second.to_dict())
    data = orjson.loads(orjson.dumps(first.to_dict()))
    assert data["schema"] == "fatigue.backtest/1"
    policy = data["policies"][0]
    assert policy["label"] == "default"
    assert sum(row["count"] for row in policy["suppressed_by_reason_channel"]) == policy["suppressed"]
    assert set(policy["before"]) >= {"counted_contacts", "per_customer_week", "outcomes", "weekly_volume"}


def test_new_modules_stay_pure():
    code = (
        "import sys, fatigue.backtest, fatigue.report, fatigue.backtest_cli, fatigue.importers.bank_marketing\n"
        "bad = [m for m in ('faust', 'aiokafka', 'kafka', 'redis', 'prometheus_client', 'mode', 'asyncio')"
        " if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
