"""The synthetic stream generator: deterministic, exactly sized, keyed like the contract says, and as dirty as asked."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from fatigue.events import Event, Rejection, parse_event
from fatigue.generate import DEFAULT_START_MS, Disorder, generate_events, generate_messages, message_key

DAY = 86_400_000


@pytest.fixture(scope="module")
def default_stream() -> list[tuple[bytes | None, bytes]]:
    return list(generate_messages(30_000, 2_000, seed=3))


def test_same_arguments_give_the_same_bytes():
    assert list(generate_messages(3_000, 200, seed=5)) == list(generate_messages(3_000, 200, seed=5))
    assert list(generate_events(3_000, 200, seed=5)) != list(generate_events(3_000, 200, seed=6))


@pytest.mark.parametrize("count", [0, 1, 7, 2_500])
def test_exactly_count_messages(count):
    assert sum(1 for _ in generate_events(count, 50, seed=1)) == count


def test_bad_arguments_fail_at_call_time():
    with pytest.raises(ValueError, match="customers"):
        generate_events(10, 0, seed=1)
    with pytest.raises(ValueError, match="span_days"):
        generate_messages(10, 5, seed=1, span_days=0)


def test_keys_are_customer_ids(default_stream):
    for key, value in default_stream:
        assert key == message_key(value)
        parsed = parse_event(value, key, check_key=True)
        if isinstance(parsed, Event):
            assert key == parsed.customer_id.encode()
        else:
            assert parsed.reason not in ("missing_key", "key_mismatch") or key is None


def test_clean_stream_is_valid_unique_and_in_event_time_order():
    lines = list(generate_events(10_000, 300, seed=9, disorder=Disorder.clean()))
    assert len(set(lines)) == len(lines)
    times = []
    for line in lines:
        parsed = parse_event(line)
        assert isinstance(parsed, Event), (line, parsed)
        times.append(parsed.ts_ms)
    assert times == sorted(times)
    assert DEFAULT_START_MS <= times[0] < times[-1] <= DEFAULT_START_MS + 61 * DAY


def test_default_stream_has_every_kind_of_disorder(default_stream):
    lines = [value for _key, value in default_stream]
    reasons = Counter[str]()
    newest = 0
    out_of_order = beyond_grace = 0
    for line in lines:
        parsed = parse_event(line)
        if isinstance(parsed, Rejection):
            reasons[parsed.reason.split(":")[0]] += 1
            continue
        out_of_order += parsed.ts_ms < newest
        beyond_grace += parsed.ts_ms < newest - DAY
        newest = max(newest, parsed.ts_ms)
    for reason in (
        "bad_json",
        "bad_utf8",
        "not_object",
        "too_large",
        "missing_field",
        "bad_field",
        "unknown_type",
        "unknown_channel",
        "unknown_category",
        "bad_timestamp",
        "empty_preference",
    ):
        assert reasons[reason] > 0, reason
    assert 0.002 < sum(reasons.values()) / len(lines) < 0.01
    assert 0.002 < (len(lines) - len(set(lines))) / len(lines) < 0.01  # exact re-sends
    assert 0.01 < out_of_order / len(lines) < 0.06
    assert beyond_grace > 0


def test_content_mix(default_stream):
    types = Counter[str]()
    categories = Counter[str]()
    forms = Counter[str]()
    calls = answered = short = machine = 0
    for _key, line in default_stream:
        parsed = parse_event(line)
        if not isinstance(parsed, Event):
            continue
        types[parsed.type] += 1
        ts = orjson.loads(line)["ts"]
        forms["ms" if isinstance(ts, int) else "Z" if ts.endswith("Z") else ts[-6:]] += 1
        if parsed.type == "contact":
            categories[parsed.category] += 1
        elif parsed.type == "call_ended":
            calls += 1
            answered += parsed.answered
            short += parsed.answered and parsed.duration_s < 30
        elif parsed.type == "email_opened":
            machine += parsed.machine
    contacts = types["contact"]
    assert 0.75 < categories["marketing"] / contacts < 0.85
    assert 0.12 < categories["service"] / contacts < 0.18
    assert 0.03 < categories["transactional"] / contacts < 0.07
    assert 0.80 < answered / calls < 0.90
    assert 0.35 < short / answered < 0.45
    assert machine > 0
    assert all(types[name] > 0 for name in ("unsubscribe", "complaint", "sms_stop", "preference"))
    assert forms["ms"] and forms["Z"] and forms["+08:00"]


def test_module_main_writes_the_same_lines(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    command = [sys.executable, "-m", "fatigue.generate", "--events", "500", "--customers", "40", "--seed", "4"]
    subprocess.run([*command, "--out", str(out)], check=True)
    assert out.read_bytes() == b"".join(line + b"\n" for line in generate_events(500, 40, seed=4))
    clean = subprocess.run([*command, "--clean"], check=True, capture_output=True).stdout
    assert clean == b"".join(line + b"\n" for line in generate_events(500, 40, seed=4, disorder=Disorder.clean()))
