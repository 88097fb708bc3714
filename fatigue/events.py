"""The input contract: one JSON object per event, validated strictly into an :class:`Event` or a :class:`Rejection`.

Every rejection carries a machine-readable ``reason`` (``bad_json``, ``missing_field:ts``, ``unknown_channel``...)
so bad input can be routed to a dead-letter topic and counted. Fields the contract does not name are ignored and
never kept: the guard stores no phone numbers, addresses or message bodies, whatever a sender puts in an event.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from fatigue.timeutil import MAX_TS_MS, MIN_TS_MS, parse_duration_ms, parse_iso_ms

CHANNELS: Final = ("email", "sms", "call")
CHANNEL_INDEX: Final = {name: index for index, name in enumerate(CHANNELS)}
CATEGORIES: Final = ("marketing", "service", "transactional")
_CATEGORY_SET: Final = frozenset(CATEGORIES)
EVENT_TYPES: Final = (
    "contact",
    "call_ended",
    "email_opened",
    "unsubscribe",
    "complaint",
    "sms_stop",
    "preference",
    # extension: the right to erasure, sent by a privacy tool; processed in order with the customer's events
    "erase",
)
MAX_ID_CHARS: Final = 128
MAX_LABEL_CHARS: Final = 128
DEFAULT_MAX_EVENT_BYTES: Final = 16_384
# A customer's own cap above this is no cap at all, and the state keeps at most this many contacts per channel.
MAX_CUSTOMER_CAP_COUNT: Final = 256
MAX_CUSTOMER_CAP_WINDOW_MS: Final = 366 * 86_400_000


# Event, Rejection (and the engine's Step) are plain classes, not dataclasses: compiled by mypyc (setup.py), a
# dataclass keeps the __init__ that the dataclasses module generates at run time, interpreted, on every event.


class Rejection:
    """Why an input was refused. ``reason`` is stable and machine readable; ``detail`` is for humans."""

    __slots__ = ("customer_id", "detail", "event_id", "reason")

    def __init__(
        self, reason: str, detail: str = "", event_id: str | None = None, customer_id: str | None = None
    ) -> None:
        self.reason = reason
        self.detail = detail
        self.event_id = event_id
        self.customer_id = customer_id

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "detail": self.detail,
            "event_id": self.event_id,
            "customer_id": self.customer_id,
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rejection) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.reason, self.detail, self.event_id, self.customer_id))

    def __repr__(self) -> str:
        return f"Rejection({self.reason!r}, {self.detail!r}, {self.event_id!r}, {self.customer_id!r})"


_EVENT_FIELDS: Final = (
    "type",
    "event_id",
    "customer_id",
    "ts_ms",
    "channel",
    "category",
    "sender",
    "campaign",
    "ref",
    "duration_s",
    "answered",
    "machine",
    "prefs",
)


class Event:
    """A validated input event. Only contract fields survive validation.

    ``prefs`` (preference events only) holds the fields that were present: ``opt_out`` (bool), ``max_contacts``
    (``(count, window_ms)`` or None to clear), ``quiet_hours`` (``(start_minute, end_minute)`` or None to clear),
    ``timezone`` (IANA name or None to clear).
    """

    __slots__ = _EVENT_FIELDS

    def __init__(
        self,
        type: str,
        event_id: str,
        customer_id: str,
        ts_ms: int,
        channel: str | None = None,
        category: str = "marketing",
        sender: str | None = None,
        campaign: str | None = None,
        ref: str | None = None,
        duration_s: float = 0.0,
        answered: bool = True,
        machine: bool = False,
        prefs: dict[str, Any] | None = None,
    ) -> None:
        self.type = type
        self.event_id = event_id
        self.customer_id = customer_id
        self.ts_ms = ts_ms
        self.channel = channel
        self.category = category
        self.sender = sender
        self.campaign = campaign
        self.ref = ref
        self.duration_s = duration_s
        self.answered = answered
        self.machine = machine
        self.prefs = prefs

    def _fields(self) -> tuple[Any, ...]:
        return (
            self.type,
            self.event_id,
            self.customer_id,
            self.ts_ms,
            self.channel,
            self.category,
            self.sender,
            self.campaign,
            self.ref,
            self.duration_s,
            self.answered,
            self.machine,
            self.prefs,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dataclass it replaced

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={value!r}" for name, value in zip(_EVENT_FIELDS, self._fields(), strict=True))
        return f"Event({shown})"


class _Invalid(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def parse_event(
    raw: bytes | str,
    key: bytes | None = None,
    *,
    check_key: bool = False,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> Event | Rejection:
    """Decode and validate one input message.

    ``key`` is the Kafka message key; with ``check_key`` it must be present and equal the ``customer_id``
    (the table is partitioned by key, so a wrong key would put a customer's state on the wrong partition).
    """
    if len(raw) > max_bytes:
        return Rejection("too_large", f"{len(raw)} bytes > {max_bytes}")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        message = str(error)
        reason = "bad_utf8" if "UTF-8" in message or "surrogate" in message else "bad_json"
        return Rejection(reason, message[:200])
    if not isinstance(body, dict):
        return Rejection("not_object", f"top-level JSON is {type(body).__name__}")
    event_id = body.get("event_id")
    customer_id = body.get("customer_id")
    try:
        event = _fast_validate(body, event_id, customer_id) or _validate(body, event_id, customer_id)
        if check_key:
            if key is None:
                raise _Invalid("missing_key", "message has no key; the key must be the customer_id")
            if key != event.customer_id.encode():
                raise _Invalid("key_mismatch", "message key differs from customer_id")
    except _Invalid as invalid:
        known_id = event_id if isinstance(event_id, str) else None
        known_customer = customer_id if isinstance(customer_id, str) else None
        return Rejection(invalid.reason, invalid.detail, known_id, known_customer)
    return event


def _fast_validate(body: dict[str, Any], event_id: Any, customer_id: Any) -> Event | None:
    """The common well-formed contact, call_ended and email_opened events, checked inline; None for anything else.

    It accepts only what :func:`_validate` accepts, with the same result, and leaves every other message
    (other types, anything malformed) to it, so rejections and their precedence stay exactly its own.
    ``type(x) is str`` stands for ``isinstance``: JSON decoding only ever yields exact built-in types.
    """
    event_type = body.get("type")
    if not (
        type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_CHARS
        and type(customer_id) is str
        and 0 < len(customer_id) <= MAX_ID_CHARS
    ):
        return None
    ts = body.get("ts")
    if type(ts) is str:
        ts_ms = parse_iso_ms(ts) if len(ts) <= 64 else None
        if ts_ms is None:
            return None
    elif type(ts) is int:
        ts_ms = ts
    else:
        return None
    if not MIN_TS_MS <= ts_ms < MAX_TS_MS:
        return None
    if event_type == "contact":
        channel = body.get("channel")
        category = body.get("category", "marketing")
        sender = body.get("sender")
        campaign = body.get("campaign")
        if (
            type(channel) is str
            and channel in CHANNEL_INDEX
            and type(category) is str
            and category in _CATEGORY_SET
            and (sender is None or (type(sender) is str and len(sender) <= MAX_LABEL_CHARS))
            and (campaign is None or (type(campaign) is str and len(campaign) <= MAX_LABEL_CHARS))
        ):
            return Event("contact", event_id, customer_id, ts_ms, channel, category, sender, campaign)
        return None
    if event_type == "call_ended":
        duration = body.get("duration_s")
        answered = body.get("answered", True)
        ref = body.get("ref")
        if (
            (type(duration) is int or (type(duration) is float and math.isfinite(duration)))
            and duration >= 0
            and type(answered) is bool
            and (ref is None or (type(ref) is str and 0 < len(ref) <= MAX_ID_CHARS))
        ):
            return Event(
                "call_ended",
                event_id,
                customer_id,
                ts_ms,
                "call",
                ref=ref,
                duration_s=float(duration),
                answered=answered,
            )
        return None
    if event_type == "email_opened":
        ref = body.get("ref")
        machine = body.get("machine", False)
        if type(ref) is str and 0 < len(ref) <= MAX_ID_CHARS and type(machine) is bool:
            return Event("email_opened", event_id, customer_id, ts_ms, "email", ref=ref, machine=machine)
        return None
    return None


def _validate(body: dict[str, Any], event_id: Any, customer_id: Any) -> Event:
    event_type = body.get("type")
    if event_type is None:
        raise _Invalid("missing_field:type", "type is required")
    if event_type not in EVENT_TYPES:
        raise _Invalid("unknown_type", f"type {str(event_type)[:40]!r} is not one of {', '.join(EVENT_TYPES)}")
    _require_id(event_id, "event_id")
    _require_id(customer_id, "customer_id")
    ts_ms = _timestamp(body)
    event = Event(event_type, event_id, customer_id, ts_ms)
    if event_type == "contact":
        event.channel = _channel(body, required=True)
        category = body.get("category", "marketing")
        if category not in CATEGORIES:
            raise _Invalid("unknown_category", f"category must be one of {', '.join(CATEGORIES)}")
        event.category = category
        event.sender = _label(body, "sender")
        event.campaign = _label(body, "campaign")
    elif event_type == "call_ended":
        event.channel = "call"
        duration = body.get("duration_s")
        if duration is None:
            raise _Invalid("missing_field:duration_s", "call_ended needs duration_s")
        if isinstance(duration, bool) or not isinstance(duration, int | float) or not math.isfinite(duration):
            raise _Invalid("bad_field:duration_s", "duration_s must be a number")
        if duration < 0:
            raise _Invalid("bad_field:duration_s", "duration_s must be >= 0")
        event.duration_s = float(duration)
        event.answered = _flag(body, "answered", default=True)
        event.ref = _optional_id(body, "ref")
    elif event_type == "email_opened":
        event.channel = "email"
        if body.get("ref") is None:
            raise _Invalid("missing_field:ref", "email_opened needs ref (the event_id of the email contact)")
        event.ref = _optional_id(body, "ref")
        event.machine = _flag(body, "machine", default=False)
    elif event_type in ("unsubscribe", "complaint"):
        event.channel = _channel(body, required=True)
    elif event_type == "sms_stop":
        event.channel = "sms"
    elif event_type == "erase":
        pass
    else:
        event.channel = _channel(body, required=False)
        event.prefs = _preferences(body)
    return event


def _require_id(value: Any, field: str) -> None:
    if value is None:
        raise _Invalid(f"missing_field:{field}", f"{field} is required")
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise _Invalid(f"bad_field:{field}", f"{field} must be a string of 1..{MAX_ID_CHARS} characters")


def _optional_id(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    _require_id(value, field)
    return str(value)


def _timestamp(body: dict[str, Any]) -> int:
    value = body.get("ts")
    if value is None:
        raise _Invalid("missing_field:ts", "ts is required")
    if isinstance(value, bool):
        raise _Invalid("bad_timestamp", "ts must be ISO-8601 with an offset or integer epoch milliseconds")
    parsed: int | None = None
    if isinstance(value, int):
        parsed = value
    elif isinstance(value, str):
        parsed = parse_iso_ms(value) if len(value) <= 64 else None
        if parsed is None:
            raise _Invalid("bad_timestamp", "ts string is not ISO-8601 with an offset")
    if parsed is None:
        raise _Invalid("bad_timestamp", "ts must be ISO-8601 with an offset or integer epoch milliseconds")
    if not MIN_TS_MS <= parsed < MAX_TS_MS:
        raise _Invalid("bad_timestamp", "ts is outside 2000-01-01..2100-01-01 (seconds sent as milliseconds?)")
    ts_ms: int = parsed
    return ts_ms


def _channel(body: dict[str, Any], *, required: bool) -> str | None:
    value = body.get("channel")
    if value is None:
        if required:
            raise _Invalid("missing_field:channel", "channel is required")
        return None
    # the isinstance check first: a list or object is unhashable and would crash the dict lookup (poison message)
    if not isinstance(value, str) or value not in CHANNEL_INDEX:
        raise _Invalid("unknown_channel", f"channel must be one of {', '.join(CHANNELS)}")
    return str(value)


def _label(body: dict[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_LABEL_CHARS:
        raise _Invalid(f"bad_field:{field}", f"{field} must be a string of at most {MAX_LABEL_CHARS} characters")
    return value


def _flag(body: dict[str, Any], field: str, *, default: bool) -> bool:
    value = body.get(field, default)
    if not isinstance(value, bool):
        raise _Invalid(f"bad_field:{field}", f"{field} must be true or false")
    return value


def _preferences(body: dict[str, Any]) -> dict[str, Any]:
    prefs: dict[str, Any] = {}
    if "opt_out" in body:
        prefs["opt_out"] = _flag(body, "opt_out", default=False)
    if "max_contacts" in body:
        prefs["max_contacts"] = _max_contacts(body["max_contacts"])
    if "quiet_hours" in body:
        prefs["quiet_hours"] = _quiet_hours(body["quiet_hours"])
    if "timezone" in body:
        zone = body["timezone"]
        if zone is not None and not (isinstance(zone, str) and is_known_timezone(zone)):
            raise _Invalid("bad_field:timezone", "timezone must be an IANA name such as Europe/Paris")
        prefs["timezone"] = zone
    if not prefs:
        raise _Invalid("empty_preference", "preference needs opt_out, max_contacts, quiet_hours or timezone")
    return prefs


def _max_contacts(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("bad_field:max_contacts", "max_contacts must be {count, window}")
    count = value.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_CUSTOMER_CAP_COUNT:
        raise _Invalid("bad_field:max_contacts", f"max_contacts.count must be an integer 0..{MAX_CUSTOMER_CAP_COUNT}")
    try:
        window_ms = parse_duration_ms(value.get("window"))
    except ValueError as error:
        raise _Invalid("bad_field:max_contacts", f"max_contacts.window: {error}") from None
    if not 0 < window_ms <= MAX_CUSTOMER_CAP_WINDOW_MS:
        raise _Invalid("bad_field:max_contacts", "max_contacts.window must be between 1ms and 366d")
    return count, window_ms


def _quiet_hours(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid("bad_field:quiet_hours", "quiet_hours must be {start, end}")
    start = parse_clock_minute(value.get("start"))
    end = parse_clock_minute(value.get("end"))
    if start is None or end is None:
        raise _Invalid("bad_field:quiet_hours", "quiet_hours start and end must be HH:MM")
    return start, end


def parse_clock_minute(value: Any) -> int | None:
    """``"21:30"`` -> 1290 (minutes after midnight); None when malformed."""
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        return None
    hours, minutes = value[:2], value[3:]
    # ASCII only: str.isdigit() also accepts digits such as "²" that int() refuses (a crash on untrusted input)
    if not (hours.isascii() and minutes.isascii() and hours.isdigit() and minutes.isdigit()):
        return None
    hour, minute = int(hours), int(minutes)
    if hour > 23 or minute > 59:
        return None
    return hour * 60 + minute


@lru_cache(maxsize=1024)
def is_known_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True
