"""Event-time helpers: parsing and formatting instants and durations, all in integer epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache
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


@lru_cache(maxsize=256)
def format_duration(ms: int) -> str:
    """Render milliseconds in the largest unit that divides them exactly (``604800000`` -> ``7d``)."""
    # weeks are left out on purpose: "7d" reads better than "1w" in rules and evidence
    for unit in ("d", "h", "m", "s"):
        size = MS_PER_UNIT[unit]
        if ms and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def parse_iso_ms(text: str) -> int | None:
    """Parse an ISO-8601 instant that carries an offset; None when it is not one."""
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        return None
    return (parsed - _EPOCH) // _ONE_MS  # exact integer arithmetic on timedeltas, floored like the rest


def format_ms(ms: int) -> str:
    """ISO-8601 UTC with a ``Z``; milliseconds only when there are any (``2026-11-23T10:00:00Z``)."""
    # Cached: a decision's evidence lists the contacts in its windows, and a busy customer's next decision lists
    # mostly the same instants again. A plain dict, emptied when full, not an LRU: with a few hundred thousand
    # instants in play an LRU's bookkeeping (relinking an entry on every hit, in memory not in the processor's
    # caches) cost more than it saved. A miss joins the hour's cached prefix with the precomputed texts of the
    # minute and second and of the milliseconds.
    text = _FORMATTED.get(ms)
    if text is None:
        if len(_FORMATTED) >= _FORMATTED_MAX:
            _FORMATTED.clear()
        hour, millis = divmod(ms, 3_600_000)
        second, millis = divmod(millis, 1_000)
        text = _FORMATTED[ms] = f"{_hour_prefix(hour)}{_MINUTE_SECOND_TEXT[second]}{_MILLIS_TEXT[millis]}"
    return text


_FORMATTED: dict[int, str] = {}
_FORMATTED_MAX: Final = 1 << 17
_MINUTE_SECOND_TEXT: Final = tuple(f"{second // 60:02d}:{second % 60:02d}" for second in range(3_600))
_MILLIS_TEXT: Final = ("Z", *(f".{millis:03d}Z" for millis in range(1, 1_000)))


@lru_cache(maxsize=1 << 13)
def _hour_prefix(hour: int) -> str:
    # hours of about a year: a stream's windows reach back and ahead by weeks, not by years
    day, hour_of_day = divmod(hour, 24)
    return f"{_date_prefix(day)}{hour_of_day:02d}:"


@lru_cache(maxsize=4096)
def _date_prefix(day: int) -> str:
    # formatting is on the hot path of every decision; dates repeat, so render each one once
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


def format_optional_ms(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)
