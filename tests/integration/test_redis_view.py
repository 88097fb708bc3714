"""The Redis view on the real stack: a batch of decision records leaves exactly each key's last record, and the
view's own consumer commits what it wrote and resumes there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import redis
import redis.asyncio as aioredis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from streams.metrics import Metrics
from streams.redis_view import RedisView, ViewConsumer, block_key


def _block(customer: str, until_ms: int) -> bytes:
    return orjson.dumps({"action": "block", "channel": "sms", "customer_id": customer, "until_ms": until_ms})


def test_a_batch_writes_each_keys_last_record_once(redis_url: str, redis_client: redis.Redis, redis_key_prefix: str):
    prefix = redis_key_prefix.rstrip(":")
    now_ms = int(time.time() * 1000)
    hot = [(b"sms:hot", _block("hot", now_ms + 60_000 + i)) for i in range(500)]  # re-decided on every contact
    records: list[tuple[bytes, bytes | None]] = [
        *hot[:250],
        (b"sms:lifted", _block("lifted", now_ms + 60_000)),
        *hot[250:],
        (b"sms:lifted", None),  # a tombstone later in the batch wins
        (b"sms:allowed", orjson.dumps({"action": "allow", "channel": "sms", "customer_id": "allowed"})),
    ]
    redis_client.set(block_key(prefix, b"sms:allowed"), b"stale block")
    metrics = Metrics()

    async def write() -> None:
        client = aioredis.Redis.from_url(redis_url)
        view = RedisView(
            client,
            topic="unused",
            bootstrap="unused",
            partitions=1,
            redis_key=lambda key: block_key(prefix, key),
            scan_pattern=f"{prefix}:block:*",
            expiring=True,
            metrics=metrics,
        )
        try:
            await view._write(records)
        finally:
            await client.aclose()

    asyncio.run(write())
    assert redis_client.get(block_key(prefix, b"sms:hot")) == hot[-1][1]
    assert 59_000 < redis_client.pttl(block_key(prefix, b"sms:hot")) <= 60_500
    assert redis_client.get(block_key(prefix, b"sms:lifted")) is None
    assert redis_client.get(block_key(prefix, b"sms:allowed")) is None
    writes = {op: metrics.registry.get_sample_value("fatigue_redis_writes_total", {"op": op}) for op in ("set", "del")}
    assert writes == {"set": 1, "del": 2}, "one command per key"


def _view(client: aioredis.Redis, topic: str, bootstrap: str, prefix: str, metrics: Metrics) -> RedisView:
    return RedisView(
        client,
        topic=topic,
        bootstrap=bootstrap,
        partitions=2,
        redis_key=lambda key: block_key(prefix, key),
        scan_pattern=f"{prefix}:block:*",
        expiring=True,
        metrics=metrics,
    )


def _follow_until_done(redis_url: str, topic: str, bootstrap: str, prefix: str, group: str) -> Metrics:
    """Run a ViewConsumer until Redis has everything on ``topic`` (its lag is 0 everywhere), then stop it."""
    metrics = Metrics()

    async def follow() -> None:
        client = aioredis.Redis.from_url(redis_url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap, prefix, metrics)], bootstrap=bootstrap, group_id=group, batch=50
        )
        task = asyncio.create_task(views.run())
        try:
            deadline = time.monotonic() + 60
            while True:
                lags = await views.lags()
                if len(lags) == 2 and not any(lags.values()):
                    return
                assert time.monotonic() < deadline, f"the view did not catch up: {lags}"
                await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    asyncio.run(follow())
    return metrics


def test_the_view_consumer_writes_what_it_commits_and_resumes_there(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
    kafka_admin: KafkaAdminClient,
):
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=2, config={"cleanup.policy": "compact"})
    group = f"{prefix}.redis-view"
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    first = [(f"sms:c{i}".encode(), _block(f"c{i}", now_ms + 600_000)) for i in range(300)]
    first.append((b"sms:c7", None))  # lifted again
    for key, value in first:
        producer.send(topic, key=key, value=value)
    producer.flush()

    _follow_until_done(redis_url, topic, bootstrap_servers, prefix, group)
    held = {key for key in redis_client.scan_iter(match=f"{prefix}:block:*", count=1000)}
    assert held == {block_key(prefix, f"sms:c{i}".encode()).encode() for i in range(300) if i != 7}
    committed = kafka_admin.list_group_offsets({group: None})[group]
    ends = KafkaConsumer(bootstrap_servers=bootstrap_servers).end_offsets(list(committed))
    assert sum(meta.offset for meta in committed.values()) == len(first) == sum(ends.values())

    # a second run resumes from its group's offsets: a fresh process reconciles on its first write (the latest
    # record per key, the new one included), and the batch it was writing is not written again after it
    producer.send(topic, key=b"sms:c8", value=None)
    producer.flush()
    producer.close()
    metrics = _follow_until_done(redis_url, topic, bootstrap_servers, prefix, group)
    assert redis_client.get(block_key(prefix, b"sms:c8")) is None
    writes = {op: metrics.registry.get_sample_value("fatigue_redis_writes_total", {"op": op}) for op in ("set", "del")}
    assert writes == {"set": 298, "del": 2}, "the reconcile's 298 blocks and 2 tombstones (c7 and the new c8)"
    committed = kafka_admin.list_group_offsets({group: None})[group]
    assert sum(meta.offset for meta in committed.values()) == len(first) + 1


def test_a_batch_older_than_the_reconcile_it_waited_for_does_not_set_keys_back(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
):
    """Redis was away while a batch was in hand; meanwhile the key was re-decided (and, had the partition moved,
    another worker would have written that). When Redis answers, the view reconciles from the topic's end: the
    newer record stays, the batch in hand is not written over it."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    older, newer = _block("c1", now_ms + 600_000), _block("c1", now_ms + 900_000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for value in (older, newer):
        producer.send(topic, key=b"sms:c1", value=value)
    producer.close()

    async def write_the_older_batch() -> None:
        client = aioredis.Redis.from_url(redis_url)
        view = RedisView(
            client,
            topic=topic,
            bootstrap=bootstrap_servers,
            partitions=1,
            redis_key=lambda key: block_key(prefix, key),
            scan_pattern=f"{prefix}:block:*",
            expiring=True,
            metrics=Metrics(),
        )
        try:
            await view.apply([(b"sms:c1", older)], lambda: [0])  # a fresh view (or one after a failure) reconciles
            assert redis_client.get(block_key(prefix, b"sms:c1")) == newer
            await view.apply([(b"sms:c1", older)], lambda: [0])  # no reconcile due: the batch is written as it is
            assert redis_client.get(block_key(prefix, b"sms:c1")) == older
        finally:
            await client.aclose()

    asyncio.run(write_the_older_batch())
