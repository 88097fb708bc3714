"""Load generation for the end-to-end benchmark: the project's synthetic stream, produced into Kafka.

The traffic itself is :mod:`fatigue.generate` (Zipf-skewed customers, the channel and category mix, call outcomes
with ~40% of answered calls under 30 s, opens for ~20% of mail, preferences, reactions, duplicates, late and
malformed messages); :func:`traffic_profile` measures those shares on the generated input so the benchmark
prints what it actually sent. Nothing is missing from the generator for this benchmark, so nothing is added here.

Two ways to produce it:

* :func:`produce_backlog`: everything at once, as fast as the producer goes, each record stamped with its event
  time as the Kafka timestamp (a Faust windowed table reads its windows from the record timestamp, so the
  baseline sees the same event time as the guard, which reads the ``ts`` field);
* :func:`paced_produce`: at a fixed offered rate with every valid event's ``ts`` rewritten to the wall clock at
  send time; it runs in its own process (see ``stack_bench.py``) so that pacing does not share a GIL with the
  consumer that timestamps the decisions.

Both use kafka-python's default partitioner, murmur2 over the key (the customer id), the partitioner the worker
expects (``fatigue.clock.partition_for_key``); the worker counts any record it has to re-route.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaProducer

from fatigue.events import Rejection, parse_event
from fatigue.generate import generate_messages

Message = tuple[bytes | None, bytes]


@dataclass(frozen=True, slots=True)
class Produced:
    key: bytes | None
    value: bytes
    timestamp_ms: int  # the event time for valid events; the previous record's for malformed ones


def backlog(count: int, customers: int, seed: int, end_ms: int, span_days: float) -> list[Produced]:
    """``count`` generated messages whose event time runs from ``end_ms - span_days`` to about ``end_ms``."""
    start_ms = end_ms - int(span_days * 86_400_000)
    out: list[Produced] = []
    last_ms = start_ms
    for key, value in generate_messages(count, customers, seed, start_ms, span_days=span_days):
        parsed = parse_event(value, key, check_key=False)
        if not isinstance(parsed, Rejection):
            last_ms = parsed.ts_ms
        out.append(Produced(key, value, last_ms))
    return out


def _producer(bootstrap: str, *, linger_ms: int) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        batch_size=256 * 1024,
        # one request in flight per connection: a retried batch can never overtake the next one, so each
        # partition keeps the generated (per-customer) order, which the expected decisions are computed on
        max_in_flight_requests_per_connection=1,
        acks="all",
        max_request_size=4 * 1024 * 1024,
    )


def produce_backlog(bootstrap: str, topic: str, messages: Sequence[Produced]) -> float:
    """Produce every message and wait for the acks; the elapsed seconds."""
    producer = _producer(bootstrap, linger_ms=20)
    started = time.perf_counter()
    try:
        for message in messages:
            producer.send(topic, key=message.key, value=message.value, timestamp_ms=message.timestamp_ms)
        producer.flush()
    finally:
        producer.close()
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class TrafficProfile:
    messages: int
    customers: int
    hottest_share: float  # of valid events, the busiest customer's share
    types: dict[str, int]
    channels: dict[str, int]  # contacts by channel
    marketing_share: float  # of contacts
    short_answered_calls: float  # answered calls shorter than 30 s, of answered calls
    opens_per_email: float
    malformed_share: float  # rejected by the parser (duplicates not included: they parse)

    def lines(self) -> list[str]:
        types = ", ".join(f"{name} {count}" for name, count in sorted(self.types.items(), key=lambda kv: -kv[1]))
        contacts = sum(self.channels.values()) or 1
        channels = ", ".join(f"{name} {count / contacts:.0%}" for name, count in sorted(self.channels.items()))
        return [
            f"{self.messages:,} messages, {self.customers:,} customers (hottest {self.hottest_share:.2%} of events)",
            f"types: {types}",
            f"contacts by channel: {channels}; marketing {self.marketing_share:.0%} of contacts",
            f"answered calls < 30 s: {self.short_answered_calls:.0%}; opens per email: {self.opens_per_email:.2f}; "
            f"malformed: {self.malformed_share:.2%}",
        ]


def traffic_profile(messages: Sequence[Message]) -> TrafficProfile:
    """The shares the issue asks of realistic traffic, measured on the messages themselves."""
    types: Counter[str] = Counter()
    channels: Counter[str] = Counter()
    per_customer: Counter[str] = Counter()
    marketing = answered = short = malformed = 0
    for key, value in messages:
        parsed = parse_event(value, key, check_key=True)
        if isinstance(parsed, Rejection):
            malformed += 1
            continue
        types[parsed.type] += 1
        per_customer[parsed.customer_id] += 1
        if parsed.type == "contact":
            channels[parsed.channel or "?"] += 1
            marketing += parsed.category == "marketing"
        elif parsed.type == "call_ended" and parsed.answered:
            answered += 1
            short += parsed.duration_s < 30
    valid = sum(types.values()) or 1
    return TrafficProfile(
        messages=len(messages),
        customers=len(per_customer),
        hottest_share=max(per_customer.values(), default=0) / valid,
        types=dict(types),
        channels=dict(channels),
        marketing_share=marketing / (sum(channels.values()) or 1),
        short_answered_calls=short / (answered or 1),
        opens_per_email=types["email_opened"] / (channels["email"] or 1),
        malformed_share=malformed / (len(messages) or 1),
    )


def _live_template(key: bytes | None, value: bytes) -> dict[str, Any] | None:
    """The body to re-stamp at send time, or None for a message that must go out byte for byte (malformed)."""
    if isinstance(parse_event(value, key, check_key=True), Rejection):
        return None
    body: dict[str, Any] = orjson.loads(value)
    return body


def paced_produce(
    bootstrap: str,
    topic: str,
    count: int,
    customers: int,
    seed: int,
    rate: float,
    out_path: str,
) -> None:
    """Send ``count`` generated messages at ``rate`` per second, each valid one stamped ``ts = now``.

    Writes ``{"started": t0, "finished": t1, "sent": n, "max_behind_ms": x, "send_times": {event_id: t}}`` to
    ``out_path`` (times from ``time.time()``, taken just before ``send``). Runs as a child process.
    """
    messages = list(generate_messages(count, customers, seed))
    templates = [_live_template(key, value) for key, value in messages]
    producer = _producer(bootstrap, linger_ms=0)  # no batching delay: latency is what is measured
    send_times: dict[str, float] = {}
    max_behind = 0.0
    interval = 1.0 / rate
    started = time.time()
    try:
        for index, ((key, value), body) in enumerate(zip(messages, templates, strict=True)):
            due = started + index * interval
            now = time.time()
            if now < due:
                time.sleep(due - now)
                now = time.time()
            else:
                max_behind = max(max_behind, now - due)
            if body is not None:
                body["ts"] = int(now * 1000)
                value = orjson.dumps(body)
                send_times.setdefault(body["event_id"], now)  # a duplicate's first send is its cause
            producer.send(topic, key=key, value=value)
        finished = time.time()
        producer.flush()
    finally:
        producer.close()
    report = {
        "started": started,
        "finished": finished,
        "sent": len(messages),
        "max_behind_ms": max_behind * 1000,
        "send_times": send_times,
    }
    Path(out_path).write_bytes(orjson.dumps(report))
