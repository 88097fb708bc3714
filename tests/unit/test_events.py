"""Input validation: every rejection explains itself with a stable reason."""

from __future__ import annotations

import orjson
import pytest

from fatigue.events import Event, Rejection, parse_event
from fatigue.timeutil import parse_iso_ms

BASE = {"type": "contact", "event_id": "e1", "customer_id": "c1", "ts": "2026-11-23T10:00:00+08:00", "channel": "sms"}


def parse(body: object, **kwargs: object) -> Event | Rejection:
    return parse_event(orjson.dumps(body), **kwargs)  # type: ignore[arg-type]


def reason_of(body: object, **kwargs: object) -> str:
    result = parse(body, **kwargs)
    assert isinstance(result, Rejection), result
    return result.reason


def with_(**changes: object) -> dict[str, object]:
    body = dict(BASE)
    for key, value in changes.items():
        if value is ...:
            body.pop(key)
        else:
            body[key] = value
    return body


def test_valid_contact_with_defaults_and_iso_offset():
    event = parse(BASE)
    assert isinstance(event, Event)
    assert event.ts_ms == parse_iso_ms("2026-11-23T02:00:00Z")
    assert event.category == "marketing"
    assert event.channel == "sms"


def test_epoch_ms_and_z_suffix_are_accepted():
    assert parse(with_(ts=1_795_000_000_000)).ts_ms == 1_795_000_000_000  # type: ignore[union-attr]
    assert parse(with_(ts="2026-11-23T10:00:00.250Z")).ts_ms == parse_iso_ms("2026-11-23T10:00:00.250+00:00")  # type: ignore[union-attr]


def test_unknown_fields_are_ignored_and_not_kept():
    event = parse(with_(phone="+65 9123 4567", body="Hello!", address="1 Main St"))
    assert isinstance(event, Event)
    assert "+65" not in repr(event) and "Hello" not in repr(event) and "Main" not in repr(event)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b'{"type": "contact", "event_id": "\xff"}', "bad_utf8"),
        (b"[1, 2]", "not_object"),
        (b"x" * 20_000, "too_large"),
    ],
)
def test_undecodable_inputs(raw, reason):
    result = parse_event(raw)
    assert isinstance(result, Rejection) and result.reason == reason


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"type": ...}, "missing_field:type"),
        ({"type": "fax_sent"}, "unknown_type"),
        ({"event_id": ...}, "missing_field:event_id"),
        ({"event_id": ""}, "bad_field:event_id"),
        ({"event_id": "x" * 129}, "bad_field:event_id"),
        ({"customer_id": ...}, "missing_field:customer_id"),
        ({"customer_id": 42}, "bad_field:customer_id"),
        ({"ts": ...}, "missing_field:ts"),
        ({"ts": "2026-11-23T10:00:00"}, "bad_timestamp"),  # no offset
        ({"ts": "yesterday"}, "bad_timestamp"),
        ({"ts": 1_795_000_000}, "bad_timestamp"),  # seconds, not milliseconds
        ({"ts": "3000-01-01T00:00:00Z"}, "bad_timestamp"),
        ({"ts": 1.5e12}, "bad_timestamp"),
        ({"ts": True}, "bad_timestamp"),
        ({"channel": ...}, "missing_field:channel"),
        ({"channel": "fax"}, "unknown_channel"),
        ({"category": "promo"}, "unknown_category"),
        ({"sender": 7}, "bad_field:sender"),
    ],
)
def test_contact_rejections(changes, reason):
    assert reason_of(with_(**changes)) == reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"type": "call_ended"}, "missing_field:duration_s"),
        ({"type": "call_ended", "duration_s": -1}, "bad_field:duration_s"),
        ({"type": "call_ended", "duration_s": "12"}, "bad_field:duration_s"),
        ({"type": "call_ended", "duration_s": 12, "answered": "yes"}, "bad_field:answered"),
        ({"type": "email_opened"}, "missing_field:ref"),
        ({"type": "email_opened", "ref": "m1", "machine": 1}, "bad_field:machine"),
        ({"type": "unsubscribe"}, "missing_field:channel"),
        ({"type": "complaint", "channel": "pigeon"}, "unknown_channel"),
        ({"type": "preference"}, "empty_preference"),
        ({"type": "preference", "opt_out": "no"}, "bad_field:opt_out"),
        ({"type": "preference", "max_contacts": {"count": 1}}, "bad_field:max_contacts"),
        ({"type": "preference", "max_contacts": {"count": -1, "window": "7d"}}, "bad_field:max_contacts"),
        ({"type": "preference", "max_contacts": {"count": 1, "window": "7 days"}}, "bad_field:max_contacts"),
        ({"type": "preference", "quiet_hours": {"start": "25:00", "end": "08:00"}}, "bad_field:quiet_hours"),
        ({"type": "preference", "timezone": "Mars/Olympus"}, "bad_field:timezone"),
        ({"type": "preference", "timezone": "../../etc/passwd"}, "bad_field:timezone"),
    ],
)
def test_type_specific_rejections(body, reason):
    assert reason_of({"event_id": "e", "customer_id": "c", "ts": 1_795_000_000_000, **body}) == reason


def test_rejection_keeps_ids_when_it_can():
    result = parse(with_(channel="fax"))
    assert isinstance(result, Rejection)
    assert (result.event_id, result.customer_id) == ("e1", "c1")


def test_key_must_match_customer_when_checked():
    raw = orjson.dumps(BASE)
    assert isinstance(parse_event(raw, b"c1", check_key=True), Event)
    assert parse_event(raw, b"c2", check_key=True).reason == "key_mismatch"  # type: ignore[union-attr]
    assert parse_event(raw, None, check_key=True).reason == "missing_key"  # type: ignore[union-attr]


def test_every_event_type_parses():
    bodies = [
        {"type": "call_ended", "duration_s": 12.5, "ref": "c1", "answered": False},
        {"type": "email_opened", "ref": "m1", "machine": True},
        {"type": "unsubscribe", "channel": "email"},
        {"type": "complaint", "channel": "call"},
        {"type": "sms_stop"},
        {
            "type": "preference",
            "channel": "sms",
            "opt_out": False,
            "max_contacts": {"count": 1, "window": "1w"},
            "quiet_hours": {"start": "21:00", "end": "08:00"},
            "timezone": "Europe/Paris",
        },
    ]
    for body in bodies:
        event = parse({"event_id": "e", "customer_id": "c", "ts": 1_795_000_000_000, **body})
        assert isinstance(event, Event), event
    pref = parse({"event_id": "e", "customer_id": "c", "ts": 1_795_000_000_000, **bodies[-1]})
    assert isinstance(pref, Event) and pref.prefs == {
        "opt_out": False,
        "max_contacts": (1, 7 * 86_400_000),
        "quiet_hours": (21 * 60, 8 * 60),
        "timezone": "Europe/Paris",
    }
