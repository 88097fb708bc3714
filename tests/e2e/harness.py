"""Real workers as subprocesses on the real stack, plus the readers an end-to-end test needs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError

from streams import redis_keys
from streams.settings import settings_from
from streams.worker import ensure_topics

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_server_port() -> int:
    """A free port below the kernel's ephemeral range, for a server a test stops and starts again: while it is
    down, its clients keep reconnecting, and an ephemeral port (what ``free_port`` returns) can be taken as the local
    end of one of those connections, so the server could not listen there again."""
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20_000, min(ephemeral_low, 65_536))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


@dataclass
class GuardDeployment:
    """One isolated guard: its own topics, consumer group, Redis prefix and worker processes."""

    bootstrap: str
    redis_url: str
    workdir: Path
    partitions: int = 6
    policy: str = str(REPO / "config" / "policies" / "default.toml")
    name: str = field(default_factory=lambda: f"e2e-{uuid.uuid4().hex[:10]}")
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    transactional_input: bool = False  # set by produce(transaction_size=...): the input has transaction markers
    input_deleted: bool = False  # set by delete_input_before(): unread input was deleted, holes are real

    @property
    def topics(self) -> dict[str, str]:
        return {
            "events": f"{self.name}.events",
            "decisions": f"{self.name}.blocks",
            "dlq": f"{self.name}.dlq",
            "violations": f"{self.name}.violations",
            "prefs": f"{self.name}.prefs",
        }

    @property
    def redis_prefix(self) -> str:
        return self.name

    def data_dir(self, worker: str) -> Path:
        """The worker's RocksDB directory: the same worker name means the same local state across restarts."""
        return self.workdir / worker

    def worker_args(self, worker: str, extra: Iterable[str] = ()) -> list[str]:
        topics = self.topics
        return [
            sys.executable,
            "-m",
            "fatigue.cli",
            "worker",
            "--bootstrap",
            self.bootstrap,
            "--redis-url",
            self.redis_url,
            "--policy-path",
            self.policy,
            "--app-id",
            self.name,
            "--events-topic",
            topics["events"],
            "--decisions-topic",
            topics["decisions"],
            "--dlq-topic",
            topics["dlq"],
            "--violations-topic",
            topics["violations"],
            "--prefs-topic",
            topics["prefs"],
            "--partitions",
            str(self.partitions),
            "--data-dir",
            str(self.data_dir(worker)),
            "--web-port",
            str(free_port()),
            "--redis-prefix",
            self.redis_prefix,
            "--log-level",
            "info",
            *extra,
        ]

    def create_topics(self) -> None:
        """What an operator does before senders start: the worker would also create them at start."""
        ensure_topics(settings_from(self.worker_args("setup")[4:], environ={}))

    def start_worker(
        self, worker: str = "w1", *extra_args: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a worker process (``env``: added to the environment); every run of the same worker appends to
        ``{worker}.log``."""
        log = open(self.workdir / f"{worker}.log", "ab")  # noqa: SIM115 - lives as long as the process
        process = subprocess.Popen(
            self.worker_args(worker, extra_args),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.workers[worker] = process
        return process

    def kill_worker(self, worker: str, sig: int = signal.SIGKILL) -> None:
        process = self.workers.pop(worker)
        process.send_signal(sig)
        process.wait(timeout=60)

    def stop_all(self) -> None:
        for worker in list(self.workers):
            process = self.workers[worker]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)
            del self.workers[worker]

    def stop_worker(self, worker: str, timeout_s: float = 60.0) -> int:
        """Graceful stop (SIGTERM, as an orchestrator does); the exit code."""
        process = self.workers.pop(worker)
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            # the worker logs its tasks' stacks when a stop runs long (streams.shutdown_watch): into the report
            tail = self.log_tail(worker, 200)
            print(f"{worker} did not stop within {timeout_s:.0f}s after SIGTERM; its log ends:\n{tail}")
            process.kill()
            process.wait(timeout=10)
            raise

    def log_size(self, worker: str) -> int:
        """Where the next run of ``worker`` will start writing in its log (see :meth:`log_since`)."""
        path = self.workdir / f"{worker}.log"
        return path.stat().st_size if path.exists() else 0

    def log_since(self, worker: str, offset: int) -> str:
        with open(self.workdir / f"{worker}.log", "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def group_progress(self, topic_key: str = "events") -> tuple[int, int]:
        """(offsets the group has committed, end offsets) of one of our topics, summed over partitions."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed")
        try:
            return self._progress(admin, consumer, topic_key)
        finally:
            consumer.close()
            admin.close()

    def wait_until_committed(self, count: int, worker: str = "w1", timeout_s: float = 120.0) -> tuple[int, int]:
        """Until the group has committed at least ``count`` input offsets; (committed, end offsets) then."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed")
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                process = self.workers[worker]
                if process.poll() is not None:
                    raise AssertionError(f"worker {worker} exited {process.returncode}:\n{self.log_tail(worker)}")
                done, total = self._progress(admin, consumer, "events")
                if done >= count:
                    return done, total
                if time.monotonic() > deadline:
                    raise AssertionError(f"only {done} input offsets committed in {timeout_s}s:\n{self.log_tail()}")
                time.sleep(0.1)
        finally:
            consumer.close()
            admin.close()

    def committed_offsets(self, topic_key: str = "events") -> dict[int, int]:
        """partition -> the group's committed offset (next to read; 0 when none) on one of our topics."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            committed = self._group_offsets(admin)
        finally:
            admin.close()
        topic = self.topics[topic_key]
        offsets = {partition: 0 for partition in range(self.partitions)}
        for tp, meta in committed.items():
            if tp.topic == topic and meta.offset >= 0:
                offsets[tp.partition] = meta.offset
        return offsets

    def _progress(self, admin: KafkaAdminClient, consumer: KafkaConsumer, topic_key: str) -> tuple[int, int]:
        tps = [TopicPartition(self.topics[topic_key], p) for p in range(self.partitions)]
        ends = consumer.end_offsets(tps)
        committed = self._group_offsets(admin)
        done = sum(committed[tp].offset for tp in tps if tp in committed and committed[tp].offset >= 0)
        return done, sum(ends.values())

    def end_offsets(self, topic_key: str) -> int:
        """The number of records ever written to one of our topics (sum of end offsets)."""
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed")
        try:
            tps = [TopicPartition(self.topics[topic_key], p) for p in range(self.partitions)]
            return sum(consumer.end_offsets(tps).values())
        finally:
            consumer.close()

    def end_offsets_by_partition(self, topic_key: str) -> dict[int, int]:
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap, isolation_level="read_committed")
        try:
            tps = [TopicPartition(self.topics[topic_key], p) for p in range(self.partitions)]
            return {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
        finally:
            consumer.close()

    def _group_offsets(self, admin: KafkaAdminClient) -> dict[Any, Any]:
        """The committed offsets of the guard's group (input) and of its Redis view's group (decisions and
        preferences topics); none yet while a group (or, on a fresh broker, the offsets topic behind every group)
        does not exist."""
        offsets: dict[Any, Any] = {}
        for group in (self.name, f"{self.name}.redis-view"):
            with contextlib.suppress(KafkaError):
                offsets.update(admin.list_group_offsets({group: None}).get(group, {}))
        return offsets

    def log_problems(self, limit: int = 60) -> str:
        """The warnings, errors and tracebacks of every worker log (input-gate seeks included), for failure
        messages."""
        marks = ("WARNING", "ERROR", "CRITICAL", "Traceback", "Error", "seeking back", "generation")
        noise = ("producer buffer full", "Timer commit is overlapping")
        found: list[str] = []
        for path in sorted(self.workdir.glob("*.log")):
            found += [
                f"{path.stem}: {line[:300]}"
                for line in path.read_text(errors="replace").splitlines()
                if any(mark in line for mark in marks) and not any(skip in line for skip in noise)
            ]
        shown = found[:limit]
        more = f"\n  ... {len(found) - limit} more" if len(found) > limit else ""
        return "worker log problems:\n  " + ("\n  ".join(shown) if shown else "(none)") + more

    def log_tail(self, worker: str = "w1", lines: int = 60) -> str:
        path = self.workdir / f"{worker}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def produce(self, messages: Iterable[tuple[bytes | None, bytes]], transaction_size: int | None = None) -> int:
        """Send the messages in order; with ``transaction_size``, in transactions of that many messages (as an
        exactly-once pipeline would), each of which leaves a commit marker at one offset per partition it wrote."""
        transactional: dict[str, Any] = {}
        if transaction_size is not None:
            self.transactional_input = True
            transactional = {"transactional_id": f"{self.name}-sender", "enable_idempotence": True}
        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            linger_ms=20,
            batch_size=256 * 1024,
            max_in_flight_requests_per_connection=1,  # keep per-partition order exactly as generated
            acks="all",
            max_request_size=4 * 1024 * 1024,
            **transactional,
        )
        if transaction_size is not None:
            producer.init_transactions()
            producer.begin_transaction()
        count = 0
        for key, value in messages:
            producer.send(self.topics["events"], key=key, value=value)
            count += 1
            if transaction_size is not None and count % transaction_size == 0:
                producer.commit_transaction()
                producer.begin_transaction()
        if transaction_size is not None:
            producer.commit_transaction()
        producer.flush()
        producer.close()
        return count

    def wait_until_settled(self, timeout_s: float = 240.0, stable_s: float = 12.0) -> None:
        """Until the group has consumed every topic to its end and no new output appeared for ``stable_s``."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
        try:
            deadline = time.monotonic() + timeout_s
            last_ends: dict[Any, int] | None = None
            behind: dict[str, tuple[int | None, int]] = {}
            stable_since = time.monotonic()
            while time.monotonic() < deadline:
                for worker, process in self.workers.items():
                    if process.poll() is not None:
                        raise AssertionError(f"worker {worker} exited {process.returncode}:\n{self.log_tail(worker)}")
                tps = [
                    TopicPartition(topic, partition)
                    for key, topic in self.topics.items()
                    if key in ("events", "decisions", "prefs")
                    for partition in range(self.partitions)
                ]
                try:
                    ends = consumer.end_offsets(tps)
                    committed = self._group_offsets(admin)
                except KafkaError as error:
                    # the test's own client, not the guard: after a broker's restart kafka-python's consumer once
                    # timed out asking for end offsets (30 s) with every replica in sync; ask again with new clients
                    print(f"  settle check: {error!r}; asking again with new clients")
                    consumer.close()
                    admin.close()
                    admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
                    consumer = KafkaConsumer(bootstrap_servers=self.bootstrap)
                    stable_since = time.monotonic()
                    continue
                behind = {
                    f"{tp.topic}[{tp.partition}]": (committed[tp].offset if tp in committed else None, ends[tp])
                    for tp in tps
                    if ends[tp] > 0
                    and (tp not in committed or committed[tp].offset < ends[tp] - self._marker_at_end(tp))
                }
                if ends != last_ends or behind:
                    last_ends = ends
                    stable_since = time.monotonic()
                elif time.monotonic() - stable_since >= stable_s:
                    self._report_pipeline()
                    return
                time.sleep(1.0)
            raise AssertionError(
                f"guard did not settle in {timeout_s}s; (committed, end) of the partitions behind: {behind}\n"
                f"{self.log_tail()}"
            )
        finally:
            consumer.close()
            admin.close()

    def delete_input_before(self, offsets: dict[int, int]) -> None:
        """Delete the input records below ``offsets[partition]`` (what retention does to a lagging consumer)."""
        from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
        from aiokafka.structs import TopicPartition as AioTopicPartition

        async def delete() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                await admin.delete_records(
                    {
                        AioTopicPartition(self.topics["events"], partition): RecordsToDelete(before_offset=offset)
                        for partition, offset in offsets.items()
                    },
                    timeout_ms=30_000,
                )
            finally:
                await admin.close()

        self.input_deleted = True
        asyncio.run(delete())

    def committed_input(self) -> dict[int, int]:
        """The guard group's committed offset per input partition (0 where none)."""
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            offsets = self._group_offsets(admin)
        finally:
            admin.close()
        return {
            p: offsets[tp].offset if tp in offsets else 0
            for p in range(self.partitions)
            for tp in [TopicPartition(self.topics["events"], p)]
        }

    def _marker_at_end(self, tp: TopicPartition) -> int:
        # a transactional sender's last commit marker is never delivered, so never acknowledged nor committed
        return 1 if self.transactional_input and tp.topic == self.topics["events"] else 0

    def _report_pipeline(self) -> None:
        """Print what the workers' logs say about fencing and failed transactions, and fail on a hole taken as
        input deleted by retention where none was deleted."""
        logs = "".join(path.read_text(errors="replace") for path in sorted(self.workdir.glob("*.log")))
        fenced = logs.count(": fenced (")
        failed = logs.count(": transaction failed (")
        skipped = logs.count("no longer exist (deleted by retention")
        repaired = logs.count("its commit marker was never written")
        print(
            f"  pipeline: {fenced} transactions fenced, {failed} failed, {skipped} input holes reported, "
            f"{repaired} lost commit markers written"
        )
        assert skipped == 0 or self.input_deleted, "the pipeline took input as deleted in a topic that has it all"

    def read_topic(self, topic_key: str) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
        """Every record of one of our topics, from the beginning."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        try:
            tps = [TopicPartition(self.topics[topic_key], p) for p in range(self.partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            records: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                for batch in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                    for record in batch:
                        records.append((record.key, record.value, dict(record.headers or [])))
            return records
        finally:
            consumer.close()

    def input_positions(self) -> dict[str, list[tuple[int, int]]]:
        """event_id -> every (partition, offset) of the input topic holding a message with that id."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, isolation_level="read_committed"
        )
        try:
            tps = [TopicPartition(self.topics["events"], p) for p in range(self.partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            positions: dict[str, list[tuple[int, int]]] = {}
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                for batch in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                    for record in batch:
                        try:
                            event_id = orjson.loads(record.value)["event_id"]
                        except (orjson.JSONDecodeError, TypeError, KeyError):
                            continue
                        if isinstance(event_id, str):
                            positions.setdefault(event_id, []).append((record.partition, record.offset))
            return positions
        finally:
            consumer.close()

    def decisions_on_topic(self) -> Tally:
        """The decisions published (tombstones left out), counted."""
        tally = Tally()
        for _, value, _ in self.read_topic("decisions"):
            if value is not None:
                tally.add(orjson.loads(value))
        return tally

    def redis_blocks(self) -> dict[str, dict[str, Any]]:
        stored = read_redis_keys(self.redis_url, f"{self.redis_prefix}:{{c:*}}:block:*")
        return {key: orjson.loads(value) for key, value in stored.items()}

    def cleanup(self) -> None:
        self.stop_all()
        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
        try:
            ours = [topic for topic in admin.list_topics() if topic.startswith(self.name)]
            if ours:
                admin.delete_topics(ours)
        finally:
            admin.close()
        client = redis_keys.sync_client(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.redis_prefix}:*", count=1000))
            pipe = client.pipeline(transaction=False)
            for key in keys:  # one by one: on a Redis Cluster the keys lie in many slots
                pipe.delete(key)
            pipe.execute()
        finally:
            client.close()


def canonical(decision: dict[str, Any]) -> bytes:
    return orjson.dumps(decision, option=orjson.OPT_SORT_KEYS)


class Tally(Counter[bytes]):
    """Output records counted by a 16-byte digest of their canonical JSON, so that a stream with millions of
    decisions (a hot customer's ~1.3 KB each) fits in memory; the JSON itself is kept for the first ``keep``
    distinct records, which is every record of all but the hot-customer streams, to show in failure messages."""

    def __init__(self, keep: int = 200_000) -> None:
        super().__init__()
        self.keep = keep
        self.texts: dict[bytes, bytes] = {}

    def add(self, record: dict[str, Any]) -> bytes:
        encoded = canonical(record)
        digest = hashlib.blake2b(encoded, digest_size=16).digest()
        self[digest] += 1
        if len(self.texts) < self.keep:
            self.texts.setdefault(digest, encoded)
        return digest

    def text(self, digest: bytes) -> bytes:
        """The canonical JSON of a counted record (its digest in hex beyond the kept ones)."""
        return self.texts.get(digest, b"<record " + digest.hex().encode() + b">")

    def examples(self, digests: Iterable[bytes], count: int = 2) -> list[bytes]:
        return [self.text(digest) for digest in sorted(digests)[:count]]


def read_redis_keys(url: str, match: str) -> dict[str, bytes]:
    """Every key matching ``match`` with its value, on a single Redis or across a Redis Cluster's masters."""
    client = redis_keys.sync_client(url)
    try:
        names = sorted({key.decode() for key in client.scan_iter(match=match, count=1000)})
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
        values = pipe.execute() if names else []
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}
    finally:
        client.close()
