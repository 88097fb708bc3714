"""Small operator tools on the real infrastructure: ``fatigue check``, ``follow``, ``filter``, ``erase``, ``inspect``;
``fatigue send`` is in :mod:`streams.send_cli`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator

import orjson

from fatigue.events import CATEGORIES, CHANNELS
from streams.send_cli import send_main

__all__ = ["check_main", "erase_main", "filter_main", "follow_main", "inspect_main", "send_main"]

REDIS_URL_HELP = (
    "one Redis (redis://HOST:PORT/DB) or a Redis Cluster (redis://HOST:PORT/0?cluster=1&addr=HOST:PORT&...); "
    "default: $FATIGUE_REDIS_URL"
)


def check_main(argv: list[str]) -> int:
    """Print what email platforms see in Redis for one customer: active blocks per channel and preferences."""
    parser = argparse.ArgumentParser(prog="fatigue check", description=check_main.__doc__)
    parser.add_argument("customer_id")
    parser.add_argument(
        "--redis-url", default=os.environ.get("FATIGUE_REDIS_URL", "redis://127.0.0.1:16379/0"), help=REDIS_URL_HELP
    )
    parser.add_argument("--prefix", default=os.environ.get("FATIGUE_REDIS_PREFIX", "fatigue"))
    args = parser.parse_args(argv)
    from streams.redis_keys import block_key, check_prefix, prefs_key, sync_client

    try:
        check_prefix(args.prefix)
    except ValueError as error:
        parser.error(str(error))
    try:
        client = sync_client(args.redis_url)
    except ValueError as error:  # a malformed URL
        parser.error(str(error))
    try:
        # the customer's keys share its hash tag: one slot, so one MGET on a Redis Cluster too
        keys = [block_key(args.prefix, channel, args.customer_id) for channel in CHANNELS]
        keys.append(prefs_key(args.prefix, args.customer_id))
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


def follow_main(argv: list[str]) -> int:
    """Print block decisions as JSON lines: the current set first, then live ones (like a dialer sees them)."""
    parser = argparse.ArgumentParser(prog="fatigue follow", description=follow_main.__doc__)
    parser.add_argument("--channel", choices=CHANNELS, help="only this channel")
    parser.add_argument("--bootstrap", default=os.environ.get("FATIGUE_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--topic", default=os.environ.get("FATIGUE_DECISIONS_TOPIC", "fatigue.blocks.v1"))
    parser.add_argument("--no-live", action="store_true", help="stop after printing the current set")
    args = parser.parse_args(argv)
    from streams.sender import BlockFollower

    out = sys.stdout.buffer

    def show(key: str, decision: dict[str, object] | None) -> None:
        if live:
            record = decision if decision is not None else {"key": key, "action": "deleted"}
            out.write(orjson.dumps(record) + b"\n")
            out.flush()

    live = False
    follower = BlockFollower(args.bootstrap, args.topic, channel=args.channel, on_change=show)
    try:
        follower.bootstrap()
        for decision in follower.active().values():
            out.write(orjson.dumps(decision) + b"\n")
        out.flush()
        live = True
        if not args.no_live:
            follower.follow()
    except KeyboardInterrupt:
        pass
    finally:
        follower.close()
    return 0


def filter_main(argv: list[str]) -> int:
    """Keep the audience ids (one per line) that may be contacted now; removed counts by reason on stderr."""
    parser = argparse.ArgumentParser(prog="fatigue filter", description=filter_main.__doc__)
    parser.add_argument("audience", help="file of customer ids, one per line ('-' for stdin)")
    parser.add_argument("--channel", choices=CHANNELS, required=True)
    parser.add_argument(
        "--category",
        choices=CATEGORIES,
        default="marketing",
        help="the message's category (default: %(default)s); transactional mail is never held back",
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("FATIGUE_REDIS_URL", "redis://127.0.0.1:16379/0"), help=REDIS_URL_HELP
    )
    parser.add_argument("--prefix", default=os.environ.get("FATIGUE_REDIS_PREFIX", "fatigue"))
    parser.add_argument("--policy", help="policy file, to honour its quiet hours too (e.g. the tcpa preset)")
    args = parser.parse_args(argv)
    from fatigue.policy import load_policy
    from streams.redis_keys import check_prefix
    from streams.sender import PreSendCheck

    try:
        check_prefix(args.prefix)
    except ValueError as error:
        parser.error(str(error))
    policy = load_policy(args.policy) if args.policy else None
    try:
        source = sys.stdin.buffer if args.audience == "-" else open(args.audience, "rb")  # noqa: SIM115
    except OSError as error:
        parser.error(f"cannot read the audience: {error}")
    total = os.fstat(source.fileno()).st_size if args.audience != "-" else 0
    progress = sys.stderr.isatty() and total > 1_000_000
    try:
        check = PreSendCheck.from_url(args.redis_url, prefix=args.prefix, policy=policy)
    except ValueError as error:  # a malformed URL
        parser.error(str(error))
    out = sys.stdout.buffer
    removed: dict[str, int] = {}
    kept = seen = done = 0
    started = time.monotonic()

    def ids() -> Iterator[str]:
        nonlocal done
        for line in source:
            done += len(line)
            try:
                customer_id = line.strip().decode()
            except UnicodeDecodeError:
                # not an id the guard can hold (ids are UTF-8): it cannot be checked, so it is not let through
                removed["invalid_id"] = removed.get("invalid_id", 0) + 1
                continue
            if customer_id:
                yield customer_id

    try:
        for customer_id, verdict in check.filter(ids(), args.channel, category=args.category):
            seen += 1
            if verdict.allowed:
                kept += 1
                out.write(customer_id.encode() + b"\n")
            else:
                reason = verdict.reason or "blocked"
                removed[reason] = removed.get(reason, 0) + 1
            if progress and seen % 50_000 == 0:
                sys.stderr.write(f"\rfilter {done * 100 // max(total, 1):3d}%  {seen:,} ids")
    finally:
        out.flush()
        check.close()
        if source is not sys.stdin.buffer:
            source.close()
    elapsed = time.monotonic() - started
    if progress:
        sys.stderr.write("\n")
    summary = ", ".join(f"{reason} {count}" for reason, count in sorted(removed.items())) or "none"
    invalid = removed.get("invalid_id", 0)
    print(
        f"{seen + invalid} ids, {kept} allowed, {seen + invalid - kept} removed ({summary}) in {elapsed:.2f}s",
        file=sys.stderr,
    )
    return 0


def erase_main(argv: list[str]) -> int:
    """Erase a customer (right to erasure): the guard forgets them, keeping only an opt-out suppression."""
    parser = argparse.ArgumentParser(prog="fatigue erase", description=erase_main.__doc__)
    parser.add_argument("customer_id")
    parser.add_argument("--bootstrap", default=os.environ.get("FATIGUE_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--topic", default=os.environ.get("FATIGUE_EVENTS_TOPIC", "fatigue.events.v1"))
    args = parser.parse_args(argv)
    import uuid

    event = {
        "type": "erase",
        "event_id": f"erase-{uuid.uuid4()}",
        "customer_id": args.customer_id,
        "ts": int(time.time() * 1000),
    }
    return send_main([orjson.dumps(event).decode(), "--bootstrap", args.bootstrap, "--topic", args.topic])


def inspect_main(argv: list[str]) -> int:
    """Explain what the guard holds about one customer (right of access), from the worker that owns it."""
    parser = argparse.ArgumentParser(prog="fatigue inspect", description=inspect_main.__doc__)
    parser.add_argument("customer_id")
    parser.add_argument(
        "--url",
        action="append",
        help="a worker's web address; repeat it (or comma-separate FATIGUE_WORKER_URL) for every worker: the one "
        "that owns the customer's partition answers (default http://127.0.0.1:6066)",
    )
    args = parser.parse_args(argv)
    urls = args.url or os.environ.get("FATIGUE_WORKER_URL", "http://127.0.0.1:6066").split(",")
    import urllib.error
    import urllib.parse
    import urllib.request

    unreachable: list[str] = []
    for url in urls:
        address = f"{url.rstrip('/')}/customers/{urllib.parse.quote(args.customer_id, safe='')}/"
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            if error.code == 404:
                answer = orjson.loads(error.read() or b"{}")
                if answer.get("error") == "unknown customer":  # the owner holds nothing
                    print(f"the guard holds nothing about {args.customer_id}", file=sys.stderr)
                    return 1
                continue  # another worker owns the customer's partition
            print(f"fatigue inspect: the worker at {url} answered {error.code} {error.reason}", file=sys.stderr)
            return 2
        except (urllib.error.URLError, OSError) as error:
            unreachable.append(f"{url} ({getattr(error, 'reason', error)})")
            continue
        sys.stdout.buffer.write(orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if unreachable:
        print(
            f"fatigue inspect: no worker answers at {', '.join(unreachable)}; set --url or FATIGUE_WORKER_URL",
            file=sys.stderr,
        )
    else:
        print(
            f"fatigue inspect: none of {', '.join(urls)} owns {args.customer_id}'s partition now; give every "
            "worker's --url",
            file=sys.stderr,
        )
    return 2
