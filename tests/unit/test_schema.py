"""The shipped JSON Schemas agree with the code: events.schema.json with parse_event, decision.schema.json with
what the engine emits.

Byte-level rejections (bad_json, bad_utf8, too_large) happen before there is a JSON document and are out of a
schema's reach. Beyond those, the schema cannot express a few checks; they are listed in SCHEMA_GAPS, which
asserts that the schema accepts them (so tightening the schema moves a case from there to INVALID). The guard also
accepts a few timestamp spellings beyond the contract (GUARD_LENIENCY): Python's ``datetime.fromisoformat`` reads
them, the schema keeps to the contract's form.
"""

from __future__ import annotations

import json
from collections import Counter
from importlib.resources import files
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from fatigue.engine import Guard
from fatigue.events import EVENT_TYPES, Event, Rejection, parse_event
from fatigue.generate import generate_events
from fatigue.replay import replay_lines
from fatigue.testing import policy_named

TS = 1_795_428_000_000  # 2026-11-23T10:00:00Z
COMMON = {"event_id": "e1", "customer_id": "c1", "ts": TS}
BLOCK_REASONS = {
    "cap",
    "global_cap",
    "customer_cap",
    "short_hangups",
    "unread",
    "conversation",
    "complaint",
    "unsubscribe",
    "sms_stop",
    "opt_out",
}
ALLOW_REASONS = {"lifted", "opt_in", "customer_cap_changed"}
DECISION_FIELDS = {
    "customer_id",
    "channel",
    "action",
    "reason",
    "rule",
    "rule_id",
    "until",
    "until_ms",
    "evidence",
    "policy_version",
    "decided_at",
    "decided_at_ms",
    "cause_event_id",
}


def load_schema(name: str) -> Draft202012Validator:
    # read through the package, as an installed wheel ships it (pyproject: package-data schema/*.json)
    schema = json.loads((files("fatigue") / "schema" / name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


EVENTS = load_schema("events.schema.json")
DECISIONS = load_schema("decision.schema.json")


def event(type_: str, **fields: Any) -> dict[str, Any]:
    return {"type": type_, **COMMON, **fields}


def drop(body: dict[str, Any], *names: str) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in names}


CONTACT = event("contact", channel="sms")

VALID: list[tuple[str, dict[str, Any]]] = [
    ("contact_minimal_default_category", CONTACT),
    ("contact_iso_offset", {**CONTACT, "ts": "2026-11-23T18:00:00+08:00"}),
    ("contact_iso_z_millis", {**CONTACT, "ts": "2026-11-23T10:00:00.250Z"}),
    ("contact_iso_no_seconds", {**CONTACT, "ts": "2026-11-23T10:00Z"}),
    ("contact_iso_negative_offset", {**CONTACT, "ts": "2026-11-23T05:00:00-05:00"}),
    ("contact_lowest_ts", {**CONTACT, "ts": 946_684_800_000}),
    ("contact_all_fields", {**CONTACT, "category": "service", "sender": "crm", "campaign": "spring"}),
    ("contact_null_labels", {**CONTACT, "sender": None, "campaign": None}),
    ("contact_empty_sender", {**CONTACT, "sender": ""}),
    ("contact_unknown_fields_ignored", {**CONTACT, "phone": "+65 9123 4567", "body": "Hi", "nested": {"a": [1]}}),
    ("contact_transactional", {**CONTACT, "channel": "email", "category": "transactional"}),
    ("call_ended_minimal", event("call_ended", duration_s=0)),
    ("call_ended_full", event("call_ended", duration_s=12.5, ref="c0", answered=False)),
    ("call_ended_null_ref", event("call_ended", duration_s=40, ref=None)),
    ("email_opened", event("email_opened", ref="m1")),
    ("email_opened_machine", event("email_opened", ref="m1", machine=True)),
    ("unsubscribe", event("unsubscribe", channel="email")),
    ("complaint", event("complaint", channel="call")),
    ("sms_stop", event("sms_stop")),
    ("sms_stop_ignores_channel", event("sms_stop", channel="fax")),
    ("preference_opt_out", event("preference", opt_out=True)),
    ("preference_opt_in_channel", event("preference", channel="sms", opt_out=False)),
    ("preference_null_channel_is_all", event("preference", channel=None, opt_out=True)),
    ("preference_cap", event("preference", max_contacts={"count": 1, "window": "7d"})),
    ("preference_cap_zero_weeks", event("preference", max_contacts={"count": 0, "window": "4w"})),
    ("preference_cap_cleared", event("preference", max_contacts=None)),
    ("preference_quiet_hours", event("preference", quiet_hours={"start": "21:00", "end": "08:00"})),
    ("preference_quiet_hours_cleared", event("preference", quiet_hours=None)),
    ("preference_timezone", event("preference", timezone="Europe/Paris")),
    ("preference_timezone_cleared", event("preference", timezone=None)),
    (
        "preference_everything",
        event(
            "preference",
            channel="email",
            opt_out=False,
            max_contacts={"count": 2, "window": "30d"},
            quiet_hours={"start": "22:00", "end": "07:30"},
            timezone="Asia/Shanghai",
        ),
    ),
]

# (case, body, the reason parse_event gives): the schema rejects these too
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing_type", drop(CONTACT, "type"), "missing_field:type"),
    ("null_type", {**CONTACT, "type": None}, "missing_field:type"),
    ("unknown_type", {**CONTACT, "type": "click"}, "unknown_type"),
    ("unknown_type_case", {**CONTACT, "type": "Contact"}, "unknown_type"),
    ("type_not_string", {**CONTACT, "type": ["contact"]}, "unknown_type"),
    ("missing_event_id", drop(CONTACT, "event_id"), "missing_field:event_id"),
    ("null_event_id", {**CONTACT, "event_id": None}, "missing_field:event_id"),
    ("empty_event_id", {**CONTACT, "event_id": ""}, "bad_field:event_id"),
    ("long_event_id", {**CONTACT, "event_id": "e" * 129}, "bad_field:event_id"),
    ("numeric_event_id", {**CONTACT, "event_id": 42}, "bad_field:event_id"),
    ("missing_customer_id", drop(CONTACT, "customer_id"), "missing_field:customer_id"),
    ("numeric_customer_id", {**CONTACT, "customer_id": 42}, "bad_field:customer_id"),
    ("long_customer_id", {**CONTACT, "customer_id": "c" * 129}, "bad_field:customer_id"),
    ("missing_ts", drop(CONTACT, "ts"), "missing_field:ts"),
    ("null_ts", {**CONTACT, "ts": None}, "missing_field:ts"),
    ("ts_without_offset", {**CONTACT, "ts": "2026-11-23T10:00:00"}, "bad_timestamp"),
    ("ts_date_only", {**CONTACT, "ts": "2026-11-23"}, "bad_timestamp"),
    ("ts_words", {**CONTACT, "ts": "yesterday"}, "bad_timestamp"),
    ("ts_seconds", {**CONTACT, "ts": 1_795_428_000}, "bad_timestamp"),
    ("ts_after_2100", {**CONTACT, "ts": 4_102_444_800_000}, "bad_timestamp"),
    ("ts_bool", {**CONTACT, "ts": True}, "bad_timestamp"),
    ("ts_object", {**CONTACT, "ts": {"ms": TS}}, "bad_timestamp"),
    ("ts_bad_hour", {**CONTACT, "ts": "2026-11-23T25:00:00Z"}, "bad_timestamp"),
    ("contact_missing_channel", drop(CONTACT, "channel"), "missing_field:channel"),
    ("contact_unknown_channel", {**CONTACT, "channel": "fax"}, "unknown_channel"),
    ("contact_channel_case", {**CONTACT, "channel": "SMS"}, "unknown_channel"),
    ("contact_channel_list", {**CONTACT, "channel": ["sms"]}, "unknown_channel"),
    ("contact_unknown_category", {**CONTACT, "category": "promo"}, "unknown_category"),
    ("contact_null_category", {**CONTACT, "category": None}, "unknown_category"),
    ("contact_numeric_sender", {**CONTACT, "sender": 7}, "bad_field:sender"),
    ("contact_long_sender", {**CONTACT, "sender": "s" * 129}, "bad_field:sender"),
    ("contact_list_campaign", {**CONTACT, "campaign": ["a"]}, "bad_field:campaign"),
    ("call_missing_duration", event("call_ended"), "missing_field:duration_s"),
    ("call_null_duration", event("call_ended", duration_s=None), "missing_field:duration_s"),
    ("call_negative_duration", event("call_ended", duration_s=-1), "bad_field:duration_s"),
    ("call_string_duration", event("call_ended", duration_s="12"), "bad_field:duration_s"),
    ("call_bool_duration", event("call_ended", duration_s=True), "bad_field:duration_s"),
    ("call_string_answered", event("call_ended", duration_s=5, answered="yes"), "bad_field:answered"),
    ("call_null_answered", event("call_ended", duration_s=5, answered=None), "bad_field:answered"),
    ("call_empty_ref", event("call_ended", duration_s=5, ref=""), "bad_field:ref"),
    ("call_numeric_ref", event("call_ended", duration_s=5, ref=5), "bad_field:ref"),
    ("open_missing_ref", event("email_opened"), "missing_field:ref"),
    ("open_null_ref", event("email_opened", ref=None), "missing_field:ref"),
    ("open_long_ref", event("email_opened", ref="r" * 129), "bad_field:ref"),
    ("open_numeric_machine", event("email_opened", ref="m1", machine=1), "bad_field:machine"),
    ("unsubscribe_missing_channel", event("unsubscribe"), "missing_field:channel"),
    ("unsubscribe_null_channel", event("unsubscribe", channel=None), "missing_field:channel"),
    ("complaint_unknown_channel", event("complaint", channel="pigeon"), "unknown_channel"),
    ("preference_empty", event("preference"), "empty_preference"),
    ("preference_channel_only", event("preference", channel="sms"), "empty_preference"),
    ("preference_unknown_channel", event("preference", channel="fax", opt_out=True), "unknown_channel"),
    ("preference_object_channel", event("preference", channel={}, opt_out=True), "unknown_channel"),
    ("preference_string_opt_out", event("preference", opt_out="no"), "bad_field:opt_out"),
    ("preference_null_opt_out", event("preference", opt_out=None), "bad_field:opt_out"),
    ("preference_cap_not_object", event("preference", max_contacts=3), "bad_field:max_contacts"),
    ("preference_cap_no_window", event("preference", max_contacts={"count": 1}), "bad_field:max_contacts"),
    ("preference_cap_no_count", event("preference", max_contacts={"window": "7d"}), "bad_field:max_contacts"),
    (
        "preference_cap_negative",
        event("preference", max_contacts={"count": -1, "window": "7d"}),
        "bad_field:max_contacts",
    ),
    (
        "preference_cap_too_high",
        event("preference", max_contacts={"count": 257, "window": "7d"}),
        "bad_field:max_contacts",
    ),
    (
        "preference_cap_bool_count",
        event("preference", max_contacts={"count": True, "window": "7d"}),
        "bad_field:max_contacts",
    ),
    (
        "preference_cap_bad_window",
        event("preference", max_contacts={"count": 1, "window": "7 days"}),
        "bad_field:max_contacts",
    ),
    (
        "preference_cap_window_unit",
        event("preference", max_contacts={"count": 1, "window": "7y"}),
        "bad_field:max_contacts",
    ),
    ("preference_quiet_string", event("preference", quiet_hours="21-08"), "bad_field:quiet_hours"),
    (
        "preference_quiet_bad_hour",
        event("preference", quiet_hours={"start": "25:00", "end": "08:00"}),
        "bad_field:quiet_hours",
    ),
    (
        "preference_quiet_short_form",
        event("preference", quiet_hours={"start": "9:00", "end": "17:00"}),
        "bad_field:quiet_hours",
    ),
    (
        "preference_quiet_non_ascii_digits",
        event("preference", quiet_hours={"start": "²²:00", "end": "08:00"}),
        "bad_field:quiet_hours",
    ),
    ("preference_quiet_no_end", event("preference", quiet_hours={"start": "21:00"}), "bad_field:quiet_hours"),
    ("preference_numeric_timezone", event("preference", timezone=5), "bad_field:timezone"),
    ("preference_empty_timezone", event("preference", timezone=""), "bad_field:timezone"),
    # a Python validator's `$` also matches before a final newline: the patterns must not let one through
    ("ts_trailing_newline", {**CONTACT, "ts": "2026-11-23T10:00:00Z\n"}, "bad_timestamp"),
    (
        "preference_window_trailing_newline",
        event("preference", max_contacts={"count": 1, "window": "7d\n"}),
        "bad_field:max_contacts",
    ),
    (
        "preference_quiet_trailing_newline",
        event("preference", quiet_hours={"start": "21:00\n", "end": "08:00"}),
        "bad_field:quiet_hours",
    ),
]

# (case, body, reason): parse_event rejects, but JSON Schema cannot say why; the schema accepts these
SCHEMA_GAPS: list[tuple[str, dict[str, Any], str]] = [
    ("ts_year_3000", {**CONTACT, "ts": "3000-01-01T00:00:00Z"}, "bad_timestamp"),  # range of an ISO string
    ("ts_before_2000", {**CONTACT, "ts": "1999-12-31T23:59:59Z"}, "bad_timestamp"),
    ("ts_february_30", {**CONTACT, "ts": "2026-02-30T10:00:00Z"}, "bad_timestamp"),  # calendar validity
    ("ts_integral_float", {**CONTACT, "ts": float(TS)}, "bad_timestamp"),  # JSON Schema: 1.0 is an integer
    (
        "cap_integral_float_count",
        event("preference", max_contacts={"count": 1.0, "window": "7d"}),
        "bad_field:max_contacts",
    ),
    ("cap_zero_window", event("preference", max_contacts={"count": 1, "window": "0s"}), "bad_field:max_contacts"),
    (
        "cap_window_over_366d",
        event("preference", max_contacts={"count": 1, "window": "400d"}),
        "bad_field:max_contacts",
    ),
    ("unknown_timezone", event("preference", timezone="Mars/Olympus_Mons"), "bad_field:timezone"),
]

# (case, body): the guard accepts these ISO-8601 spellings, the contract (and so the schema) does not promise them
GUARD_LENIENCY: list[tuple[str, dict[str, Any]]] = [
    ("ts_space_separator", {**CONTACT, "ts": "2026-11-23 10:00:00Z"}),
    ("ts_offset_without_colon", {**CONTACT, "ts": "2026-11-23T18:00:00+0800"}),
    ("ts_basic_format", {**CONTACT, "ts": "20261123T100000Z"}),
]


def schema_errors(body: Any) -> list[str]:
    return [error.message for error in EVENTS.iter_errors(body)]


@pytest.mark.parametrize(("case", "body"), VALID, ids=[case for case, _ in VALID])
def test_valid_events_pass_schema_and_parser(case, body):
    assert isinstance(parse_event(orjson.dumps(body)), Event), case
    assert schema_errors(body) == []


@pytest.mark.parametrize(("case", "body", "reason"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_events_fail_schema_and_parser(case, body, reason):
    result = parse_event(orjson.dumps(body))
    assert isinstance(result, Rejection), case
    assert result.reason == reason
    assert schema_errors(body), f"{case}: the schema accepts what parse_event rejects as {reason}"


@pytest.mark.parametrize(("case", "body", "reason"), SCHEMA_GAPS, ids=[case for case, _, _ in SCHEMA_GAPS])
def test_known_schema_gaps_are_only_enforced_by_the_parser(case, body, reason):
    result = parse_event(orjson.dumps(body))
    assert isinstance(result, Rejection) and result.reason == reason, case
    assert schema_errors(body) == [], f"{case}: the schema now rejects it; move it to INVALID"


@pytest.mark.parametrize(("case", "body"), GUARD_LENIENCY, ids=[case for case, _ in GUARD_LENIENCY])
def test_guard_accepts_iso_spellings_beyond_the_contract(case, body):
    assert isinstance(parse_event(orjson.dumps(body)), Event), case
    assert schema_errors(body)


def test_oversized_event_is_a_size_rule_not_a_schema_rule():
    body = {**CONTACT, "padding": "x" * 20_000}
    result = parse_event(orjson.dumps(body))
    assert isinstance(result, Rejection) and result.reason == "too_large"
    assert schema_errors(body) == []


@pytest.fixture(scope="module")
def generated_lines() -> list[bytes]:
    return list(generate_events(20_000, 1_500, seed=11))


def test_schema_accepts_every_generated_event_the_parser_accepts(generated_lines):
    checked = Counter[str]()
    for line in generated_lines:
        result = parse_event(line)
        if isinstance(result, Event):
            assert schema_errors(orjson.loads(line)) == [], line
            checked[result.type] += 1
    # the stream exercises every event type
    # every contract type appears; "erase" (the privacy extension) is sent by a privacy tool, not generated
    assert set(checked) == set(EVENT_TYPES) - {"erase"}


def test_schema_rejects_generated_malformed_events_except_known_gaps(generated_lines):
    byte_level = {"bad_json", "bad_utf8", "not_object", "too_large"}
    rejected = Counter[str]()
    for line in generated_lines:
        result = parse_event(line)
        if not isinstance(result, Rejection) or result.reason in byte_level:
            continue
        body = orjson.loads(line)
        if schema_errors(body):
            rejected[result.reason] += 1
        else:
            # only an out-of-range ISO year or an integral float ts slip past the schema
            assert result.reason == "bad_timestamp", line
            ts = body["ts"]
            assert isinstance(ts, float) or ts.startswith("3000-"), line
    assert rejected["unknown_channel"] and rejected["unknown_type"] and rejected["empty_preference"]


@pytest.mark.parametrize("policy", ["default", "reg-f", "tcpa"])
def test_every_replayed_decision_matches_the_decision_schema(generated_lines, policy):
    # half the stream: validating a decision costs far more than making it, and 10k events cover every reason
    _replay, decisions = replay_lines(Guard(policy_named(policy)), generated_lines[:10_000])
    assert len(decisions) > 100
    actions = Counter[str]()
    for decision in decisions:
        errors = [error.message for error in DECISIONS.iter_errors(decision)]
        assert errors == [], (decision, errors)
        # the schema is open for forward compatibility; the code must not drift from what it documents
        assert DECISION_FIELDS <= decision.keys() <= DECISION_FIELDS | {"suggest"}
        expected = BLOCK_REASONS if decision["action"] == "block" else ALLOW_REASONS
        assert decision["reason"] in expected
        actions[decision["action"]] += 1
    assert actions["block"] > 0


def test_decision_schema_rejects_inconsistent_decisions(generated_lines):
    _replay, decisions = replay_lines(Guard(policy_named("default")), generated_lines[:5_000])
    block = next(d for d in decisions if d["action"] == "block" and d["until_ms"] is not None)
    assert DECISIONS.is_valid(block)
    assert not DECISIONS.is_valid({**block, "until": None})  # until_ms without until
    assert not DECISIONS.is_valid({**block, "action": "stop"})
    assert not DECISIONS.is_valid({**block, "evidence": {"rules": []}})
    assert not DECISIONS.is_valid({**block, "decided_at": "2026-11-23T10:00:00+08:00"})  # UTC only
    assert not DECISIONS.is_valid(drop(block, "cause_event_id"))
