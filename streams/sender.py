"""Sender-side clients: what dialers and email platforms embed to honour the guard's decisions.

- :class:`BlockFollower` (dialers): bootstraps the full current block set from the compacted decisions topic, then
  follows it live, keeping an in-memory suppression map with expiries (kafka-python, no consumer group needed),
  reading committed records only (the guard's transactions can abort).
- :class:`PreSendCheck` (email platforms): ``is_allowed`` for one customer and a pipelined bulk ``filter`` over an
  audience, from the Redis keys the guard maintains, honouring the customer's quiet hours in their time zone.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from fatigue.events import CATEGORIES, CHANNELS, is_known_timezone, parse_clock_minute
from fatigue.policy import Policy
from fatigue.timeutil import parse_iso_ms

Decision = dict[str, Any]
ChangeHook = Callable[[str, Decision | None], None]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _in_force(decision: Decision, at_ms: int) -> bool:
    """A block is in force on [decided, until): ``until_ms`` is our extension, ``until`` the contract's field."""
    if decision.get("action") != "block":
        return False
    until = decision.get("until_ms")
    if until is None and isinstance(decision.get("until"), str):
        until = parse_iso_ms(decision["until"])
    return until is None or until > at_ms


def _check_channel(channel: str) -> None:
    # a misspelt channel has no key in Redis and would read as "allowed"
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}: one of {', '.join(CHANNELS)}")


class BlockFollower:
    """The current blocks, as a dialer needs them: ``{channel}:{customer_id}`` -> decision, kept live."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "fatigue.blocks.v1",
        *,
        channel: str | None = None,
        on_change: ChangeHook | None = None,
    ) -> None:
        if channel is not None and channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
        self.topic = topic
        self.channel = channel
        self.on_change = on_change
        self.blocks: dict[str, Decision] = {}
        # read_committed: the guard writes decisions in transactions, and an aborted one's records (still in the
        # log) must never lift or impose a block; the end offsets are then the last stable ones
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            enable_auto_commit=False,
            group_id=None,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
        )
        partitions = self._consumer.partitions_for_topic(topic) or set()
        if not partitions:
            self._consumer.close()
            raise ValueError(f"topic {topic} does not exist")
        self._partitions = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        self._consumer.assign(self._partitions)
        self._consumer.seek_to_beginning(*self._partitions)

    def bootstrap(self, timeout_s: float = 60.0) -> int:
        """Read the topic up to its current end (its last stable offset); returns how many blocks are in force.

        The position passes transaction markers and aborted records too, so this ends also when the last offset
        before the end is a marker, which no consumer ever receives.
        """
        ends = self._consumer.end_offsets(self._partitions)
        deadline = time.monotonic() + timeout_s
        while any(self._consumer.position(tp) < ends[tp] for tp in self._partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"bootstrap of {self.topic} did not reach the end in {timeout_s}s")
            self.poll(500)
        return len(self.active())

    def poll(self, timeout_ms: int = 1000) -> int:
        """Apply whatever arrived; returns the number of records read."""
        read = 0
        for records in self._consumer.poll(timeout_ms=timeout_ms, max_records=10_000).values():
            for record in records:
                read += 1
                if record.key is not None:
                    self._apply(record.key.decode(), record.value)
        return read

    def _apply(self, key: str, value: bytes | None) -> None:
        channel = key.split(":", 1)[0]
        if self.channel is not None and channel != self.channel:
            return
        decision = orjson.loads(value) if value is not None else None
        if decision is not None and decision.get("action") == "block":
            self.blocks[key] = decision
        else:
            self.blocks.pop(key, None)  # an allow or a tombstone lifts it
        if self.on_change is not None:
            self.on_change(key, decision)

    def follow(self, stop: Callable[[], bool] = lambda: False) -> None:
        """Keep applying new decisions until ``stop()`` says so."""
        while not stop():
            self.poll(500)

    def active(self, at_ms: int | None = None) -> dict[str, Decision]:
        at = _now_ms() if at_ms is None else at_ms
        return {key: decision for key, decision in self.blocks.items() if _in_force(decision, at)}

    def blocked(self, customer_id: str, channel: str, at_ms: int | None = None) -> Decision | None:
        """The block in force on ``channel`` for this customer, or None when the channel is open."""
        _check_channel(channel)
        if self.channel is not None and channel != self.channel:
            # this follower never read that channel's decisions: None would wrongly read as "open"
            raise ValueError(f"this follower follows {self.channel} only, not {channel}")
        decision = self.blocks.get(f"{channel}:{customer_id}")
        at = _now_ms() if at_ms is None else at_ms
        return decision if decision is not None and _in_force(decision, at) else None

    def close(self) -> None:
        self._consumer.close()


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None  # a block reason, or "quiet_hours"
    until: str | None = None


ALLOWED = Verdict(True)


class PreSendCheck:
    """Pre-send lookups against the guard's Redis view (one customer, or an audience in bulk).

    ``category`` is the message's, as in the contract: only the categories the policy counts (marketing; service
    when the policy opts it in) are ever held back. Bills, OTPs and reminders are always allowed, blocks and quiet
    hours notwithstanding, without a lookup.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "fatigue",
        policy: Policy | None = None,
        default_timezone: str = "UTC",
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.policy_quiet = policy.quiet_hours if policy is not None else None
        self.default_timezone = policy.default_timezone if policy is not None else default_timezone
        self.guarded_categories = policy.counted_categories if policy is not None else frozenset({"marketing"})

    def _guards(self, channel: str, category: str) -> bool:
        _check_channel(channel)
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}: one of {', '.join(CATEGORIES)}")
        return category in self.guarded_categories

    def is_allowed(
        self, customer_id: str, channel: str, at_ms: int | None = None, *, category: str = "marketing"
    ) -> Verdict:
        if not self._guards(channel, category):
            return ALLOWED
        at = _now_ms() if at_ms is None else at_ms
        block, prefs = self.client.mget(
            [f"{self.prefix}:block:{channel}:{customer_id}", f"{self.prefix}:prefs:{customer_id}"]
        )
        return self._verdict(block, prefs, channel, at)

    def filter(
        self,
        customer_ids: Iterable[str],
        channel: str,
        at_ms: int | None = None,
        batch: int = 5_000,
        *,
        category: str = "marketing",
    ) -> Iterator[tuple[str, Verdict]]:
        """``(customer_id, verdict)`` for every id, looked up ``batch`` ids per round trip."""
        if not self._guards(channel, category):
            for customer_id in customer_ids:
                yield customer_id, ALLOWED
            return
        at = _now_ms() if at_ms is None else at_ms
        chunk: list[str] = []
        for customer_id in customer_ids:
            chunk.append(customer_id)
            if len(chunk) >= batch:
                yield from self._filter_chunk(chunk, channel, at)
                chunk = []
        if chunk:
            yield from self._filter_chunk(chunk, channel, at)

    def _filter_chunk(self, chunk: list[str], channel: str, at: int) -> Iterator[tuple[str, Verdict]]:
        block_prefix = f"{self.prefix}:block:{channel}:"
        prefs_prefix = f"{self.prefix}:prefs:"
        pipe = self.client.pipeline(transaction=False)
        pipe.mget([block_prefix + customer_id for customer_id in chunk])
        pipe.mget([prefs_prefix + customer_id for customer_id in chunk])
        blocks, prefs = pipe.execute()
        policy_quiet = self.policy_quiet is not None and channel in self.policy_quiet.channels
        for customer_id, block, pref in zip(chunk, blocks, prefs, strict=True):
            if block is None and pref is None and not policy_quiet:
                yield customer_id, ALLOWED  # the common case: nothing stored about this customer
            else:
                yield customer_id, self._verdict(block, pref, channel, at)

    def _verdict(self, block: bytes | str | None, prefs: bytes | str | None, channel: str, at: int) -> Verdict:
        if block is not None:
            decision = orjson.loads(block)
            if _in_force(decision, at):
                return Verdict(False, decision["reason"], decision.get("until"))
        view = orjson.loads(prefs) if prefs is not None else {}
        zone = view.get("timezone") or self.default_timezone
        ranges: list[tuple[int, int]] = []
        own = (view.get("quiet_hours") or {}).get(channel)
        if own:
            start, end = parse_clock_minute(own.get("start")), parse_clock_minute(own.get("end"))
            if start is not None and end is not None:
                ranges.append((start, end))
        if self.policy_quiet is not None and channel in self.policy_quiet.channels:
            ranges.append((self.policy_quiet.start_minute, self.policy_quiet.end_minute))
        if not ranges:
            return ALLOWED
        if not is_known_timezone(zone):  # a zone this machine's tz database lacks: as if the customer had none
            zone = self.default_timezone if is_known_timezone(self.default_timezone) else "UTC"
        return Verdict(False, "quiet_hours") if _inside_any(ranges, at, zone) else ALLOWED


def _inside_any(ranges: list[tuple[int, int]], at_ms: int, zone: str) -> bool:
    local = datetime.fromtimestamp(at_ms / 1000, ZoneInfo(zone))
    minute = local.hour * 60 + local.minute
    return any((start <= minute < end) if start <= end else (minute >= start or minute < end) for start, end in ranges)


def removed_by_reason(verdicts: Iterable[tuple[str, Verdict]]) -> tuple[list[str], Counter[str]]:
    """Split verdicts into the allowed ids and a count of removed ids per reason."""
    allowed: list[str] = []
    removed: Counter[str] = Counter()
    for customer_id, verdict in verdicts:
        if verdict.allowed:
            allowed.append(customer_id)
        else:
            removed[verdict.reason or "blocked"] += 1
    return allowed, removed
