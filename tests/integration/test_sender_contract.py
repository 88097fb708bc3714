"""Sender-side clients against the wire contract, on the real Kafka and Redis: what a sender asks, what it is told.

Transactional mail is never held back; a misspelt channel is an error, never an "allowed"; a decision's expiry is
its contract field `until`; a follower answers only for the channel it follows; the CLI fails cleanly.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer

from fatigue.engine import Guard
from fatigue.policy import load_policy
from fatigue.replay import Replay
from fatigue.state import preferences_view
from streams.redis_keys import block_key, prefs_key
from streams.sender import BlockFollower, PreSendCheck

REPO = Path(__file__).resolve().parents[2]
COMPACT = {"cleanup.policy": "compact"}


def _now() -> int:
    return int(time.time() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _block(customer: str, channel: str, reason: str, until_ms: int | None, *, with_until_ms: bool = True) -> dict:
    decided = _now() - 3_600_000
    decision: dict[str, Any] = {
        "customer_id": customer,
        "channel": channel,
        "action": "block",
        "reason": reason,
        "rule": f"{channel} test",
        "rule_id": f"test.{reason}",
        "until": _iso(until_ms) if until_ms is not None else None,
        "evidence": {"rules": []},
        "policy_version": "t",
        "decided_at": _iso(decided),
        "cause_event_id": "e1",
    }
    if with_until_ms:
        decision["until_ms"] = until_ms
    return decision


def _produce(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any]]]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for key, value in records:
        producer.send(topic, key=key.encode(), value=orjson.dumps(value))
    producer.flush()
    producer.close()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "fatigue.cli", *args],
        cwd=REPO,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


@pytest.fixture
def prefix(redis_key_prefix: str) -> str:
    return redis_key_prefix.rstrip(":")


def test_transactional_and_service_mail_pass_a_blocked_customer(redis_client: redis.Redis, prefix: str):
    # unsubscribed from marketing; a password reset or a bill must still go out (quiet hours do not apply either)
    redis_client.set(block_key(prefix, "email", "u1"), orjson.dumps(_block("u1", "email", "unsubscribe", None)))
    check = PreSendCheck(redis_client, prefix=prefix)
    assert check.is_allowed("u1", "email", _now()).reason == "unsubscribe"
    assert check.is_allowed("u1", "email", _now(), category="transactional").allowed
    assert check.is_allowed("u1", "email", _now(), category="service").allowed
    assert [verdict.allowed for _, verdict in check.filter(["u1"], "email", _now(), category="transactional")] == [True]
    # a policy that counts service holds service mail back like marketing
    default = load_policy(REPO / "config/policies/default.toml")
    counting_service = dataclasses.replace(default, counted_categories=frozenset({"marketing", "service"}))
    strict = PreSendCheck(redis_client, prefix=prefix, policy=counting_service)
    assert strict.is_allowed("u1", "email", _now(), category="service").reason == "unsubscribe"
    assert strict.is_allowed("u1", "email", _now(), category="transactional").allowed


def test_filter_cli_takes_the_message_category(redis_client: redis.Redis, prefix: str, tmp_path: Path):
    redis_client.set(block_key(prefix, "email", "u1"), orjson.dumps(_block("u1", "email", "unsubscribe", None)))
    audience = tmp_path / "audience.txt"
    audience.write_text("u1\nu2\n")
    env = {"FATIGUE_REDIS_PREFIX": prefix}
    marketing = _cli("filter", "--channel", "email", str(audience), env=env)
    assert (marketing.returncode, marketing.stdout) == (0, b"u2\n"), marketing.stderr
    bills = _cli("filter", "--channel", "email", "--category", "transactional", str(audience), env=env)
    assert (bills.returncode, bills.stdout) == (0, b"u1\nu2\n"), bills.stderr


@pytest.mark.parametrize("channel", ["Email", "mail", "e-mail", ""])
def test_a_misspelt_channel_is_an_error_not_an_allowed(redis_client: redis.Redis, prefix: str, channel: str):
    # no key exists under a misspelt channel: answering "allowed" would send to someone who complained
    redis_client.set(block_key(prefix, "email", "u1"), orjson.dumps(_block("u1", "email", "complaint", None)))
    check = PreSendCheck(redis_client, prefix=prefix)
    with pytest.raises(ValueError, match="unknown channel"):
        check.is_allowed("u1", channel, _now())
    with pytest.raises(ValueError, match="unknown channel"):
        list(check.filter(["u1"], channel, _now()))
    with pytest.raises(ValueError, match="unknown category"):
        check.is_allowed("u1", "email", _now(), category="promo")


def test_a_follower_honours_the_contract_until_alone(bootstrap_servers: str, topic_factory: Any):
    # `until_ms` is our extension; a decision with only the contract's `until` expires at it all the same
    topic = topic_factory("blocks", partitions=1, config=COMPACT)
    now = _now()
    _produce(
        bootstrap_servers,
        topic,
        [
            ("call:gone", _block("gone", "call", "cap", now - 60_000, with_until_ms=False)),
            ("call:held", _block("held", "call", "cap", now + 3_600_000, with_until_ms=False)),
        ],
    )
    follower = BlockFollower(bootstrap_servers, topic, channel="call")
    try:
        assert follower.bootstrap(30) == 1
        assert follower.blocked("gone", "call") is None
        assert follower.blocked("held", "call", now + 3_599_999) is not None
        assert follower.blocked("held", "call", now + 3_600_000) is None
    finally:
        follower.close()


def test_a_follower_does_not_answer_for_a_channel_it_does_not_follow(bootstrap_servers: str, topic_factory: Any):
    topic = topic_factory("blocks", partitions=1, config=COMPACT)
    _produce(bootstrap_servers, topic, [("sms:a", _block("a", "sms", "sms_stop", None))])
    follower = BlockFollower(bootstrap_servers, topic, channel="call")
    try:
        follower.bootstrap(30)
        with pytest.raises(ValueError, match="follows call only"):
            follower.blocked("a", "sms")  # None would read as "ok to text" a customer who sent STOP
        assert follower.blocked("a", "call") is None
    finally:
        follower.close()


def test_an_unknown_customer_zone_falls_back_to_the_policy_default(redis_client: redis.Redis, prefix: str, tmp_path):
    source = (REPO / "config/policies/default.toml").read_text()
    assert 'default_timezone = "UTC"' in source
    path = tmp_path / "tokyo.toml"
    path.write_text(source.replace('default_timezone = "UTC"', 'default_timezone = "Asia/Tokyo"'))
    prefs = {
        "customer_id": "z",
        "timezone": "Mars/Olympus",
        "quiet_hours": {"email": {"start": "09:00", "end": "11:00"}},
    }
    redis_client.set(prefs_key(prefix, "z"), orjson.dumps(prefs))
    check = PreSendCheck(redis_client, prefix=prefix, policy=load_policy(path))
    ten_utc = int(datetime(2026, 11, 23, 10, 0, tzinfo=UTC).timestamp() * 1000)  # 19:00 in Tokyo
    one_utc = int(datetime(2026, 11, 23, 1, 0, tzinfo=UTC).timestamp() * 1000)  # 10:00 in Tokyo
    assert check.is_allowed("z", "email", ten_utc).allowed
    assert check.is_allowed("z", "email", one_utc).reason == "quiet_hours"


def test_inspect_without_a_worker_is_a_clean_error():
    done = _cli("inspect", "cust-1", "--url", "http://127.0.0.1:1")
    assert done.returncode == 2
    assert b"no worker answers" in done.stderr and b"Traceback" not in done.stderr


def test_filter_of_a_missing_audience_file_is_a_usage_error():
    done = _cli("filter", "--channel", "email", "/nonexistent/audience.txt")
    assert done.returncode == 2
    assert b"cannot read the audience" in done.stderr and b"Traceback" not in done.stderr


def test_filter_removes_a_line_that_is_not_utf8_and_counts_it(redis_url: str, prefix: str, tmp_path: Path):
    audience = tmp_path / "audience.txt"
    audience.write_bytes(b"a\n\xff\xfe-bad\nc\n")
    done = _cli("filter", "--channel", "email", str(audience), env={"FATIGUE_REDIS_PREFIX": prefix})
    assert (done.returncode, done.stdout) == (0, b"a\nc\n"), done.stderr
    assert b"3 ids, 2 allowed, 1 removed (invalid_id 1)" in done.stderr


# --- the pre-send verdict is the guard's own judgement of that instant -------------------------------------

ZONES = ["UTC", "Asia/Tokyo", "America/New_York", "Europe/Paris", "Australia/Lord_Howe", "Asia/Kathmandu", None]
BASE = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)


def _event(**body: Any) -> bytes:
    body.setdefault("customer_id", "k")
    return orjson.dumps(body)


@pytest.mark.parametrize("policy_name", ["default", "tcpa"])
def test_the_quiet_hours_verdict_is_what_the_engine_counts_as_a_violation(
    redis_client: redis.Redis, prefix: str, policy_name: str
):
    policy = load_policy(REPO / f"config/policies/{policy_name}.toml")
    check = PreSendCheck(redis_client, prefix=prefix, policy=policy)
    rng = random.Random(7)
    mismatches = []
    quiet_seen = 0
    for i in range(400):
        channel = rng.choice(["email", "sms", "call"])
        zone = rng.choice(ZONES)
        start, end = rng.randrange(1440), rng.randrange(1440)
        if rng.random() < 0.2:
            end = (start + 1) % 1440
        pref = {
            "type": "preference",
            "event_id": f"p{i}",
            "ts": BASE,
            "quiet_hours": {"start": f"{start // 60:02d}:{start % 60:02d}", "end": f"{end // 60:02d}:{end % 60:02d}"},
        }
        if rng.random() < 0.5:
            pref["channel"] = channel
        if zone is not None:
            pref["timezone"] = zone
        # an instant within a day after BASE, near that minute in some zone, seconds random
        at = BASE + rng.randrange(0, 270 * 86_400_000 // 60_000) * 60_000 + rng.randrange(60_000)
        replay = Replay(Guard(policy))
        replay.feed(_event(**pref))
        step = replay.feed(_event(type="contact", event_id=f"c{i}", ts=at, channel=channel))
        quiet_violation = any(v["kind"] == "quiet_hours" for v in step.violations)
        redis_client.set(prefs_key(prefix, "k"), orjson.dumps(preferences_view(replay.states["k"])))
        verdict = check.is_allowed("k", channel, at)
        quiet_seen += quiet_violation
        if verdict.allowed == quiet_violation:
            mismatches.append((pref, at, channel, verdict, step.violations))
    assert not mismatches, mismatches[:3]
    assert quiet_seen > 50


def test_a_block_ends_at_until_for_the_check_as_for_the_engine(redis_client: redis.Redis, prefix: str):
    """Blocked on [decided, until): a contact at until-1 is a 'blocked' violation and the pre-send check refuses;
    at until it is neither."""
    policy = load_policy(REPO / "config/policies/default.toml")
    check = PreSendCheck(redis_client, prefix=prefix)
    t0 = BASE
    for offset, expect_blocked in ((-1, True), (0, False)):
        replay = Replay(Guard(policy))
        decisions = []
        for n, ts in enumerate((t0, t0 + 3_600_000)):
            decisions += replay.feed(_event(type="contact", event_id=f"s{n}", ts=ts, channel="sms")).decisions
        decision = decisions[-1]
        assert decision["action"] == "block"
        redis_client.set(block_key(prefix, "sms", "k"), orjson.dumps(decision))
        at = decision["until_ms"] + offset
        step = replay.feed(_event(type="contact", event_id="probe", ts=at, channel="sms"))
        violated = any(v["kind"] == "blocked" for v in step.violations)
        assert violated is expect_blocked
        assert check.is_allowed("k", "sms", at).allowed is (not expect_blocked)
