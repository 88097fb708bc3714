"""Deterministic synthetic event stream: the input of the end-to-end tests, the benchmarks and the demo.

Everything comes from one seeded :class:`random.Random` (only ``random()``, ``randrange()`` and ``shuffle()``,
whose output is stable across Python versions) and from event time: no wall clock, no hash order. The same
arguments always give the same bytes.

What the stream looks like:

* customers ``cust-000123`` with Zipf-Mandelbrot skewed activity (a few hot keys, a long tail);
* contacts on email / sms / call, ~80% marketing, 15% service, 5% transactional, optional sender and campaign;
* ``call_ended`` for most calls (~85% answered, ~40% of answered calls shorter than 30 s), ``email_opened`` for
  ~20% of emails within 72 h (some ``machine: true``) and a few after it, occasional ``unsubscribe``,
  ``complaint``, ``sms_stop`` and ``preference`` events;
* event time spread over ``span_days`` (60 by default) and mostly in arrival order; ~2% of messages arrive up to a
  few hours late (inside the 24 h late grace) and a tiny fraction more than 24 h late;
* timestamps as ISO-8601 with ``Z``, ISO-8601 with an offset (``+08:00``...) and integer epoch milliseconds;
* a small fraction of malformed messages (one per rejection reason the parser has) and of exact duplicates
  (the same bytes re-sent later). Each of these disorders can be turned off.

``generate_messages`` yields ``(key, value)`` pairs for a Kafka producer (key: the customer id, as the contract
requires; None for a malformed line that has none); ``generate_events`` yields the values only.
Run ``python -m fatigue.generate --events N --customers N --seed S --out FILE`` to write a JSON-lines file.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import sys
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from fatigue.timeutil import parse_iso_ms

DEFAULT_START_MS: Final = 1_788_220_800_000  # 2026-09-01T00:00:00Z
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = 1_000
_MINUTE: Final = 60_000
_HOUR: Final = 3_600_000
_DAY: Final = 86_400_000

# ---------------------------------------------------------------------------------------------- content mix
CHANNEL_MIX: Final = (("email", 0.55), ("sms", 0.25), ("call", 0.20))
CATEGORY_MIX: Final = (("marketing", 0.80), ("service", 0.15), ("transactional", 0.05))
SENDERS: Final = {
    "email": ("crm", "newsletter"),
    "sms": ("crm", "sms-gateway"),
    "call": ("dialer-team-a", "dialer-team-b"),
}
CAMPAIGNS: Final = tuple(f"cmp-2026-{number:02d}" for number in range(1, 25))
TIMEZONES: Final = ("Europe/Paris", "Asia/Shanghai", "America/New_York", "Asia/Singapore", "Europe/London", "UTC")
# ISO offsets in minutes; +08:00 dominates because the contract's own example uses it
OFFSETS: Final = (480, 480, 60, 120, -300, 330, 0)

PREFERENCE_RATE: Final = 0.005  # per step: a customer states a wish, unprompted
CALL_ENDED_RATE: Final = 0.92  # the rest of the dialer's results never arrive
ANSWERED_RATE: Final = 0.85
SHORT_CALL_RATE: Final = 0.40  # of answered calls: < 30 s, a short hang-up under the default policy
OPEN_RATE: Final = 0.20  # emails opened within 72 h
MACHINE_OPEN_RATE: Final = 0.15  # of those opens: a privacy proxy, not a human
LATE_OPEN_RATE: Final = 0.03  # emails opened only after 72 h (too late to count as read)
# negative reactions per contact on a channel: (event type, probability)
REACTIONS: Final = {
    "email": (("unsubscribe", 0.003), ("complaint", 0.0005)),
    "sms": (("sms_stop", 0.004), ("unsubscribe", 0.001), ("complaint", 0.001)),
    "call": (("complaint", 0.001),),
}

MALFORMED_KINDS: Final = (
    "bad_json",
    "bad_utf8",
    "not_object",
    "missing_field",
    "bad_field",
    "unknown_type",
    "unknown_channel",
    "unknown_category",
    "bad_timestamp",
    "too_large",
    "empty_preference",
)

Message = tuple[bytes | None, bytes]


@dataclass(frozen=True, slots=True)
class Disorder:
    """How dirty the stream is; every rate is per valid message, and 0 turns that disorder off."""

    malformed: float = 0.005  # an extra malformed message next to this one
    duplicates: float = 0.005  # the same bytes re-sent 1 s..6 h later
    out_of_order: float = 0.02  # arrives 1 min..4 h after its event time (inside the 24 h late grace)
    too_late: float = 0.0005  # arrives 25..48 h after its event time (beyond the late grace)

    @classmethod
    def clean(cls) -> Disorder:
        return cls(malformed=0.0, duplicates=0.0, out_of_order=0.0, too_late=0.0)


def message_key(line: bytes) -> bytes | None:
    """The Kafka key for a line: its ``customer_id`` as UTF-8, or None when the line has no readable one."""
    try:
        body = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    customer = body.get("customer_id") if isinstance(body, dict) else None
    return customer.encode() if isinstance(customer, str) else None


def generate_messages(
    count: int,
    customers: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    *,
    span_days: float = 60.0,
    skew: float = 1.0,
    disorder: Disorder | None = None,
) -> Iterator[Message]:
    """Exactly ``count`` ``(key, value)`` messages in arrival order; values are JSON without a newline."""
    if count < 0 or customers < 1:
        raise ValueError("count must be >= 0 and customers >= 1")
    if span_days <= 0 or skew < 0:
        raise ValueError("span_days must be > 0 and skew >= 0")
    generator = _Generator(customers, seed, start_ms, span_days, skew, count, disorder or Disorder())
    return generator.run(count)


def generate_events(
    count: int,
    customers: int,
    seed: int,
    start_ms: int = DEFAULT_START_MS,
    *,
    span_days: float = 60.0,
    skew: float = 1.0,
    disorder: Disorder | None = None,
) -> Iterator[bytes]:
    """The values of :func:`generate_messages`: raw JSON lines (bytes, no newline) in arrival order."""
    # not a generator function itself, so bad arguments raise here rather than at the first next()
    messages = generate_messages(count, customers, seed, start_ms, span_days=span_days, skew=skew, disorder=disorder)
    return (value for _key, value in messages)


def _expected_messages_per_step(disorder: Disorder) -> float:
    """Mean messages one step produces, so the clock can be paced to spread ``count`` over the span."""
    channel = dict(CHANNEL_MIX)
    reactions = sum(channel[name] * sum(rate for _, rate in items) for name, items in REACTIONS.items())
    follow_ups = channel["call"] * CALL_ENDED_RATE + channel["email"] * (OPEN_RATE + LATE_OPEN_RATE) + reactions
    valid = (1 - PREFERENCE_RATE) * (1 + follow_ups) + PREFERENCE_RATE
    return valid * (1 + disorder.malformed + disorder.duplicates)


class _Generator:
    def __init__(
        self,
        customers: int,
        seed: int,
        start_ms: int,
        span_days: float,
        skew: float,
        count: int,
        disorder: Disorder,
    ) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.disorder = disorder
        self.clock = start_ms
        steps = max(count / _expected_messages_per_step(disorder), 1.0)
        self.mean_gap_ms = span_days * _DAY / steps
        # rank -> customer id, shuffled so the hottest customer is not always cust-000000
        ids = [f"cust-{index:06d}" for index in range(customers)]
        self.rng.shuffle(ids)
        self.customers = ids
        # Zipf-Mandelbrot weights 1 / (rank + q) ** skew with q = customers / 500: with the default skew the
        # hottest customer gets ~80x the mean activity whatever the population size (a hot key, not a runaway)
        offset = max(1.0, customers / 500)
        total = 0.0
        cumulative: list[float] = []
        for rank in range(customers):
            total += 1.0 / (rank + offset) ** skew
            cumulative.append(total)
        self.cumulative = cumulative
        self.total_weight = total
        self.next_id = 0
        self.sequence = 0  # heap tie-breaker: equal arrival times keep push order
        self.heap: list[tuple[int, int, bytes | None, bytes]] = []

    # ------------------------------------------------------------------ driver

    def run(self, count: int) -> Iterator[Message]:
        produced = 0
        heap = self.heap
        while produced < count:
            # exponential gaps: a Poisson process of steps, paced to spread the stream over the span
            self.clock += int(-math.log(1.0 - self.rng.random()) * self.mean_gap_ms)
            self._step()
            while heap and heap[0][0] <= self.clock and produced < count:
                _arrival, _sequence, key, value = heapq.heappop(heap)
                yield key, value
                produced += 1

    def _step(self) -> None:
        rng = self.rng
        customer = self._customer()
        if rng.random() < PREFERENCE_RATE:
            self._emit(self._preference(customer, self.clock))
            return
        channel = self._pick(CHANNEL_MIX)
        contact_ms = self.clock
        contact = self._contact(customer, channel, contact_ms)
        contact_id: str = contact["event_id"]
        self._emit(contact)
        if channel == "call":
            if rng.random() < CALL_ENDED_RATE:
                self._emit(self._call_ended(customer, contact_id, contact_ms))
        elif channel == "email":
            opened = self._email_opened(customer, contact_id, contact_ms)
            if opened is not None:
                self._emit(opened)
        for reaction, rate in REACTIONS[channel]:
            if rng.random() < rate:
                self._emit(self._reaction(reaction, customer, channel, contact_ms))

    def _emit(self, body: dict[str, Any]) -> None:
        """Serialise one valid event and schedule its arrival, plus any duplicate or malformed sibling."""
        rng = self.rng
        disorder = self.disorder
        ts_ms: int = body["ts"]
        if rng.random() < 0.4:
            # many senders only have whole seconds; rounded up so that nothing moves before the clock
            ts_ms += -ts_ms % _SECOND
        customer: str = body["customer_id"]
        body["ts"] = self._timestamp(ts_ms)
        if rng.random() < 0.01:
            body["trace_id"] = f"t-{rng.randrange(1 << 32):08x}"  # unknown fields must be ignored
        value = orjson.dumps(body)
        key = customer.encode()
        arrival = ts_ms
        draw = rng.random()
        if draw < disorder.too_late:
            arrival += 25 * _HOUR + rng.randrange(23 * _HOUR)
        elif draw < disorder.too_late + disorder.out_of_order:
            arrival += _MINUTE + rng.randrange(4 * _HOUR - _MINUTE)
        self._push(arrival, key, value)
        if rng.random() < disorder.duplicates:
            self._push(arrival + _SECOND + rng.randrange(6 * _HOUR), key, value)
        if rng.random() < disorder.malformed:
            bad_key, bad_value = self._malformed(customer, ts_ms)
            self._push(arrival, bad_key, bad_value)

    def _push(self, arrival: int, key: bytes | None, value: bytes) -> None:
        # never before the clock: what is popped must stay in arrival order
        self.sequence += 1
        heapq.heappush(self.heap, (max(arrival, self.clock), self.sequence, key, value))

    # ------------------------------------------------------------------ random helpers

    def _customer(self) -> str:
        index = bisect_right(self.cumulative, self.rng.random() * self.total_weight)
        return self.customers[min(index, len(self.customers) - 1)]

    def _pick(self, mix: Sequence[tuple[str, float]]) -> str:
        draw = self.rng.random()
        for name, weight in mix:
            draw -= weight
            if draw < 0:
                return name
        return mix[-1][0]

    def _choice(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]

    def _event_id(self) -> str:
        self.next_id += 1
        return f"ev-{self.seed}-{self.next_id:08d}"

    def _timestamp(self, ts_ms: int) -> str | int:
        """~50% ISO with Z, ~20% ISO with an offset, ~30% epoch ms; the event time is kept to the millisecond."""
        draw = self.rng.random()
        if draw < 0.3:
            return ts_ms
        offset = 0 if draw < 0.8 else self._choice(OFFSETS)
        return iso_timestamp(ts_ms, offset, zulu=draw < 0.8)

    # ------------------------------------------------------------------ valid events

    def _base(self, event_type: str, customer: str, ts_ms: int) -> dict[str, Any]:
        # "ts" holds the event time in ms until _emit serialises it in one of the accepted forms
        return {"type": event_type, "event_id": self._event_id(), "customer_id": customer, "ts": ts_ms}

    def _contact(self, customer: str, channel: str, ts_ms: int) -> dict[str, Any]:
        rng = self.rng
        body = self._base("contact", customer, ts_ms)
        body["channel"] = channel
        category = self._pick(CATEGORY_MIX)
        if category != "marketing" or rng.random() < 0.75:  # marketing is the default, often left out
            body["category"] = category
        if rng.random() < 0.85:
            body["sender"] = self._choice(SENDERS[channel])
        if category == "marketing" and rng.random() < 0.6:
            body["campaign"] = self._choice(CAMPAIGNS)
        return body

    def _call_ended(self, customer: str, contact_id: str, contact_ms: int) -> dict[str, Any]:
        rng = self.rng
        answered = rng.random() < ANSWERED_RATE
        duration: float
        if not answered:
            duration = rng.randrange(0, 46)  # rang out, busy or voicemail
        elif rng.random() < SHORT_CALL_RATE:
            duration = rng.randrange(1, 30) if rng.random() < 0.5 else round(1 + rng.random() * 28.9, 1)
        else:
            duration = 30 + int(-math.log(1.0 - rng.random()) * 180)  # a conversation, mean ~3.5 min
        ring_ms = 5 * _SECOND + rng.randrange(35 * _SECOND)
        body = self._base("call_ended", customer, contact_ms + ring_ms + int(duration * 1000))
        if rng.random() < 0.9:
            body["ref"] = contact_id
        body["duration_s"] = duration
        if not answered or rng.random() < 0.7:  # answered defaults to true
            body["answered"] = answered
        return body

    def _email_opened(self, customer: str, contact_id: str, contact_ms: int) -> dict[str, Any] | None:
        rng = self.rng
        draw = rng.random()
        if draw >= OPEN_RATE + LATE_OPEN_RATE:
            return None
        machine = False
        if draw < OPEN_RATE * MACHINE_OPEN_RATE:
            machine = True
            delay = _MINUTE + rng.randrange(9 * _MINUTE)  # a proxy fetches right after delivery
        elif draw < OPEN_RATE:
            # most humans open within hours; the tail is cut just inside the 72 h deadline
            delay = min(int(-math.log(1.0 - rng.random()) * 6 * _HOUR), 72 * _HOUR - _MINUTE) + _SECOND
        else:
            delay = 72 * _HOUR + _MINUTE + rng.randrange(7 * _DAY)  # opened, but after the deadline
        body = self._base("email_opened", customer, contact_ms + delay)
        body["ref"] = contact_id
        if machine or rng.random() < 0.3:  # machine defaults to false
            body["machine"] = machine
        return body

    def _reaction(self, reaction: str, customer: str, channel: str, contact_ms: int) -> dict[str, Any]:
        rng = self.rng
        if reaction == "sms_stop":
            delay = 10 * _SECOND + rng.randrange(2 * _HOUR)
        elif reaction == "unsubscribe":
            delay = 5 * _MINUTE + rng.randrange(2 * _DAY)
        else:
            delay = _MINUTE + rng.randrange(_DAY)
        body = self._base(reaction, customer, contact_ms + delay)
        if reaction != "sms_stop":
            body["channel"] = channel
        return body

    def _preference(self, customer: str, ts_ms: int) -> dict[str, Any]:
        rng = self.rng
        body = self._base("preference", customer, ts_ms)
        if rng.random() < 0.5:
            body["channel"] = self._pick(CHANNEL_MIX)
        fields = ["opt_out", "max_contacts", "quiet_hours", "timezone"]
        rng.shuffle(fields)
        for name in fields[: 1 + (rng.random() < 0.3)]:
            cleared = rng.random() < 0.08  # null clears an earlier wish
            if name == "opt_out":
                body["opt_out"] = rng.random() < 0.6  # false: an opt-in that lifts an opt-out
            elif name == "max_contacts":
                body["max_contacts"] = (
                    None
                    if cleared
                    else {"count": self._choice((0, 1, 1, 2, 3, 5)), "window": self._choice(("1d", "7d", "30d", "2w"))}
                )
            elif name == "quiet_hours":
                body["quiet_hours"] = (
                    None
                    if cleared
                    else {"start": self._choice(("21:00", "22:00", "20:30")), "end": self._choice(("08:00", "07:30"))}
                )
            else:
                body["timezone"] = None if cleared else self._choice(TIMEZONES)
        return body

    # ------------------------------------------------------------------ malformed messages

    def _malformed(self, customer: str, ts_ms: int) -> Message:
        """One message the parser must reject, of a kind drawn from :data:`MALFORMED_KINDS`."""
        rng = self.rng
        kind = self._choice(MALFORMED_KINDS)
        body = self._contact(customer, self._pick(CHANNEL_MIX), ts_ms)
        body["ts"] = self._timestamp(ts_ms)
        value: bytes
        if kind == "bad_json":
            whole = orjson.dumps(body)
            # any proper prefix of an object is invalid JSON; or a hand-typed, single-quoted "JSON"
            value = whole[: rng.randrange(1, len(whole))] if rng.random() < 0.7 else b"{'type': 'contact'}"
        elif kind == "bad_utf8":
            whole = orjson.dumps(body)
            garbage = self._choice((b"\xff\xfe", b"\xc3\x28", b"\x80", b"\xed\xa0\x80"))
            value = whole.replace(b'"event_id":"', b'"event_id":"' + garbage, 1)
        elif kind == "not_object":
            value = self._choice((b"[1,2,3]", b'"contact"', b"42", b"null", b"true"))
        elif kind == "too_large":
            body["body"] = "x" * (17_000 + rng.randrange(4_000))  # what a sender should never put in an event
            value = orjson.dumps(body)
        else:
            self._spoil(kind, body)
            value = orjson.dumps(body)
        return message_key(value), value

    def _spoil(self, kind: str, body: dict[str, Any]) -> None:
        """Make a valid contact body invalid in the way ``kind`` names (field-level faults)."""
        rng = self.rng
        if kind == "missing_field":
            del body[self._choice(("type", "event_id", "customer_id", "ts", "channel"))]
        elif kind == "bad_field":
            field, bad = self._choice(
                (
                    ("event_id", "e" * 200),
                    ("event_id", 12345),
                    ("customer_id", ""),
                    ("sender", 7),
                    ("campaign", ["a"]),
                )
            )
            body[field] = bad
        elif kind == "unknown_type":
            body["type"] = self._choice(("contact_attempt", "click", "bounce", "Contact"))
        elif kind == "unknown_channel":
            body["channel"] = self._choice(("fax", "push", "whatsapp", "SMS"))
        elif kind == "unknown_category":
            body["category"] = self._choice(("promo", "Marketing", "ads"))
        elif kind == "bad_timestamp":
            ts = body["ts"]
            ms = ts if isinstance(ts, int) else parse_iso_ms(ts)
            assert ms is not None
            body["ts"] = self._choice(
                (
                    "3000-01-01T00:00:00Z",  # a sentinel far in the future
                    ms // 1000,  # seconds sent as milliseconds
                    iso_timestamp(ms, 0, zulu=True)[:-1],  # no offset
                    "yesterday",
                    float(ms),  # a float is not integer epoch milliseconds
                )
            )
        elif kind == "empty_preference":
            for name in ("channel", "category", "sender", "campaign"):
                body.pop(name, None)
            body["type"] = "preference"
            if rng.random() < 0.5:
                body["channel"] = "sms"


def iso_timestamp(ts_ms: int, offset_minutes: int, *, zulu: bool = False) -> str:
    """``ts_ms`` as ISO-8601 in the given UTC offset (``Z`` when ``zulu``), with milliseconds only when non-zero."""
    local = _EPOCH + timedelta(milliseconds=ts_ms + offset_minutes * _MINUTE)
    text = f"{local.year:04d}-{local.month:02d}-{local.day:02d}T{local.hour:02d}:{local.minute:02d}:{local.second:02d}"
    millis = ts_ms % 1000
    if millis:
        text += f".{millis:03d}"
    if zulu and offset_minutes == 0:
        return text + "Z"
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    return f"{text}{sign}{hours:02d}:{minutes:02d}"


def _parse_start(text: str) -> int:
    if text.lstrip("-").isdigit():
        return int(text)
    parsed = parse_iso_ms(text)
    if parsed is None:
        raise argparse.ArgumentTypeError(f"expected epoch ms or ISO-8601 with an offset, got {text!r}")
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fatigue.generate",
        description="Write a deterministic synthetic contract event stream (JSON lines, arrival order).",
    )
    parser.add_argument("--events", type=int, required=True, help="number of messages to write")
    parser.add_argument("--customers", type=int, default=10_000, help="number of customers (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default: %(default)s)")
    parser.add_argument("--out", default="-", help="output file ('-' for stdout, the default)")
    parser.add_argument(
        "--start", type=_parse_start, default=DEFAULT_START_MS, help="first event time: epoch ms or ISO-8601"
    )
    parser.add_argument("--days", type=float, default=60.0, help="event-time span in days (default: %(default)s)")
    parser.add_argument("--skew", type=float, default=1.0, help="Zipf exponent of customer activity (default: 1.0)")
    defaults = Disorder()
    parser.add_argument("--malformed", type=float, default=defaults.malformed, help="malformed rate (%(default)s)")
    parser.add_argument("--duplicates", type=float, default=defaults.duplicates, help="duplicate rate (%(default)s)")
    parser.add_argument(
        "--out-of-order", type=float, default=defaults.out_of_order, help="rate arriving up to 4 h late (%(default)s)"
    )
    parser.add_argument(
        "--too-late", type=float, default=defaults.too_late, help="rate arriving 25-48 h late (%(default)s)"
    )
    parser.add_argument("--no-malformed", action="store_true", help="no malformed messages")
    parser.add_argument("--no-duplicates", action="store_true", help="no duplicates")
    parser.add_argument("--no-out-of-order", action="store_true", help="everything arrives at its event time")
    parser.add_argument("--clean", action="store_true", help="all three of the above")
    args = parser.parse_args(argv)
    disorder = Disorder(
        malformed=0.0 if args.no_malformed or args.clean else args.malformed,
        duplicates=0.0 if args.no_duplicates or args.clean else args.duplicates,
        out_of_order=0.0 if args.no_out_of_order or args.clean else args.out_of_order,
        too_late=0.0 if args.no_out_of_order or args.clean else args.too_late,
    )
    try:
        lines = generate_events(
            args.events, args.customers, args.seed, args.start, span_days=args.days, skew=args.skew, disorder=disorder
        )
        output = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    except (ValueError, OSError) as error:
        print(f"fatigue.generate: {error}", file=sys.stderr)
        return 2
    try:
        batch: list[bytes] = []
        for line in lines:
            batch.append(line)
            if len(batch) >= 4096:  # fewer, larger writes
                output.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            output.write(b"\n".join(batch) + b"\n")
    finally:
        if output is not sys.stdout.buffer:
            output.close()
        else:
            output.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
