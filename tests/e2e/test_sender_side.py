"""Sender side on the real stack: dialers follow the block topic, email platforms check Redis, one customer is
inspected (right of access) and erased (right to erasure)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import redis

from fatigue.engine import Guard
from fatigue.inspect import explain
from fatigue.policy import load_policy
from fatigue.replay import Replay
from fatigue.testing import DAY, HOUR
from fatigue.timeutil import parse_iso_ms
from streams.redis_keys import block_key, customer_tag, position_key, prefs_key
from streams.sender import BlockFollower, PreSendCheck
from tests.e2e.harness import GuardDeployment, free_port


def _customer_keys(prefix: str, customer: str) -> str:
    """A SCAN pattern of every key of one customer (braces are not special in Redis glob patterns)."""
    return f"{prefix}:{customer_tag(customer)}:*"


def _event(kind: str, customer: str, ts: int, event_id: str, **fields: object) -> tuple[bytes, bytes]:
    body = {"type": kind, "event_id": event_id, "customer_id": customer, "ts": ts, **fields}
    return customer.encode(), orjson.dumps(body)


def _history(now: int) -> list[tuple[bytes, bytes]]:
    """A few customers with blocks of every kind, some already expired."""
    messages = []
    for index in range(30):
        customer = f"c{index:03d}"
        base = now - 2 * DAY - index * HOUR
        messages.append(_event("contact", customer, base, f"{customer}-1", channel="sms"))
        messages.append(_event("contact", customer, base + HOUR, f"{customer}-2", channel="sms"))  # sms cap
        if index % 3 == 0:
            messages.append(_event("unsubscribe", customer, base + 2 * HOUR, f"{customer}-3", channel="email"))
        if index % 5 == 0:
            messages.append(_event("call_ended", customer, base + 3 * HOUR, f"{customer}-4", duration_s=3))
        if index % 7 == 0:
            messages.append(
                _event(
                    "preference",
                    customer,
                    base + 4 * HOUR,
                    f"{customer}-5",
                    timezone="Asia/Tokyo",
                    quiet_hours={"start": "00:00", "end": "23:59"},
                )
            )
    messages.append(_event("contact", "old", now - 20 * DAY, "old-1", channel="call"))  # expired long ago
    return messages


def _clock(minute: int) -> str:
    minute %= 1440
    return f"{minute // 60:02d}:{minute % 60:02d}"


def _replay(
    deployment: GuardDeployment, messages: list[tuple[bytes, bytes]]
) -> tuple[Guard, Replay, dict[str, dict[str, Any]]]:
    """The replay of ``messages``, and the last decision it published per decisions-topic key (with its evidence,
    which the states do not keep)."""
    guard = Guard(load_policy(deployment.policy))
    replay = Replay(guard, check_key=True, partitions=deployment.partitions)
    published: dict[str, dict[str, Any]] = {}
    for key, value in messages:
        for decision in replay.feed(value, key).decisions:
            published[f"{decision['channel']}:{decision['customer_id']}"] = decision
    return guard, replay, published


def test_dialer_follower_sees_current_then_live_blocks(deployment_factory: Callable[..., GuardDeployment]):
    deployment = deployment_factory()
    deployment.create_topics()
    now = int(time.time() * 1000)
    history = _history(now)
    deployment.start_worker("w1")
    deployment.produce(history)
    deployment.wait_until_settled(stable_s=6)

    _, _, published = _replay(deployment, history)
    expected = {
        key: d
        for key, d in published.items()
        if d["action"] == "block" and (d["until_ms"] is None or d["until_ms"] > now)
    }
    follower = BlockFollower(deployment.bootstrap, deployment.topics["decisions"])
    try:
        assert follower.bootstrap() == len(expected)
        assert follower.active(now) == expected
        print(f"\nfollower bootstrapped {len(expected)} blocks in force")

        # live: a new block, and an opt-in that lifts an earlier unsubscribe
        changes: list[tuple[str, object]] = []
        follower.on_change = lambda key, decision: changes.append((key, decision))
        deployment.produce(
            [
                _event("sms_stop", "c001", now, "live-1"),
                _event("preference", "c000", now, "live-2", channel="email", opt_out=False),
            ]
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            follower.blocked("c000", "email") or not follower.blocked("c001", "sms")
        ):
            follower.poll(500)
        assert follower.blocked("c000", "email") is None, "the opt-in must lift the unsubscribe"
        blocked = follower.blocked("c001", "sms")
        assert blocked is not None and blocked["reason"] in ("sms_stop", "cap")
        assert ("email:c000", None) not in changes  # an allow arrives as a decision, not as a bare delete
        assert any(key == "email:c000" and decision and decision["action"] == "allow" for key, decision in changes)
    finally:
        follower.close()

    # follow --channel call only keeps call decisions
    calls = BlockFollower(deployment.bootstrap, deployment.topics["decisions"], channel="call")
    try:
        calls.bootstrap()
        assert calls.active() and all(key.startswith("call:") for key in calls.active())
    finally:
        calls.close()


def test_bulk_filter_equals_is_allowed_per_id(redis_url: str, unique_name: Callable[[str], str]):
    prefix = unique_name("pre")
    client = redis.Redis.from_url(redis_url)
    now = int(time.time() * 1000)
    # quiet hours from two hours before to two hours after now, in UTC (wrapping midnight when it must)
    minute = (now // 60_000) % 1440
    quiet = {"start": _clock(minute - 120), "end": _clock(minute + 120)}
    try:
        pipe = client.pipeline()
        for index in range(3000):
            customer = f"a{index}"
            if index % 4 == 0:
                block = {"action": "block", "reason": "cap", "until": None, "until_ms": now + DAY}
                pipe.set(block_key(prefix, "email", customer), orjson.dumps(block), pxat=now + DAY)
            if index % 4 == 1:  # a stale value past its until (the guard would have expired it)
                pipe.set(
                    block_key(prefix, "email", customer),
                    orjson.dumps({"action": "block", "reason": "cap", "until_ms": now - 1000}),
                )
            if index % 10 == 3:
                prefs = {"timezone": "UTC", "quiet_hours": {"email": quiet}}
                pipe.set(prefs_key(prefix, customer), orjson.dumps(prefs))
        pipe.execute()
        check = PreSendCheck(client, prefix=prefix)
        audience = [f"a{index}" for index in range(3000)] + ["nobody"]
        bulk = dict(check.filter(audience, "email", now, batch=700))
        single = {customer: check.is_allowed(customer, "email", now) for customer in audience}
        assert bulk == single
        assert sum(not verdict.allowed for verdict in bulk.values()) == 750 + 300  # blocked + in quiet hours
        assert bulk["nobody"].allowed and not bulk["a0"].allowed and bulk["a1"].allowed
        assert bulk["a3"].reason == "quiet_hours"
    finally:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def test_inspect_matches_replay_and_erase_leaves_only_the_opt_out(
    deployment_factory: Callable[..., GuardDeployment],
):
    deployment = deployment_factory()
    deployment.create_topics()
    now = int(time.time() * 1000)
    history = _history(now)
    port = free_port()
    deployment.start_worker("w1", "--web-port", str(port))
    deployment.produce(history)
    deployment.wait_until_settled(stable_s=6)
    guard, replay, _ = _replay(deployment, history)

    def inspect(customer: str) -> dict[str, object] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/customers/{customer}/", timeout=10) as response:
                return orjson.loads(response.read())  # type: ignore[no-any-return]
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    for customer in ("c000", "c005", "c007", "old"):
        view = inspect(customer)
        assert view is not None
        at = parse_iso_ms(str(view["at"]))
        assert at is not None
        assert view == orjson.loads(orjson.dumps(explain(guard, replay.states[customer], at)))
    assert inspect("never-seen") is None

    # erase c000: unsubscribed from email (suppression stays), sms-capped, hung up on a call, has preferences;
    # erase c001: sms-capped only, so nothing at all may remain
    deployment.produce([_event("erase", "c000", now, "erase-c000"), _event("erase", "c001", now, "erase-c001")])
    client = redis.Redis.from_url(deployment.redis_url)
    try:
        deadline = time.monotonic() + 60
        keys: list[bytes] = []
        # what senders read of c000 (its view position stays: offsets only, docs/contract.md, "Redis")
        position = position_key(deployment.redis_prefix, "c000").encode()
        suppression_key = block_key(deployment.redis_prefix, "email", "c000").encode()
        while time.monotonic() < deadline:
            keys = sorted(client.scan_iter(match=_customer_keys(deployment.redis_prefix, "c000")))
            keys = [key for key in keys if key != position]
            if keys == [suppression_key]:
                break
            time.sleep(0.5)
        assert keys == [suppression_key]
        suppression = orjson.loads(client.get(keys[0]) or b"{}")
        assert suppression["reason"] == "unsubscribe" and suppression["evidence"]["erased"] is True
        assert [rule["rule_id"] for rule in suppression["evidence"]["rules"]] == ["opt_out.unsubscribe"]
        assert client.get(prefs_key(deployment.redis_prefix, "c000")) is None
    finally:
        client.close()
    assert inspect("c001") is None  # no state left
    client = redis.Redis.from_url(deployment.redis_url)
    try:
        # nothing a sender reads; the view's position hash stays, offsets only (docs/contract.md, "Redis")
        left = set(client.scan_iter(match=_customer_keys(deployment.redis_prefix, "c001")))
        assert left <= {position_key(deployment.redis_prefix, "c001").encode()}
    finally:
        client.close()
    view = inspect("c000")
    assert view is not None
    assert view["contacts_kept"] == {"email": [], "sms": [], "call": []}
    assert view["signals"]["short_hangups"] == []  # type: ignore[index]
    assert view["newest_event_at"] is None
    assert [block["channel"] for block in view["active_blocks"]] == ["email"]  # type: ignore[union-attr]
    # on the decisions topic, the latest record per key of c000 is the suppression or a tombstone
    latest: dict[bytes, bytes | None] = {}
    for key, value, _ in deployment.read_topic("decisions"):
        if key is not None and (key.endswith(b":c000") or key.endswith(b":c001")):
            latest[key] = value
    assert latest[b"email:c000"] is not None
    assert latest[b"sms:c000"] is None and latest.get(b"call:c000") is None
    assert all(value is None for key, value in latest.items() if key.endswith(b":c001"))
