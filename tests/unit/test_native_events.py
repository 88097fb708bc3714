"""The native core's event parser and time helpers (native/src/events.rs, timeutil.rs) against the Python ones.

``parse_fast_py`` may decline any message (None: the caller then runs Python's ``parse_event``, which gives the
exact rejection), but whenever it returns an event, Python's ``parse_event`` must return an Event with exactly the
same fields, types included. It has two decoders, a simple scanner for flat objects without escapes and serde_json
for everything else; ``parse_fast_general_py`` runs the second alone, so that both are held to the same rule.

The native module must be built (``make venv``): these tests fail without it, unless FATIGUE_NO_NATIVE=1 says
that it was deliberately left out.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fatigue._native_build import DIGEST_FILE, native_source_digest
from fatigue.events import Event, parse_event
from fatigue.generate import Disorder, generate_messages
from fatigue.timeutil import MAX_TS_MS, MIN_TS_MS, format_duration, format_ms, parse_iso_ms
from tests.strategies import event_like, keyed_messages

if os.environ.get("FATIGUE_NO_NATIVE") == "1":
    pytest.skip("FATIGUE_NO_NATIVE=1: the native core was deliberately not built", allow_module_level=True)

try:
    from fatigue import _native
except ImportError as error:  # a failure, not a skip: a missing build must not pass as a green run
    _native = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

REPO = Path(__file__).resolve().parents[2]
FAST_TYPES = ("contact", "call_ended", "email_opened")
FIELDS = (
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
)
MAX_BYTES = 16_384
TS_MS = 1_788_220_804_171  # 2026-09-01T00:00:04.171Z


@pytest.fixture(autouse=True)
def _native_is_built() -> None:
    if _native is None:
        pytest.fail(
            f"fatigue._native is not built ({_IMPORT_ERROR}): run `make venv`, or set FATIGUE_NO_NATIVE=1 to skip "
            "the native core's tests",
            pytrace=False,
        )


def python_fields(raw: bytes, key: bytes | None, check_key: bool, max_bytes: int) -> tuple[Any, ...] | None:
    """What Python's parse_event makes of the message, as parse_fast_py's tuple; None when it is not an Event."""
    parsed = parse_event(raw, key, check_key=check_key, max_bytes=max_bytes)
    if not isinstance(parsed, Event):
        return None
    return tuple(getattr(parsed, name) for name in FIELDS)


def compare(
    raw: bytes, key: bytes | None = None, *, check_key: bool = False, max_bytes: int = MAX_BYTES
) -> tuple[bool, bool]:
    """Assert both native decoders agree with Python wherever they accept. Returns whether parse_fast_py accepted
    and whether Python's parse_event made an event of a type the fast path handles."""
    expected = python_fields(raw, key, check_key, max_bytes)
    accepted = False
    for parse in (_native.parse_fast_py, _native.parse_fast_general_py):
        fast = parse(raw, key, check_key, max_bytes)
        if fast is None:
            continue
        # repr, not ==: 1 == 1.0 == True and 0.0 == -0.0, but the native core must give the very same values
        assert expected is not None and repr(fast) == repr(expected), (parse.__name__, raw, key, fast, expected)
        accepted = accepted or parse is _native.parse_fast_py
    return accepted, expected is not None and expected[0] in FAST_TYPES


def check(raw: bytes, key: bytes | None = None, *, check_key: bool = False, max_bytes: int = MAX_BYTES) -> bool:
    """:func:`compare`; True when parse_fast_py accepted."""
    return compare(raw, key, check_key=check_key, max_bytes=max_bytes)[0]


def dumps(body: dict[str, Any], *, ascii_only: bool = False) -> bytes:
    # the standard library's encoder: it writes integers beyond 64 bits and \u escapes, which orjson does not
    return json.dumps(body, ensure_ascii=ascii_only, separators=(",", ":")).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------------------------------------ generated streams


@pytest.mark.parametrize(
    ("seed", "count", "customers", "disorder"),
    [
        (1, 100_000, 20_000, Disorder()),
        (2, 60_000, 300, Disorder(malformed=0.05, duplicates=0.01)),
        (3, 40_000, 50_000, Disorder.clean()),
    ],
)
def test_generated_streams_parse_as_python_parses_them_nearly_all_on_the_fast_path(
    seed: int, count: int, customers: int, disorder: Disorder
) -> None:
    accepted = fast = 0
    for number, (key, raw) in enumerate(generate_messages(count, customers, seed, disorder=disorder)):
        if number % 8 == 0:  # also without the key check, on a share of the stream (each check runs Python too)
            check(raw)
        took, common = compare(raw, key, check_key=True)
        accepted += common
        fast += took
    assert accepted > count * 0.8
    assert fast >= 0.99 * accepted, f"only {fast} of {accepted} common events took the fast path"


# ----------------------------------------------------------------------------------------------- mutated messages

BASES: list[dict[str, Any]] = [
    {
        "type": "contact",
        "event_id": "ev-1",
        "customer_id": "cust-1",
        "ts": "2026-09-01T00:00:04.171Z",
        "channel": "call",
        "category": "service",
        "sender": "dialer-team-b",
        "campaign": "cmp-2026-11",
    },
    {"type": "contact", "event_id": "ev-2", "customer_id": "cust-2", "ts": TS_MS, "channel": "email"},
    {
        "type": "call_ended",
        "event_id": "ev-3",
        "customer_id": "cust-3",
        "ts": "2026-08-31T19:00:04.569-05:00",
        "ref": "ev-1",
        "duration_s": 32,
        "answered": False,
    },
    {"type": "call_ended", "event_id": "ev-4", "customer_id": "cust-4", "ts": TS_MS, "duration_s": 2.5},
    {"type": "email_opened", "event_id": "ev-5", "customer_id": "cust-5", "ts": TS_MS, "ref": "ev-2"},
    {
        "type": "email_opened",
        "event_id": "ev-6",
        "customer_id": "клиент-6",
        "ts": "2026-09-01T08:00:04+08:00",
        "ref": "ev-2",
        "machine": True,
        "note": "fields the contract does not name are ignored",
    },
]

ISO_VARIANTS = [
    "2026-09-01T00:00:04Z",
    "2026-09-01T00:00:04.1Z",
    "2026-09-01T00:00:04.17Z",
    "2026-09-01T00:00:04.171Z",
    "2026-09-01T00:00:04.1719Z",
    "2026-09-01T00:00:04.171999Z",
    "2026-09-01T00:00:04.1719999Z",
    "2026-09-01T00:00:04.171999999Z",
    "2026-09-01T00:00:04.1719999999Z",
    "2026-09-01T00:00:04.Z",
    "2026-09-01T00:00:04,171Z",
    "2026-09-01T00:00:04.171z",
    "2026-09-01t00:00:04.171Z",
    "2026-09-01 00:00:04.171Z",
    "2026-09-01T00:00:04.171+00:00",
    "2026-09-01T00:00:04.171-00:00",
    "2026-09-01T05:30:04.171+05:30",
    "2026-08-31T14:00:04.171-10:00",
    "2026-09-01T23:59:04.171+23:59",
    "2026-09-01T00:00:04.171+24:00",
    "2026-09-01T00:00:04.171+05:60",
    "2026-09-01T05:30:04.171+0530",
    "2026-09-01T05:00:04.171+05",
    "2026-09-01T05:30:04.171+05:30:00",
    "2026-09-01T05:30:04.171+05:30:00.5",
    "2026-09-01T00:00:04.171",
    "2026-09-01T00:00:04",
    "2026-09-01T24:00:00Z",
    "2026-09-01T00:60:00Z",
    "2026-09-01T00:00:60Z",
    "2026-02-29T00:00:04Z",
    "2028-02-29T00:00:04Z",
    "2100-02-29T00:00:04Z",
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:59:59.999Z",
    "2099-12-31T23:59:59.999Z",
    "2100-01-01T00:00:00Z",
    "2100-01-01T00:30:00+01:00",
    "0001-01-01T00:00:00Z",
    "0000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999Z",
    "20260901T000004Z",
    "2026-09-01T00:00:04.171ZZ",
    "2026-09-01T00:00:04.171Z ",
    " 2026-09-01T00:00:04.171Z",
    "２026-09-01T00:00:04Z",
    "2026-09-01T00:00:0٤Z",
    "2026-W36-2T00:00:04Z",
    "2026-244T00:00:04Z",
    "2026-09-01T10.5Z",
    "2026-09-01T10:00.5Z",
    "",
    "x" * 65,
]

VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    32,
    999_999_999,
    1_000_000_000,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    10**30,
    -(2**63),
    -(2**63) - 1,
    0.0,
    -0.0,
    0.1,
    2.5,
    1e-300,
    5e-324,
    999_999_999.999,
    1e9,
    1e300,
    1.7976931348623157e308,
    TS_MS,
    TS_MS + 0.0,
    MIN_TS_MS,
    MIN_TS_MS - 1,
    MAX_TS_MS - 1,
    MAX_TS_MS,
    TS_MS // 1000,
    "",
    "x",
    "a" * 128,
    "a" * 129,
    "é" * 128,
    "é" * 129,
    "😀" * 128,
    "😀" * 129,
    "ид-клиента",
    "\x00",
    "\u2028\u2029",
    'quo"te',
    "back\\slash",
    "tab\there",
    "slash/",
    "contact",
    "call_ended",
    "email_opened",
    "erase",
    "Contact",
    "email",
    "sms",
    "call",
    "fax",
    "marketing",
    "service",
    "transactional",
    "Marketing",
    str(TS_MS),
    [],
    {},
    ["a"],
    {"count": 1},
    *ISO_VARIANTS,
]

CONTRACT_KEYS = ("type", "event_id", "customer_id", "ts", "channel", "category", "sender", "campaign", "ref")
CONTRACT_KEYS += ("duration_s", "answered", "machine")


def variants_of(body: dict[str, Any]) -> Iterator[bytes]:
    """The body with each contract field replaced by each of VALUES or removed, compactly and \\u-escaped."""
    for field in CONTRACT_KEYS:
        others = {name: value for name, value in body.items() if name != field}
        yield dumps(others)
        for value in VALUES:
            changed = {**body, field: value}
            yield dumps(changed)
            if isinstance(value, str) and not value.isascii():
                yield dumps(changed, ascii_only=True)


def test_every_field_spoilt_in_every_way() -> None:
    accepted = 0
    for body in BASES:
        for raw in variants_of(body):
            accepted += check(raw)
    assert accepted > 500  # the fast path does take the good ones


RAW_EDITS: list[Callable[[bytes], bytes]] = [
    lambda raw: b" \t\r\n" + raw + b" \n\r\t",
    lambda raw: raw.replace(b",", b" , ").replace(b":", b" : "),
    lambda raw: raw.replace(b",", b"\x0c,"),  # form feed is not JSON whitespace
    lambda raw: raw.replace(b",", b"\xc2\xa0,", 1),  # nor is a no-break space
    lambda raw: b"\xef\xbb\xbf" + raw,
    lambda raw: raw + b"x",
    lambda raw: raw + b"{}",
    lambda raw: raw + b"\x00",
    lambda raw: raw[:-1] + b",}",
    lambda raw: raw[:-1] + b',"":0}',
    lambda raw: raw.replace(b'"type"', b'"\\u0074ype"'),
    lambda raw: raw.replace(b'"type"', b'"Type"'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\/'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\u00e9'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\ud83d\\ude00'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\ud83d'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\ude00'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\u0000'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\\x'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\x01'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\x7f'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\xff'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\xed\xa0\x80'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\xc3\x28'),
    lambda raw: raw.replace(b'"event_id":"', b'"event_id":"\xf4\x90\x80\x80'),
    lambda raw: raw.replace(b'"customer_id":"', b'"customer_id":"\\u0063\\u0075'),
    lambda raw: raw.replace(b"true", b"tru").replace(b"false", b"fals"),
    lambda raw: raw.replace(b"true", b"TRUE"),
    lambda raw: raw.replace(b":32", b":32.0").replace(b":2.5", b":2.5e0"),
    lambda raw: raw.replace(b":32", b":-0").replace(b":2.5", b":-0.0"),
    lambda raw: raw.replace(b":32", b":032").replace(b":2.5", b":2."),
    lambda raw: raw.replace(b":32", b":3.2E+1").replace(b":2.5", b":.5"),
    lambda raw: raw.replace(b":32", b":+32").replace(b":2.5", b":NaN"),
    lambda raw: raw.replace(b":32", b":Infinity").replace(b":2.5", b":-Infinity"),
    lambda raw: raw.replace(b":32", b":320000000000000000000e-19").replace(b":2.5", b":0." + b"0" * 400 + b"25e400"),
    lambda raw: raw.replace(b":1788220804171", b":1788220804171.0"),
    lambda raw: raw.replace(b":1788220804171", b":1.788220804171e12"),
    lambda raw: raw.replace(b":1788220804171", b":1788220804171e0"),
    lambda raw: raw.replace(b":1788220804171", b":-1788220804171"),
    lambda raw: raw.replace(b":1788220804171", b":01788220804171"),
    lambda raw: raw.replace(b":1788220804171", b":00001788220804171"),
    lambda raw: raw.replace(b":1788220804171", b":1788220804171" + b"0" * 7),
]
UNKNOWN_VALUES: list[bytes] = [
    b"1e400",
    b"-1e400",
    b"1E400",
    b"1e308",
    b"1.7976931348623157e308",
    b"1.7976931348623158e308",
    b"1.7976931348623159e308",
    b"1" + b"0" * 308,
    b"1" + b"0" * 309,
    b"1" * 400,
    b"1e-400",
    b"0e999999999999",
    b"4.9e-324",
    b"-0",
    b"18446744073709551616",
    b"-9223372036854775809",
    b'"\\ud800"',
    b'"\\udc00"',
    b'"\\ud800\\u0041"',
    b'"\\ud83d\\ude00"',
    b'"\\uZZZZ"',
    b'"\\a"',
    b'"\xff"',
    b'"\x1f"',
    b'["\\ud800"]',
    b'{"\\ud800":1}',
    b'{"a":[1,{"b":1e400}]}',
    b'{"a":[1,{"b":null}]}',
    b"[" * 127 + b"]" * 127,
    b"[" * 129 + b"]" * 129,
    b"[" * 1100 + b"]" * 1100,
    b"[1,]",
    b"{,}",
    b"nul",
    b"'x'",
    b"",
]


def test_raw_edits_escapes_numbers_and_unknown_fields() -> None:
    accepted = 0
    for body in BASES:
        base = dumps(body).replace(str(TS_MS).encode(), b"1788220804171")
        for edit in RAW_EDITS:
            accepted += check(edit(base))
        for value in UNKNOWN_VALUES:
            accepted += check(base[:-1] + b',"extra":' + value + b"}")
            accepted += check(b'{"extra":' + value + b"," + base[1:])
        for size in range(len(base) + 1):
            check(base[:size])
    assert accepted > 100


def test_duplicate_fields_and_keys() -> None:
    for body in BASES:
        base = dumps(body)
        for field in CONTRACT_KEYS:
            for value in (body.get(field), "x", None, TS_MS, "contact", "erase", "sms"):
                # orjson keeps the last of duplicate keys; the fast path declines them all
                pair = f'"{field}":{json.dumps(value)}'.encode()
                twice = pair if field in body else pair + b"," + pair
                assert not check(base[:-1] + b"," + twice + b"}")
                assert not check(b"{" + twice + b"," + base[1:])
        assert check(base[:-1] + b',"extra":1,"extra":2}')  # not a contract field: no doubt
        assert not check(base[:-1] + b',"\\u0074ype":"erase"}')
        key = body["customer_id"].encode()
        for message_key in (key, None, b"", key + b"\0", key.upper(), key[:-1], b"someone-else"):
            check(base, message_key, check_key=True)
        assert check(base, key, check_key=True)
        assert not check(base, None, check_key=True)
        assert check(base, None, check_key=False)
        for max_bytes in (0, len(base) - 1, len(base), len(base) + 1):
            assert check(base, max_bytes=max_bytes) == (max_bytes >= len(base))


def test_unicode_ids_count_code_points_as_python_does() -> None:
    for unit in ("a", "é", "ид", "€", "😀", "\u0301", "\x00"):
        for count in (1, 63, 64, 127, 128, 129, 200):
            text = (unit * count)[: max(count, 1)]
            for field in ("event_id", "customer_id", "ref", "sender", "campaign"):
                for body in BASES:
                    changed = {**body, field: text}
                    for ascii_only in (False, True):
                        raw = dumps(changed, ascii_only=ascii_only)
                        took = check(raw, text.encode() if field == "customer_id" else None, check_key=True)
                        if field == "customer_id" and len(text) <= 128:
                            assert took == (python_fields(raw, text.encode(), True, MAX_BYTES) is not None)


# ----------------------------------------------------------------------------------------------------- hypothesis


@settings(max_examples=200, deadline=None)
@given(keyed_messages(customers=("a", "b", "é", "😀" * 3)), st.booleans())
def test_keyed_messages(message: tuple[bytes | None, bytes], check_key: bool) -> None:
    key, raw = message
    check(raw, key, check_key=check_key)


@settings(max_examples=120, deadline=None)
@given(event_like, st.sampled_from(FAST_TYPES))
def test_event_like_objects(body: dict[str, Any], event_type: str) -> None:
    body.setdefault("type", event_type)
    try:
        raw = orjson.dumps(body)
    except (TypeError, orjson.JSONEncodeError):
        return  # e.g. an integer beyond 64 bits: the standard library's encoder is tried on it below
    check(raw)
    check(dumps(body, ascii_only=True))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    check(raw)


_labels = st.none() | st.text(max_size=130) | st.integers() | st.booleans()
_ids = st.text(min_size=0, max_size=130) | st.text(alphabet="ab-01é😀", min_size=1, max_size=5)
_timestamps = st.integers(MIN_TS_MS - 10, MAX_TS_MS + 10) | st.integers(MIN_TS_MS, MAX_TS_MS).map(
    lambda ms: format_ms(ms).replace("Z", random.Random(ms).choice(["Z", "+00:00", "-00:00", "z", ""]))
)
_durations = (
    st.integers(-5, 10**12)
    | st.floats(allow_nan=True, allow_infinity=False)
    | st.floats(0, 1e10)
    | st.booleans()
    | st.none()
)
common_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(FAST_TYPES),
        "event_id": _ids,
        "customer_id": _ids,
        "ts": _timestamps,
    },
    optional={
        "channel": st.sampled_from(["email", "sms", "call", "Call", ""]) | st.none(),
        "category": st.sampled_from(["marketing", "service", "transactional", "x"]) | st.none(),
        "sender": _labels,
        "campaign": _labels,
        "ref": _ids | st.none(),
        "duration_s": _durations,
        "answered": st.booleans() | st.none() | st.integers(0, 1),
        "machine": st.booleans() | st.none() | st.integers(0, 1),
    },
)


@settings(max_examples=600, deadline=None)
@given(common_events, st.booleans(), st.booleans())
def test_common_events_near_the_boundaries(body: dict[str, Any], ascii_only: bool, check_key: bool) -> None:
    try:
        raw = dumps(body, ascii_only=ascii_only)
    except UnicodeEncodeError:
        return
    customer = body["customer_id"]
    check(raw, customer.encode("utf-8", "surrogatepass"), check_key=check_key)


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?", fullmatch=True))
@example("0.1")
@example("2.2250738585072011e-308")
@example("9007199254740993")
@example("9007199254740993.0")
@example("123456789012345678901234567890e-21")
def test_durations_are_read_as_orjson_reads_them(literal: str) -> None:
    # a decimal literal must give the same float as orjson (both correctly rounded), whichever decoder reads it
    for body in (
        b'{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220804171,"duration_s":%s}',
        b'{"type":"call_ended","event_id":"e","customer_id":"c","ts":1788220804171,"duration_s":%s,"n":"\\/"}',
    ):
        check(body % literal.encode())


# ------------------------------------------------------------------------------------------------------ timeutil


def _two(low: int, high: int) -> st.SearchStrategy[str]:
    return st.integers(low, high).map(lambda value: f"{value:02d}")


_instants = st.builds(
    lambda year, month, day, hour, minute, second, fraction, zone: (
        f"{year:04d}-{month}-{day}T{hour}:{minute}:{second}{fraction}{zone}"
    ),
    st.integers(0, 9999),
    _two(0, 13),
    _two(0, 32),
    _two(0, 25),
    _two(0, 61),
    _two(0, 61),
    st.sampled_from(("", ".", ".0", ".000", ".5", ".12", ".123", ".999", ".1234", ".123456", ".1234567891", ",123")),
    st.one_of(
        st.sampled_from(("Z", "z", "", "+00:00", "-00:00", "+0530", "+05", "UTC", "+05:30:00")),
        st.builds(
            lambda sign, hours, minutes: f"{sign}{hours}:{minutes}", st.sampled_from("+-"), _two(0, 25), _two(0, 61)
        ),
    ),
)


@settings(max_examples=800, deadline=None)
@given(_instants, st.integers(0, 40), st.sampled_from(("", "", "x", " ", "٣", "T", "t", "-", ":", ".", "0", "é")))
def test_iso_instants_parse_as_python_parses_them(text: str, position: int, replacement: str) -> None:
    index = position % (len(text) + 1)
    for candidate in (text, text[:index] + replacement + text[index + 1 :]):
        native = _native.parse_iso_ms_py(candidate)
        assert native is None or native == parse_iso_ms(candidate), candidate


def test_iso_variants_and_common_forms() -> None:
    for text in ISO_VARIANTS:
        native = _native.parse_iso_ms_py(text)
        assert native is None or native == parse_iso_ms(text), text
    rng = random.Random(7)
    for _ in range(20_000):
        ms = rng.randrange(MIN_TS_MS, MAX_TS_MS)
        offset = rng.choice((0, 60, -300, 330, 525, -570, 840, -720))
        local = format_ms(ms + offset * 60_000).removesuffix("Z")
        if "." not in local:
            local += rng.choice(("", ".000"))
        hours, minutes = divmod(abs(offset), 60)
        zone = "Z" if offset == 0 and rng.random() < 0.5 else f"{'-' if offset < 0 else '+'}{hours:02d}:{minutes:02d}"
        for text in (local + zone, local + "123" + zone if "." in local else local + ".5" + zone):
            # the forms senders use: the native path must take them, with Python's result
            assert _native.parse_iso_ms_py(text) == parse_iso_ms(text) is not None, text


EDGE_MS = [
    0,
    -1,
    1,
    999,
    1_000,
    1_001,
    59_999,
    3_599_999,
    86_399_999,
    MIN_TS_MS,
    MIN_TS_MS - 1,
    MAX_TS_MS - 1,
    MAX_TS_MS,
    951_782_400_000,  # 2000-02-29
    1_709_164_800_000,  # 2024-02-29
    4_107_542_400_000,  # 2100-03-01
    -62_135_596_800_000,  # 0001-01-01
    -30_610_224_000_001,  # 999-12-31T23:59:59.999 (glibc's %Y: not padded)
    253_402_300_799_999,  # 9999-12-31T23:59:59.999
]


def test_format_ms_is_pythons() -> None:
    rng = random.Random(11)
    samples = [rng.randrange(MIN_TS_MS, MAX_TS_MS) for _ in range(50_000)]
    samples += [sample - sample % 1000 for sample in samples[:5_000]] + EDGE_MS
    for ms in samples:
        assert _native.format_ms_py(ms) == format_ms(ms), ms


def test_format_duration_is_pythons() -> None:
    rng = random.Random(13)
    units = (1, 1_000, 60_000, 3_600_000, 86_400_000, 604_800_000)
    samples = [0, 1, -1, 2**62, -(2**63), 2**63 - 1] + [rng.randrange(-(10**12), 10**12) for _ in range(5_000)]
    samples += [rng.randrange(-1_000, 1_000) * rng.choice(units) for _ in range(20_000)]
    for ms in samples:
        assert _native.format_duration_py(ms) == format_duration(ms), ms


# ----------------------------------------------------------------------------------------------------------- build


def test_the_extension_was_built_from_the_sources_beside_it() -> None:
    # setup.py records the digest of native/ it built; an edit since then means `make venv` has not run
    recorded = orjson.loads((REPO / "fatigue" / DIGEST_FILE).read_bytes())
    assert recorded == {"digest": native_source_digest(REPO)}, "native/ changed since the build: run `make venv`"
