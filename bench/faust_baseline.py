"""The baseline of the end-to-end benchmark: the default policy's caps as a typical Faust user writes them.

Same input topic, same caps (marketing contacts only: sms 2/7d and 5/30d, email 3/7d and 10/30d, call 1/1d and
3/7d, all channels 6/7d), counted the way Faust's documentation suggests: hopping windowed tables relative to
the stream (the Kafka record timestamp, which the load generator sets to the event time), one count per
``customer:channel`` key, and a block record sent when a count reaches its limit. The 7- and 30-day windows hop
by a day, the 1-day call window by an hour: the usual approximation of a sliding window, up to one step wide.

Deliberately generous to the baseline, so the ratio to the guard is a lower bound:

* values are decoded with orjson from raw bytes (a ``faust.Record`` is several times slower to build, and a
  malformed message would crash the agent: robinhood/faust#143) and anything not a marketing contact is skipped
  after one dict lookup, with no validation, de-duplication, late-event handling, outcomes or evidence;
* a block is a small record, not a decision with evidence, and nothing is written to Redis.

What it does not get for free is Faust's windowed-table cost: a write to every window a timestamp falls in (7,
30 or 24 per count, each a RocksDB write and a changelog record) and wall-clock expiry (faust-streaming#385).

With ``--noop`` the agent only decodes each value and keeps nothing: the floor of any Faust agent on this input
(Faust's consumer, stream iteration, acks and commits), a reference for what Faust itself costs.

    .venv/bin/python bench/faust_baseline.py --bootstrap 127.0.0.1:19092 --app-id NAME --events-topic TOPIC \
        --blocks-topic TOPIC --data-dir DIR [--web-port N] [--partitions 6] [--noop]
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

import faust
import orjson

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
# window (size, hop) -> the caps counted in it, per scope: (scope, limit)
WINDOWS: dict[tuple[timedelta, timedelta], tuple[tuple[str, int], ...]] = {
    (DAY, HOUR): (("call", 1),),
    (7 * DAY, DAY): (("sms", 2), ("email", 3), ("call", 3), ("all", 6)),
    (30 * DAY, DAY): (("sms", 5), ("email", 10)),
}
CHANNELS = frozenset({"email", "sms", "call"})


def create_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id,
        broker=f"kafka://{args.bootstrap}",
        store="rocksdb://",
        datadir=args.data_dir,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        web_port=args.web_port,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        autodiscover=False,
    )
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    events = app.topic(args.events_topic, **raw)
    blocks = app.topic(args.blocks_topic, **raw)
    if args.noop:

        @app.agent(events)
        async def decode_only(stream: faust.StreamT[bytes]) -> None:
            async for value in stream:
                try:
                    orjson.loads(value)
                except orjson.JSONDecodeError:
                    continue

        return app

    # per scope, the windowed tables that count it and the limit in each
    counted: dict[str, list[tuple[Any, int, timedelta, str]]] = {}
    for index, ((size, step), caps) in enumerate(WINDOWS.items()):
        days = size / DAY
        table = (
            app.Table(f"contacts-{index}", default=int, partitions=args.partitions)
            .hopping(size, step, expires=size)
            .relative_to_stream()
        )
        for scope, limit in caps:
            counted.setdefault(scope, []).append((table, limit, size - step, f"cap.{scope}.{days:g}d"))

    @app.agent(events)
    async def enforce_caps(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                body = orjson.loads(value)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(body, dict) or body.get("type") != "contact":
                continue
            channel = body.get("channel")
            customer = body.get("customer_id")
            if channel not in CHANNELS or not isinstance(customer, str):
                continue
            if body.get("category", "marketing") != "marketing":
                continue
            for scope in (channel, "all"):
                key = f"{customer}:{scope}"
                for table, limit, lookback, rule in counted[scope]:
                    table[key] += 1  # one write (and changelog record) per window the timestamp falls in
                    # the window that ends with the current hop: the contacts of the last `size`, to one hop
                    count = table[key].delta(lookback)
                    if count >= limit:
                        block = {"customer_id": customer, "channel": scope, "rule": rule, "count": count}
                        await blocks.send(key=f"{scope}:{customer}".encode(), value=orjson.dumps(block))

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--events-topic", required=True)
    parser.add_argument("--blocks-topic", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--web-port", type=int, default=6067)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--noop", action="store_true", help="only decode: the floor of any Faust agent")
    args = parser.parse_args(argv)
    from faust import Worker

    app = create_app(args)
    # "info" as the guard's worker runs: at "warning" faust's Worker puts the root logger at DEBUG for its
    # terminal spinner, and every debug call in faust and aiokafka then builds a LogRecord
    Worker(app, loglevel="info", quiet=True).execute_from_commandline()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
