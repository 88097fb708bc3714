"""Which Redis node a key lives on, for the view's script calls: the one node of a single Redis, or on a Redis
Cluster the master serving the key's hash slot.

Why not redis-py's cluster client for the view's writes: it refuses a script whose keys span hash slots, and one
script call per customer would cost the worker more CPU than everything else the view does. A script flagged
``allow-cross-slot-keys`` may touch keys of many slots as long as one node serves them all (Redis 7), so the view
groups a batch's customers by master and makes one call per master. Those calls go over connections of our own to
each master (``WAIT`` counts the replicas that hold what *its* connection wrote). The slot map is the cluster
client's: refreshed after any failure (a MOVED after a failover or a resharding, a lost node), and a failure fails
the whole batch, which the view retries (its writes are idempotent and conditional on positions).

The acknowledgement barrier (:meth:`RedisNodes.replicated`): a write to, and ``WAIT`` on, every master over the same
connection. Replication streams in order, so a replica that has the barrier's write has everything its master held
before it: after a master's failover its promoted replica holds every record the view wrote before the barrier.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError

log = logging.getLogger("fatigue.redis")

Item = TypeVar("Item")

NodeId = tuple[str, int]  # (host, port); a single Redis is ("", 0)
SINGLE: NodeId = ("", 0)


class RedisNodes:
    """Per-master connections and the slot map of a Redis Cluster, or the single client of one Redis."""

    def __init__(self, client: aioredis.Redis | AsyncRedisCluster, *, prefix: str, **connection: object) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = isinstance(client, AsyncRedisCluster)
        self._connection = connection  # options for the per-master clients (timeouts)
        self._clients: dict[NodeId, aioredis.Redis] = {}
        self._barrier_keys: dict[NodeId, str] = {}
        self._ready = False

    async def _ensure(self) -> None:
        if self.cluster and not self._ready:
            await self.client.initialize()
            self._ready = True

    def node_client(self, node: NodeId) -> aioredis.Redis:
        if node == SINGLE:
            return self.client  # type: ignore[return-value]
        client = self._clients.get(node)
        if client is None:
            client = self._clients[node] = aioredis.Redis(host=node[0], port=node[1], **self._connection)  # type: ignore[arg-type]
        return client

    async def group(self, items: Iterable[Item], key_of: Callable[[Item], str]) -> dict[NodeId, list[Item]]:
        """``items`` by the master serving ``key_of(item)`` (all in one group on a single Redis)."""
        if not self.cluster:
            return {SINGLE: list(items)}
        await self._ensure()
        manager = self.client.nodes_manager  # type: ignore[union-attr]
        groups: dict[NodeId, list[Item]] = {}
        # key_slot is pure Python: a customer's keys share a slot, so callers pass one key per customer
        slots: dict[int, NodeId] = {}
        for item in items:
            slot = key_slot(key_of(item).encode())
            node = slots.get(slot)
            if node is None:
                master = manager.get_node_from_slot(slot)
                node = slots[slot] = (str(master.host), int(master.port))
            groups.setdefault(node, []).append(item)
        return groups

    async def masters(self) -> list[NodeId]:
        if not self.cluster:
            return [SINGLE]
        await self._ensure()
        return sorted((str(node.host), int(node.port)) for node in self.client.get_primaries())  # type: ignore[union-attr]

    async def refresh(self) -> None:
        """Read the slot map again (after a failure: the node may be gone, or a replica promoted)."""
        if self.cluster:
            await self.client.nodes_manager.initialize()  # type: ignore[union-attr]
            self._ready = True
            self._barrier_keys.clear()

    async def refresh_quietly(self) -> None:
        """:meth:`refresh` after a failure, which may fail too (the cluster still electing): the next try will."""
        try:
            await self.refresh()
        except (RedisError, OSError) as error:
            log.debug("refreshing the Redis Cluster slot map: %s", error)

    async def topology(self) -> Hashable:
        """Changes whenever a node restarts or a master changes (a failover): masters with their run ids, from a
        fresh slot map (a failover that caused no error yet still shows)."""
        await self.refresh()
        masters = await self.masters()
        infos = await asyncio.gather(*(self.node_client(node).info("server") for node in masters))
        return tuple((node, str(info.get("run_id"))) for node, info in zip(masters, infos, strict=True))

    async def scan(self, match: str, count: int = 1000) -> list[str]:
        """Every key matching ``match`` on every master."""
        names: list[str] = []
        for node in await self.masters():
            async for raw in self.node_client(node).scan_iter(match=match, count=count):
                names.append(raw.decode() if isinstance(raw, bytes) else str(raw))
        return names

    async def replicated(self, replicas: int, timeout_ms: int) -> bool:
        """True when every master has at least ``replicas`` replicas holding everything it held before this call
        (module docstring); False when one of them did not confirm within ``timeout_ms``."""
        if replicas <= 0:
            return True
        nodes = await self.masters()

        async def barrier(node: NodeId) -> int:
            pipe = self.node_client(node).pipeline(transaction=False)
            pipe.set(self._barrier_key(node), str(time.time()), px=3_600_000)
            pipe.execute_command("WAIT", replicas, timeout_ms)
            _, acknowledged = await pipe.execute()
            return int(acknowledged)

        confirmed = await asyncio.gather(*(barrier(node) for node in nodes))
        return all(count >= replicas for count in confirmed)

    def _barrier_key(self, node: NodeId) -> str:
        """A key served by ``node``: ``{prefix}:{ack:<n>}`` with the first ``n`` whose slot the node serves."""
        key = self._barrier_keys.get(node)
        if key is not None:
            return key
        if not self.cluster:
            key = f"{self.prefix}:ack"
        else:
            manager = self.client.nodes_manager  # type: ignore[union-attr]
            served = {slot for slot, owners in manager.slots_cache.items() if (owners[0].host, owners[0].port) == node}
            for n in range(1_000_000):
                candidate = f"{self.prefix}:{{ack:{n}}}"
                if key_slot(candidate.encode()) in served:
                    key = candidate
                    break
            else:  # a node serving no slot is no master of ours
                key = f"{self.prefix}:{{ack:{hashlib.sha1(repr(node).encode()).hexdigest()}}}"
        self._barrier_keys[node] = key
        return key

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()
