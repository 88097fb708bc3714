"""The Redis view on a Redis Cluster (the cluster profile): a batch of customers spread over every master is
written in one call per master, each key conditional on its own position (a stale batch changes nothing), and a
reconcile deletes the keys the topic no longer has on every master. Skipped unless the cluster env is exported."""

from __future__ import annotations

import asyncio
import functools
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


def _customers_sharing_a_slot(count: int) -> tuple[int, list[str]]:
    by_slot: dict[int, list[str]] = {}
    for number in range(400_000):
        customer = f"reshard-view-{number}"
        slot = key_slot(redis_keys.customer_tag(customer).encode())
        same = by_slot.setdefault(slot, [])
        same.append(customer)
        if len(same) == count:
            return slot, same
    raise AssertionError(f"no slot with {count} customers")


def test_a_slot_being_resharded_fails_the_views_call_and_never_misplaces_a_write() -> None:
    """Mid-reshard a slot's keys sit on two nodes: the view's script, whose keys Redis cannot redirect (they are
    built from arguments), must fail the call, never write a key where the slot's new owner will not find it; once
    the slot has moved, the same batch is written on the new owner, every key at its position."""
    import redis  # the nodes themselves, for the migration commands

    prefix = f"t-{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    slot, customers = _customers_sharing_a_slot(3)
    moved_whole, split, untouched = customers
    first = [(i, f"sms:{c}".encode(), _block(c, now_ms + 100_000)) for i, c in enumerate(customers)]
    second = [(i + 3, f"sms:{c}".encode(), _block(c, now_ms + 900_000)) for i, c in enumerate(customers)]
    sync = redis_keys.sync_client(URL)
    owner = sync.get_node_from_key(redis_keys.customer_tag(customers[0]))
    target_node = next(node for node in sync.get_primaries() if node.name != owner.name)
    source = redis.Redis(host=owner.host, port=owner.port, socket_timeout=10)
    target = redis.Redis(host=target_node.host, port=target_node.port, socket_timeout=10)
    source_id, target_id = source.execute_command("CLUSTER", "MYID"), target.execute_command("CLUSTER", "MYID")

    def move_slot(keys: list[str], to: redis.Redis, to_id: bytes, frm: redis.Redis, frm_id: bytes) -> None:
        to.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", frm_id)
        frm.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
        if keys:
            host, port = to.connection_pool.connection_kwargs["host"], to.connection_pool.connection_kwargs["port"]
            frm.execute_command("MIGRATE", host, port, "", 0, 5000, "KEYS", *keys)

    def finish(to_id: bytes) -> None:
        for node in (target, source):
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", to_id)

    block = functools.partial(redis_keys.block_key, prefix, "sms")
    position = functools.partial(redis_keys.position_key, prefix)

    async def write(batch: list[tuple[int, bytes, bytes]], start: int, end: int) -> object:
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
            return await view._write(0, batch, start=start, end=end)
        finally:
            await client.aclose()

    asyncio.run(write(first, 0, 3))
    moved = [block(moved_whole), position(moved_whole), block(split)]  # the split customer's position stays
    try:
        move_slot(moved, target, target_id, source, source_id)
        outcome: object
        try:
            outcome = asyncio.run(write(second, 3, 6))
        except Exception as error:  # what the view's own loop retries
            outcome = error
        print(f"slot {slot} migrating {owner.name} -> {target_node.name}; the view's call: {outcome!r}")
        assert isinstance(outcome, Exception), f"a call over a half-moved slot must fail, got {outcome!r}"
        # nothing was left on the source that the new owner will not have: the source holds only unmoved keys
        left = {key.decode() for key in source.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)}
        assert not left & set(moved), left & set(moved)
        rest = [key for key in (block(untouched), position(untouched), position(split)) if key in left]
        if rest:
            source.execute_command("MIGRATE", target_node.host, target_node.port, "", 0, 5000, "KEYS", *rest)
        finish(target_id)
        written = asyncio.run(write(second, 3, 6))
        print(f"  slot moved; the same batch again: {written!r}")
        for customer in customers:
            held = orjson.loads(sync.get(block(customer)))
            assert held["until_ms"] == now_ms + 900_000, customer
    finally:
        # the slot back to its owner, with whatever keys of it the target holds (they are this test's)
        keys = [key.decode() for key in target.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)]
        try:
            move_slot(keys, source, source_id, target, target_id)
            finish(source_id)
        except redis.RedisError as error:
            print(f"  could not move slot {slot} back: {error}")
        for key in keys:
            sync.delete(key)
        source.close()
        target.close()
