"""The Redis view on the real stack: a batch of decision records leaves exactly each key's last record; every write
is conditional on the record's offset (a stale reader, or a reconcile frozen half-way, cannot set a key back); the
view's own consumer reads committed records only, commits what it wrote and resumes there; and every reader of the
output topics returns exactly the committed records and ends, also when a transaction marker comes last."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from streams import redis_keys
from streams.collector import Record as CollectedRecord
from streams.metrics import Metrics
from streams.redis_nodes import RedisNodes
from streams.redis_view import (
    Record,
    RedisView,
    ViewConsumer,
    ViewLayout,
    read_latest,
    read_partitions,
    watermark_key,
)
from streams.sender import BlockFollower
from streams.transactions import PartitionProducer
from tests.e2e.harness import GuardDeployment, free_server_port
from tests.transaction_markers import wait_for_last_stable_offsets


def _block(customer: str, until_ms: int) -> bytes:
    return orjson.dumps({"action": "block", "channel": "sms", "customer_id": customer, "until_ms": until_ms})


def _allow(customer: str) -> bytes:
    return orjson.dumps({"action": "allow", "channel": "sms", "customer_id": customer})


def block_key(prefix: str, topic_key: bytes) -> str:
    """The Redis key of a decisions-topic key ``<channel>:<customer>``."""
    channel, customer = topic_key.decode().split(":", 1)
    return redis_keys.block_key(prefix, channel, customer)


def prefs_key(prefix: str, topic_key: bytes) -> str:
    return redis_keys.prefs_key(prefix, topic_key.decode())


def _view(
    client: aioredis.Redis,
    topic: str,
    bootstrap: str,
    prefix: str,
    metrics: Metrics | None = None,
    partitions: int = 2,
) -> RedisView:
    return RedisView(
        RedisNodes(client, prefix=prefix),
        topic=topic,
        bootstrap=bootstrap,
        partitions=partitions,
        layout=ViewLayout(prefix, "blocks"),
        metrics=metrics or Metrics(),
    )


def _prefs_view(client: aioredis.Redis, topic: str, prefix: str) -> RedisView:
    return RedisView(
        RedisNodes(client, prefix=prefix),
        topic=topic,
        bootstrap="unused",
        partitions=1,
        layout=ViewLayout(prefix, "prefs"),
        metrics=Metrics(),
    )


def _numbered(records: list[tuple[bytes, bytes | None]], first: int = 0) -> list[Record]:
    return [(first + i, key, value) for i, (key, value) in enumerate(records)]


def _topic_records(bootstrap: str, topic: str) -> dict[int, list[Record]]:
    """Every committed record of ``topic`` with its offset, per partition."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        consumer_timeout_ms=3000,
    )
    try:
        found: dict[int, list[Record]] = {}
        for message in consumer:
            found.setdefault(message.partition, []).append((message.offset, message.key, message.value))
        return found
    finally:
        consumer.close()


def _held_blocks(client: redis.Redis, prefix: str) -> dict[bytes, bytes]:
    keys = sorted(client.scan_iter(match=f"{prefix}:{{c:*}}:block:*", count=1000))
    return dict(zip(keys, client.mget(keys), strict=True)) if keys else {}


def _expected_blocks(prefix: str, latest: dict[bytes, bytes | None]) -> dict[bytes, bytes]:
    return {
        block_key(prefix, key).encode(): value
        for key, value in latest.items()
        if value is not None and orjson.loads(value).get("action") == "block"
    }


def test_a_batch_writes_each_keys_last_record_once(redis_url: str, redis_client: redis.Redis, redis_key_prefix: str):
    prefix = redis_key_prefix.rstrip(":")
    now_ms = int(time.time() * 1000)
    hot = [(b"sms:hot", _block("hot", now_ms + 60_000 + i)) for i in range(500)]  # re-decided on every contact
    records = _numbered(
        [
            *hot[:250],
            (b"sms:lifted", _block("lifted", now_ms + 60_000)),
            *hot[250:],
            (b"sms:lifted", None),  # a tombstone later in the batch wins
            (b"sms:allowed", _allow("allowed")),
        ]
    )
    redis_client.set(block_key(prefix, b"sms:allowed"), b"stale block")
    metrics = Metrics()

    async def write() -> None:
        client = aioredis.Redis.from_url(redis_url)
        view = _view(client, "unused", "unused", prefix, metrics, partitions=1)
        try:
            assert (await view._write(0, records, start=0, end=len(records))).applied
        finally:
            await client.aclose()

    asyncio.run(write())
    assert redis_client.get(block_key(prefix, b"sms:hot")) == hot[-1][1]
    assert 59_000 < redis_client.pttl(block_key(prefix, b"sms:hot")) <= 60_500
    assert redis_client.get(block_key(prefix, b"sms:lifted")) is None
    assert redis_client.get(block_key(prefix, b"sms:allowed")) is None
    assert redis_client.get(watermark_key(prefix, "unused", 0)) == str(len(records) - 1).encode()
    writes = {op: metrics.registry.get_sample_value("fatigue_redis_writes_total", {"op": op}) for op in ("set", "del")}
    assert writes == {"set": 1, "del": 2}, "one command per key"


def test_older_offsets_written_after_newer_ones_change_nothing(
    redis_url: str, redis_client: redis.Redis, redis_key_prefix: str
):
    """A stale reader (a worker thawed after its partitions moved) writes a batch it fetched before the freeze:
    blocks, allows, tombstones and preference views all keep the newer values."""
    prefix = redis_key_prefix.rstrip(":")
    now_ms = int(time.time() * 1000)
    older = _numbered(
        [
            (b"sms:blocked", _block("blocked", now_ms + 100_000)),  # block, later re-decided
            (b"sms:allowed", _block("allowed", now_ms + 100_000)),  # block, later lifted by an allow
            (b"sms:tomb", _block("tomb", now_ms + 100_000)),  # block, later tombstoned
            (b"sms:late", None),  # tombstone, later blocked again
        ]
    )
    newer = _numbered(
        [
            (b"sms:blocked", _block("blocked", now_ms + 900_000)),
            (b"sms:allowed", _allow("allowed")),
            (b"sms:tomb", None),
            (b"sms:late", _block("late", now_ms + 900_000)),
        ],
        first=4,
    )
    prefs_older = _numbered([(b"c1", b'{"timezone":"Europe/Paris"}'), (b"c2", None)])
    prefs_newer = _numbered([(b"c1", b'{"timezone":"Asia/Tokyo"}'), (b"c2", b'{"timezone":"UTC"}')], first=2)

    async def race() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            blocks, prefs = (
                _view(client, "blocks", "unused", prefix, partitions=1),
                _prefs_view(client, "prefs", prefix),
            )
            # the new owner wrote everything
            assert (await blocks._write(0, older + newer, start=0, end=8)).applied
            assert (await prefs._write(0, prefs_older + prefs_newer, start=0, end=4)).applied
            # the stale reader's batches: the older records only, then the older half of a batch spanning both
            for view, batch, end in ((blocks, older, 4), (prefs, prefs_older, 2)):
                result = await view._write(0, batch, start=0, end=end)
                assert (result.applied, result.sets, result.deletes) == (True, 0, 0)
            result = await blocks._write(0, [*older[2:], *newer[:2]], start=2, end=6)
            assert (result.applied, result.sets, result.deletes) == (True, 0, 0)
            # a batch reaching past the watermark applies only its records beyond it
            fresh = (8, b"sms:fresh", _block("fresh", now_ms + 900_000))
            result = await blocks._write(0, [*older[3:], *newer, fresh], start=3, end=9)
            assert (result.applied, result.sets, result.deletes, result.skipped) == (True, 1, 0, 4)  # one per key
            # one that starts after the watermark + 1 is not complete (Redis lacks the records before it: the view
            # reconciles) and leaves the watermark; its own records, newer than what their customers hold, are written
            gap = await blocks._write(0, [(20, b"sms:gap", _block("gap", now_ms + 900_000))], start=20, end=21)
            assert not gap.applied and gap.sets == 1
            assert await blocks.watermark(0) == 8 and await prefs.watermark(0) == 3
        finally:
            await client.aclose()

    asyncio.run(race())
    assert redis_client.get(block_key(prefix, b"sms:blocked")) == newer[0][2]
    assert redis_client.pttl(block_key(prefix, b"sms:blocked")) > 800_000
    assert redis_client.get(block_key(prefix, b"sms:allowed")) is None
    assert redis_client.get(block_key(prefix, b"sms:tomb")) is None
    assert redis_client.get(block_key(prefix, b"sms:late")) == newer[3][2]
    assert redis_client.get(block_key(prefix, b"sms:fresh")) is not None
    assert redis_client.get(block_key(prefix, b"sms:gap")) is not None
    assert redis_client.get(prefs_key(prefix, b"c1")) == b'{"timezone":"Asia/Tokyo"}'
    assert redis_client.get(prefs_key(prefix, b"c2")) == b'{"timezone":"UTC"}'


def test_two_views_racing_on_a_partition_end_with_the_newer_values(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
):
    """Two readers of one partition (its new owner and a zombie) interleave their batches, the zombie finishing
    last with batches it fetched long ago; then a reconcile frozen between reading the topic and writing it is
    thawed after the owner wrote newer records. Redis ends with the topic's latest values."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for i in range(400):
        customer = f"c{i % 25}"
        value = None if i % 7 == 0 else _allow(customer) if i % 5 == 0 else _block(customer, now_ms + 600_000 + i)
        producer.send(topic, key=f"sms:{customer}".encode(), value=value)
    producer.flush()
    records = _topic_records(bootstrap_servers, topic)[0]
    assert len(records) == 400

    async def race() -> None:
        owner_client, zombie_client = aioredis.Redis.from_url(redis_url), aioredis.Redis.from_url(redis_url)
        owner = _view(owner_client, topic, bootstrap_servers, prefix, partitions=1)
        zombie = _view(zombie_client, topic, bootstrap_servers, prefix, partitions=1)
        try:

            async def follow(view: RedisView, size: int, upto: int) -> None:
                for start in range(0, upto, size):
                    batch = records[start : min(start + size, upto)]
                    await view._write(0, batch, start=start, end=start + len(batch))
                    await asyncio.sleep(0)

            await asyncio.gather(follow(owner, 25, 400), follow(zombie, 10, 400))
            await follow(zombie, 50, 200)  # the zombie thaws with batches fetched before the freeze
            assert _held_blocks(redis_client, prefix) == _expected_blocks(
                prefix, {key: value for _, key, value in records}
            )

            # a reconcile frozen after reading the topic ...
            frozen = await read_partitions(bootstrap_servers, topic, [0])
            # ... while the owner goes on: c1 re-decided, c2 lifted, a new customer blocked
            for key, value in (
                (b"sms:c1", _block("c1", now_ms + 990_000)),
                (b"sms:c2", None),
                (b"sms:new", _block("new", now_ms + 990_000)),
            ):
                producer.send(topic, key=key, value=value)
            producer.flush()
            newer = _topic_records(bootstrap_servers, topic)[0][400:]
            await owner._write(0, newer, start=400, end=403)
            # ... thawed: it writes nothing older and deletes nothing the owner wrote since its read
            assert await zombie.apply_snapshots(frozen) == (25, 0)
        finally:
            await owner_client.aclose()
            await zombie_client.aclose()

    asyncio.run(race())
    producer.close()
    latest = asyncio.run(read_latest(bootstrap_servers, topic, [0]))
    assert latest[b"sms:new"] is not None and latest[b"sms:c2"] is None
    assert _held_blocks(redis_client, prefix) == _expected_blocks(prefix, latest)
    assert redis_client.get(watermark_key(prefix, topic, 0)) == b"402"


def _follow_until_done(
    redis_url: str, topic: str, bootstrap: str, prefix: str, group: str, partitions: int = 2
) -> Metrics:
    """Run a ViewConsumer until Redis has everything on ``topic`` (its lag is 0 everywhere), then stop it."""
    metrics = Metrics()

    async def follow() -> None:
        client = aioredis.Redis.from_url(redis_url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap, prefix, metrics, partitions)],
            bootstrap=bootstrap,
            group_id=group,
            batch=50,
        )
        task = asyncio.create_task(views.run())
        try:
            deadline = time.monotonic() + 60
            while True:
                lags = await views.lags()
                if len(lags) == partitions and not any(lags.values()):
                    return
                assert time.monotonic() < deadline, f"the view did not catch up: {lags}"
                await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    asyncio.run(follow())
    return metrics


def _writes(metrics: Metrics) -> dict[str, float | None]:
    return {op: metrics.registry.get_sample_value("fatigue_redis_writes_total", {"op": op}) for op in ("set", "del")}


def test_the_view_consumer_writes_what_it_commits_and_resumes_there(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
    kafka_admin: KafkaAdminClient,
):
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=2, config={"cleanup.policy": "compact"})
    group = f"{prefix}.redis-view"
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    first = [(f"sms:c{i}".encode(), _block(f"c{i}", now_ms + 600_000)) for i in range(300)]
    first.append((b"sms:c7", None))  # lifted again
    for key, value in first:
        producer.send(topic, key=key, value=value)
    producer.flush()

    _follow_until_done(redis_url, topic, bootstrap_servers, prefix, group)
    held = {key for key in redis_client.scan_iter(match=f"{prefix}:{{c:*}}:block:*", count=1000)}
    assert held == {block_key(prefix, f"sms:c{i}".encode()).encode() for i in range(300) if i != 7}
    committed = kafka_admin.list_group_offsets({group: None})[group]
    ends = KafkaConsumer(bootstrap_servers=bootstrap_servers).end_offsets(list(committed))
    assert sum(meta.offset for meta in committed.values()) == len(first) == sum(ends.values())

    # a second run resumes from its group's offsets: a fresh process reconciles on its first write, which writes
    # only what Redis does not hold yet (the new record, beyond the watermark), and the batch it was writing is not
    # written again after it
    producer.send(topic, key=b"sms:c8", value=None)
    producer.flush()
    producer.close()
    metrics = _follow_until_done(redis_url, topic, bootstrap_servers, prefix, group)
    assert redis_client.get(block_key(prefix, b"sms:c8")) is None
    assert _writes(metrics) == {"set": 0, "del": 1}, "the reconcile writes the new tombstone only"
    assert metrics.registry.get_sample_value("fatigue_redis_reconciles_total") == 1
    committed = kafka_admin.list_group_offsets({group: None})[group]
    assert sum(meta.offset for meta in committed.values()) == len(first) + 1


def test_the_watermark_survives_a_new_view_consumer_and_is_respected_by_it(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
):
    """A new ViewConsumer (here: a new group, so it reads the topic again from the beginning) writes nothing at or
    below the watermarks Redis kept, and goes on with what lies beyond."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=2, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for i in range(200):
        producer.send(topic, key=f"sms:c{i % 40}".encode(), value=_block(f"c{i % 40}", now_ms + 600_000 + i))
    producer.flush()
    _follow_until_done(redis_url, topic, bootstrap_servers, prefix, f"{prefix}.view-1")
    ends = {p: len(records) for p, records in _topic_records(bootstrap_servers, topic).items()}
    assert {p: int(redis_client.get(watermark_key(prefix, topic, p)) or -1) for p in ends} == {
        p: end - 1 for p, end in ends.items()
    }
    # a value no record has: had the new instance written any record at or below the watermark, it would be gone
    redis_client.set(block_key(prefix, b"sms:c3"), b"untouched")

    metrics = _follow_until_done(redis_url, topic, bootstrap_servers, prefix, f"{prefix}.view-2")
    assert _writes(metrics) == {"set": 0, "del": 0}
    assert redis_client.get(block_key(prefix, b"sms:c3")) == b"untouched"

    producer.send(topic, key=b"sms:c3", value=_block("c3", now_ms + 700_000))
    producer.close()
    metrics = _follow_until_done(redis_url, topic, bootstrap_servers, prefix, f"{prefix}.view-2")
    assert _writes(metrics) == {"set": 1, "del": 0}
    assert redis_client.get(block_key(prefix, b"sms:c3")) == _block("c3", now_ms + 700_000)


def test_a_batch_older_than_the_reconcile_it_waited_for_does_not_set_keys_back(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
):
    """Redis was away while a batch was in hand; meanwhile the key was re-decided (and, had the partition moved,
    another worker would have written that). When Redis answers, the view reconciles from the topic's end: the
    newer record stays, the batch in hand is not written over it, then or later."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    older, newer = _block("c1", now_ms + 600_000), _block("c1", now_ms + 900_000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for value in (older, newer):
        producer.send(topic, key=b"sms:c1", value=value)
    producer.close()

    async def write_the_older_batch() -> None:
        client = aioredis.Redis.from_url(redis_url)
        view = _view(client, topic, bootstrap_servers, prefix, partitions=1)
        try:
            batch: list[Record] = [(0, b"sms:c1", older)]
            await view.apply(0, batch, start=0, end=1, owned_partitions=lambda: [0])  # a fresh view reconciles
            assert redis_client.get(block_key(prefix, b"sms:c1")) == newer
            await view.apply(0, batch, start=0, end=1, owned_partitions=lambda: [0])  # no reconcile due
            assert redis_client.get(block_key(prefix, b"sms:c1")) == newer
        finally:
            await client.aclose()

    asyncio.run(write_the_older_batch())


class _PrivateRedis:
    """A redis-server of this test's own: it is flushed and restarted, which the shared one must never be."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_server_port()  # restarted on the same port
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        server = shutil.which("redis-server") or "/usr/bin/redis-server"
        args = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            [*args, "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        client = redis.Redis.from_url(self.url, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "private redis did not start"
                time.sleep(0.1)
        client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[_PrivateRedis]:
    server = _PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def test_redis_flushed_or_restarted_empty_is_reconciled_to_exactly_the_topics_blocks(
    bootstrap_servers: str, private_redis: _PrivateRedis, topic_factory: Callable[..., str]
):
    """A FLUSHALL (scripts flushed too: the next call gets NOSCRIPT) and then a restart of Redis: each time the
    running view notices (its next batch starts after the lost watermark, or the run_id changed) and reconciles:
    Redis holds exactly the topic's latest blocks again, and a key the topic does not have is deleted."""
    prefix = f"t{uuid.uuid4().hex[:8]}"
    topic = topic_factory("blocks", partitions=2, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers)
    for i in range(300):
        value = None if i % 9 == 0 else _block(f"c{i % 60}", now_ms + 600_000 + i)
        producer.send(topic, key=f"sms:c{i % 60}".encode(), value=value)
    producer.flush()
    check = redis.Redis.from_url(private_redis.url)
    metrics = Metrics()

    async def follow() -> None:
        client = aioredis.Redis.from_url(private_redis.url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap_servers, prefix, metrics)],
            bootstrap=bootstrap_servers,
            group_id=prefix,
            batch=50,
        )
        task = asyncio.create_task(views.run())

        async def until_exact(step: str) -> None:
            deadline = time.monotonic() + 60
            while True:
                latest = await read_latest(bootstrap_servers, topic, [0, 1])
                lags = await views.lags()
                held = await asyncio.to_thread(_held_blocks, check, prefix)
                if len(lags) == 2 and not any(lags.values()) and held == _expected_blocks(prefix, latest):
                    return
                assert time.monotonic() < deadline, f"{step}: Redis not reconciled ({len(held)} blocks held)"
                await asyncio.sleep(0.2)

        try:
            await until_exact("start")
            await asyncio.to_thread(check.flushall)
            await asyncio.to_thread(check.script_flush)
            await asyncio.to_thread(check.set, block_key(prefix, b"sms:nobody"), b"stale")
            producer.send(topic, key=b"sms:c1", value=_block("c1", now_ms + 900_000))
            producer.flush()
            await until_exact("after FLUSHALL")

            await asyncio.to_thread(private_redis.stop)
            await asyncio.to_thread(private_redis.start)
            await asyncio.to_thread(check.set, block_key(prefix, b"sms:nobody"), b"stale")
            producer.send(topic, key=b"sms:c2", value=None)
            producer.flush()
            await until_exact("after a restart")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.aclose()

    try:
        asyncio.run(follow())
    finally:
        producer.close()
        check.close()
    assert metrics.registry.get_sample_value("fatigue_redis_reconciles_total") == 3, "at start, after each loss"


def test_readers_return_exactly_the_committed_records_and_end_after_a_transaction_marker(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    kafka_admin: KafkaAdminClient,
    tmp_path: Path,
):
    """Transactions on a fresh topic: committed ones, aborted ones, partition 0 ending with a commit marker and
    partition 1 with an abort marker, and one transaction still open on partition 0 while the readers run (they
    stop at its last stable offset). read_latest, BlockFollower.bootstrap, the end-to-end harness's read_topic and
    the Redis view see exactly the committed records, and all of them end."""
    prefix = redis_key_prefix.rstrip(":")
    deployment = GuardDeployment(
        bootstrap=bootstrap_servers, redis_url=redis_url, workdir=tmp_path, partitions=2, name=f"{prefix}-txn"
    )
    topic = deployment.topics["decisions"]
    kafka_admin.create_topics(
        {topic: {"num_partitions": 2, "replication_factor": -1, "configs": {"cleanup.policy": "compact"}}},
        timeout_ms=30000,
    )
    kafka_admin.wait_for_topics([topic], timeout_ms=30000)
    until = int(time.time() * 1000) + 600_000
    transactions: list[tuple[bool, list[tuple[int, bytes, bytes | None]]]] = [
        (
            True,
            [(0, b"sms:a", _block("a", until)), (0, b"sms:b", _block("b", until)), (1, b"sms:x", _block("x", until))],
        ),
        (False, [(0, b"sms:a", _allow("a")), (0, b"sms:c", _block("c", until)), (1, b"sms:x", None)]),
        (True, [(0, b"sms:b", None), (0, b"sms:d", _block("d", until)), (1, b"sms:y", _block("y", until))]),
        (False, [(1, b"sms:z", _block("z", until))]),
    ]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=f"{prefix}-txn", enable_idempotence=True, acks="all"
    )
    producer.init_transactions()
    committed: list[tuple[bytes, bytes | None]] = []
    for commit, sends in transactions:
        producer.begin_transaction()
        for partition, key, value in sends:
            producer.send(topic, key=key, value=value, partition=partition)
        producer.flush()
        if commit:
            producer.commit_transaction()
            committed += [(key, value) for _, key, value in sends]
        else:
            producer.abort_transaction()
    open_one = KafkaProducer(
        bootstrap_servers=bootstrap_servers, transactional_id=f"{prefix}-open", enable_idempotence=True, acks="all"
    )
    open_one.init_transactions()
    open_one.begin_transaction()
    open_one.send(topic, key=b"sms:open", value=_block("open", until), partition=0)
    open_one.flush()  # written, not committed: the last stable offset stays before it
    expected = {b"sms:a": _block("a", until), b"sms:b": None, b"sms:x": _block("x", until)}
    expected |= {b"sms:d": _block("d", until), b"sms:y": _block("y", until)}
    try:
        wait_for_last_stable_offsets(bootstrap_servers, topic, {0: 9, 1: 8})
        snapshots = asyncio.run(read_partitions(bootstrap_servers, topic, [0, 1]))
        # 6 records and 3 markers on partition 0; 4 records and 4 markers on partition 1 (the open transaction's
        # record lies after the last stable offset)
        assert {p: s.end for p, s in snapshots.items()} == {0: 9, 1: 8}
        assert asyncio.run(read_latest(bootstrap_servers, topic, [0, 1])) == expected

        follower = BlockFollower(bootstrap_servers, topic)
        try:
            assert follower.bootstrap(timeout_s=30) == 4
            assert set(follower.active()) == {"sms:a", "sms:d", "sms:x", "sms:y"}
            assert follower.blocked("a", "sms") is not None and follower.blocked("c", "sms") is None
        finally:
            follower.close()

        read = [(key, value) for key, value, _ in deployment.read_topic("decisions")]
        assert sorted(read, key=repr) == sorted(committed, key=repr)

        _follow_until_done(redis_url, topic, bootstrap_servers, prefix, f"{prefix}.view", partitions=2)
        assert _held_blocks(redis_client, prefix) == _expected_blocks(prefix, expected)
        # the watermarks and the group's offsets passed the final markers
        assert redis_client.get(watermark_key(prefix, topic, 0)) == b"8"
        group = kafka_admin.list_group_offsets({f"{prefix}.view": None})[f"{prefix}.view"]
        assert {tp.partition: meta.offset for tp, meta in group.items()} == {0: 9, 1: 8}
        assert redis_client.get(watermark_key(prefix, topic, 1)) == b"7"
    finally:
        open_one.abort_transaction()
        open_one.close()
        producer.close()
        kafka_admin.delete_topics([topic], timeout_ms=30000, raise_errors=False)


def test_a_committed_transaction_is_written_through_and_a_gap_is_left_to_the_consumer(
    bootstrap_servers: str,
    redis_url: str,
    redis_client: redis.Redis,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
):
    """What the pipeline commits reaches Redis at once (write-through), up to the transaction's commit marker, and
    the view's consumer does not write it again; records after an aborted transaction leave a gap: they are written
    through, but the watermark does not pass the gap (Redis would claim offsets it lacks), and the consumer reads
    the partition from there."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    now_ms = int(time.time() * 1000)
    metrics = Metrics()

    async def scenario() -> None:
        client = aioredis.Redis.from_url(redis_url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap_servers, prefix, metrics, partitions=1)],
            bootstrap=bootstrap_servers,
            group_id=f"{prefix}.redis-view",
            batch=50,
        )
        ours = PartitionProducer(bootstrap_servers, f"{prefix}-txn", transaction_timeout_ms=60_000)
        other = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=f"{prefix}-aborted")
        await ours.start()
        await other.start()

        async def commit(records: list[tuple[bytes, bytes | None]]) -> int:
            batch: list[CollectedRecord] = [(key, value, None) for key, value in records]
            landed = (await ours.write({(topic, 0): batch}, None, "unused"))[(topic, 0)]
            await views.write_through([(topic, 0, list(zip(landed.offsets(), batch, strict=True)), landed.end)])
            return landed.end

        try:
            end = await commit([(b"sms:a", _block("a", now_ms + 600_000)), (b"sms:b", _block("b", now_ms + 600_000))])
            assert redis_client.get(block_key(prefix, b"sms:a")) == _block("a", now_ms + 600_000)
            assert int(redis_client.get(watermark_key(prefix, topic, 0)) or -1) == end - 1, "up to the marker"
            assert _writes(metrics) == {"set": 2, "del": 0}

            await other.begin_transaction()
            await other.send_and_wait(topic, key=b"sms:b", value=_allow("b"), partition=0)
            await other.abort_transaction()
            end = await commit([(b"sms:a", _allow("a"))])
            # committed records are written through after a gap too (each is newer than what its customer holds),
            # but the batch is not complete: the watermark stays before the gap, and the consumer covers it
            assert redis_client.get(block_key(prefix, b"sms:a")) is None
            assert int(redis_client.get(watermark_key(prefix, topic, 0)) or -1) < end - 1

            consuming = asyncio.create_task(views.run())
            try:
                deadline = time.monotonic() + 60
                while (lags := await views.lags()) != {(topic, 0): 0}:
                    assert time.monotonic() < deadline, f"the view did not catch up: {lags}"
                    await asyncio.sleep(0.2)
            finally:
                consuming.cancel()
                await asyncio.gather(consuming, return_exceptions=True)
        finally:
            await ours.stop()
            await other.stop()
            await client.aclose()

    asyncio.run(scenario())
    assert _held_blocks(redis_client, prefix) == {block_key(prefix, b"sms:b").encode(): _block("b", now_ms + 600_000)}
    # every record was written once, by write-through
    # (a first consumer run reconciles from the topic, which writes nothing Redis already holds at its offset)
    assert _writes(metrics) == {"set": 2, "del": 1}


def test_a_stopped_view_ends_its_run_and_does_not_restart_on_an_error_of_its_stop(
    bootstrap_servers: str,
    redis_url: str,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
):
    """The worker's stop tells the view to stop before cancelling it: seen in a rebalance during a stop, aiokafka
    raised ``AssertionError: Partition is not assigned`` instead of the cancellation, the loop restarted with a new
    consumer, and the worker never exited. An error while stopping ends the run; the consumer leaves the group."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    group = f"{prefix}.redis-view"
    original = ViewConsumer._write_and_commit

    async def failing_once_stopped(self: ViewConsumer, consumer: object, batches: object) -> None:
        if self._stopping:
            raise AssertionError("Partition is not assigned")  # what aiokafka raised during the stop
        await original(self, consumer, batches)  # type: ignore[arg-type]

    monkeypatch.setattr(ViewConsumer, "_write_and_commit", failing_once_stopped)

    async def scenario() -> tuple[bool, float]:
        client = aioredis.Redis.from_url(redis_url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap_servers, prefix, Metrics(), partitions=1)],
            bootstrap=bootstrap_servers,
            group_id=group,
            batch=50,
        )
        task = asyncio.create_task(views.run())
        deadline = time.monotonic() + 30
        while not views.owned_partitions(topic):
            assert time.monotonic() < deadline, "the view never got its partition"
            await asyncio.sleep(0.1)
        views.stop()
        started = time.monotonic()
        done, _ = await asyncio.wait({task}, timeout=20)  # no cancellation: the stop alone must end it
        await client.aclose()
        return task in done, time.monotonic() - started

    ended, took = asyncio.run(scenario())
    assert ended, "the view's run did not end after stop()"
    assert took < 15
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        members = admin.describe_groups([group])[group]["members"]
    finally:
        admin.close()
    assert members == [], f"the stopped view is still a member of {group}: {members}"


def test_a_cancellation_no_one_asked_for_restarts_the_view_instead_of_ending_it(
    bootstrap_servers: str,
    redis_url: str,
    redis_key_prefix: str,
    topic_factory: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
):
    """During a broker outage the view's task ended on a CancelledError that came out of a client (nobody had
    cancelled the task), and the worker ran on without its Redis view. Such a cancellation now restarts the
    consumer; only the stop (or a real cancellation of the task) ends the run."""
    prefix = redis_key_prefix.rstrip(":")
    topic = topic_factory("blocks", partitions=1, config={"cleanup.policy": "compact"})
    original = ViewConsumer._write_and_commit
    raised: list[float] = []

    async def cancelled_once(self: ViewConsumer, consumer: object, batches: object) -> None:
        if not raised:
            raised.append(time.monotonic())
            raise asyncio.CancelledError()  # what aiokafka let out during the outage
        await original(self, consumer, batches)  # type: ignore[arg-type]

    monkeypatch.setattr(ViewConsumer, "_write_and_commit", cancelled_once)

    async def scenario() -> tuple[bool, bool]:
        client = aioredis.Redis.from_url(redis_url)
        views = ViewConsumer(
            [_view(client, topic, bootstrap_servers, prefix, Metrics(), partitions=1)],
            bootstrap=bootstrap_servers,
            group_id=f"{prefix}.redis-view",
            batch=50,
        )
        task = asyncio.create_task(views.run())
        deadline = time.monotonic() + 30
        while not (raised and views.owned_partitions(topic) and time.monotonic() - raised[0] > 1.5):
            assert time.monotonic() < deadline, "the view did not come back after the stray cancellation"
            assert not task.done(), "the view's run ended on a cancellation nobody asked for"
            await asyncio.sleep(0.1)
        alive = not task.done()
        views.stop()
        done, _ = await asyncio.wait({task}, timeout=20)
        await client.aclose()
        return alive, task in done

    assert asyncio.run(scenario()) == (True, True)
