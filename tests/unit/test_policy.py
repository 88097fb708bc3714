"""Policy files: the shipped ones load with the documented rules; invalid ones are refused with the key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from fatigue.policy import PolicyError, load_policy
from fatigue.testing import DAY, HOUR, POLICY_DIR, policy_named


def test_default_policy_is_exactly_the_documented_one():
    policy = policy_named("default")
    caps = {(rule.channel, rule.limit, rule.window_ms) for rule in policy.caps}
    assert caps == {
        ("sms", 2, 7 * DAY),
        ("sms", 5, 30 * DAY),
        ("email", 3, 7 * DAY),
        ("email", 10, 30 * DAY),
        ("call", 1, DAY),
        ("call", 3, 7 * DAY),
        (None, 6, 7 * DAY),
    }
    assert policy.counted_categories == {"marketing"}
    assert policy.hangup_threshold_s == 30
    assert [(r.count, r.window_ms, r.block_ms) for r in policy.hangup_rules] == [
        (1, 7 * DAY, 3 * DAY),
        (2, 30 * DAY, 30 * DAY),
    ]
    assert policy.unread is not None
    assert (policy.unread.deadline_ms, policy.unread.streak, policy.unread.block_ms) == (72 * HOUR, 5, 30 * DAY)
    assert policy.complaint is not None
    assert (policy.complaint.channel_block_ms, policy.complaint.other_channels_block_ms) == (180 * DAY, 7 * DAY)
    assert policy.late_grace_ms == 24 * HOUR
    assert policy.quiet_hours is None and policy.conversation is None


def test_presets_load():
    reg_f = policy_named("reg-f")
    assert [(r.channel, r.limit, r.window_ms) for r in reg_f.caps if r.channel in ("call", None)] == [
        ("call", 7, 7 * DAY)
    ]
    assert reg_f.conversation is not None and reg_f.conversation.block_ms == 7 * DAY
    tcpa = policy_named("tcpa")
    assert tcpa.quiet_hours is not None
    assert (tcpa.quiet_hours.start_minute, tcpa.quiet_hours.end_minute) == (21 * 60, 8 * 60)


def test_rule_ids_are_unique_and_stable():
    ids = policy_named("default").rule_ids
    assert len(ids) == len(set(ids))
    assert "cap.sms.7d" in ids and "global_cap.7d" in ids and "unread.5_in_a_row" in ids


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('description = "no version"', "missing key(s) version"),
        ('version = "x"\ncolour = "red"', "unknown key(s) colour"),
        ('version = "x"\n[[caps]]\nid = "a"\nchannel = "sms"\nlimit = 2\nwindow = "7 days"', "caps[0].window"),
        ('version = "x"\n[[caps]]\nid = "a"\nchannel = "fax"\nlimit = 2\nwindow = "7d"', "caps[0].channel"),
        ('version = "x"\n[[caps]]\nid = "a"\nchannel = "sms"\nlimit = 0\nwindow = "7d"', "caps[0].limit"),
        (
            'version = "x"\n[[caps]]\nid = "a"\nchannel = "sms"\nlimit = 2\nwindow = "7d"\nwindw = "1d"',
            "unknown key(s) windw",
        ),
        (
            'version = "x"\n[[caps]]\nid = "a"\nchannel = "sms"\nlimit = 2\nwindow = "7d"\n'
            '[[caps]]\nid = "a"\nchannel = "email"\nlimit = 2\nwindow = "7d"',
            "duplicate rule id 'a'",
        ),
        ('version = "x"\n[counting]\ncategories = ["transactional"]', "counting.categories"),
        ('version = "x"\n[customer]\ndefault_timezone = "Nowhere/City"', "customer.default_timezone"),
        ('version = "x"\n[quiet_hours]\nid = "q"\nstart = "9pm"\nend = "08:00"', "quiet_hours.start"),
        ("version = [", "not valid TOML"),
        # an `until` must stay a date: a longer block would stop the worker at its first firing
        ('version = "x"\n[conversation]\nid = "c"\nmin_duration = "30s"\nblock = "4000000d"', "conversation.block"),
        (
            'version = "x"\n[complaint]\nid = "c"\nchannel_block = "3651d"\nother_channels_block = "7d"',
            "complaint.channel_block: must be at most 3650d",
        ),
        # the state keeps at most max_signals hang-ups: a rule needing more could never fire
        (
            'version = "x"\n[state]\nmax_signals = 4\n[short_hangups]\nthreshold = "30s"\n'
            '[[short_hangups.rules]]\nid = "h"\ncount = 5\nwindow = "30d"\nblock = "30d"',
            "short_hangups.rules[0].count: must be at most state.max_signals (4)",
        ),
        # an empty range would silently switch the rule off
        ('version = "x"\n[quiet_hours]\nid = "q"\nstart = "21:00"\nend = "21:00"', "quiet_hours.end"),
    ],
)
def test_invalid_policies_are_refused_with_the_key_named(tmp_path: Path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(
        PolicyError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(").replace(")", r"\)")
    ):
        load_policy(path)


def test_missing_file_is_a_policy_error(tmp_path: Path):
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(tmp_path / "nope.toml")


def test_every_shipped_policy_is_valid():
    names = sorted(path.stem for path in POLICY_DIR.glob("*.toml"))
    assert names == ["default", "reg-f", "tcpa"]
    for name in names:
        assert policy_named(name).version
