"""The local stack as the end-to-end benchmark uses it: isolated runs, processes and what the broker reports.

Every run gets its own name: the prefix of its topics, its consumer group (the worker's ``--app-id``) and its Redis
key prefix, so runs never read each other's data, and :meth:`StackRun.cleanup` removes all of it afterwards.
Progress is read from the broker (committed offsets and end offsets), never from the worker, whose single core
is what is being measured.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

REPO = Path(__file__).resolve().parent.parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def broker_answers(bootstrap: str) -> bool:
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5_000)
    except KafkaError:
        return False
    admin.close()
    return True


def create_topic(bootstrap: str, name: str, partitions: int, config: dict[str, str] | None = None) -> None:
    """Create a topic (the broker's auto-creation is off); an existing one is left as it is."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config or {})])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


@dataclass
class StackRun:
    """One isolated guard deployment: its topics, consumer group, Redis prefix, data directory and processes."""

    bootstrap: str
    redis_url: str
    name: str
    workdir: Path
    partitions: int = 6
    policy: str = str(REPO / "config" / "policies" / "default.toml")
    events_topic: str = ""  # default: f"{name}.events"; another run's input can be shared (the references)
    worker_env: dict[str, str] = field(default_factory=dict)  # extra environment of the processes (experiments)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.events_topic = self.events_topic or f"{self.name}.events"
        self.workdir.mkdir(parents=True, exist_ok=True)

    @property
    def topics(self) -> dict[str, str]:
        return {
            "events": self.events_topic,
            "decisions": f"{self.name}.blocks",
            "dlq": f"{self.name}.dlq",
            "violations": f"{self.name}.violations",
            "prefs": f"{self.name}.prefs",
        }

    def worker_args(self, web_port: int, extra: Iterable[str] = ()) -> list[str]:
        """``fatigue worker`` as an operator runs it, pointed at this run's topics, group and Redis prefix."""
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
            str(self.workdir / "data"),
            "--web-port",
            str(web_port),
            "--redis-prefix",
            self.name,
            # the worker's default; with "warning" faust's Worker (the worker's host) sets the root logger to DEBUG
            # for its terminal spinner, and every debug call in faust and aiokafka then builds a LogRecord
            "--log-level",
            "info",
            *extra,
        ]

    def start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - lives as long as the process
        env = {**os.environ, **self.worker_env}
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.processes.append(process)
        return process

    def log_tail(self, log_name: str, lines: int = 40) -> str:
        path = self.workdir / log_name
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        if process in self.processes:
            self.processes.remove(process)

    def cleanup(self, *, topics: bool = True) -> None:
        """Stop our processes, delete this run's Redis keys and, with ``topics``, every topic whose name starts
        with the run's name (which includes the runs named after it: give ``topics=False`` to those)."""
        for process in list(self.processes):
            self.stop(process)
        if topics:
            admin = KafkaAdminClient(bootstrap_servers=self.bootstrap)
            try:
                for topic in [name for name in admin.list_topics() if name.startswith(self.name)]:
                    with contextlib.suppress(UnknownTopicOrPartitionError):  # already being deleted
                        admin.delete_topics([topic])
            except KafkaError as error:
                print(f"  (cleanup of {self.name} topics failed: {error})", file=sys.stderr)
            finally:
                admin.close()
        client = redis.Redis.from_url(self.redis_url)
        try:
            keys = list(client.scan_iter(match=f"{self.name}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.delete(*keys[start : start + 1000])
        finally:
            client.close()


class Broker:
    """Committed and end offsets, read from the broker with one long-lived admin client and consumer.

    The worker writes its outputs in transactions: an output topic's end offset counts transaction markers and
    aborted records too, so it is a position, never a record count. Counts come from :meth:`read_all`, which reads
    committed records only (as the Redis view and every downstream reader do).
    """

    def __init__(self, bootstrap: str, partitions: int) -> None:
        self.partitions = partitions
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        self.consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)

    def close(self) -> None:
        self.consumer.close()
        self.admin.close()

    def _tps(self, topic: str) -> list[TopicPartition]:
        return [TopicPartition(topic, partition) for partition in range(self.partitions)]

    def end(self, topic: str) -> int:
        """The sum of ``topic``'s end offsets (high watermarks): a record count only for a topic written without
        transactions (the input); on the worker's outputs it includes transaction markers and aborted records."""
        return sum(self.consumer.end_offsets(self._tps(topic)).values())

    def ends(self, topic: str) -> dict[int, int]:
        """Per partition of ``topic``, its end offset."""
        return {tp.partition: end for tp, end in self.consumer.end_offsets(self._tps(topic)).items()}

    def committed(self, group: str, topics: Iterable[str]) -> dict[str, int]:
        """Per topic, the sum of ``group``'s committed offsets (0 while the group has committed nothing)."""
        wanted = set(topics)
        totals = dict.fromkeys(wanted, 0)
        try:
            offsets: dict[Any, Any] = dict(self.admin.list_group_offsets({group: None}).get(group, {}))
        except KafkaError:
            return totals  # the group (or, on a fresh broker, the offsets topic) does not exist yet
        for tp, meta in offsets.items():
            if tp.topic in wanted and meta.offset >= 0:
                totals[tp.topic] += meta.offset
        return totals

    def group_state(self, group: str) -> str:
        """The consumer group's state: Stable once its members have their assignment; Dead when unknown."""
        try:
            described: dict[str, Any] = self.admin.describe_groups([group])
        except KafkaError:
            return "Unknown"
        return str(described.get(group, {}).get("group_state", "Unknown"))

    def read_all(self, topic: str) -> list[tuple[bytes | None, bytes | None]]:
        """Every committed (key, value) of ``topic`` from the beginning to its last stable offset (aborted records
        and transaction markers skipped, as ``read_committed`` consumers see the topic)."""
        consumer = KafkaConsumer(
            bootstrap_servers=self.admin.config["bootstrap_servers"],
            enable_auto_commit=False,
            isolation_level="read_committed",
        )
        try:
            tps = self._tps(topic)
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            records: list[tuple[bytes | None, bytes | None]] = []
            while any(consumer.position(tp) < ends[tp] for tp in tps):
                for batch in consumer.poll(timeout_ms=1000, max_records=50_000).values():
                    records.extend((record.key, record.value) for record in batch)
            return records
        finally:
            consumer.close()


# ---------------------------------------------------------------------------------------------- process facts


def peak_rss_bytes(pid: int) -> int | None:
    """The process's peak resident set (``VmHWM``), or None once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime: fields 14 and 15 of stat(5)
    return None


def scrape(port: int, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        return str(response.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> float | None:
    """The sum of every sample of ``name`` whose labels include ``labels`` (None when there is none)."""
    total: float | None = None
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name or not all(item in series for item in wanted):
            continue
        total = (total or 0.0) + float(value)
    return total


# ---------------------------------------------------------------------------------------------- Redis watermarks


def watch_watermarks(redis_url: str, keys: list[str], out_path: str, stop: Any, interval_s: float) -> None:
    """Poll the Redis view's per-partition watermarks (``{prefix}:view-offset:{topic}:{partition}``) until ``stop``
    (a ``multiprocessing.Event``) is set; write every change as ``[time, key index, watermark]`` to ``out_path``.

    The view applies a partition's records and raises its watermark in one Lua script, so a decision at offset
    ``o`` of partition ``p`` is in Redis (its key set, or deleted for an allow / an expired block) from the first
    moment the watermark of ``p`` reads ``>= o``. The time noted is when the reply arrived (at most
    ``interval_s`` plus a round trip late). Runs as a child process, so that no other Python code of the bench
    delays a poll.
    """
    import orjson

    client = redis.Redis.from_url(redis_url)
    last: list[Any] = [None] * len(keys)
    changes: list[tuple[float, int, int]] = []
    try:
        while True:
            done = stop.is_set()
            values = client.mget(keys)
            now = time.time()
            for index, value in enumerate(values):
                if value is not None and value != last[index]:
                    last[index] = value
                    changes.append((now, index, int(value)))
            if done:
                break
            time.sleep(interval_s)
    finally:
        client.close()
    Path(out_path).write_bytes(orjson.dumps(changes))
