"""Bulk audience filter throughput: ``PreSendCheck.filter`` on the local single Redis and on the local Redis Cluster.

Writes one audience's blocks and preferences (10% blocked, 5% with quiet hours; keys from streams.redis_keys under a
throwaway prefix) to both, times the filter as ``fatigue filter`` runs it on each, and removes the keys after. On
the single Redis also: bare pipelined MGETs of the same keys with nothing decoded (the ceiling of its path) and the
cluster path's lookup script called directly (what it would give there). On the cluster also: the cluster client's
own per-slot MGETs (``mget_nonatomic``) on a slice of the audience, the naive way. Each figure is the best of
``--repeat`` runs. Target: >= 200k ids/s from one process, on the cluster too. Without the cluster profile, single
node only.

    eval "$(deploy/local/stack.sh env)"; .venv/bin/python bench/filter_audience.py [--ids 1000000]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

import orjson
import redis
from redis.cluster import RedisCluster

from fatigue.replay import tune_gc
from streams.redis_keys import block_key, is_cluster_url, prefs_key, sync_client
from streams.sender import LOOKUP_SCRIPT, SCRIPT_IDS, PreSendCheck

SINGLE_URL = "redis://127.0.0.1:16379/0"
CLUSTER_URL = "redis://127.0.0.1:17001/0?cluster=1&addr=127.0.0.1:17002&addr=127.0.0.1:17003"
TARGET = 200_000


REPEAT = 3  # each figure is the best of this many runs: the machine is shared, a slow run says little


class Rate(NamedTuple):
    wall: float  # ids per second
    cpu: float  # ids per CPU-second of this process: what the client costs, whatever else the machine runs


def _rate(count: int, run: Callable[[], object], repeat: int) -> Rate:
    best = Rate(0.0, 0.0)
    for _ in range(max(1, repeat)):
        started, cpu = time.perf_counter(), time.process_time()
        run()
        rate = Rate(count / (time.perf_counter() - started), count / max(time.process_time() - cpu, 1e-9))
        best = max(best, rate)
    return best


def _show(label: str, rate: Rate) -> None:
    print(f"  {label:<48} {rate.wall:>10,.0f} ids/s   (client {rate.cpu:>10,.0f} ids per CPU-second)")


def _write(client: redis.Redis | RedisCluster, prefix: str, ids: list[str], now: int) -> None:
    block = orjson.dumps({"action": "block", "reason": "cap", "until": None, "until_ms": now + 86_400_000})
    prefs = orjson.dumps({"timezone": "Europe/Paris", "quiet_hours": {"email": {"start": "21:00", "end": "08:00"}}})
    pipe = client.pipeline(transaction=False)
    for index, customer in enumerate(ids):
        if index % 10 == 0:
            pipe.set(block_key(prefix, "email", customer), block, pxat=now + 86_400_000)
        if index % 20 == 1:
            pipe.set(prefs_key(prefix, customer), prefs, px=86_400_000)  # expires even if the cleanup fails
        if index % 10_000 == 0:
            pipe.execute()
    pipe.execute()


def _clean(client: redis.Redis | RedisCluster, prefix: str) -> None:
    nodes: list[redis.Redis] = [client] if isinstance(client, redis.Redis) else []
    if isinstance(client, RedisCluster):
        # per primary, one key per command: one node's keys span many slots
        nodes = [client.get_redis_connection(node) for node in client.get_primaries()]  # type: ignore[no-untyped-call]
    for node in nodes:
        try:
            pipe = node.pipeline(transaction=False)
            for count, key in enumerate(node.scan_iter(match=f"{prefix}:*", count=10_000), 1):
                pipe.unlink(key)
                if count % 10_000 == 0:
                    pipe.execute()
            pipe.execute()
        except redis.RedisError as error:  # a node down (a fault test next door): its keys expire within a day
            print(f"  could not clean {prefix}:* on {node}: {error}")


def _allowed(check: PreSendCheck, ids: list[str], now: int, batch: int) -> int:
    return sum(1 for _, verdict in check.filter(ids, "email", now, batch=batch) if verdict.allowed)


def _single(url: str, ids: list[str], now: int, batch: int, repeat: int) -> int:
    client = redis.Redis.from_url(url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        _write(client, prefix, ids, now)

        def ceiling() -> None:
            for start in range(0, len(ids), batch):
                chunk = ids[start : start + batch]
                raw = client.pipeline(transaction=False)
                raw.mget([block_key(prefix, "email", customer) for customer in chunk])
                raw.mget([prefs_key(prefix, customer) for customer in chunk])
                raw.execute()

        def script() -> None:
            # what the cluster path's script would cost here, in calls of SCRIPT_IDS ids (not used on one Redis)
            for start in range(0, len(ids), SCRIPT_IDS):
                client.eval(LOOKUP_SCRIPT, 0, *check._script_args("email", ids[start : start + SCRIPT_IDS]))

        check = PreSendCheck(client, prefix=prefix)
        allowed = _allowed(check, ids, now, batch)
        print(f"single Redis {url}")
        _show("raw pipelined MGET (ceiling)", _rate(len(ids), ceiling, repeat))
        _show("lookup script, raw calls (not used on one node)", _rate(len(ids), script, repeat))
        ours = _rate(len(ids), lambda: _allowed(check, ids, now, batch), repeat)
        _show("PreSendCheck.filter (two MGETs per batch)", ours)
        print(f"  target {TARGET:,} ids/s: {'met' if ours.wall >= TARGET else 'NOT met'}")
        return allowed
    finally:
        _clean(client, prefix)
        client.close()


def _cluster(url: str, ids: list[str], now: int, batch: int, repeat: int) -> int | None:
    try:
        client = sync_client(url, socket_connect_timeout=3, socket_timeout=10)
        assert isinstance(client, RedisCluster)
    except Exception as error:
        print(f"Redis Cluster at {url}: not reachable ({error})")
        print("  the cluster profile is not up (deploy/local/stack.sh up --cluster): single-node figures only")
        return None
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    try:
        _write(client, prefix, ids, now)
        check = PreSendCheck(client, prefix=prefix)
        allowed = _allowed(check, ids, now, batch)
        sample = ids[: min(len(ids), 100_000)]

        def naive() -> None:
            for start in range(0, len(sample), batch):
                keys: list[str] = []
                for customer in sample[start : start + batch]:
                    keys += (block_key(prefix, "email", customer), prefs_key(prefix, customer))
                client.mget_nonatomic(keys)

        primaries = len(client.get_primaries())  # type: ignore[no-untyped-call]
        print(f"Redis Cluster {url} ({primaries} primaries)")
        _show(f"per-slot MGETs (mget_nonatomic), {len(sample):,} ids", _rate(len(sample), naive, 1))
        ours = _rate(len(ids), lambda: _allowed(check, ids, now, batch), repeat)
        _show("PreSendCheck.filter (scripts per primary)", ours)
        print(f"  target {TARGET:,} ids/s: {'met' if ours.wall >= TARGET else 'NOT met'}")
        assert check.script_unusable is None, check.script_unusable
        return allowed
    finally:
        _clean(client, prefix)
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--repeat", type=int, default=REPEAT, help="best of this many runs per figure")
    env_url = os.environ.get("FATIGUE_REDIS_URL", "")
    env_cluster = bool(env_url) and is_cluster_url(env_url)
    parser.add_argument("--redis-url", default=env_url if env_url and not env_cluster else SINGLE_URL)
    parser.add_argument("--cluster-url", default=env_url if env_cluster else CLUSTER_URL)
    args = parser.parse_args()
    tune_gc()
    now = int(time.time() * 1000)
    ids = [f"cust-{index:08d}" for index in range(args.ids)]
    print(f"audience filter: {len(ids):,} ids, batch {args.batch}, 10% blocked, 5% with quiet hours")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (the figures are wall-clock)")
    single = _single(args.redis_url, ids, now, args.batch, args.repeat)
    cluster = _cluster(args.cluster_url, ids, now, args.batch, args.repeat)
    print(f"allowed: {single:,} on the single Redis" + (f", {cluster:,} on the cluster" if cluster is not None else ""))
    if cluster is not None and cluster != single:
        print("MISMATCH between the single Redis and the cluster")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
