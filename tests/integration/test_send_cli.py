"""``fatigue send`` as an operator runs it, a real subprocess against the real local Kafka: what it produces, what it
refuses before producing, how fast it gives up on a missing topic or broker, and what it says when the broker
refuses a record."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

REPO = Path(__file__).resolve().parents[2]


def _now() -> int:
    return int(time.time() * 1000)


def event(event_id: str, customer_id: str = "cust-1", **fields: Any) -> str:
    body = {"type": "contact", "event_id": event_id, "customer_id": customer_id, "ts": _now(), "channel": "sms"}
    return orjson.dumps({**body, **fields}).decode()


def send(*args: str, stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fatigue.cli", "send", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def records(bootstrap: str, topic: str) -> list[Any]:
    """Everything in the topic now, in offset order per partition (partitions in order)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: list[Any] = []
        deadline = time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in partitions) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=1000).values():
                found.extend(batch)
        return sorted(found, key=lambda record: (record.partition, record.offset))
    finally:
        consumer.close()


def test_valid_events_are_sent_keyed_by_customer_on_its_murmur2_partition(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("events", partitions=3)
    lines = [event("e1", "cust-1"), "", event("e2", "cust-2"), event("e3", "cust-3")]
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, stdin="\n".join(lines) + "\n")
    assert result.returncode == 0, result.stderr
    assert f"sent 3 event(s) to {topic}" in result.stderr
    found = records(bootstrap_servers, topic)
    assert sorted(record.key for record in found) == [b"cust-1", b"cust-2", b"cust-3"]
    for record in found:  # the partition the worker expects (Java's default partitioner)
        assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % 3
        assert orjson.loads(record.value)["customer_id"] == record.key.decode()


def test_an_invalid_event_is_refused_with_its_reason_and_nothing_of_the_run_is_produced(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("events")
    bad = event("bad-1", channel="fax")
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, event("ok-1"), bad, "not json")
    assert result.returncode == 1
    assert 'argument 2 (event_id "bad-1"): invalid: unknown_channel' in result.stderr
    assert "argument 3: invalid: bad_json" in result.stderr
    assert "2 of 3 event(s) invalid; nothing sent" in result.stderr
    assert records(bootstrap_servers, topic) == []

    skipped = send("--bootstrap", bootstrap_servers, "--topic", topic, "--skip-invalid", event("ok-1"), bad)
    assert skipped.returncode == 1  # still not a clean run: one event was not sent
    assert f"sent 1 event(s) to {topic}; 1 invalid, skipped" in skipped.stderr
    assert [orjson.loads(record.value)["event_id"] for record in records(bootstrap_servers, topic)] == ["ok-1"]


def test_raw_sends_malformed_events_unchecked_keyed_by_customer_when_they_have_one(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    topic = topic_factory("events")
    bad = event("bad-1", "cust-9", channel="fax")
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, "--raw", "not json", bad)
    assert result.returncode == 0, result.stderr
    assert f"sent 2 event(s) to {topic}" in result.stderr
    assert [(record.key, record.value) for record in records(bootstrap_servers, topic)] == [
        (None, b"not json"),
        (b"cust-9", bad.encode()),
    ]


def test_a_missing_topic_fails_fast_with_how_to_create_it_and_is_not_created(
    bootstrap_servers: str, kafka_admin: KafkaAdminClient, unique_name: Callable[[str], str]
) -> None:
    topic = unique_name("missing")
    started = time.monotonic()
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, "--timeout", "5s", event("e1"))
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert elapsed < 5 + 5, elapsed
    assert f"topic {topic} does not exist" in result.stderr
    assert "fatigue worker" in result.stderr and f"--create --topic {topic}" in result.stderr
    assert "sent" not in result.stderr
    assert kafka_admin.describe_topics([topic])[0]["error_code"] == 3  # UNKNOWN_TOPIC_OR_PARTITION: not created


def test_an_unreachable_broker_fails_fast_with_the_address() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    result = send("--bootstrap", closed, "--topic", "fatigue.events.v1", "--timeout", "30s", event("e1"), timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 2
    assert elapsed < 10, elapsed  # a refused connection is an answer: --timeout is not waited out
    assert f"no Kafka broker at {closed}: {closed} refused the connection" in result.stderr


def test_a_record_over_the_topics_limit_is_reported_refused_by_the_broker_and_the_others_are_sent(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    # A valid event (under the contract's 16 KiB) over this topic's max.message.bytes: the broker refuses it.
    topic = topic_factory("small", config={"max.message.bytes": "1024"})
    big = event("big-1", note="x" * 4000)  # a field the contract does not name: ignored, but it is sent
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, event("a1"), big, event("a2"))
    assert result.returncode == 1
    assert 'argument 2 (event_id "big-1"): refused by the broker: MESSAGE_SIZE_TOO_LARGE (error 10)' in result.stderr
    assert f"sent 2 event(s) to {topic}; 1 refused by the broker" in result.stderr
    assert [orjson.loads(record.value)["event_id"] for record in records(bootstrap_servers, topic)] == ["a1", "a2"]


def test_a_keyless_record_refused_by_a_compacted_topic_is_reported_with_the_brokers_reason(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    # only --raw can send a record without a key (a valid event's key is its customer_id)
    topic = topic_factory("compacted", config={"cleanup.policy": "compact"})
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, "--raw", "not json")
    assert result.returncode == 1
    assert "argument 1: refused by the broker: INVALID_RECORD (error 87)" in result.stderr
    assert f"sent 0 event(s) to {topic}; 1 refused by the broker" in result.stderr


def test_an_event_time_hours_ahead_is_sent_because_the_record_time_is_the_send_time(
    bootstrap_servers: str, topic_factory: Callable[..., str]
) -> None:
    # Kafka 4 refuses a record whose own timestamp is over an hour ahead of the broker's clock
    # (log.message.timestamp.after.max.ms). send leaves the record's timestamp to the client, which stamps the send
    # time; the event's ts is the guard's business (event time), not the broker's, so it is not refused.
    topic = topic_factory("events")
    ahead = _now() + 2 * 3_600_000
    before = _now()
    result = send("--bootstrap", bootstrap_servers, "--topic", topic, event("future-1", ts=ahead))
    assert result.returncode == 0, result.stderr
    (record,) = records(bootstrap_servers, topic)
    assert orjson.loads(record.value)["ts"] == ahead
    assert before <= record.timestamp <= _now()
