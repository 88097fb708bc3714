"""The Redis view on the real Redis: a batch of decision records leaves exactly each key's last record."""

from __future__ import annotations

import asyncio
import time

import orjson
import redis
import redis.asyncio as aioredis

from streams.metrics import Metrics
from streams.redis_view import RedisView, block_key


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
