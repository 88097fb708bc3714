"""Event-time helpers: parsing and formatting instants and durations, all in integer epoch milliseconds."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from functools import lru_cache

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


@lru_cache(maxsize=1 << 16)
def format_ms(ms: int) -> str:
    """ISO-8601 UTC with a ``Z``; milliseconds only when there are any (``2026-11-23T10:00:00Z``)."""
    # Cached: a decision's evidence lists the contacts in its windows, and a busy customer's next decision lists
    # mostly the same instants again; a hit costs a tenth of rendering.
    day, rest = divmod(ms, 86_400_000)
    seconds, millis = divmod(rest, 1_000)
    hours, seconds = divmod(seconds, 3_600)
    minutes, seconds = divmod(seconds, 60)
    base = f"{_date_prefix(day)}{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{base}.{millis:03d}Z" if millis else f"{base}Z"


@lru_cache(maxsize=4096)
def _date_prefix(day: int) -> str:
    # formatting is on the hot path of every decision; dates repeat, so render each one once
    return (_EPOCH + timedelta(days=day)).strftime("%Y-%m-%dT")


def format_optional_ms(ms: int | None) -> str | None:
    return None if ms is None else format_ms(ms)
