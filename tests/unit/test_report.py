"""``fatigue backtest`` as a user runs it, and the HTML page: self-contained, deterministic, the same figures."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fatigue.backtest import Backtest, backtest_policy
from fatigue.engine import Guard
from fatigue.generate import generate_events
from fatigue.replay import replay_lines
from fatigue.report import _month_ticks, _ticks, render_html
from fatigue.testing import policy_named
from fatigue.timeutil import parse_iso_ms

REPO = Path(__file__).resolve().parents[2]
POLICIES = REPO / "config" / "policies"


@pytest.fixture(scope="module")
def history() -> list[bytes]:
    return list(generate_events(3000, 120, seed=21))


@pytest.fixture(scope="module")
def backtest(history: list[bytes]) -> Backtest:
    results = [backtest_policy(policy_named(name), history, label=name) for name in ("default", "reg-f", "tcpa")]
    return Backtest("history.jsonl", results)


def test_page_is_self_contained(backtest):
    page = render_html(backtest)
    assert page.startswith("<!doctype html>")
    assert "<link" not in page and " src=" not in page and "@import" not in page
    # the only URL is the SVG namespace, which is a name, not a download
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) == {"http://www.w3.org/2000/svg"}
    assert page.count("<script>") == 1


def test_page_is_deterministic_and_escapes_text(backtest):
    assert render_html(backtest) == render_html(backtest)
    page = render_html(backtest, title="Q3 <review>", note='calls & "mail" <script>alert(1)</script>')
    assert "<title>Q3 &lt;review&gt; — history.jsonl</title>" in page
    assert "calls &amp; &quot;mail&quot; &lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<script>alert" not in page


def test_page_shows_the_backtest_figures(backtest):
    page = render_html(backtest)
    # two comparison charts, then four per policy
    assert page.count('<svg class="chart"') == 2 + 4 * len(backtest.policies)
    for result in backtest.policies:
        assert f'id="policy-{result.label}"' in page
        assert f"{result.suppressed:,} ({result.suppressed_rate * 100:.1f}%)" in page
        assert f"{result.customers_protected:,} ({result.protected_rate * 100:.1f}%)" in page
        assert f"{result.violations_total:,}" in page
        for (reason, channel), count in result.suppressed_by_reason_channel.items():
            assert f"{reason} · {channel}: {count:,}</title>" in page
        before, after = result.before.outcomes, result.after.outcomes
        assert f"{before.unread_rate * 100:.1f}% → {after.unread_rate * 100:.1f}%" in page


def test_page_without_blocks_says_so():
    quiet = [
        orjson.dumps(
            {"type": "contact", "event_id": "a", "customer_id": "c", "ts": 1_795_435_200_000, "channel": "sms"}
        )
    ]
    page = render_html(Backtest("one.jsonl", [backtest_policy(policy_named("default"), quiet, label="default")]))
    assert "No blocked contacts." in page and "No sender violations." in page
    assert 'class="mark"' in page  # the weekly and per-week charts still draw
    empty = render_html(Backtest("empty.jsonl", [backtest_policy(policy_named("default"), [], label="default")]))
    assert "no accepted events" in empty


def test_axis_ticks_are_round():
    assert _ticks(0) == [0, 1]
    assert _ticks(7) == [0, 2, 4, 6, 8]
    assert _ticks(3102) == [0, 1000, 2000, 3000, 4000]
    assert _ticks(1) == [0, 1]


def test_month_ticks_are_thinned_to_round_months():
    ticks = _month_ticks(parse_iso_ms("2006-06-20T00:00:00Z") or 0, parse_iso_ms("2008-12-31T00:00:00Z") or 0)
    assert [label for _, label in ticks] == ["Jul 2006", "Jan 2007", "Jul 2007", "Jan 2008", "Jul 2008"]
    assert ticks[0][0] == parse_iso_ms("2006-07-01T00:00:00Z")
    assert [label for _, label in _month_ticks(0, 40 * 86_400_000)] == ["Feb 1970"]


def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "backtest", *args],
        capture_output=True,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def test_backtest_command_figures_match_replay(tmp_path, history):
    history_file = tmp_path / "history.jsonl"
    history_file.write_bytes(b"\n".join(history) + b"\n")
    html, report, after_dir = tmp_path / "report.html", tmp_path / "report.json", tmp_path / "after"
    result = run_cli(
        "--policy", str(POLICIES / "default.toml"), "--policy", str(POLICIES / "reg-f.toml"), str(history_file),
        "--html", str(html), "--json", str(report), "--write-after", str(after_dir),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert b"default (default-2026.11.1): blocked" in result.stderr
    data = orjson.loads(report.read_bytes())
    assert data["history"] == "history.jsonl"
    assert [policy["label"] for policy in data["policies"]] == ["default", "reg-f"]
    page = html.read_text()
    for figures in data["policies"]:
        policy = policy_named(figures["label"])
        replay, _ = replay_lines(Guard(policy), history)
        assert figures["before"]["events"] == replay.stats.events
        assert figures["before"]["accepted"] == replay.stats.accepted
        assert figures["sender_violations"] == sum(replay.stats.violations.values())
        by_kind_channel: Counter[tuple[str, str]] = Counter()
        for row in figures["sender_violations_by"]:
            by_kind_channel[(row["kind"], row["channel"])] += row["count"]
        assert by_kind_channel == replay.stats.violations
        decisions = {
            (row["action"], row["reason"], row["channel"]): row["count"] for row in figures["before"]["decisions"]
        }
        assert decisions == dict(replay.stats.decisions)
        # the after stream written for this policy replays to the after figures, without violations
        kept = (after_dir / f"{figures['label']}.jsonl").read_bytes().splitlines()
        after_replay, _ = replay_lines(Guard(policy), kept)
        assert after_replay.stats.violations == Counter()
        assert figures["after"]["accepted"] == after_replay.stats.accepted
        after_decisions = {
            (row["action"], row["reason"], row["channel"]): row["count"] for row in figures["after"]["decisions"]
        }
        assert after_decisions == dict(after_replay.stats.decisions)
        assert figures["suppressed"] == sum(row["count"] for row in figures["suppressed_by_reason_channel"]) > 0
        assert f"{figures['suppressed']:,} ({figures['suppressed_rate'] * 100:.1f}%)" in page


def test_backtest_command_json_to_stdout_and_errors(tmp_path, history):
    history_file = tmp_path / "history.jsonl"
    history_file.write_bytes(b"\n".join(history[:200]) + b"\n")
    result = run_cli(str(history_file), "--json", "-")  # the default policy
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert [policy["label"] for policy in data["policies"]] == ["default"]

    nothing = run_cli(str(history_file))
    assert nothing.returncode == 2 and b"nothing to write" in nothing.stderr
    missing = run_cli(str(tmp_path / "none.jsonl"), "--json", "-")
    assert missing.returncode == 2 and b"cannot read" in missing.stderr
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text('version = "x"\nbogus = 1\n')
    invalid = run_cli(str(history_file), "--json", "-", "--policy", str(bad_policy))
    assert invalid.returncode == 2 and b"invalid policy" in invalid.stderr
    twice = run_cli(str(history_file), "--json", "-", "--policy", str(POLICIES / "default.toml"), "--policy",
                    str(POLICIES / "default.toml"))  # fmt: skip
    assert [policy["label"] for policy in orjson.loads(twice.stdout)["policies"]] == ["default", "default-2"]
