"""The Redis view on a Redis Cluster (the cluster profile): a batch of customers spread over every master is
written in one call per master, each key conditional on its own position (a stale batch changes nothing), and a
reconcile deletes the keys the topic no longer has on every master. Skipped unless the cluster env is exported."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import orjson
import pytest
from redis.crc import key_slot

from streams import redis_keys
from streams.metrics import Metrics
from streams.redis_nodes import RedisNodes
from streams.redis_view import PartitionSnapshot, RedisView, ViewLayout

URL = os.environ.get("FATIGUE_REDIS_URL", "")

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(not redis_keys.is_cluster_url(URL), reason="the cluster profile's env is not exported"),
]


def _block(customer: str, until_ms: int) -> bytes:
    return orjson.dumps({"action": "block", "channel": "sms", "customer_id": customer, "until_ms": until_ms})


def test_a_batch_over_every_master_is_written_per_master_and_stale_records_change_nothing() -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    customers = [f"c{i}" for i in range(300)]
    newer = [(i + 300, f"sms:{c}".encode(), _block(c, now_ms + 900_000)) for i, c in enumerate(customers)]
    older = [(i, f"sms:{c}".encode(), _block(c, now_ms + 100_000)) for i, c in enumerate(customers)]
    sync = redis_keys.sync_client(URL)

    async def scenario() -> None:
        client = redis_keys.async_client(URL)
        nodes = RedisNodes(client, prefix=prefix)
        view = RedisView(
            nodes,
            topic="blocks",
            bootstrap="unused",
            partitions=1,
            layout=ViewLayout(prefix, "blocks"),
            metrics=Metrics(),
        )
        try:
            masters = await nodes.masters()
            groups = await nodes.group(customers, lambda c: redis_keys.position_key(prefix, c))
            assert len(masters) == 3 and set(groups) == set(masters), "the customers should span every master"
            written = await view._write(0, newer, start=0, end=600)
            assert (written.applied, written.sets) == (True, 300)
            stale = await view._write(0, older, start=0, end=300)  # a stale reader's batch: all skipped
            assert (stale.sets, stale.skipped) == (0, 300)
            # a reconcile whose snapshot lacks c0..c9 (compacted away) deletes them, on whichever master they live
            snapshot = PartitionSnapshot(600, {key: (offset, value) for offset, key, value in newer[10:]})
            keys, deleted = await view.apply_snapshots({0: snapshot})
            assert (keys, deleted) == (290, 10)
            assert await nodes.replicated(1, 2000), "every master has a replica confirming"
        finally:
            await nodes.aclose()
            await client.aclose()

    try:
        asyncio.run(scenario())
        values = {c: sync.get(redis_keys.block_key(prefix, "sms", c)) for c in customers}
        assert all(values[c] is None for c in customers[:10])
        assert all(values[c] == _block(c, now_ms + 900_000) for c in customers[10:])
        slots = {key_slot(redis_keys.block_key(prefix, "sms", c).encode()) for c in customers}
        print(f"\n300 customers in {len(slots)} slots over 3 masters: written, stale batch skipped, 10 stale deleted")
    finally:
        for key in sync.scan_iter(match=f"{prefix}:*", count=1000):
            sync.delete(key)
        sync.close()
