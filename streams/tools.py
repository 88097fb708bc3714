"""Small operator tools on the real infrastructure: ``fatigue send`` and ``fatigue check``."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator

import orjson

from fatigue.events import CHANNELS


def _events(arguments: list[str]) -> Iterator[bytes]:
    if arguments:
        for argument in arguments:
            yield argument.encode()
    else:
        for line in sys.stdin.buffer:
            if line.strip():
                yield line.strip()


def send_main(argv: list[str]) -> int:
    """Produce contract events (arguments, or JSON lines on stdin) keyed by their customer_id."""
    parser = argparse.ArgumentParser(prog="fatigue send", description=send_main.__doc__)
    parser.add_argument("events", nargs="*", help="JSON events; read from stdin when none are given")
    parser.add_argument("--bootstrap", default=os.environ.get("FATIGUE_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--topic", default=os.environ.get("FATIGUE_EVENTS_TOPIC", "fatigue.events.v1"))
    args = parser.parse_args(argv)
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all", linger_ms=5)
    sent = 0
    for raw in _events(args.events):
        try:
            body = orjson.loads(raw)
            key = body.get("customer_id") if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            key = None  # sent anyway: the guard dead-letters it with its reason
        producer.send(args.topic, key=key.encode() if isinstance(key, str) else None, value=raw)
        sent += 1
    producer.flush()
    producer.close()
    print(f"sent {sent} event(s) to {args.topic}", file=sys.stderr)
    return 0


def check_main(argv: list[str]) -> int:
    """Print what email platforms see in Redis for one customer: active blocks per channel and preferences."""
    parser = argparse.ArgumentParser(prog="fatigue check", description=check_main.__doc__)
    parser.add_argument("customer_id")
    parser.add_argument("--redis-url", default=os.environ.get("FATIGUE_REDIS_URL", "redis://127.0.0.1:16379/0"))
    parser.add_argument("--prefix", default=os.environ.get("FATIGUE_REDIS_PREFIX", "fatigue"))
    args = parser.parse_args(argv)
    import redis

    client = redis.Redis.from_url(args.redis_url)
    try:
        keys = [f"{args.prefix}:block:{channel}:{args.customer_id}" for channel in CHANNELS]
        keys.append(f"{args.prefix}:prefs:{args.customer_id}")
        values = client.mget(keys)
    finally:
        client.close()
    report = {
        "customer_id": args.customer_id,
        "channels": {
            channel: {"status": "blocked", "decision": orjson.loads(value)} if value else {"status": "allowed"}
            for channel, value in zip(CHANNELS, values[:3], strict=True)
        },
        "preferences": orjson.loads(values[3]) if values[3] else None,
    }
    sys.stdout.buffer.write(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    return 0
