"""The Redis key layout senders read (docs/contract.md, "Redis"), and Redis clients for one node or a Redis Cluster.

Every key of one customer carries the hash tag ``{c:<customer_id>}``, so a customer's block keys, preference view
and position share one hash slot: a sender reads them in one round trip (MGET) on a single Redis and on a Redis
Cluster alike, and the view updates them in one script call. The ``c:`` inside the braces keeps the tag non-empty
for any id (Redis hashes the whole key when the braces hold nothing, which an id starting with ``}`` would cause),
and the tag is the same for every key of the customer because every key starts with the same ``{c:<id>``.

The layout before hash tags (``fatigue:block:<channel>:<id>``, ``fatigue:prefs:<id>``) is the *legacy* layout: the
view still writes it beside the new one on a single Redis while ``legacy_keys`` is on (the migration note in
docs/contract.md says until when); a Redis Cluster cannot hold it usefully (a customer's keys in different slots).

A cluster URL is ours, not redis-py's: ``redis://HOST:PORT/0?cluster=1&addr=HOST:PORT&addr=...`` (what
``deploy/local/stack.sh env --cluster`` prints): ``cluster=1`` selects redis-py's cluster client, the extra
``addr`` are further startup nodes, so that the client starts while the first one is down.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster


def customer_tag(customer_id: str) -> str:
    return "{c:" + customer_id + "}"


def block_key(prefix: str, channel: str, customer_id: str) -> str:
    """``fatigue:{c:<customer_id>}:block:<channel>``: the block decision in force, as on the topic."""
    return f"{prefix}:{customer_tag(customer_id)}:block:{channel}"


def prefs_key(prefix: str, customer_id: str) -> str:
    """``fatigue:{c:<customer_id>}:prefs``: the customer's preference view."""
    return f"{prefix}:{customer_tag(customer_id)}:prefs"


def position_key(prefix: str, customer_id: str) -> str:
    """``fatigue:{c:<customer_id>}:pos``: a hash ``<topic>:<partition>`` -> the offset of the customer's last
    record of that topic partition written to Redis (what makes the view's writes safe against stale readers)."""
    return f"{prefix}:{customer_tag(customer_id)}:pos"


def legacy_block_key(prefix: str, channel: str, customer_id: str) -> str:
    return f"{prefix}:block:{channel}:{customer_id}"


def legacy_prefs_key(prefix: str, customer_id: str) -> str:
    return f"{prefix}:prefs:{customer_id}"


def around_id(render: Callable[[str], str]) -> tuple[str, str]:
    """The text before and after the id in a key of the layout (``render`` builds the key from an id): what a
    script needs to build the keys of many customers itself from their ids, the format staying here."""
    marker = "\x00id\x00"
    head, _, tail = render(marker).partition(marker)
    return head, tail


def customer_keys(prefix: str, customer_id: str, channels: Sequence[str]) -> list[str]:
    """Every key the guard may hold for one customer: its blocks, preference view and position (same slot)."""
    return [
        *(block_key(prefix, channel, customer_id) for channel in channels),
        prefs_key(prefix, customer_id),
        position_key(prefix, customer_id),
    ]


def parse_customer_key(prefix: str, key: str) -> tuple[str, str] | None:
    """``(customer_id, kind)`` of a key of the layout, kind ``block:<channel>``, ``prefs`` or ``pos``; None for
    other keys. Parsed from the right, since an id may contain anything, ``}:`` included."""
    lead = f"{prefix}:{{c:"
    if not key.startswith(lead):
        return None
    end = key.rfind("}:")
    if end < len(lead):
        return None
    customer_id, kind = key[len(lead) : end], key[end + 2 :]
    if not customer_id or not (kind in ("prefs", "pos") or kind.startswith("block:")):
        return None
    return customer_id, kind


def check_prefix(prefix: str) -> str:
    """A prefix with braces would put the hash tag in the prefix: every key of every customer in one slot."""
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"the Redis key prefix must be non-empty and without braces, got {prefix!r}")
    return prefix


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where Redis is, parsed from a URL: one node, or the startup nodes of a Redis Cluster."""

    url: str  # without our own query parameters: what redis-py's from_url understands
    cluster: bool
    startup_nodes: tuple[tuple[str, int], ...]


def parse_redis_url(url: str) -> RedisTarget:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    cluster = query.pop("cluster", ["0"])[-1].lower() in ("1", "true", "yes")
    addrs = query.pop("addr", [])
    plain = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    nodes = [(parts.hostname or "127.0.0.1", parts.port or 6379)]
    for addr in addrs:
        host, _, port = addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad addr={addr!r} in the Redis URL: expected HOST:PORT")
        nodes.append((host, int(port)))
    if addrs and not cluster:
        raise ValueError("addr= in the Redis URL needs cluster=1")
    return RedisTarget(plain, cluster, tuple(nodes))


def is_cluster_url(url: str) -> bool:
    return parse_redis_url(url).cluster


def sync_client(url: str, **options: Any) -> redis.Redis | RedisCluster:
    """A blocking client for ``url``: redis-py's cluster client for a cluster URL (it follows MOVED and ASK and
    refreshes its slot map on a failover), a plain one otherwise."""
    target = parse_redis_url(url)
    if not target.cluster:
        return redis.Redis.from_url(target.url, **options)
    nodes = [ClusterNode(host, port) for host, port in target.startup_nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=nodes, **_cluster_options(target, options))


def async_client(url: str, **options: Any) -> aioredis.Redis | AsyncRedisCluster:
    """The asyncio counterpart of :func:`sync_client`."""
    target = parse_redis_url(url)
    if not target.cluster:
        return aioredis.Redis.from_url(target.url, **options)
    nodes = [AsyncClusterNode(host, port) for host, port in target.startup_nodes]
    return AsyncRedisCluster(startup_nodes=nodes, **_cluster_options(target, options))


def _cluster_options(target: RedisTarget, options: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(target.url)
    merged: dict[str, Any] = {"require_full_coverage": True}
    if parts.username:
        merged["username"] = parts.username
    if parts.password:
        merged["password"] = parts.password
    if parts.scheme == "rediss":
        merged["ssl"] = True
    merged.update(options)
    return merged
