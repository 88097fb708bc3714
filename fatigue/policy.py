"""The declarative policy: business rules loaded from a TOML file in config/, validated strictly.

Unknown keys are errors (a typo must not silently disable a rule), durations are parsed once, every rule has a
stable id, and the file carries a ``version`` that is stamped on every decision. Runtime settings (brokers,
Redis, ports) live elsewhere: this is only what the business decides.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fatigue.events import (
    CHANNELS,
    DEFAULT_MAX_EVENT_BYTES,
    MAX_CUSTOMER_CAP_COUNT,
    MAX_CUSTOMER_CAP_WINDOW_MS,
    is_known_timezone,
    parse_clock_minute,
)
from fatigue.timeutil import format_duration, parse_duration_ms

ALL_CHANNELS = "all"
COUNTABLE_CATEGORIES = ("marketing", "service")
# Any duration in a policy: events end at 2100 (fatigue.timeutil.MAX_TS_MS), so an `until` stays before 2110.
MAX_POLICY_DURATION_MS = 3650 * 86_400_000


class PolicyError(ValueError):
    """The policy file is invalid; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class CapRule:
    """At most ``limit`` counted contacts in any half-open window ``(t - window, t]``."""

    rule_id: str
    channel: str | None  # None: all channels together
    limit: int
    window_ms: int

    @property
    def reason(self) -> str:
        return "cap" if self.channel else "global_cap"

    @property
    def text(self) -> str:
        return f"{self.channel or 'all channels'} <= {self.limit} per {format_duration(self.window_ms)}"


@dataclass(frozen=True, slots=True)
class HangupRule:
    """``count`` short hang-ups within ``(h - window, h]`` block calls until ``h + block`` (h: latest hang-up)."""

    rule_id: str
    count: int
    window_ms: int
    block_ms: int
    threshold_s: float

    @property
    def text(self) -> str:
        return (
            f"call: {self.count} short hang-up{'s' if self.count > 1 else ''} (< {self.threshold_s:g}s) "
            f"in {format_duration(self.window_ms)} -> blocked {format_duration(self.block_ms)}"
        )


@dataclass(frozen=True, slots=True)
class UnreadRule:
    """``streak`` marketing emails in a row without a human open within ``deadline`` block email."""

    rule_id: str
    deadline_ms: int
    streak: int
    block_ms: int

    @property
    def text(self) -> str:
        return (
            f"email: {self.streak} unread in a row (no open within {format_duration(self.deadline_ms)}) "
            f"-> blocked {format_duration(self.block_ms)}"
        )


@dataclass(frozen=True, slots=True)
class ComplaintRule:
    rule_id: str
    channel_block_ms: int
    other_channels_block_ms: int

    def text(self, complained_channel: str, blocked_channel: str) -> str:
        same = complained_channel == blocked_channel
        block_ms = self.channel_block_ms if same else self.other_channels_block_ms
        return f"complaint about {complained_channel} -> {blocked_channel} blocked {format_duration(block_ms)}"


@dataclass(frozen=True, slots=True)
class ConversationRule:
    """No call within ``block`` after an answered call of at least ``min_duration_s`` (Reg F style)."""

    rule_id: str
    min_duration_s: float
    block_ms: int

    @property
    def text(self) -> str:
        return f"call: none within {format_duration(self.block_ms)} after a conversation (>= {self.min_duration_s:g}s)"


@dataclass(frozen=True, slots=True)
class QuietHoursRule:
    """Policy-wide quiet hours in each customer's time zone; contacts inside them are sender violations."""

    rule_id: str
    start_minute: int
    end_minute: int
    channels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Policy:
    version: str
    description: str = ""
    counted_categories: frozenset[str] = frozenset({"marketing"})
    late_grace_ms: int = 86_400_000
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_contacts_per_channel: int = 256
    max_event_ids: int = 512
    max_signals: int = 64
    default_timezone: str = "UTC"
    caps: tuple[CapRule, ...] = ()
    hangup_threshold_s: float = 30.0
    hangup_rules: tuple[HangupRule, ...] = ()
    hangup_suggest: bool = True
    unread: UnreadRule | None = None
    unread_suggest: bool = True
    complaint: ComplaintRule | None = None
    conversation: ConversationRule | None = None
    quiet_hours: QuietHoursRule | None = None
    source: str = field(default="<memory>", compare=False)

    @property
    def rule_ids(self) -> tuple[str, ...]:
        ids = [rule.rule_id for rule in self.caps] + [rule.rule_id for rule in self.hangup_rules]
        for optional in (self.unread, self.complaint, self.conversation, self.quiet_hours):
            if optional is not None:
                ids.append(optional.rule_id)
        return tuple(ids)

    @property
    def contact_retention_ms(self) -> int:
        """How far back counted contacts must be kept: the longest cap window (customer caps add their own)."""
        return max((rule.window_ms for rule in self.caps), default=0)

    @property
    def hangup_retention_ms(self) -> int:
        """How far back hang-ups must be kept: a block lasts ``block`` from the hang-up that completes the count,
        and that count reaches back ``window`` before it."""
        return max((rule.window_ms + rule.block_ms for rule in self.hangup_rules), default=0)


def load_policy(path: str | Path) -> Policy:
    """Read and validate a TOML policy file. Raises :class:`PolicyError` with the offending key named."""
    source = Path(path)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except OSError as error:
        raise PolicyError(f"{source}: cannot read policy: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise PolicyError(f"{source}: not valid TOML: {error}") from None
    return policy_from_mapping(data, source=str(source))


def policy_from_mapping(data: Mapping[str, Any], *, source: str = "<memory>") -> Policy:
    reader = _Reader(source)
    return reader.policy(data)


class _Reader:
    """Walks the parsed TOML, checking keys and types and naming the path of anything wrong."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, message: str) -> PolicyError:
        return PolicyError(f"{self.source}: {where}: {message}")

    def table(
        self, value: Any, where: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(where, "must be a table")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.fail(where, f"unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
        missing = sorted(required - set(value))
        if missing:
            raise self.fail(where, f"missing key(s) {', '.join(missing)}")
        return dict(value)

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, "must be a non-empty string")
        return value

    def integer(self, value: Any, where: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(where, f"must be an integer in {low}..{high}")
        return value

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, "must be true or false")
        return value

    def duration(self, value: Any, where: str) -> int:
        try:
            duration_ms = parse_duration_ms(value)
        except ValueError as error:
            raise self.fail(where, str(error)) from None
        if duration_ms <= 0:
            raise self.fail(where, "must be positive")
        if duration_ms > MAX_POLICY_DURATION_MS:
            # an `until` must stay a date: a longer block would stop the worker at its first firing
            raise self.fail(where, "must be at most 3650d (use an opt-out for a block without end)")
        return duration_ms

    def seconds(self, value: Any, where: str) -> float:
        return self.duration(value, where) / 1000

    def clock(self, value: Any, where: str) -> int:
        minute = parse_clock_minute(value)
        if minute is None:
            raise self.fail(where, "must be HH:MM (00:00..23:59)")
        return minute

    def policy(self, data: Mapping[str, Any]) -> Policy:
        top = self.table(
            data,
            "policy",
            {
                "version",
                "description",
                "counting",
                "input",
                "state",
                "customer",
                "caps",
                "short_hangups",
                "unread",
                "complaint",
                "conversation",
                "quiet_hours",
            },
            {"version"},
        )
        version = self.string(top["version"], "version")
        description = top.get("description", "")
        if not isinstance(description, str):
            raise self.fail("description", "must be a string")

        counting = self.table(top.get("counting", {}), "counting", {"categories"})
        categories = counting.get("categories", ["marketing"])
        if (
            not isinstance(categories, list)
            or not categories
            or any(category not in COUNTABLE_CATEGORIES for category in categories)
        ):
            raise self.fail(
                "counting.categories", "must list marketing and optionally service (transactional never counts)"
            )
        if "marketing" not in categories:
            raise self.fail("counting.categories", "must include marketing")

        inputs = self.table(top.get("input", {}), "input", {"late_grace", "max_event_bytes"})
        late_grace_ms = self.duration(inputs.get("late_grace", "24h"), "input.late_grace")
        max_event_bytes = self.integer(
            inputs.get("max_event_bytes", DEFAULT_MAX_EVENT_BYTES), "input.max_event_bytes", 256, 1 << 20
        )

        state = self.table(top.get("state", {}), "state", {"max_contacts_per_channel", "max_event_ids", "max_signals"})
        max_contacts = self.integer(
            state.get("max_contacts_per_channel", 256),
            "state.max_contacts_per_channel",
            MAX_CUSTOMER_CAP_COUNT,
            100_000,
        )
        max_event_ids = self.integer(state.get("max_event_ids", 512), "state.max_event_ids", 16, 1_000_000)
        max_signals = self.integer(state.get("max_signals", 64), "state.max_signals", 4, 10_000)

        customer = self.table(top.get("customer", {}), "customer", {"default_timezone"})
        default_timezone = self.string(customer.get("default_timezone", "UTC"), "customer.default_timezone")
        if not is_known_timezone(default_timezone):
            raise self.fail("customer.default_timezone", f"unknown IANA time zone {default_timezone!r}")

        caps = self.caps(top.get("caps", []), max_contacts)
        hangup_threshold_s, hangup_rules, hangup_suggest = self.hangups(top.get("short_hangups"))
        for index, rule in enumerate(hangup_rules):
            if rule.count > max_signals:
                # the state keeps at most max_signals hang-ups: such a rule could never fire
                raise self.fail(
                    f"short_hangups.rules[{index}].count", f"must be at most state.max_signals ({max_signals})"
                )
        unread, unread_suggest = self.unread(top.get("unread"))
        complaint = self.complaint(top.get("complaint"))
        conversation = self.conversation(top.get("conversation"))
        quiet_hours = self.quiet_hours(top.get("quiet_hours"))

        policy = Policy(
            version=version,
            description=description,
            counted_categories=frozenset(categories),
            late_grace_ms=late_grace_ms,
            max_event_bytes=max_event_bytes,
            max_contacts_per_channel=max_contacts,
            max_event_ids=max_event_ids,
            max_signals=max_signals,
            default_timezone=default_timezone,
            caps=caps,
            hangup_threshold_s=hangup_threshold_s,
            hangup_rules=hangup_rules,
            hangup_suggest=hangup_suggest,
            unread=unread,
            unread_suggest=unread_suggest,
            complaint=complaint,
            conversation=conversation,
            quiet_hours=quiet_hours,
            source=self.source,
        )
        seen: set[str] = set()
        for rule_id in policy.rule_ids:
            if rule_id in seen:
                raise self.fail("rules", f"duplicate rule id {rule_id!r}")
            seen.add(rule_id)
        if policy.contact_retention_ms > MAX_CUSTOMER_CAP_WINDOW_MS:
            raise self.fail("caps", "windows longer than 366d are not supported")
        return policy

    def caps(self, value: Any, max_contacts: int) -> tuple[CapRule, ...]:
        if not isinstance(value, list):
            raise self.fail("caps", "must be an array of tables ([[caps]])")
        rules = []
        for index, item in enumerate(value):
            where = f"caps[{index}]"
            table = self.table(item, where, {"id", "channel", "limit", "window"}, {"id", "channel", "limit", "window"})
            channel = table["channel"]
            if channel != ALL_CHANNELS and channel not in CHANNELS:
                raise self.fail(f"{where}.channel", f"must be one of {', '.join(CHANNELS)} or {ALL_CHANNELS}")
            rules.append(
                CapRule(
                    rule_id=self.string(table["id"], f"{where}.id"),
                    channel=None if channel == ALL_CHANNELS else channel,
                    limit=self.integer(table["limit"], f"{where}.limit", 1, max_contacts),
                    window_ms=self.duration(table["window"], f"{where}.window"),
                )
            )
        return tuple(rules)

    def hangups(self, value: Any) -> tuple[float, tuple[HangupRule, ...], bool]:
        if value is None:
            return 30.0, (), True
        table = self.table(value, "short_hangups", {"threshold", "suggest", "rules"}, {"threshold", "rules"})
        threshold_s = self.seconds(table["threshold"], "short_hangups.threshold")
        suggest = self.boolean(table.get("suggest", True), "short_hangups.suggest")
        if not isinstance(table["rules"], list) or not table["rules"]:
            raise self.fail("short_hangups.rules", "must be a non-empty array of tables")
        rules = []
        for index, item in enumerate(table["rules"]):
            where = f"short_hangups.rules[{index}]"
            rule = self.table(item, where, {"id", "count", "window", "block"}, {"id", "count", "window", "block"})
            rules.append(
                HangupRule(
                    rule_id=self.string(rule["id"], f"{where}.id"),
                    count=self.integer(rule["count"], f"{where}.count", 1, 1000),
                    window_ms=self.duration(rule["window"], f"{where}.window"),
                    block_ms=self.duration(rule["block"], f"{where}.block"),
                    threshold_s=threshold_s,
                )
            )
        return threshold_s, tuple(rules), suggest

    def unread(self, value: Any) -> tuple[UnreadRule | None, bool]:
        if value is None:
            return None, True
        keys = {"id", "deadline", "streak", "block"}
        table = self.table(value, "unread", keys | {"suggest"}, keys)
        rule = UnreadRule(
            rule_id=self.string(table["id"], "unread.id"),
            deadline_ms=self.duration(table["deadline"], "unread.deadline"),
            streak=self.integer(table["streak"], "unread.streak", 1, 1000),
            block_ms=self.duration(table["block"], "unread.block"),
        )
        return rule, self.boolean(table.get("suggest", True), "unread.suggest")

    def complaint(self, value: Any) -> ComplaintRule | None:
        if value is None:
            return None
        keys = {"id", "channel_block", "other_channels_block"}
        table = self.table(value, "complaint", keys, keys)
        return ComplaintRule(
            rule_id=self.string(table["id"], "complaint.id"),
            channel_block_ms=self.duration(table["channel_block"], "complaint.channel_block"),
            other_channels_block_ms=self.duration(table["other_channels_block"], "complaint.other_channels_block"),
        )

    def conversation(self, value: Any) -> ConversationRule | None:
        if value is None:
            return None
        keys = {"id", "min_duration", "block"}
        table = self.table(value, "conversation", keys, keys)
        return ConversationRule(
            rule_id=self.string(table["id"], "conversation.id"),
            min_duration_s=self.seconds(table["min_duration"], "conversation.min_duration"),
            block_ms=self.duration(table["block"], "conversation.block"),
        )

    def quiet_hours(self, value: Any) -> QuietHoursRule | None:
        if value is None:
            return None
        keys = {"id", "start", "end", "channels"}
        table = self.table(value, "quiet_hours", keys, {"id", "start", "end"})
        channels = table.get("channels", list(CHANNELS))
        if not isinstance(channels, list) or not channels or any(channel not in CHANNELS for channel in channels):
            raise self.fail("quiet_hours.channels", f"must list channels among {', '.join(CHANNELS)}")
        start_minute = self.clock(table["start"], "quiet_hours.start")
        end_minute = self.clock(table["end"], "quiet_hours.end")
        if start_minute == end_minute:
            raise self.fail("quiet_hours.end", "must differ from start (the range would be empty: leave the table out)")
        return QuietHoursRule(
            rule_id=self.string(table["id"], "quiet_hours.id"),
            start_minute=start_minute,
            end_minute=end_minute,
            channels=tuple(channels),
        )
