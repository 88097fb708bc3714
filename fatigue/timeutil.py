"""Event-time helpers: parsing and formatting instants and durations, all in integer epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Final

MS_PER_UNIT = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)", re.ASCII)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

# Timestamps outside this range are treated as garbage (a seconds value sent as ms, a year-9999 sentinel), not
# as events: one absurd instant would otherwise move a customer's watermark and make every later event "late".
MIN_TS_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z


def parse_duration_ms(text: object) -> int:
    """Parse ``30s``, ``15m``, ``72h``, ``7d``, ``4w`` (or ``500ms``) into milliseconds."""
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 15m, 72h, 7d, 4w)")
    return int(match.group(1)) * MS_PER_UNIT[match.group(2)]


def format_duration(ms: int) -> str:
    """Render milliseconds in the largest unit that divides them exactly (``604800000`` -> ``7d``)."""
    text = _DURATIONS.get(ms)
    if text is None:
        if len(_DURATIONS) >= 256:
            _DURATIONS.clear()
        text = _DURATIONS[ms] = _render_duration(ms)
    return text


_DURATIONS: dict[int, str] = {}


def _render_duration(ms: int) -> str:
    # weeks are left out on purpose: "7d" reads better than "1w" in rules and evidence
    for unit in ("d", "h", "m", "s"):
        size = MS_PER_UNIT[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_iso_ms(text: str) -> int | None:
    """Parse an ISO-8601 instant that carries an offset; None when it is not one."""
    common = _parse_common_iso_ms(text)
    if common is not None:
        return common
    return _parse_any_iso_ms(text)


# ISO-8601 allows a decimal fraction on the lowest component given: "T10.5" is 10:30 and "T10:00.5" 10:00:30, but
# datetime.fromisoformat reads both as 10:00:00.5. Only a fraction of seconds (hh:mm:ss.f or hhmmss.f) is accepted;
# the others are refused rather than read as another instant.
_EXTENDED_SECONDS = re.compile(r"\d\d:\d\d:\d\d", re.ASCII)
_BASIC_SECONDS = re.compile(r"\D\d{6}", re.ASCII)


def _fractions_follow_seconds(text: str) -> bool:
    for at, char in enumerate(text):
        if (char == "." or char == ",") and not (
            _EXTENDED_SECONDS.fullmatch(text, max(at - 8, 0), at) or _BASIC_SECONDS.fullmatch(text, max(at - 7, 0), at)
        ):
            return False
    return True


def _parse_any_iso_ms(text: str) -> int | None:
    # the authority: every form datetime.fromisoformat accepts (but misread fractions), and every rejection
    if not _fractions_follow_seconds(text):
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None
    return (parsed - _EPOCH) // _ONE_MS  # exact integer arithmetic on timedeltas, floored like the rest


_DAYS_BEFORE_MONTH: Final = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334)
_DAYS_IN_MONTH: Final = (0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
# "YYYY-MM-DDTHH" -> the epoch ms that hour starts: a stream's instants share a few thousand hours
_HOUR_STARTS: dict[str, int] = {}
_HOUR_STARTS_MAX: Final = 1 << 16


def _parse_common_iso_ms(text: str) -> int | None:
    """The forms senders actually use, by hand: ``YYYY-MM-DDTHH:MM:SS`` with optional ``.fff`` and ``Z`` or
    ``+HH:MM``/``-HH:MM``. None for anything else, valid or not, which :func:`_parse_any_iso_ms` then decides: this
    path only ever accepts what it accepts, with the same result (a test checks both on generated text), at a
    fraction of the cost of ``datetime.fromisoformat`` plus timedelta arithmetic."""
    size = len(text)
    if size < 20 or size > 29 or text[13] != ":" or text[16] != ":" or not text.isascii():
        return None
    hour_text = text[:13]
    hour_start = _HOUR_STARTS.get(hour_text)
    if hour_start is None:
        hour_start = _hour_start_ms(text)
        if hour_start is None:
            return None
        if len(_HOUR_STARTS) >= _HOUR_STARTS_MAX:
            _HOUR_STARTS.clear()
        _HOUR_STARTS[hour_text] = hour_start
    minute = _two_digits(text, 14)
    second = _two_digits(text, 17)
    if minute < 0 or minute > 59 or second < 0 or second > 59:
        return None
    zone_at = 19
    millis = 0
    if text[19] == ".":
        if size < 24:
            return None
        leading = _two_digits(text, 20)
        last = ord(text[22]) - 48
        if leading < 0 or last < 0 or last > 9:
            return None
        millis = leading * 10 + last
        zone_at = 23
    zone_size = size - zone_at
    if zone_size == 1 and text[zone_at] == "Z":
        offset_minutes = 0
    elif zone_size == 6 and text[zone_at + 3] == ":" and (text[zone_at] == "+" or text[zone_at] == "-"):
        offset_hour = _two_digits(text, zone_at + 1)
        offset_minute = _two_digits(text, zone_at + 4)
        if offset_hour < 0 or offset_hour > 23 or offset_minute < 0 or offset_minute > 59:
            return None
        offset_minutes = offset_hour * 60 + offset_minute
        if text[zone_at] == "-":
            offset_minutes = -offset_minutes
    else:
        return None
    return hour_start + (minute * 60 + second - offset_minutes * 60) * 1000 + millis


def _hour_start_ms(text: str) -> int | None:
    """Epoch ms of the hour ``YYYY-MM-DDTHH`` that ``text`` starts with (a valid date and hour), else None."""
    if text[4] != "-" or text[7] != "-" or text[10] != "T":
        return None
    century = _two_digits(text, 0)
    year_of_century = _two_digits(text, 2)
    month = _two_digits(text, 5)
    day = _two_digits(text, 8)
    hour = _two_digits(text, 11)
    if century < 0 or year_of_century < 0 or day < 1 or hour < 0 or hour > 23 or month < 1 or month > 12:
        return None
    year = century * 100 + year_of_century
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if year < 1 or day > _DAYS_IN_MONTH[month] + (1 if leap and month == 2 else 0):
        return None
    prior = year - 1
    # days since 1970-01-01 of the proleptic Gregorian date
    days = (
        prior * 365
        + prior // 4
        - prior // 100
        + prior // 400
        + _DAYS_BEFORE_MONTH[month]
        + (1 if leap and month > 2 else 0)
        + day
        - 719_163
    )
    return (days * 24 + hour) * 3_600_000


def _two_digits(text: str, at: int) -> int:
    """The number written by the ASCII digits at ``at`` and ``at + 1``; -1 when either is not a digit."""
    tens = ord(text[at]) - 48
    ones = ord(text[at + 1]) - 48
    if 0 <= tens <= 9 and 0 <= ones <= 9:
        return tens * 10 + ones
    return -1


def format_ms(ms: int) -> str:
    """ISO-8601 UTC with a ``Z``; milliseconds only when there are any (``2026-11-23T10:00:00Z``)."""
    # On the hot path of every decision (its evidence lists the contacts in its windows). The hour's prefix is
    # cached (a stream spans a few thousand hours) and joined with the precomputed texts of the minute and second
    # and of the milliseconds. Caching whole instants instead missed on about a third of the calls of a long
    # stream (they are mostly distinct), and an entry costs more memory than building the text costs time.
    hour = ms // 3_600_000
    within = ms - hour * 3_600_000
    second = within // 1_000
    # one f-string: compiled, it is built in one allocation (two `+` made an intermediate string)
    return f"{_hour_prefix(hour)}{_MINUTE_SECOND_TEXT[second]}{_MILLIS_TEXT[within - second * 1_000]}"


_MINUTE_SECOND_TEXT: Final = tuple(f"{second // 60:02d}:{second % 60:02d}" for second in range(3_600))
_MILLIS_TEXT: Final = ("Z", *(f".{millis:03d}Z" for millis in range(1, 1_000)))


# Plain dicts emptied when full, not lru_cache: its wrapper is an interpreted call even from compiled code.
_HOUR_PREFIXES: dict[int, str] = {}
_HOUR_PREFIXES_MAX: Final = 1 << 13  # hours of about a year: windows reach back and ahead by weeks, not years
_DATE_PREFIXES: dict[int, str] = {}
_DATE_PREFIXES_MAX: Final = 4096


def _hour_prefix(hour: int) -> str:
    prefix = _HOUR_PREFIXES.get(hour)
    if prefix is None:
        if len(_HOUR_PREFIXES) >= _HOUR_PREFIXES_MAX:
            _HOUR_PREFIXES.clear()
        day, hour_of_day = divmod(hour, 24)
        prefix = _HOUR_PREFIXES[hour] = f"{_date_prefix(day)}{hour_of_day:02d}:"
    return prefix


def _date_prefix(day: int) -> str:
    # formatting is on the hot path of every decision; dates repeat, so render each one once
    prefix = _DATE_PREFIXES.get(day)
    if prefix is None:
        if len(_DATE_PREFIXES) >= _DATE_PREFIXES_MAX:
            _DATE_PREFIXES.clear()
        prefix = _DATE_PREFIXES[day] = (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")
    return prefix


def format_optional_ms(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)
