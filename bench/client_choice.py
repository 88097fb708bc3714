"""Which Kafka client for the batched pipeline: aiokafka 0.14 or confluent-kafka 2.16, measured on the local stack.

The pipeline consumes a batch, runs the engine and, per input partition, writes the partition's outputs and its
consumed offset in one Kafka transaction. This script measures what the two candidate clients cost for that loop
with no engine work at all, in the same run, on the same input:

(a) consume-only: a fresh consumer group (``read_committed``) reads the whole input -- aiokafka
    ``getmany(max_records=B)`` vs confluent-kafka ``consume(num_messages=B)``; every record's key and value are
    touched, nothing is decoded;
(b) the transactional loop: consume a batch, then produce one output record per input record (same key and
    value; output topic A for even input offsets, B for odd ones, so every transaction spans two topics like the
    decisions + changelog of the pipeline; partition = murmur2 of the key, ``fatigue.clock.partition_for_key``)
    and commit the consumed offsets in the transaction:

    * aiokafka: one transactional producer per input partition (``transactional_id`` = group + topic +
      partition: aiokafka fences only by transactional id), one transaction per partition of the batch, the
      partitions' transactions committed concurrently (``asyncio.gather``); outputs built with
      ``create_batch()`` + ``send_batch`` (``--aiokafka-send record`` uses ``send()`` per record instead),
      ``retry_backoff_ms=10``, ``max_batch_size`` 1 MiB;
    * confluent-kafka: one transactional producer, one transaction per batch (all its partitions),
      ``send_offsets_to_transaction(offsets, consumer.consumer_group_metadata())`` (KIP-447 fencing),
      cooperative-sticky assignment.

Every call asks for ``min(batch, records still unread)``: confluent-kafka's ``consume(num_messages=B, timeout=T)``
returns only once it has B messages or T has passed, so the last, partial batch of a finite input would otherwise
add a whole timeout to the run (aiokafka's ``getmany`` returns what it has at once). In a live pipeline that wait
is real: with confluent-kafka the timeout bounds the latency a quiet partition adds.

Rates run from the first batch returned to the last record processed (to the last commit for (b)), so group
joins and producer initialisation are left out and the first batch's records are not counted. CPU is
``time.process_time()`` of this process over the same interval: every thread, so librdkafka's background
threads are included; the calling thread's share (``time.thread_time()``) is printed too, since the pipeline's
loop holds the GIL and librdkafka's threads can use the other core (aiokafka does everything in the loop's
thread). Commit latency is, per transaction, from the moment its last output record has been handed
to the producer to the return of the commit (offsets added to the transaction, outputs flushed, EndTxn).

Each (b) run is checked: the group's committed offsets equal the input's end offsets, and a ``read_committed``
read of the output topics over that run's range holds exactly one record per input record, per partition.

The machine is small and shared (2 cores): every measurement is made twice (the clients' order alternates), and
both figures are printed with the confluent/aiokafka ratio of each pair.

confluent-kafka is not a dependency of the project; for this bench only::

    .venv/bin/pip install 'confluent-kafka==2.16.*'

Run (the local stack must be up: ``deploy/local/stack.sh up``)::

    .venv/bin/python bench/client_choice.py [--events 200000] [--batches 1000,5000] [--repeat 2]

Topics (``clientbench-<id>.in``, ``.out-a``, ``.out-b``) and consumer groups are created fresh per run and deleted
at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fatigue.clock import partition_for_key
from fatigue.generate import DEFAULT_START_MS, generate_messages

if TYPE_CHECKING:
    from aiokafka import AIOKafkaProducer
    from confluent_kafka import Consumer

INSTALL_HINT = ".venv/bin/pip install 'confluent-kafka==2.16.*'"
PARTITIONS = 6
RUN_BUDGET_S = 600.0  # one measurement; a stuck run fails instead of hanging the bench
AIO_MAX_BATCH_BYTES = 1024 * 1024


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Setup:
    bootstrap: str
    name: str
    input_topic: str
    outputs: tuple[str, str]
    events: int
    per_partition: list[int]  # records of the input per partition
    partition_of: dict[bytes | None, int]  # murmur2 partition of every key of the input, computed once
    mean_value_bytes: float
    groups: list[str] = field(default_factory=list)


@dataclass
class Run:
    client: str  # "aiokafka" | "confluent"
    kind: str  # "consume" | "txn"
    batch: int
    rep: int
    events: int  # counted inside the measured interval (the first batch excluded)
    seconds: float
    cpu_seconds: float  # the whole process (every thread)
    thread_cpu_seconds: float  # the calling thread only: what the pipeline's (GIL-holding) loop would pay
    commits: list[float] = field(default_factory=list)  # seconds, one per transaction
    check: str = "ok"
    retries: str = ""  # aiokafka's retried produce errors during the run

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_seconds / self.events if self.events else float("nan")

    @property
    def thread_cpu_us(self) -> float:
        return 1e6 * self.thread_cpu_seconds / self.events if self.events else float("nan")

    def commit_ms(self, fraction: float) -> float:
        if not self.commits:
            return float("nan")
        ordered = sorted(self.commits)
        if fraction == 0.5:
            return 1e3 * statistics.median(ordered)
        return 1e3 * ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


class RetryCounter(logging.Handler):
    """Counts aiokafka's "retrying" warnings (per error class) instead of printing each of them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "retrying" in message:
            self.counts[message.rsplit("Error: ", 1)[-1].rsplit(".", 1)[-1].rstrip("'>")] += 1
        else:
            print(f"aiokafka {record.levelname}: {message}", file=sys.stderr)

    def take(self) -> str:
        text = ", ".join(f"{name} x{count}" for name, count in self.counts.most_common())
        self.counts.clear()
        return text


RETRIES = RetryCounter()


class Clock:
    """Wall and process CPU time from the first batch on; that batch's records are not counted."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.cpu0 = 0.0
        self.thread0 = 0.0
        self.skipped = 0

    def first(self, records: int) -> None:
        self.started = time.perf_counter()
        self.cpu0 = time.process_time()
        self.thread0 = time.thread_time()
        self.skipped = records

    def stop(self, client: str, kind: str, batch: int, rep: int, total: int) -> Run:
        assert self.started is not None
        return Run(
            client,
            kind,
            batch,
            rep,
            events=total - self.skipped,
            seconds=time.perf_counter() - self.started,
            cpu_seconds=time.process_time() - self.cpu0,
            thread_cpu_seconds=time.thread_time() - self.thread0,
        )


def over_budget(started: float, what: str) -> None:
    if time.monotonic() - started > RUN_BUDGET_S:
        raise RuntimeError(f"{what}: not finished within {RUN_BUDGET_S:.0f} s")


# ---------------------------------------------------------------------------------------------- setup


def admin_client(bootstrap: str) -> Any:
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap})


def create_topics(bootstrap: str, names: Iterable[str]) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)  # kept referenced until the futures are done
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=PARTITIONS, replication_factor=1) for name in names], operation_timeout=30
    )
    for future in futures.values():
        future.result()


def delete_topics_and_groups(setup: Setup) -> None:
    admin = admin_client(setup.bootstrap)
    for future in admin.delete_topics([setup.input_topic, *setup.outputs], operation_timeout=30).values():
        try:
            future.result()
        except Exception as error:  # cleanup: report, go on
            print(f"warning: could not delete a topic: {error}", file=sys.stderr)
    if setup.groups:
        try:
            for future in admin.delete_consumer_groups(setup.groups, request_timeout=30).values():
                future.result()
        except Exception as error:  # cleanup: report, go on
            print(f"warning: could not delete the consumer groups: {error}", file=sys.stderr)


def fill(bootstrap: str, events: int, customers: int, seed: int) -> Setup:
    """Fresh topics; the input filled with ``events`` generated messages, each in its key's murmur2 partition."""
    from confluent_kafka import Producer

    name = f"clientbench-{uuid.uuid4().hex[:8]}"
    setup = Setup(
        bootstrap=bootstrap,
        name=name,
        input_topic=f"{name}.in",
        outputs=(f"{name}.out-a", f"{name}.out-b"),
        events=events,
        per_partition=[0] * PARTITIONS,
        partition_of={},
        mean_value_bytes=0.0,
    )
    create_topics(bootstrap, [setup.input_topic, *setup.outputs])
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True, "compression.type": "none"}
    )
    value_bytes = 0
    # the generator's event times are 60 days ago: the records keep the broker's clock as their timestamp, so
    # retention (by record timestamp) cannot delete the input while it is read
    for key, value in generate_messages(events, customers, seed, DEFAULT_START_MS):
        partition = setup.partition_of.get(key)
        if partition is None:
            partition = setup.partition_of[key] = partition_for_key(key or b"", PARTITIONS)
        setup.per_partition[partition] += 1
        value_bytes += len(value)
        while True:
            try:
                producer.produce(setup.input_topic, value, key, partition=partition)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("the input was not fully produced")
    setup.mean_value_bytes = value_bytes / events if events else 0.0
    return setup


def new_group(setup: Setup, label: str) -> str:
    group = f"{setup.name}.{label}"
    setup.groups.append(group)
    return group


# ---------------------------------------------------------------------------------------------- aiokafka


def _aio_consumer(setup: Setup, group: str) -> Any:
    from aiokafka import AIOKafkaConsumer

    return AIOKafkaConsumer(
        setup.input_topic,
        bootstrap_servers=setup.bootstrap,
        group_id=group,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )


async def aio_consume(setup: Setup, batch: int, rep: int) -> Run:
    consumer = _aio_consumer(setup, new_group(setup, f"aio-consume-{batch}-{rep}"))
    await consumer.start()
    clock = Clock()
    count = touched = 0
    started = time.monotonic()
    try:
        while count < setup.events:
            over_budget(started, "aiokafka consume")
            batches = await consumer.getmany(timeout_ms=1000, max_records=min(batch, setup.events - count))
            got = 0
            for records in batches.values():
                for record in records:
                    touched += len(record.value) + len(record.key or b"")
                got += len(records)
            if got and clock.started is None:
                clock.first(got)
            count += got
        return clock.stop("aiokafka", "consume", batch, rep, count)
    finally:
        await consumer.stop()


async def aio_txn(setup: Setup, batch: int, rep: int, mode: str, retry_backoff_ms: int) -> Run:
    from aiokafka import AIOKafkaProducer, TopicPartition

    group = new_group(setup, f"aio-txn-{batch}-{rep}")
    producers: dict[int, AIOKafkaProducer] = {
        partition: AIOKafkaProducer(
            bootstrap_servers=setup.bootstrap,
            transactional_id=f"{group}.{setup.input_topic}.{partition}",
            retry_backoff_ms=retry_backoff_ms,
            max_batch_size=AIO_MAX_BATCH_BYTES,
            max_request_size=4 * AIO_MAX_BATCH_BYTES,
        )
        for partition in range(PARTITIONS)
    }
    await asyncio.gather(*(producer.start() for producer in producers.values()))
    consumer = _aio_consumer(setup, group)
    await consumer.start()
    partition_of = setup.partition_of
    outputs = setup.outputs
    commits: list[float] = []

    async def commit_partition(tp: TopicPartition, records: list[Any]) -> None:
        producer = producers[tp.partition]
        futures: list[asyncio.Future[Any]] = []
        await producer.begin_transaction()
        try:
            if mode == "batch":
                builders: dict[tuple[str, int], Any] = {}
                for record in records:
                    target = (outputs[record.offset & 1], partition_of[record.key])
                    builder = builders.get(target)
                    if builder is None:
                        builder = builders[target] = producer.create_batch()
                    if builder.append(key=record.key, value=record.value, timestamp=None) is None:
                        futures.append(await producer.send_batch(builder, target[0], partition=target[1]))
                        builder = builders[target] = producer.create_batch()
                        builder.append(key=record.key, value=record.value, timestamp=None)
                for (topic, partition), builder in builders.items():
                    futures.append(await producer.send_batch(builder, topic, partition=partition))
            else:
                for record in records:
                    futures.append(
                        await producer.send(
                            outputs[record.offset & 1],
                            record.value,
                            key=record.key,
                            partition=partition_of[record.key],
                        )
                    )
            handed_over = time.perf_counter()
            await producer.send_offsets_to_transaction({tp: records[-1].offset + 1}, group)
            await producer.commit_transaction()
            commits.append(time.perf_counter() - handed_over)
        except BaseException:
            # any error inside a transaction is fatal for this producer (see INFRA_NOTES): the bench stops
            raise
        await asyncio.gather(*futures)  # delivery of every output (done by now: the commit flushed them)

    clock = Clock()
    count = 0
    started = time.monotonic()
    try:
        while count < setup.events:
            over_budget(started, "aiokafka transactional loop")
            batches = await consumer.getmany(timeout_ms=1000, max_records=min(batch, setup.events - count))
            got = sum(len(records) for records in batches.values())
            if not got:
                continue
            if clock.started is None:
                clock.first(got)
            await asyncio.gather(*(commit_partition(tp, records) for tp, records in batches.items() if records))
            count += got
        run = clock.stop("aiokafka", "txn", batch, rep, count)
        run.commits = commits
        return run
    finally:
        await consumer.stop()
        await asyncio.gather(*(producer.stop() for producer in producers.values()))


# ---------------------------------------------------------------------------------------------- confluent-kafka


def _cf_consumer(setup: Setup, group: str) -> Consumer:
    from confluent_kafka import Consumer

    consumer = Consumer(
        {
            "bootstrap.servers": setup.bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "partition.assignment.strategy": "cooperative-sticky",
            # librdkafka >= 2.4 stops fetching for fetch.queue.backoff.ms (default 1000 ms) whenever its
            # prefetch queue is over queued.min.messages / queued.max.messages.kbytes: on a backlog read at
            # 1M ev/s that is a whole second of nothing (seen in about a third of the consume-only runs)
            "fetch.queue.backoff.ms": 10,
        }
    )
    consumer.subscribe([setup.input_topic])
    return consumer


def cf_consume(setup: Setup, batch: int, rep: int) -> Run:
    consumer = _cf_consumer(setup, new_group(setup, f"cf-consume-{batch}-{rep}"))
    clock = Clock()
    count = touched = 0
    started = time.monotonic()
    try:
        while count < setup.events:
            over_budget(started, "confluent-kafka consume")
            messages = consumer.consume(num_messages=min(batch, setup.events - count), timeout=1.0)
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"consume: {message.error()}")
                touched += len(message.value()) + len(message.key() or b"")
            if messages and clock.started is None:
                clock.first(len(messages))
            count += len(messages)
        return clock.stop("confluent", "consume", batch, rep, count)
    finally:
        consumer.close()


def cf_txn(setup: Setup, batch: int, rep: int, retry_backoff_ms: int) -> Run:
    from confluent_kafka import Producer, TopicPartition

    group = new_group(setup, f"cf-txn-{batch}-{rep}")
    producer = Producer(
        {
            "bootstrap.servers": setup.bootstrap,
            "transactional.id": f"{group}.producer",
            "enable.idempotence": True,
            "retry.backoff.ms": retry_backoff_ms,
        }
    )
    producer.init_transactions(30)
    consumer = _cf_consumer(setup, group)
    partition_of = setup.partition_of
    outputs = setup.outputs
    topic = setup.input_topic
    commits: list[float] = []
    clock = Clock()
    count = 0
    started = time.monotonic()
    try:
        while count < setup.events:
            over_budget(started, "confluent-kafka transactional loop")
            messages = consumer.consume(num_messages=min(batch, setup.events - count), timeout=1.0)
            if not messages:
                continue
            if clock.started is None:
                clock.first(len(messages))
            producer.begin_transaction()
            last: dict[int, int] = {}
            produce = producer.produce
            for message in messages:
                if message.error() is not None:
                    raise RuntimeError(f"consume: {message.error()}")
                key = message.key()
                offset = message.offset()
                while True:
                    try:
                        produce(outputs[offset & 1], message.value(), key, partition=partition_of[key])
                        break
                    except BufferError:
                        producer.poll(0.01)
                last[message.partition()] = offset
            handed_over = time.perf_counter()
            producer.send_offsets_to_transaction(
                [TopicPartition(topic, partition, offset + 1) for partition, offset in last.items()],
                consumer.consumer_group_metadata(),
                30,
            )
            producer.commit_transaction(30)  # fails when any output of the transaction failed
            commits.append(time.perf_counter() - handed_over)
            count += len(messages)
        run = clock.stop("confluent", "txn", batch, rep, count)
        run.commits = commits
        return run
    finally:
        consumer.close()
        producer.flush(10)


# ---------------------------------------------------------------------------------------------- checks


def watermarks(setup: Setup, topics: Iterable[str]) -> dict[tuple[str, int], int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": setup.bootstrap, "group.id": f"{setup.name}.probe"})
    try:
        return {
            (topic, partition): consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[1]
            for topic in topics
            for partition in range(PARTITIONS)
        }
    finally:
        consumer.close()


def check_txn_run(setup: Setup, group: str, before: dict[tuple[str, int], int]) -> str:
    """ "ok", or what is wrong: committed offsets short of the input's end, or outputs not one per input."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    problems: list[str] = []
    probe = Consumer({"bootstrap.servers": setup.bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        committed = probe.committed([TopicPartition(setup.input_topic, p) for p in range(PARTITIONS)], timeout=10)
        ends = watermarks(setup, [setup.input_topic])
        for tp in committed:
            if tp.offset != ends[(setup.input_topic, tp.partition)]:
                problems.append(
                    f"p{tp.partition} committed {tp.offset} != end {ends[(setup.input_topic, tp.partition)]}"
                )
    finally:
        probe.close()
    after = watermarks(setup, setup.outputs)
    reader = Consumer(
        {
            "bootstrap.servers": setup.bootstrap,
            "group.id": f"{setup.name}.check",
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            "enable.auto.commit": False,
        }
    )
    pending = {key for key in after if after[key] > before[key]}
    reader.assign([TopicPartition(topic, partition, before[(topic, partition)]) for topic, partition in pending])
    per_partition: Counter[int] = Counter()
    started = time.monotonic()
    try:
        while pending and time.monotonic() - started < 120:
            for message in reader.consume(num_messages=10_000, timeout=1.0):
                tp = (message.topic(), message.partition())
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(tp)
                        continue
                    raise RuntimeError(f"check: {error}")
                if message.offset() < after[tp]:
                    per_partition[message.partition()] += 1
    finally:
        reader.close()
    if pending:
        problems.append(f"outputs not fully readable: {sorted(pending)}")
    expected = dict(enumerate(setup.per_partition))
    if dict(per_partition) != {p: n for p, n in expected.items() if n}:
        problems.append(f"outputs per partition {dict(sorted(per_partition.items()))} != inputs {expected}")
    return "; ".join(problems) or "ok"


# ---------------------------------------------------------------------------------------------- report


def machine() -> list[str]:
    import aiokafka
    import confluent_kafka

    model = "?"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return [
        f"machine: {os.cpu_count()} cores ({model}), {platform.system()} {platform.machine()}, "
        f"Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f} at start",
        f"clients: aiokafka {aiokafka.__version__}, confluent-kafka {confluent_kafka.__version__} "
        f"(librdkafka {confluent_kafka.libversion()[0]})",
    ]


def _k(rate: float) -> str:
    return f"{rate / 1000:.1f}k"


def table(runs: list[Run], batches: list[int], repeat: int) -> list[str]:
    lines = [
        "| measurement | batch | aiokafka ev/s | confluent ev/s | confluent/aiokafka | aiokafka CPU µs/ev "
        "| confluent CPU µs/ev | confluent CPU µs/ev, calling thread | commit ms p50/p99, aiokafka "
        "| commit ms p50/p99, confluent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"consume": "consume only", "txn": "transactional loop"}
    for kind in ("consume", "txn"):
        for batch in batches:
            pairs: list[tuple[Run, Run]] = []
            for rep in range(1, repeat + 1):
                found = {r.client: r for r in runs if r.kind == kind and r.batch == batch and r.rep == rep}
                if "aiokafka" in found and "confluent" in found:
                    pairs.append((found["aiokafka"], found["confluent"]))
            if not pairs:
                continue

            def each(
                pick: Callable[[tuple[Run, Run]], str], pairs: list[tuple[Run, Run]] = pairs, sep: str = " / "
            ) -> str:
                return sep.join(pick(pair) for pair in pairs)

            row = [
                labels[kind],
                str(batch),
                each(lambda p: _k(p[0].rate)),
                each(lambda p: _k(p[1].rate)),
                each(lambda p: f"{p[1].rate / p[0].rate:.2f}x" if p[0].rate else "-"),
                each(lambda p: f"{p[0].cpu_us:.1f}"),
                each(lambda p: f"{p[1].cpu_us:.1f}"),
                each(lambda p: f"{p[1].thread_cpu_us:.1f}"),
            ]
            if kind == "txn":
                row += [
                    each(lambda p: f"{p[0].commit_ms(0.5):.1f}/{p[0].commit_ms(0.99):.0f}", sep=" ; "),
                    each(lambda p: f"{p[1].commit_ms(0.5):.1f}/{p[1].commit_ms(0.99):.0f}", sep=" ; "),
                ]
            else:
                row += ["-", "-"]
            lines.append("| " + " | ".join(row) + " |")
    return lines


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("FATIGUE_BOOTSTRAP", "127.0.0.1:19092"))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--batches", default="1000,5000", help="batch sizes, comma-separated")
    parser.add_argument("--repeat", type=int, default=2, help="runs of every measurement")
    parser.add_argument("--only", choices=["consume", "txn"], help="one of the two measurements only")
    parser.add_argument(
        "--aiokafka-send",
        choices=["batch", "record"],
        default="batch",
        help="aiokafka outputs via create_batch()+send_batch (default) or send() per record",
    )
    parser.add_argument(
        "--retry-backoff-ms",
        type=int,
        default=10,
        help="both producers' retry backoff (aiokafka retry_backoff_ms, librdkafka retry.backoff.ms); "
        "both default to 100 ms, which also paces their transaction retries",
    )
    args = parser.parse_args(argv)
    try:
        import confluent_kafka  # noqa: F401 - presence check
    except ImportError:
        print(
            "confluent-kafka is not installed (it is not a project dependency). For this bench only:\n"
            f"    {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 2
    logging.getLogger("aiokafka").addHandler(RETRIES)
    batches = [int(b) for b in args.batches.split(",") if b]
    kinds = [args.only] if args.only else ["consume", "txn"]

    for line in machine():
        print(line, flush=True)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    try:
        admin_client(args.bootstrap).list_topics(timeout=10)
    except Exception as error:  # any failure means the same thing here
        print(f"Kafka does not answer on {args.bootstrap} ({error}): deploy/local/stack.sh up", file=sys.stderr)
        return 2

    started = time.perf_counter()
    setup = fill(args.bootstrap, args.events, args.customers, args.seed)
    print(
        f"input: {setup.input_topic}, {setup.events:,} records ({setup.mean_value_bytes:.0f} B mean value, "
        f"{len(setup.partition_of):,} keys), per partition {setup.per_partition}; "
        f"filled in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    runs: list[Run] = []
    try:
        for rep in range(1, args.repeat + 1):
            for kind in kinds:
                for batch in batches:
                    order = ["aiokafka", "confluent"] if rep % 2 else ["confluent", "aiokafka"]
                    for client in order:
                        before = watermarks(setup, setup.outputs) if kind == "txn" else {}
                        if client == "aiokafka":
                            run = asyncio.run(
                                aio_consume(setup, batch, rep)
                                if kind == "consume"
                                else aio_txn(setup, batch, rep, args.aiokafka_send, args.retry_backoff_ms)
                            )
                        else:
                            run = (
                                cf_consume(setup, batch, rep)
                                if kind == "consume"
                                else cf_txn(setup, batch, rep, args.retry_backoff_ms)
                            )
                        run.retries = RETRIES.take()
                        if kind == "txn":
                            run.check = check_txn_run(setup, setup.groups[-1], before)
                        runs.append(run)
                        extra = (
                            f", {len(run.commits)} transactions, commit p50 {run.commit_ms(0.5):.1f} ms "
                            f"p99 {run.commit_ms(0.99):.1f} ms, check: {run.check}"
                            + (f", retried: {run.retries}" if run.retries else "")
                            if kind == "txn"
                            else ""
                        )
                        print(
                            f"run {rep}: {kind:<7} batch {batch:>5} {client:<9} {_k(run.rate):>7} ev/s, "
                            f"{run.cpu_us:5.1f} CPU µs/ev ({run.thread_cpu_us:.1f} in the calling thread){extra}",
                            flush=True,
                        )
    finally:
        delete_topics_and_groups(setup)
    print()
    print(
        f"{setup.events:,} records, {PARTITIONS} partitions, {args.repeat} runs (figures: run 1 / run 2 ...); "
        "aiokafka outputs via "
        f"{'create_batch + send_batch' if args.aiokafka_send == 'batch' else 'send() per record'}; "
        f"retry backoff {args.retry_backoff_ms} ms for both producers"
    )
    for line in table(runs, batches, args.repeat):
        print(line)
    failed = [run for run in runs if run.check != "ok"]
    for run in failed:
        print(f"CHECK FAILED: {run.client} {run.kind} batch {run.batch} run {run.rep}: {run.check}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
