"""The input contract (shared/CONTRACT.md) against parse_event and events.schema.json, edge by edge.

Pins contract edges that test_events.py and test_schema.py leave open. Each test quotes the contract line it pins.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from fatigue.events import Event, Rejection, parse_event
from fatigue.timeutil import parse_iso_ms

TS = 1_795_428_000_000  # 2026-11-23T10:00:00Z
COMMON = {"event_id": "e1", "customer_id": "c1", "ts": TS}
SCHEMA = Draft202012Validator(json.loads((files("fatigue") / "schema" / "events.schema.json").read_text("utf-8")))


def ev(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **COMMON, **fields}


CONTACT = ev("contact", channel="sms")


def parse(body: Any, **kwargs: Any) -> Event | Rejection:
    return parse_event(orjson.dumps(body), **kwargs)


def accepted(body: Any) -> Event:
    result = parse(body)
    assert isinstance(result, Event), result
    return result


def reason(body: Any) -> str:
    result = parse(body)
    assert isinstance(result, Rejection), result
    return result.reason


# ---------------------------------------------------------------- ids


@pytest.mark.parametrize("char", ["a", "é", "客", "😀"])
@pytest.mark.parametrize("field", ["event_id", "customer_id"])
def test_ids_of_1_and_128_characters_are_accepted_whatever_their_utf8_size(field, char):
    """`event_id` / `customer_id`: "string, 1..128 chars" -- characters, not bytes (128 emoji = 512 bytes)."""
    for size in (1, 128):
        event = accepted({**CONTACT, field: char * size})
        assert getattr(event, field) == char * size


@pytest.mark.parametrize("char", ["a", "é", "😀"])
@pytest.mark.parametrize("field", ["event_id", "customer_id"])
def test_ids_of_0_and_129_characters_are_rejected(field, char):
    """`event_id` / `customer_id`: "string, 1..128 chars"."""
    assert reason({**CONTACT, field: ""}) == f"bad_field:{field}"
    assert reason({**CONTACT, field: char * 129}) == f"bad_field:{field}"


def test_an_id_written_as_an_escaped_surrogate_pair_is_one_character():
    """`event_id`: "string, 1..128 chars"; JSON may spell a non-BMP character as a \\uD83D\\uDE00 escape pair."""
    raw = orjson.dumps({**CONTACT, "event_id": "PLACEHOLDER"}).replace(b"PLACEHOLDER", b"\\ud83d\\ude00" * 128)
    event = parse_event(raw)
    assert isinstance(event, Event) and event.event_id == "😀" * 128


# ---------------------------------------------------------------- ts


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-23T10:00:00+08:00", "2026-11-23T02:00:00Z"),
        ("2026-11-23T10:00:00-05:00", "2026-11-23T15:00:00Z"),
        ("2026-11-23T10:00:00Z", "2026-11-23T10:00:00Z"),
        ("2026-11-23T10:00:00.5Z", "2026-11-23T10:00:00.500Z"),
        ("2026-11-23T10:00:00.123456789Z", "2026-11-23T10:00:00.123Z"),  # Go's RFC3339Nano: truncated to ms
        ("2026-11-23T10:00:00.999+14:00", "2026-11-22T20:00:00.999Z"),
    ],
)
def test_iso_timestamps_with_an_offset_give_the_right_instant(ts, expected):
    """`ts`: "ISO-8601 with offset (`2026-11-23T10:00:00+08:00`, `...Z`)"."""
    assert accepted({**CONTACT, "ts": ts}).ts_ms == parse_iso_ms(expected)
    assert parse_iso_ms(expected) is not None


def test_integer_epoch_ms_is_kept_exactly():
    """`ts`: "or integer epoch milliseconds"."""
    assert accepted({**CONTACT, "ts": TS + 7}).ts_ms == TS + 7


@pytest.mark.parametrize(
    "ts",
    [
        "2026-11-23T10:00:00",  # no offset
        "2026-11-23T10:00:00.250",  # no offset, fractional
        "1795428000000",  # digits as a string: neither ISO nor an integer
        -1,
        0,
        False,
        1_795_428_000_000.5,
        {"ms": TS},
        [TS],
    ],
)
def test_timestamps_the_contract_does_not_describe_are_bad_timestamp(ts):
    """`ts`: "ISO-8601 with offset ... or integer epoch milliseconds" -- everything else is `bad_timestamp`."""
    assert reason({**CONTACT, "ts": ts}) == "bad_timestamp"


# ---------------------------------------------------------------- contact


@pytest.mark.parametrize("channel", ["email", "sms", "call"])
@pytest.mark.parametrize("category", ["marketing", "service", "transactional"])
def test_every_channel_and_category_of_contact(channel, category):
    """contact: "`channel` (`email`, `sms`, `call`), `category` (`marketing` default, `service`, `transactional`)"."""
    event = accepted({**CONTACT, "channel": channel, "category": category})
    assert (event.channel, event.category) == (channel, category)


@pytest.mark.parametrize("channel", ["Email", "CALL", " sms", "sms ", "", 1, True])
def test_channel_is_case_and_space_sensitive(channel):
    """contact: "`channel` (`email`, `sms`, `call`)" -- exactly those strings."""
    assert reason({**CONTACT, "channel": channel}) == "unknown_channel"


@pytest.mark.parametrize("category", ["Marketing", "", 0, ["marketing"]])
def test_other_categories_are_rejected(category):
    """contact: "`category` (`marketing` default, `service`, `transactional`)"."""
    assert reason({**CONTACT, "category": category}) == "unknown_category"


def test_sender_and_campaign_are_optional_and_kept():
    """contact: "`sender` (string, optional: system, campaign or agent team), `campaign` (optional)"."""
    bare = accepted(CONTACT)
    assert (bare.sender, bare.campaign) == (None, None)
    full = accepted({**CONTACT, "sender": "dialer-ä", "campaign": "春季"})
    assert (full.sender, full.campaign) == ("dialer-ä", "春季")
    long = accepted({**CONTACT, "sender": "😀" * 128, "campaign": "é" * 128})
    assert (long.sender, long.campaign) == ("😀" * 128, "é" * 128)


@pytest.mark.parametrize("value", [True, 1.5, {"team": "a"}])
def test_sender_of_another_type_is_rejected(value):
    """contact: "`sender` (string, optional ...)"."""
    assert reason({**CONTACT, "sender": value}) == "bad_field:sender"


# ---------------------------------------------------------------- call_ended


@pytest.mark.parametrize("duration", [0, 0.0, 29.5, 30, 3600])
def test_call_ended_duration_zero_and_fractional_are_accepted_as_numbers(duration):
    """call_ended: "`duration_s` (number ≥ 0)"."""
    event = accepted(ev("call_ended", duration_s=duration))
    assert event.duration_s == duration and isinstance(event.duration_s, float)
    assert event.channel == "call"


@pytest.mark.parametrize("duration", [-0.001, False, [1], {"s": 1}])
def test_call_ended_duration_negative_or_not_a_number_is_rejected(duration):
    """call_ended: "`duration_s` (number ≥ 0)"."""
    assert reason(ev("call_ended", duration_s=duration)) == "bad_field:duration_s"


def test_call_ended_answered_defaults_to_true_and_ref_is_optional():
    """call_ended: "`ref` (event_id of the call `contact`, optional)", "`answered` (bool, default true)"."""
    event = accepted(ev("call_ended", duration_s=5))
    assert event.answered is True and event.ref is None
    assert accepted(ev("call_ended", duration_s=5, answered=False)).answered is False
    assert accepted(ev("call_ended", duration_s=5, ref="r" * 128)).ref == "r" * 128


@pytest.mark.parametrize("answered", [0, 1, "false", []])
def test_call_ended_answered_must_be_a_bool(answered):
    """call_ended: "`answered` (bool, default true)"."""
    assert reason(ev("call_ended", duration_s=5, answered=answered)) == "bad_field:answered"


def test_call_ended_ref_longer_than_an_event_id_is_rejected():
    """call_ended: "`ref` (event_id of the call `contact`, optional)" -- an event_id is 1..128 chars."""
    assert reason(ev("call_ended", duration_s=5, ref="r" * 129)) == "bad_field:ref"


# ---------------------------------------------------------------- email_opened


def test_email_opened_machine_defaults_to_false_and_ref_is_kept():
    """email_opened: "`ref` (event_id of the email `contact`), `machine` (bool, default false)"."""
    event = accepted(ev("email_opened", ref="m" * 128))
    assert (event.channel, event.ref, event.machine) == ("email", "m" * 128, False)
    assert accepted(ev("email_opened", ref="m1", machine=True)).machine is True


@pytest.mark.parametrize("machine", [0, "true", None])
def test_email_opened_machine_must_be_a_bool(machine):
    """email_opened: "`machine` (bool, default false)"."""
    assert reason(ev("email_opened", ref="m1", machine=machine)) == "bad_field:machine"


def test_email_opened_empty_ref_is_rejected():
    """email_opened: "`ref` (event_id of the email `contact`)" -- an event_id has at least 1 char."""
    assert reason(ev("email_opened", ref="")) == "bad_field:ref"


# ---------------------------------------------------------------- unsubscribe, complaint, sms_stop


@pytest.mark.parametrize("type_", ["unsubscribe", "complaint"])
@pytest.mark.parametrize("channel", ["email", "sms", "call"])
def test_unsubscribe_and_complaint_take_every_channel(type_, channel):
    """Contract: "`unsubscribe` | `channel`", "`complaint` | `channel`"."""
    assert accepted(ev(type_, channel=channel)).channel == channel


@pytest.mark.parametrize("type_", ["unsubscribe", "complaint"])
def test_unsubscribe_and_complaint_need_a_channel(type_):
    """Contract: "`unsubscribe` | `channel` | customer opted out of that channel's marketing"."""
    assert reason(ev(type_)) == "missing_field:channel"
    assert reason(ev(type_, channel=None)) == "missing_field:channel"
    assert reason(ev(type_, channel="Sms")) == "unknown_channel"


@pytest.mark.parametrize("extra", [{}, {"channel": "sms"}, {"channel": "email"}])
def test_sms_stop_needs_no_channel_and_is_always_sms(extra):
    """Contract: "`sms_stop` | — | customer replied STOP (or 退订/TD) to an SMS"."""
    assert accepted(ev("sms_stop", **extra)).channel == "sms"


# ---------------------------------------------------------------- preference


@pytest.mark.parametrize(
    ("field", "value", "stored"),
    [
        ("opt_out", True, True),
        ("opt_out", False, False),
        ("max_contacts", {"count": 2, "window": "7d"}, (2, 7 * 86_400_000)),
        ("quiet_hours", {"start": "22:00", "end": "07:00"}, (22 * 60, 7 * 60)),
        ("timezone", "Asia/Shanghai", "Asia/Shanghai"),
    ],
)
def test_preference_with_each_field_alone_and_no_channel_applies_to_all_channels(field, value, stored):
    """preference: "`channel` (optional: all channels when absent), any of `opt_out` ..., `max_contacts` ...,
    `quiet_hours` ..., `timezone`"."""
    event = accepted(ev("preference", **{field: value}))
    assert event.channel is None
    assert event.prefs == {field: stored}


@pytest.mark.parametrize(
    ("window", "ms"),
    [("30s", 30_000), ("15m", 900_000), ("12h", 43_200_000), ("7d", 604_800_000), ("4w", 2_419_200_000)],
)
def test_max_contacts_window_in_every_duration_unit_of_the_contract(window, ms):
    """Contract: "Durations are strings like `30s`, `15m`, `12h`, `7d`, `4w`."."""
    assert accepted(ev("preference", max_contacts={"count": 3, "window": window})).prefs == {"max_contacts": (3, ms)}


def test_max_contacts_count_zero_is_accepted():
    """preference: "`max_contacts` ({`count`: int, `window`: duration})" -- 0 is an int."""
    assert accepted(ev("preference", max_contacts={"count": 0, "window": "7d"})).prefs == {
        "max_contacts": (0, 604_800_000)
    }


@pytest.mark.parametrize(
    "cap",
    [
        {"count": False, "window": "7d"},
        {"count": "2", "window": "7d"},
        {"count": 1.5, "window": "7d"},
        {"count": 2},
        {"window": "7d"},
        {"count": 2, "window": "7D"},
        {"count": 2, "window": "1h30m"},
        {"count": 2, "window": "1.5h"},
        {"count": 2, "window": " 7d"},
        {"count": 2, "window": "7"},
        {"count": 2, "window": 604_800_000},
        {"count": 2, "window": "7 d"},
        {"count": 2, "window": "-7d"},
        {"count": 2, "window": "1y"},
    ],
)
def test_max_contacts_that_is_not_int_count_and_duration_window_is_rejected(cap):
    """preference: "`max_contacts` ({`count`: int, `window`: duration})"; "Durations are strings like `30s`, `15m`,
    `12h`, `7d`, `4w`."."""
    assert reason(ev("preference", max_contacts=cap)) == "bad_field:max_contacts"


@pytest.mark.parametrize(
    ("start", "end", "minutes"),
    [("00:00", "23:59", (0, 1439)), ("23:59", "00:00", (1439, 0)), ("07:05", "07:05", (425, 425))],
)
def test_quiet_hours_edges_of_hh_mm(start, end, minutes):
    """preference: "`quiet_hours` ({`start`: "HH:MM", `end`: "HH:MM"})"."""
    assert accepted(ev("preference", quiet_hours={"start": start, "end": end})).prefs == {"quiet_hours": minutes}


@pytest.mark.parametrize(
    "quiet",
    [
        {"start": "7:00", "end": "08:00"},  # H:MM is not HH:MM
        {"start": "07:00", "end": "8:00"},
        {"start": "07:00:00", "end": "08:00"},
        {"start": "0700", "end": "0800"},
        {"start": "12:60", "end": "08:00"},
        {"start": 700, "end": 800},
        {"end": "08:00"},
        {},
        ["21:00", "08:00"],
    ],
)
def test_quiet_hours_not_hh_mm_are_rejected(quiet):
    """preference: "`quiet_hours` ({`start`: "HH:MM", `end`: "HH:MM"})"."""
    assert reason(ev("preference", quiet_hours=quiet)) == "bad_field:quiet_hours"


@pytest.mark.parametrize(
    "zone",
    ["UTC", "Etc/UTC", "America/New_York", "Asia/Kolkata", "Asia/Calcutta", "US/Eastern", "Europe/Kyiv", "Etc/GMT-14"],
)
def test_iana_timezone_names_including_links_are_accepted(zone):
    """preference: "`timezone` (IANA name)" -- canonical names and backward links alike."""
    assert accepted(ev("preference", timezone=zone)).prefs == {"timezone": zone}


@pytest.mark.parametrize("zone", ["europe/paris", "Europe", "+08:00", "CET ", "Asia/Beijing", 8, ["UTC"]])
def test_non_iana_timezones_are_rejected(zone):
    """preference: "`timezone` (IANA name)"."""
    assert reason(ev("preference", timezone=zone)) == "bad_field:timezone"


@pytest.mark.parametrize("opt_out", [0, 1, "false", [], {}])
def test_opt_out_must_be_a_bool(opt_out):
    """preference: "`opt_out` (bool)"."""
    assert reason(ev("preference", opt_out=opt_out)) == "bad_field:opt_out"


@pytest.mark.parametrize("channel", ["email", "sms", "call"])
def test_preference_for_one_channel(channel):
    """preference: "`channel` (optional: all channels when absent)"."""
    assert accepted(ev("preference", channel=channel, opt_out=True)).channel == channel


def test_null_clears_max_contacts_quiet_hours_and_timezone_as_docs_say():
    """Extension documented in docs/contract.md ("`max_contacts`: `null` clears the customer's cap", "`quiet_hours`:
    `null` clears", "`timezone`: `null` clears"); the contract itself has no null values, so this is compatible."""
    event = accepted(ev("preference", max_contacts=None, quiet_hours=None, timezone=None))
    assert event.prefs == {"max_contacts": None, "quiet_hours": None, "timezone": None}


# ---------------------------------------------------------------- unknown fields


def test_unknown_fields_named_like_internal_attributes_are_not_taken():
    """Contract: "Unknown extra fields are ignored and never stored" -- even ones spelled like the Event's own slots."""
    smuggled = {
        "ts_ms": 5,
        "prefs": {"opt_out": True},
        "duration_s": 3,
        "ref": "zz",
        "machine": True,
        "answered": False,
    }
    assert accepted({**CONTACT, **smuggled}) == accepted(CONTACT)
    assert accepted(ev("sms_stop", sender="x", campaign="y", category="service")) == accepted(ev("sms_stop"))


def test_unknown_fields_of_any_json_shape_are_ignored():
    """Contract: "Unknown extra fields are ignored and never stored"."""
    extra = {
        "phone": "+65 9123 4567",
        "tiny": 1e-300,
        "deep": [[[[{"a": [None, True, 1.5]}]]]],
        "nul": "\u0000",
    }
    event = accepted({**CONTACT, **extra})
    assert event == accepted(CONTACT)
    assert not hasattr(event, "__dict__")  # nowhere to put them
    assert "9123" not in repr(event)
    # integers beyond 64 bits are valid JSON (orjson.dumps cannot write them, so splice them in)
    raw = orjson.dumps(CONTACT)[:-1] + b',"big":123456789012345678901234567890,"neg":-1180591620717411303424}'
    assert parse_event(raw) == accepted(CONTACT)


def test_unknown_keys_inside_max_contacts_and_quiet_hours_are_ignored():
    """Contract: "Unknown extra fields are ignored and never stored" -- also inside the preference objects."""
    event = accepted(
        ev(
            "preference",
            max_contacts={"count": 1, "window": "7d", "note": "x"},
            quiet_hours={"start": "21:00", "end": "08:00", "days": ["sat"]},
        )
    )
    assert event.prefs == {"max_contacts": (1, 604_800_000), "quiet_hours": (1260, 480)}


# ---------------------------------------------------------------- bytes, JSON, key, size


@pytest.mark.parametrize("raw", [b"null", b"42", b'"contact"', b"true", b"[]", b" [ {} ] "])
def test_json_that_is_not_an_object_is_not_object(raw):
    """Contract: "Input: one JSON object per Kafka message"."""
    result = parse_event(raw)
    assert isinstance(result, Rejection) and result.reason == "not_object"


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"{'type': 'contact'}", b'{"a":1,}', b"{} {}"])
def test_not_json_is_bad_json(raw):
    """Contract: "Input: one JSON object per Kafka message"."""
    result = parse_event(raw)
    assert isinstance(result, Rejection) and result.reason == "bad_json"


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(CONTACT)[:-1] + b',"x":"\xff"}',  # invalid byte in an unknown field
        orjson.dumps(CONTACT)[:-1] + b',"x":"\xc0\xaf"}',  # overlong encoding
        orjson.dumps(CONTACT)[:-1] + b',"x":"\\udc00"}',  # lone surrogate escape
        json.dumps(CONTACT).encode("utf-16"),
        json.dumps(CONTACT).encode("latin-1").replace(b'"c1"', b'"c\xe91"'),
    ],
)
def test_not_utf8_is_bad_utf8(raw):
    """Contract: "Input: one JSON object per Kafka message, UTF-8"."""
    result = parse_event(raw)
    assert isinstance(result, Rejection) and result.reason == "bad_utf8"


def test_key_equal_to_a_non_ascii_customer_id_in_utf8_is_accepted():
    """Contract: "message key = customer_id"; the message is UTF-8, so the key is the customer_id's UTF-8 bytes."""
    body = {**CONTACT, "customer_id": "客户-é😀"}
    raw = orjson.dumps(body)
    assert isinstance(parse_event(raw, "客户-é😀".encode(), check_key=True), Event)
    wrong = parse_event(raw, "客户-é😀".encode("utf-16-le"), check_key=True)
    assert isinstance(wrong, Rejection) and wrong.reason == "key_mismatch"
    assert (wrong.event_id, wrong.customer_id) == ("e1", "客户-é😀")
    assert isinstance(parse_event(raw, b"", check_key=True), Rejection)


def test_key_is_not_checked_unless_asked():
    """Contract: "message key = customer_id" : the worker checks it; replay has no keys."""
    assert isinstance(parse_event(orjson.dumps(CONTACT), b"someone-else"), Event)


def test_size_limit_counts_bytes_and_is_inclusive():
    """Rejections are machine readable (`too_large`): a message of exactly max_bytes is accepted, one more is not."""
    raw = orjson.dumps({**CONTACT, "pad": ""})
    for limit in (200, 16_384):
        fits = raw.replace(b'"pad":""', b'"pad":"' + b"x" * (limit - len(raw)) + b'"')
        assert len(fits) == limit
        assert isinstance(parse_event(fits, max_bytes=limit), Event)
        over = parse_event(fits.replace(b'"pad":"', b'"pad":"x'), max_bytes=limit)
        assert isinstance(over, Rejection) and over.reason == "too_large"
    # 2-byte characters: the limit is in bytes, not characters
    wide = raw.replace(b'"pad":""', b'"pad":"' + "é".encode() * 100 + b'"')
    assert isinstance(parse_event(wide, max_bytes=len(wide)), Event)
    assert parse_event(wide, max_bytes=len(wide) - 1).reason == "too_large"  # type: ignore[union-attr]


def test_a_maximal_contract_event_fits_the_default_size_limit():
    """Everything the contract allows at its longest (128-char ids of 4-byte characters, every field) is accepted."""
    body = {
        "type": "contact",
        "event_id": "😀" * 128,
        "customer_id": "😀" * 128,
        "ts": "2026-11-23T10:00:00.123456789+08:00",
        "channel": "email",
        "category": "transactional",
        "sender": "😀" * 128,
        "campaign": "😀" * 128,
    }
    assert isinstance(parse_event(orjson.dumps(body), "😀".encode() * 128, check_key=True), Event)


# ---------------------------------------------------------------- schema agreement

# Bodies on which the shipped schema and parse_event must agree (none is a documented schema gap or leniency).
AGREE: list[tuple[str, dict[str, Any]]] = [
    ("id_1_emoji", {**CONTACT, "event_id": "😀"}),
    ("id_128_emoji", {**CONTACT, "customer_id": "😀" * 128}),
    ("id_129_emoji", {**CONTACT, "customer_id": "😀" * 129}),
    ("id_0", {**CONTACT, "customer_id": ""}),
    ("ts_plus_0800", {**CONTACT, "ts": "2026-11-23T10:00:00+08:00"}),
    ("ts_nanos", {**CONTACT, "ts": "2026-11-23T10:00:00.123456789Z"}),
    ("ts_minus_00", {**CONTACT, "ts": "2026-11-23T10:00:00-00:00"}),
    ("ts_no_offset_millis", {**CONTACT, "ts": "2026-11-23T10:00:00.250"}),
    ("ts_digit_string", {**CONTACT, "ts": "1795428000000"}),
    ("ts_negative", {**CONTACT, "ts": -1}),
    ("ts_last_ms", {**CONTACT, "ts": 4_102_444_799_999}),
    ("ts_first_ms_minus_1", {**CONTACT, "ts": 946_684_799_999}),
    ("ts_offset_24", {**CONTACT, "ts": "2026-11-23T10:00:00+24:00"}),
    ("ts_hour_24", {**CONTACT, "ts": "2026-11-23T24:00:00Z"}),
    ("channel_Email", {**CONTACT, "channel": "Email"}),
    ("category_empty", {**CONTACT, "category": ""}),
    ("sender_128_emoji", {**CONTACT, "sender": "😀" * 128}),
    ("sender_bool", {**CONTACT, "sender": True}),
    ("call_0", ev("call_ended", duration_s=0)),
    ("call_29_5", ev("call_ended", duration_s=29.5)),
    ("call_neg", ev("call_ended", duration_s=-0.5)),
    ("call_false", ev("call_ended", duration_s=False)),
    ("call_answered_1", ev("call_ended", duration_s=5, answered=1)),
    ("call_ref_129", ev("call_ended", duration_s=5, ref="r" * 129)),
    ("call_channel_ignored", ev("call_ended", duration_s=5, channel="sms")),
    ("open_machine_null", ev("email_opened", ref="m1", machine=None)),
    ("open_ref_empty", ev("email_opened", ref="")),
    ("unsub_null", ev("unsubscribe", channel=None)),
    ("sms_stop_email", ev("sms_stop", channel="email")),
    ("pref_count_0", ev("preference", max_contacts={"count": 0, "window": "30s"})),
    ("pref_count_false", ev("preference", max_contacts={"count": False, "window": "7d"})),
    ("pref_window_15m", ev("preference", max_contacts={"count": 1, "window": "15m"})),
    ("pref_window_12h", ev("preference", max_contacts={"count": 1, "window": "12h"})),
    ("pref_window_1h30m", ev("preference", max_contacts={"count": 1, "window": "1h30m"})),
    ("pref_window_upper", ev("preference", max_contacts={"count": 1, "window": "7D"})),
    ("pref_quiet_0000_2359", ev("preference", quiet_hours={"start": "00:00", "end": "23:59"})),
    ("pref_quiet_2400", ev("preference", quiet_hours={"start": "24:00", "end": "07:00"})),
    ("pref_quiet_700", ev("preference", quiet_hours={"start": "7:00", "end": "08:00"})),
    ("pref_quiet_seconds", ev("preference", quiet_hours={"start": "07:00:00", "end": "08:00"})),
    ("pref_quiet_null", ev("preference", quiet_hours=None)),
    ("pref_cap_null", ev("preference", max_contacts=None)),
    ("pref_tz_kolkata", ev("preference", timezone="Asia/Kolkata")),
    ("pref_opt_out_0", ev("preference", opt_out=0)),
    ("pref_channel_only", ev("preference", channel="email")),
    ("pref_channel_upper", ev("preference", channel="EMAIL", opt_out=True)),
    ("unknown_fields", {**CONTACT, "body": "hi", "x": {"y": [1, None]}}),
]


@pytest.mark.parametrize(("case", "body"), AGREE, ids=[case for case, _ in AGREE])
def test_schema_accepts_exactly_what_parse_event_accepts(case, body):
    """Contract: "Document the final contract ... and ship a JSON Schema for it": the schema and the parser agree."""
    parsed = isinstance(parse(body), Event)
    assert parsed == SCHEMA.is_valid(body), (case, parsed, [e.message for e in SCHEMA.iter_errors(body)])
