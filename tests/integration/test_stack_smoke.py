"""Smoke tests of the local stack itself: the clients the project uses work against the real Kafka 4
broker and Redis that `make test` starts. If these fail, every other integration test is noise."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType


def _read_partition(bootstrap_servers: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """All records of partition 0 from the beginning, with kafka-python and no consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def test_kafka_python_produce_and_consume(bootstrap_servers, topic_factory):
    topic = topic_factory("smoke-kp")
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    try:
        for i in range(10):
            producer.send(topic, key=f"c{i % 3}".encode(), value=f"event-{i}".encode())
        producer.flush(timeout=30)
    finally:
        producer.close()

    records = _read_partition(bootstrap_servers, topic, expected=10)

    assert [r.value for r in records] == [f"event-{i}".encode() for i in range(10)]
    assert [r.key for r in records] == [f"c{i % 3}".encode() for i in range(10)]
    assert [r.offset for r in records] == list(range(10))


def test_aiokafka_produce_and_consume_in_a_consumer_group(bootstrap_servers, topic_factory, unique_name):
    topic = topic_factory("smoke-aio", partitions=2)
    group = unique_name("smoke-group")

    async def scenario() -> tuple[list[tuple[bytes, bytes]], dict[int, int]]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
        await producer.start()
        try:
            for i in range(20):
                await producer.send(topic, key=f"c{i % 4}".encode(), value=f"v{i}".encode())
            await producer.flush()
        finally:
            await producer.stop()

        # A consumer group exercises the group coordinator (and the __consumer_offsets topic).
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap_servers,
            group_id=group,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            received: list[tuple[bytes, bytes]] = []
            async with asyncio.timeout(60):
                while len(received) < 20:
                    batches = await consumer.getmany(timeout_ms=500)
                    for batch in batches.values():
                        received.extend((m.key, m.value) for m in batch)
            await consumer.commit()
            committed = {p: await consumer.committed(AioTopicPartition(topic, p)) for p in (0, 1)}
        finally:
            await consumer.stop()
        return received, committed

    received, committed = asyncio.run(scenario())

    assert sorted(received) == sorted((f"c{i % 4}".encode(), f"v{i}".encode()) for i in range(20))
    # Same key -> same partition -> produce order is kept per key.
    for key in {k for k, _ in received}:
        values = [int(v[1:]) for k, v in received if k == key]
        assert values == sorted(values)
    assert sum(offset or 0 for offset in committed.values()) == 20


def test_compacted_topic_config_and_tombstones(bootstrap_servers, topic_factory, kafka_admin):
    topic = topic_factory("smoke-compact", config={"cleanup.policy": "compact"})

    described = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, ["cleanup.policy"])])
    assert described["topic"][topic]["cleanup.policy"]["value"] == "compact"

    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all")
    try:
        producer.send(topic, key=b"customer-1", value=b"blocked")
        producer.send(topic, key=b"customer-1", value=b"allowed")
        producer.send(topic, key=b"customer-2", value=b"blocked")
        producer.send(topic, key=b"customer-2", value=None)  # tombstone
        producer.flush(timeout=30)
    finally:
        producer.close()

    records = _read_partition(bootstrap_servers, topic, expected=4)

    assert [(r.key, r.value) for r in records] == [
        (b"customer-1", b"blocked"),
        (b"customer-1", b"allowed"),
        (b"customer-2", b"blocked"),
        (b"customer-2", None),
    ]
    latest: dict[bytes, bytes | None] = {}
    for r in records:
        latest[r.key] = r.value
    assert {k: v for k, v in latest.items() if v is not None} == {b"customer-1": b"allowed"}


def test_redis_set_with_pxat_expires(redis_client, redis_key_prefix):
    key = redis_key_prefix + "block:customer-1"
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    expire_at_ms = now_ms + 1500

    assert redis_client.set(key, b"blocked", pxat=expire_at_ms)
    assert redis_client.get(key) == b"blocked"
    pttl = redis_client.pttl(key)
    assert 0 < pttl <= 1500

    started = time.monotonic()
    while redis_client.exists(key) and time.monotonic() - started < 10:
        time.sleep(0.05)
    gone_after = time.monotonic() - started

    assert not redis_client.exists(key)
    assert redis_client.get(key) is None
    # Expired by the deadline, not before it (Redis expires at the given absolute time).
    assert 1.0 <= gone_after <= 3.0
