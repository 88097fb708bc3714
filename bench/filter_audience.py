"""Bulk audience filter throughput against the local Redis: ``PreSendCheck.filter`` vs a raw MGET ceiling.

Writes an audience's blocks and preferences under a throwaway key prefix (10% blocked, 5% with quiet hours),
then times, in the same run: (a) the ceiling, bare pipelined MGETs of the same keys with nothing decoded; (b) the
filter as ``fatigue filter`` runs it. Prints ids/s and the ratio. Target: >= 200k ids/s from one process.

    eval "$(deploy/local/stack.sh env)"; .venv/bin/python bench/filter_audience.py [--ids 1000000]
"""

from __future__ import annotations

import argparse
import os
import time
import uuid

import orjson
import redis

from fatigue.replay import tune_gc
from streams.sender import PreSendCheck


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5_000)
    parser.add_argument("--redis-url", default=os.environ.get("FATIGUE_REDIS_URL", "redis://127.0.0.1:16379/0"))
    args = parser.parse_args()
    tune_gc()
    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    ids = [f"cust-{index:08d}" for index in range(args.ids)]
    block = orjson.dumps({"action": "block", "reason": "cap", "until": None, "until_ms": now + 86_400_000})
    prefs = orjson.dumps({"timezone": "Europe/Paris", "quiet_hours": {"email": {"start": "21:00", "end": "08:00"}}})
    try:
        pipe = client.pipeline(transaction=False)
        for index, customer in enumerate(ids):
            if index % 10 == 0:
                pipe.set(f"{prefix}:block:email:{customer}", block, pxat=now + 86_400_000)
            if index % 20 == 1:
                pipe.set(f"{prefix}:prefs:{customer}", prefs)
            if index % 10_000 == 0:
                pipe.execute()
        pipe.execute()

        started = time.perf_counter()
        for start in range(0, len(ids), args.batch):
            chunk = ids[start : start + args.batch]
            raw = client.pipeline(transaction=False)
            raw.mget([f"{prefix}:block:email:{customer}" for customer in chunk])
            raw.mget([f"{prefix}:prefs:{customer}" for customer in chunk])
            raw.execute()
        ceiling = len(ids) / (time.perf_counter() - started)

        check = PreSendCheck(client, prefix=prefix)
        started = time.perf_counter()
        allowed = sum(1 for _, verdict in check.filter(ids, "email", now, batch=args.batch) if verdict.allowed)
        ours = len(ids) / (time.perf_counter() - started)
    finally:
        cursor_keys = list(client.scan_iter(match=f"{prefix}:*", count=10_000))
        for start in range(0, len(cursor_keys), 10_000):
            client.delete(*cursor_keys[start : start + 10_000])
        client.close()
    print(f"audience filter: {len(ids):,} ids, batch {args.batch}, {allowed:,} allowed")
    print(f"  raw MGET ceiling      {ceiling:>12,.0f} ids/s")
    print(f"  PreSendCheck.filter   {ours:>12,.0f} ids/s   ratio {ours / ceiling:.2f} of the ceiling")
    print(f"  target 200,000 ids/s: {'met' if ours >= 200_000 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
