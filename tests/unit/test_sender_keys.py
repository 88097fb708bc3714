"""PreSendCheck's key handling without a Redis: the keys it reads are the layout's (streams.redis_keys), a customer's
keys share one slot whatever the id, the bulk lookup's argument packing round-trips every id, and which errors
count as a cluster topology change (retried on a fresh slot map) rather than a broken script."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fatigue.events import CHANNELS
from streams.redis_keys import block_key, customer_tag, prefs_key
from streams.sender import ALLOWED, PreSendCheck, Verdict, _around_id, _hits, _packed_ids, _topology_error

ODD_IDS = ["cust-1", "", "a}b", "{x}", "}", "{", "c:{d}", "é-ü-\u4e2d", "line\nbreak", "nul\x00byte", "x" * 300]


@pytest.mark.parametrize("customer", ODD_IDS)
@pytest.mark.parametrize("channel", CHANNELS)
def test_the_script_builds_the_layout_s_keys_from_head_id_and_tail(customer: str, channel: str) -> None:
    # the script concatenates head .. id .. tail: that must be the key the view writes, for any id
    block_head, block_tail = _around_id(lambda cid: block_key("fatigue", channel, cid))
    prefs_head, prefs_tail = _around_id(lambda cid: prefs_key("fatigue", cid))
    assert block_head + customer + block_tail == block_key("fatigue", channel, customer)
    assert prefs_head + customer + prefs_tail == prefs_key("fatigue", customer)


@pytest.mark.parametrize("customer", ODD_IDS)
def test_a_customer_s_keys_and_its_tag_hash_to_one_slot(customer: str) -> None:
    # the bulk filter routes by the slot of the bare tag; the server hashes the full keys
    slot = key_slot(customer_tag(customer).encode())
    keys = [block_key("fatigue", channel, customer) for channel in CHANNELS] + [prefs_key("fatigue", customer)]
    assert {key_slot(key.encode()) for key in keys} == {slot}


def test_ids_are_joined_by_a_separator_none_contains_or_passed_one_by_one() -> None:
    assert _packed_ids(["a", "b", ""]) == ("\n", "a\nb\n")
    assert _packed_ids(["a\nb", "c"]) == ("\x00", "a\nb\x00c")
    assert _packed_ids([""]) == ("\n", "")
    every = ["a\nb", "c\x00d", "e\x1ff"]
    assert _packed_ids(every) == ("", *every)
    for ids in (["a", "b", ""], ["a\nb", "c"], ["", ""], ["x"]):
        sep, joined = _packed_ids(ids)
        assert joined.split(sep) == ids


def test_script_hits_map_back_to_chunk_indexes() -> None:
    hits: dict[int, tuple[bytes | str | None, bytes | str | None]] = {}
    # the node got chunk indexes 4, 7, 9; its reply names the 1st and the 3rd (1-based, as Lua counts)
    _hits([1, b"block", None, 3, None, b"prefs"], [4, 7, 9], hits)
    assert hits == {4: (b"block", None), 9: (None, b"prefs")}


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("lost"),
        RedisTimeoutError("slow"),
        MovedError("3999 127.0.0.1:17002"),
        AskError("3999 127.0.0.1:17002"),
        ClusterDownError("The cluster is down"),
        TryAgainError("later"),
        ResponseError("Script attempted to access a non local key in a cluster node script: 1a2b"),
        ResponseError("Script attempted to execute a command while the cluster is down"),
    ],
)
def test_a_moved_slot_or_a_lost_node_is_a_topology_error(error: Exception) -> None:
    assert _topology_error(error)


@pytest.mark.parametrize(
    "error",
    [
        ResponseError("NOPERM this user has no permissions to run the 'eval' command"),
        ResponseError("ERR Error compiling script (new function): user_script:1: unexpected symbol near '#'"),
    ],
)
def test_a_script_the_server_refuses_is_not_a_topology_error(error: Exception) -> None:
    # these never heal by refreshing the slot map: the check falls back to MGETs instead
    assert not _topology_error(error)


@pytest.mark.parametrize("prefix", ["", "fat{igue", "fatigue}"])
def test_a_prefix_that_would_move_the_hash_tag_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="without braces"):
        PreSendCheck(redis.Redis(), prefix=prefix)


def test_verdicts_from_stored_values() -> None:
    check = PreSendCheck(redis.Redis())  # never connects: verdicts are computed from values
    at = int(datetime(2026, 12, 7, 12, 0, tzinfo=UTC).timestamp() * 1000)
    assert check._verdict(None, None, "email", at) is ALLOWED
    block = b'{"action":"block","reason":"cap","until":"2099-01-01T00:00:00Z","until_ms":4070908800000}'
    assert check._verdict(block, None, "email", at) == Verdict(False, "cap", "2099-01-01T00:00:00Z")
    expired = b'{"action":"block","reason":"cap","until_ms":1}'
    assert check._verdict(expired, None, "email", at) is ALLOWED
    quiet_at_noon = b'{"timezone":"UTC","quiet_hours":{"email":{"start":"11:00","end":"13:00"}}}'
    assert check._verdict(None, quiet_at_noon, "email", at) == Verdict(False, "quiet_hours")
    assert check._verdict(None, quiet_at_noon, "sms", at) is ALLOWED
