"""End-to-end benchmark of one guard worker on the local stack (real Kafka 4 and Redis), with references.

One command, from a clean checkout (it starts the stack with ``deploy/local/stack.sh up`` if Kafka does not
answer):

    .venv/bin/python bench/stack_bench.py [--events 200000] [--quick] [--profile]

What one run does, all on the same generated input (``fatigue.generate``: Zipf-skewed customers, channel and
category mix, call outcomes, opens, preferences, duplicates, late and malformed messages), under a fresh run
name (topic prefix, consumer group, Redis prefix, data directory) so runs never interfere:

1. produce N events into a fresh 6-partition input topic (murmur2 on the customer id, Kafka timestamp = event
   time) and compute the decisions the worker must publish with ``fatigue.replay.Replay(partitions=6)``, as the
   end-to-end parity tests do;
2. ceiling: a raw aiokafka consumer that reads the topic and ``orjson.loads`` every value;
3. ours: ``fatigue worker`` (one process) from the beginning of the topic until the group has committed every
   input offset, the decisions topic holds exactly the expected count and the Redis view has committed both
   compacted topics (every decision and preference written to Redis). Rate = input offsets committed between
   the first observed commit and that moment / elapsed (startup and rebalance excluded; the first commit
   comes about a second after the first message, the last one only once every output is flushed). Peak RSS
   is the worker's ``VmHWM``; state bytes per customer are the mean size of the latest value per key on the
   state table's changelog;
4. latency: a second worker on fresh topics, fed at a fixed offered rate (5k events/s) by a separate producer
   process that stamps each event ``ts = now``; a consumer of the decisions topic timestamps each decision when
   it becomes visible; latency = visible - send time of the decision's ``cause_event_id`` (warm-up excluded);
5. baseline: ``bench/faust_baseline.py``, the same caps with Faust's hopping windowed tables, on the same input
   topic under its own consumer group, timed like ours (time-boxed: ``--baseline-budget``).

A third reference, the Faust floor (``faust_baseline.py --noop``: a Faust agent that only decodes, timed like
ours), separates what Faust's consumer, stream and commits cost from what the guard adds.

When the worker cannot sustain the offered rate, the latency run is queueing that grows with the run's length;
a second point at ``--reference-rate`` (300 events/s), well inside one worker's capacity, gives the latency of
the processing path itself.

Order of the runs: latency first (fresh topics, nothing else of the run on the broker yet), then the ceiling,
the Faust floor, the baseline and ours last, so that whatever the broker still does after a run can only slow
ours.

``--profile`` adds a run of the worker under ``py-spy record`` (a bench-only tool: ``.venv/bin/pip install
py-spy``) over the same input and prints the hottest functions (own time and inclusive).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import _loadgen
import _stack
import orjson
from _stack import Broker, StackRun

from fatigue.engine import Guard
from fatigue.policy import load_policy
from fatigue.replay import Replay, tune_gc
from streams.settings import Settings

REPO = _stack.REPO
CACHE = REPO / ".cache" / "bench" / "stack"
STACK = REPO / "deploy" / "local" / "stack.sh"
TARGET_EVENTS_PER_S = 20_000
TARGET_BASELINE_RATIO = 10.0
TARGET_P99_MS = 100.0
TARGET_STATE_BYTES = 300
DAY_MS = 86_400_000
STATE_TABLE = "customer-state-v1"  # streams.app's table; its changelog is "{app id}-{table}-changelog"
OFFSET_PREFIX_BYTES = 8  # streams.app stores the input offset in front of the core's state bytes


# ---------------------------------------------------------------------------------------------- results


@dataclass
class Throughput:
    """How fast one consumer group went through the input, as seen from the broker."""

    events: int  # input offsets committed inside the measured interval
    seconds: float
    wall_seconds: float  # from process start (startup included) to the end
    complete: bool  # False when the time budget ran out first
    cpu_seconds: float | None = None  # of the process, inside the measured interval
    peak_rss: int | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Latency:
    offered_rate: float
    sent: int
    decisions: int
    samples: list[float]  # seconds, one per decision caused by a measured (post warm-up) event
    points: list[tuple[float, float]]  # (send time since the producer started, latency) of the same decisions
    warmup_included: bool  # no decision of a post-warm-up event became visible: these are warm-up ones
    max_behind_ms: float
    backlog_at_end: int  # input offsets not yet committed when the producer stopped

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] if ordered else float("nan")


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    traffic: list[str] = field(default_factory=list)
    expected_decisions: int = 0
    expected_rejections: int = 0
    expected_customers: int = 0
    ceiling: Throughput | None = None
    faust_floor: Throughput | None = None
    ours: Throughput | None = None
    baseline: Throughput | None = None
    latency: Latency | None = None  # at the target's offered rate
    latency_within: Latency | None = None  # at --reference-rate, well inside one worker's capacity
    state_bytes: list[int] = field(default_factory=list)  # latest changelog value per customer (whole value)
    checks: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- setup


def ensure_stack(bootstrap: str) -> None:
    """Start the local stack when Kafka does not answer (``stack.sh up`` is idempotent)."""
    if _stack.broker_answers(bootstrap):
        return
    print(f"Kafka does not answer on {bootstrap}: {STACK.relative_to(REPO)} up", flush=True)
    subprocess.run([str(STACK), "up"], check=True, cwd=REPO)


def machine() -> dict[str, str]:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        # other processes on the machine share the cores: the ratios to same-run references are what carry over
        "load average at start": f"{os.getloadavg()[0]:.2f}",
        "code": code_version(),
    }


def code_version() -> str:
    """The commit under test, and whether the worker's code (fatigue/, streams/) differs from it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "fatigue", "streams"], cwd=REPO, capture_output=True, text=True
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    dirty = sorted(line[3:] for line in changed if line.strip())
    return commit + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else "")


@dataclass
class Expected:
    decisions: int
    rejections: int
    customers: int
    state_bytes: float  # mean serialised state per customer in the replay (the core's bytes, no offset prefix)


def expected_outputs(messages: Sequence[_loadgen.Produced], partitions: int, policy_path: str) -> Expected:
    """What the worker publishes for this input while wall clock never takes over (``--quiet-after`` out of
    reach): the decisions of ``Replay`` with the worker's partitions and deadline settling, as the end-to-end
    parity tests compute them."""
    replay = Replay(
        Guard(load_policy(policy_path)),
        check_key=True,
        partitions=partitions,
        settle_ms=Settings().deadline_settle_ms,
    )
    decisions = 0
    for message in messages:
        decisions += len(replay.feed(message.value, message.key).decisions)
    sizes = [len(state.to_bytes()) for state in replay.states.values()]
    mean_bytes = sum(sizes) / len(sizes) if sizes else 0.0
    return Expected(decisions, sum(replay.stats.rejections.values()), len(replay.states), mean_bytes)


# ---------------------------------------------------------------------------------------------- measurements


async def _decode_all(bootstrap: str, topic: str, partitions: int, total: int) -> Throughput:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = orjson.loads
        decode_error = orjson.JSONDecodeError
        count = malformed = 0
        started = time.perf_counter()
        while count < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    try:
                        loads(record.value)
                    except decode_error:
                        malformed += 1
                count += len(records)
        elapsed = time.perf_counter() - started
    finally:
        await consumer.stop()
    return Throughput(count, elapsed, elapsed, True)


def ceiling(bootstrap: str, topic: str, partitions: int, total: int) -> Throughput:
    """The raw consumer: fetch and ``orjson.loads`` every record, nothing else."""
    return asyncio.run(_decode_all(bootstrap, topic, partitions, total))


def follow(
    broker: Broker,
    process: subprocess.Popen[bytes],
    group: str,
    topic: str,
    total: int,
    *,
    budget_s: float,
    done: Callable[[], bool] = lambda: True,
    on_first: Callable[[], None] | None = None,
    describe: Callable[[], str] = lambda: "",
    poll_s: float = 0.2,
) -> Throughput:
    """Watch ``group`` consume ``total`` records of ``topic`` (and ``done()`` become true), from the broker.

    The measured interval runs from the first observation of a committed offset to the observation that
    everything is committed, so the process's startup and rebalance are left out. A consumer that commits most
    of the input at its first commit (a short input: commits come every second) is measured from the moment
    its group became stable instead, with nothing committed then. ``budget_s`` bounds the measured interval;
    the rate is then over what was committed so far.
    """
    started = time.monotonic()
    next_print = started + 10
    first: tuple[float, int, float | None] | None = None
    stable: tuple[float, int, float | None] | None = None
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{group}: the process exited with {process.returncode}")
        committed = broker.committed(group, [topic])[topic]
        now = time.monotonic()
        if stable is None and committed == 0 and broker.group_state(group) == "Stable":
            stable = (now, 0, _stack.cpu_seconds(process.pid))
        if first is None and committed > 0:
            first = (now, committed, _stack.cpu_seconds(process.pid))
            if committed > total // 2 and stable is not None:
                first = stable
            if on_first is not None:
                on_first()
        finished = committed >= total and done()
        over_budget = first is not None and now - first[0] > budget_s
        if finished or over_budget or (first is None and now - started > 120):
            if first is None:
                raise RuntimeError(f"{group}: nothing committed in 120 s")
            cpu = _stack.cpu_seconds(process.pid)
            return Throughput(
                events=committed - first[1],
                seconds=now - first[0],
                wall_seconds=now - started,
                complete=finished,
                cpu_seconds=cpu - first[2] if cpu is not None and first[2] is not None else None,
                peak_rss=_stack.peak_rss_bytes(process.pid),
            )
        if now >= next_print:
            next_print += 10
            progress = describe()
            print(f"    {now - started:5.0f}s  {committed:,}/{total:,} input offsets committed{progress}", flush=True)
        time.sleep(poll_s)


def run_ours(
    run: StackRun, broker: Broker, total: int, expected: Expected, budget_s: float, results: Results
) -> Throughput:
    """One ``fatigue worker`` over the pre-produced input until every decision is on the topic and in Redis."""
    port = _stack.free_port()
    # wall clock never takes over: the decisions are then exactly the replay's (no quiet-partition ticks)
    process = run.start(run.worker_args(port, ["--quiet-after", "1e9"]), "worker.log")
    topics = run.topics

    def published() -> bool:
        decisions = broker.end(topics["decisions"])
        if decisions < expected.decisions:
            return False
        ends = {topic: broker.end(topic) for topic in (topics["decisions"], topics["prefs"])}
        committed = broker.committed(f"{run.name}.redis-view", ends)
        return all(committed[topic] >= end for topic, end in ends.items())  # the Redis view is done

    def describe() -> str:
        return f", {broker.end(topics['decisions']):,}/{expected.decisions:,} decisions"

    try:
        measured = follow(
            broker, process, run.name, topics["events"], total, budget_s=budget_s, done=published, describe=describe
        )
        metrics = _stack.scrape(port)
    except RuntimeError:
        print(run.log_tail("worker.log"), file=sys.stderr)
        raise
    run.stop(process)
    decisions = broker.end(topics["decisions"])
    dead = broker.end(topics["dlq"])
    rerouted = _stack.metric_sum(metrics, "fatigue_rerouted_total") or 0
    results.checks.append(
        f"decisions on the topic {decisions:,} (replay: {expected.decisions:,}); dead letters {dead:,} "
        f"(replay rejections: {expected.rejections:,}); re-routed inputs {rerouted:g} (murmur2 keys: 0 expected)"
    )
    # what the worker had to produce per input event, and what its RocksDB held (memtables count in its RSS)
    changelog = broker.end(f"{run.name}-{STATE_TABLE}-changelog")
    outputs = {"changelog": changelog} | {kind: broker.end(topics[kind]) for kind in ("decisions", "violations")}
    outputs |= {"dead letters": dead, "preferences": broker.end(topics["prefs"])}
    produced = ", ".join(f"{kind} {count:,}" for kind, count in outputs.items())
    store = _stack.metric_sum(metrics, "fatigue_state_store_bytes") or 0
    results.checks.append(
        f"records produced: {sum(outputs.values()) / total:.2f} per input event ({produced}); "
        f"RocksDB SST files + memtables at the end (fatigue_state_store_bytes): {store / 2**20:,.0f} MiB"
    )
    return measured


def state_bytes(broker: Broker, run: StackRun) -> list[int]:
    """Size of the latest value per key of the worker's state changelog (deleted keys left out)."""
    changelog = f"{run.name}-{STATE_TABLE}-changelog"  # Faust's name: "{app id}-{table}-changelog"
    if changelog not in broker.admin.list_topics():
        raise RuntimeError(f"no changelog topic {changelog}")
    latest: dict[bytes | None, bytes | None] = {}
    written = 0
    for key, value in broker.read_all(changelog):
        latest[key] = value
        written += len(value or b"")
    print(f"    state changelog: {written / 2**20:,.1f} MiB of values written")
    return [len(value) for value in latest.values() if value is not None]


def run_baseline(
    run: StackRun, broker: Broker, events_topic: str, total: int, budget_s: float, *, noop: bool = False
) -> Throughput:
    """``bench/faust_baseline.py`` over the input, timed like ours (``noop``: the decode-only Faust agent)."""
    blocks = f"{run.name}.blocks"
    _stack.create_topic(run.bootstrap, blocks, run.partitions)
    args = [
        sys.executable,
        str(REPO / "bench" / "faust_baseline.py"),
        "--bootstrap",
        run.bootstrap,
        "--app-id",
        run.name,
        "--events-topic",
        events_topic,
        "--blocks-topic",
        blocks,
        "--data-dir",
        str(run.workdir / "data"),
        "--web-port",
        str(_stack.free_port()),
        "--partitions",
        str(run.partitions),
        *(["--noop"] if noop else []),
    ]
    process = run.start(args, "baseline.log")
    try:
        measured = follow(
            broker,
            process,
            run.name,
            events_topic,
            total,
            budget_s=budget_s,
            describe=lambda: f", {broker.end(blocks):,} block records",
        )
    except RuntimeError:
        print(run.log_tail("baseline.log"), file=sys.stderr)
        raise
    if not measured.complete:
        # a time-boxed reference: its log says whether it was merely slow or stuck (the run directory goes)
        print(
            f"    {run.name}, log before the stop:", *_log_summary(run.log_tail("baseline.log", 2000)), sep="\n      "
        )
    run.stop(process)
    return measured


def _log_summary(text: str, last: int = 8) -> list[str]:
    """Warnings and errors counted by message (timestamps and pids dropped), then the last lines."""
    messages: Counter[str] = Counter()
    for line in text.splitlines():
        if "[WARNING]" in line or "[ERROR]" in line:
            messages[line.split("] ", 2)[-1][:150]] += 1
    counted = [f"{count:6d} x {message}" for message, count in messages.most_common(8)]
    return [*counted, "...", *text.splitlines()[-last:]]


def _wait_assigned(port: int, events_topic: str, partitions: int, process: subprocess.Popen[bytes]) -> None:
    """Until the worker reports every input partition assigned (its gauges refresh every 5 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the worker exited with {process.returncode}")
        try:
            text = _stack.scrape(port, timeout_s=2.0)
        except OSError:
            text = ""
        assigned = _stack.metric_sum(text, "fatigue_assigned_partitions", topic=events_topic)
        if assigned is not None and assigned >= partitions:
            return
        time.sleep(0.5)
    raise RuntimeError("the worker was not assigned its partitions in 120 s")


def run_latency(
    run: StackRun, broker: Broker, *, rate: float, warmup_s: float, seconds: float, customers: int, seed: int
) -> Latency:
    """A fresh worker fed at ``rate`` events/s (``ts = now``); latency from send to visible decision."""
    from kafka import KafkaConsumer, TopicPartition

    port = _stack.free_port()
    topics = run.topics
    _stack.create_topic(run.bootstrap, topics["events"], run.partitions)
    process = run.start(run.worker_args(port), "worker.log")
    try:
        _wait_assigned(port, topics["events"], run.partitions, process)
    except RuntimeError:
        print(run.log_tail("worker.log"), file=sys.stderr)
        raise
    consumer = KafkaConsumer(
        bootstrap_servers=run.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100, max_poll_records=10_000
    )
    tps = [TopicPartition(topics["decisions"], partition) for partition in range(run.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    report_path = run.workdir / "sent.json"
    count = int(rate * (warmup_s + seconds))
    producer = multiprocessing.get_context("spawn").Process(
        target=_loadgen.paced_produce,
        args=(run.bootstrap, topics["events"], count, customers, seed, rate, str(report_path)),
        name="paced-producer",
    )
    producer.start()
    seen: list[tuple[str, float]] = []
    backlog_at_end = -1

    def caught_up() -> bool:
        return broker.committed(run.name, [topics["events"]])[topics["events"]] >= broker.end(topics["events"])

    quiet_since: float | None = None
    stopped_at: float | None = None
    try:
        while True:
            batches = consumer.poll(timeout_ms=100)
            visible = time.time()
            fresh = 0
            for records in batches.values():
                for record in records:
                    if record.value is not None:
                        seen.append((orjson.loads(record.value)["cause_event_id"], visible))
                        fresh += 1
            if producer.is_alive():
                continue
            if stopped_at is None:
                stopped_at = time.monotonic()
                committed = broker.committed(run.name, [topics["events"]])[topics["events"]]
                backlog_at_end = broker.end(topics["events"]) - committed
            # after the last send: until the worker has committed everything and no decision came for 2 s, but
            # not for the whole backlog of an overloaded worker (its latency is reported as queueing)
            if time.monotonic() - stopped_at > 10:
                break
            if fresh:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 2.0 and caught_up():
                break
    finally:
        consumer.close()
        producer.join(timeout=30)
        run.stop(process)
    if producer.exitcode != 0:
        raise RuntimeError(f"the paced producer exited with {producer.exitcode}")
    report: dict[str, Any] = orjson.loads(report_path.read_bytes())
    send_times: dict[str, float] = report["send_times"]
    measured_from = report["started"] + warmup_s
    points = [
        (send_times[cause] - report["started"], visible - send_times[cause])
        for cause, visible in seen
        if cause in send_times and send_times[cause] >= measured_from
    ]
    warmup_included = not points
    if warmup_included:
        # an overloaded worker may not reach a single post-warm-up event before the run ends: what was seen
        # (warm-up included) is then a lower bound of the latency
        points = [
            (send_times[c] - report["started"], visible - send_times[c]) for c, visible in seen if c in send_times
        ]
    return Latency(
        offered_rate=report["sent"] / (report["finished"] - report["started"]),
        sent=report["sent"],
        decisions=len(seen),
        samples=[latency for _, latency in points],
        points=points,
        warmup_included=warmup_included,
        max_behind_ms=report["max_behind_ms"],
        backlog_at_end=backlog_at_end,
    )


# ---------------------------------------------------------------------------------------------- profile


def run_profile(run: StackRun, broker: Broker, total: int, budget_s: float, out_dir: Path) -> list[str]:
    """The worker over the same input under ``py-spy record --gil``; the hottest functions and packages.

    ``--gil`` keeps only samples of the thread holding the GIL: where the worker's Python CPU goes. Time spent
    waiting (for the broker's acks, in syscalls) is in no sample; the worker's cores used say how much that is.
    """
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        return ["py-spy not found: .venv/bin/pip install py-spy (a bench-only tool, not a project dependency)"]
    port = _stack.free_port()
    process = run.start(run.worker_args(port, ["--quiet-after", "1e9"]), "worker.log")
    raw_path = out_dir / f"{run.name}-worker-profile.txt"
    spy: list[subprocess.Popen[bytes]] = []

    def attach() -> None:
        # attached once the worker consumes, so start-up does not dilute the profile
        command = [py_spy, "record", "--pid", str(process.pid), "--rate", "100", "--gil", "--format", "raw"]
        spy.append(run.start([*command, "--output", str(raw_path)], "py-spy.log"))

    measured = follow(broker, process, run.name, run.topics["events"], total, budget_s=budget_s, on_first=attach)
    for recorder in spy:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        recorder.wait(timeout=60)
    run.stop(process)
    if not raw_path.exists():
        return [f"py-spy wrote nothing; see {run.workdir / 'py-spy.log'}"]
    cores = f", {measured.cpu_seconds / measured.seconds:.2f} cores" if measured.cpu_seconds else ""
    lines = [f"py-spy --gil at 100 Hz: {_rate(measured.rate)} while sampled{cores}; stacks in {raw_path}"]
    return lines + hot_spots(raw_path.read_text())


def _frame_name(frame: str) -> tuple[str, str]:
    """``function (path/to/module.py:line)`` -> (``function (module path)``, package), lines dropped."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "/main/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    parts = path.split("/")
    if parts[0] in ("faust", "aiokafka", "mode") and len(parts) > 2:
        package = "/".join(parts[:2])  # faust/transport, faust/tables, aiokafka/producer, ...
    elif len(parts) > 1:
        package = parts[0] if parts[0] not in ("fatigue", "streams") else path.removesuffix(".py")
    else:
        package = path.removesuffix(".py")  # a standard-library module: asyncio's are under asyncio/
    return f"{name} ({path})", package


# Where a sample's time goes, by the innermost frame that belongs to one of these (checked in this order): a
# future awaited inside faust's producer buffer counts as producing, a RocksDB write inside a table set as the
# state table, an orjson call inside the core as the core.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core: parse + engine (fatigue/events, engine, clock)", ("fatigue/events", "fatigue/engine", "fatigue/clock")),
    ("core: state codec (fatigue/state)", ("fatigue/state",)),
    ("metrics: prometheus_client labels/inc + faust's sensors", ("prometheus_client/", "faust/sensors/")),
    ("state table: faust Table + RocksDB get/set", ("faust/stores/", "faust/tables/", "mode/utils/collections")),
    (
        "producing: send_soon, faust ProducerBuffer, aiokafka producer",
        ("faust/transport/producer", "aiokafka/producer/", "faust/topics", "Producer.send ("),
    ),
    (
        "consuming: faust stream + conductor, aiokafka fetch",
        ("faust/streams", "faust/transport/consumer", "faust/transport/conductor", "aiokafka/consumer/"),
    ),
    ("Redis view (its own consumer)", ("streams/redis_view", "/redis/")),
    ("guard agent glue (streams/app, streams/metrics)", ("streams/app", "streams/metrics")),
)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for layer, fragments in LAYERS:
            if any(fragment in frame for fragment in fragments):
                return layer
    return "event loop, faust/mode plumbing, the rest"


def hot_spots(collapsed: str, top: int = 15) -> list[str]:
    """Own time per package and per function, and inclusive time per function, from py-spy's collapsed stacks
    (``frame;frame;... count`` lines, the innermost frame last)."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = [frame for frame in stack.split(";") if " (" in frame]
        frames = [_frame_name(frame) for frame in raw_frames]
        if not frames:
            continue
        total += count
        layers[_layer(raw_frames)] += count
        own[frames[-1][0]] += count
        packages[frames[-1][1]] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples; by layer (the innermost frame that belongs to one):"]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in layers.most_common()]
    lines.append("own time by package:")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in packages.most_common(top)]
    lines.append("own time by function:")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in own.most_common(top)]
    lines.append("inclusive time (the function and what it calls), below the event loop:")
    below_loop = [(name, count) for name, count in inclusive.most_common() if count < 0.95 * total]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in below_loop[: top * 2]]
    return lines


# ---------------------------------------------------------------------------------------------- report


def stalled(measured: Throughput) -> bool:
    """A time-boxed run that barely moved (under 10 events/s) measured a fault, not a speed."""
    return not measured.complete and measured.rate < 10


def _rate(value: float) -> str:
    return f"{value / 1000:,.1f}k ev/s"


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def report(results: Results) -> list[str]:
    ours, top, base, lat = results.ours, results.ceiling, results.baseline, results.latency
    rows: list[tuple[str, str, str]] = []
    if ours is not None:
        cores = f", {ours.cpu_seconds / ours.seconds:.2f} cores" if ours.cpu_seconds else ""
        rows.append(
            (
                f"**ours**: `fatigue worker`, input -> decisions topic + Redis ({ours.events:,} events in "
                f"{ours.seconds:.1f} s{cores})",
                f"**{_rate(ours.rate)}**",
                f">= 20k ev/s: {_met(ours.rate >= TARGET_EVENTS_PER_S)}",
            )
        )
    if top is not None:
        rows.append(("ceiling: aiokafka consumer + `orjson.loads`", _rate(top.rate), ""))
    if results.faust_floor is not None:
        rows.append(
            ("Faust floor: a Faust agent that only decodes (no state, no output)", _rate(results.faust_floor.rate), "")
        )
    if base is not None:
        partial = "" if base.complete else f", time-boxed: {base.events:,} events in {base.seconds:.0f} s"
        rows.append((f"baseline: Faust hopping windowed tables{partial}", _rate(base.rate), ""))
    if ours is not None and top is not None:
        rows.append(("ours / ceiling", f"{ours.rate / top.rate:.3f}", ""))
    if ours is not None and results.faust_floor is not None and results.faust_floor.rate > 0:
        rows.append(("ours / Faust floor", f"{ours.rate / results.faust_floor.rate:.3f}", ""))
    if ours is not None and base is not None and stalled(base):
        rows.append(("ours / baseline", "n/a", "the baseline stalled: see its log tail above"))
    elif ours is not None and base is not None:
        ratio = ours.rate / base.rate
        rows.append(("ours / baseline", f"{ratio:.1f}x", f">= 10x: {_met(ratio >= TARGET_BASELINE_RATIO)}"))
    for point, target in ((lat, True), (results.latency_within, False)):
        if point is None or not point.samples:
            continue
        p50, p99 = point.percentile(0.5) * 1000, point.percentile(0.99) * 1000
        notes = [f"{len(point.samples):,} decisions"]
        if point.backlog_at_end > 2 * point.offered_rate:  # over 2 s behind: the worker did not keep up
            notes.append(f"queueing: {point.backlog_at_end:,} events behind at the end")
        if point.warmup_included:
            notes.append("none after the warm-up, so warm-up ones: a lower bound")
        rows.append(
            (
                f"latency event -> visible decision at {point.offered_rate:,.0f} ev/s offered, p50 / p99",
                f"{p50:,.0f} / {p99:,.0f} ms ({'; '.join(notes)})",
                f"p99 <= 100 ms at 5k ev/s: {_met(p99 <= TARGET_P99_MS)}" if target else "(reference)",
            )
        )
    if ours is not None and ours.peak_rss is not None:
        rows.append(("peak RSS of the worker (VmHWM)", f"{ours.peak_rss / 2**20:,.0f} MiB", ""))
    if results.state_bytes:
        sizes = sorted(results.state_bytes)
        mean = sum(sizes) / len(sizes)
        rows.append(
            (
                f"state bytes per customer: changelog value, mean over {len(sizes):,} customers "
                f"(p50 {sizes[len(sizes) // 2]}, p99 {sizes[int(len(sizes) * 0.99)]}, max {sizes[-1]})",
                f"{mean:,.0f} B",
                f"<= 300 B: {_met(mean <= TARGET_STATE_BYTES)}",
            )
        )
    width = max(len(row[0]) for row in rows) if rows else 10
    lines = [f"| {'measure':<{width}} | value | target |", f"|{'-' * (width + 2)}|---|---|"]
    lines += [f"| {label:<{width}} | {value} | {target} |" for label, value, target in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, help="input events for the throughput runs (default 200000)")
    parser.add_argument("--customers", type=int, help="customers in that input (default events / 10)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=6, help="input partitions (the worker's default)")
    parser.add_argument("--rate", type=float, default=5_000, help="offered events/s of the latency run")
    parser.add_argument("--latency-seconds", type=float, help="measured seconds of the latency run (default 30)")
    parser.add_argument(
        "--warmup-seconds",
        type=float,
        # a fresh worker's first seconds of traffic (first commits, first RocksDB writes) take 100-250 ms
        help="unmeasured seconds of traffic before it (default 15)",
    )
    parser.add_argument(
        "--reference-rate",
        type=float,
        default=300,
        help="offered events/s of a second latency run well inside one worker's capacity, so the processing "
        "path's own latency shows when --rate is more than the worker sustains (0: skip; default %(default)s)",
    )
    parser.add_argument("--latency-customers", type=int, default=100_000, help="customers of the latency run")
    parser.add_argument("--budget", type=float, default=300, help="max measured seconds of the worker run")
    parser.add_argument("--baseline-budget", type=float, help="max measured seconds of the baseline (default 90)")
    parser.add_argument("--quick", action="store_true", help="50k events, 10 s of latency, 45 s of baseline")
    parser.add_argument("--profile", action="store_true", help="also profile the worker with py-spy")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep topics, Redis keys and data directories")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the guard workers, e.g. PRODUCER_LINGER=0.01 (faust reads its settings from the "
        "environment first): to try a setting without editing streams/; the default run sets none",
    )
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    parser.add_argument("--bootstrap", default=os.environ.get("FATIGUE_BOOTSTRAP", Settings().bootstrap))
    parser.add_argument("--redis-url", default=os.environ.get("FATIGUE_REDIS_URL", Settings().redis_url))
    args = parser.parse_args(argv)
    events = args.events or (50_000 if args.quick else 200_000)
    customers = args.customers or max(events // 10, 1)
    latency_s = args.latency_seconds or (10.0 if args.quick else 30.0)
    warmup_s = args.warmup_seconds or (5.0 if args.quick else 15.0)
    baseline_budget = args.baseline_budget or (45.0 if args.quick else 90.0)

    ensure_stack(args.bootstrap)
    tune_gc()
    command = 'eval "$(deploy/local/stack.sh env)"; .venv/bin/python bench/stack_bench.py ' + shlex.join(argv)
    results = Results(machine=machine(), command=command.strip())
    print(f"machine: {results.machine}\nreproduce: {results.command}", flush=True)
    import fatigue

    if not Path(fatigue.__file__).resolve().is_relative_to(REPO):
        # the workers run from REPO (``python -m`` puts it first on their path): the replay must use that code too
        print(f"fatigue is imported from {fatigue.__file__}, not {REPO}: run with PYTHONPATH={REPO}", file=sys.stderr)
        return 2
    name = f"bench-{uuid.uuid4().hex[:8]}"
    workdir = CACHE / name
    policy = str(REPO / "config" / "policies" / "default.toml")
    worker_env = dict(item.split("=", 1) for item in args.worker_env)
    main_run = StackRun(args.bootstrap, args.redis_url, name, workdir / "ours", args.partitions, policy)
    main_run.worker_env = worker_env
    runs = [main_run]
    broker = Broker(args.bootstrap, args.partitions)
    try:
        print(f"\n[1/6] input: {events:,} events, {customers:,} customers, event time over 60 days up to now")
        messages = _loadgen.backlog(events, customers, args.seed, int(time.time() * 1000) - 3_600_000, 60.0)
        results.traffic = _loadgen.traffic_profile([(m.key, m.value) for m in messages]).lines()
        for line in results.traffic:
            print(f"    {line}")
        expected = expected_outputs(messages, args.partitions, policy)
        results.expected_decisions = expected.decisions
        results.expected_rejections = expected.rejections
        results.expected_customers = expected.customers
        print(
            f"    replay: {expected.decisions:,} decisions, {expected.rejections:,} rejections, "
            f"{expected.customers:,} customers with state"
        )
        # event times up to 60 days old: the broker's time retention (7 days) would delete them
        _stack.create_topic(args.bootstrap, main_run.events_topic, args.partitions, {"retention.ms": "-1"})
        elapsed = _loadgen.produce_backlog(args.bootstrap, main_run.events_topic, messages)
        size = sum(len(message.value) for message in messages) / 2**20
        print(
            f"    produced {size:,.1f} MiB to {main_run.events_topic} in {elapsed:.1f} s "
            f"({len(messages) / elapsed:,.0f} msg/s)"
        )
        del messages

        # Latency first, on fresh topics while the broker holds nothing else of this run; the baseline before
        # ours, so any background work the broker does after a run (segment deletion, cleaning) can only slow
        # ours, never flatter the ratio.
        if not args.no_latency:
            rates = [args.rate] + ([args.reference_rate] if args.reference_rate > 0 else [])
            for index, rate in enumerate(rates):
                print(f"\n[2/6] latency: a fresh worker fed {rate:,.0f} ev/s with ts = now", flush=True)
                live_name = f"{name}-live{index}"
                live = StackRun(args.bootstrap, args.redis_url, live_name, workdir / live_name, args.partitions, policy)
                live.worker_env = worker_env
                runs.append(live)
                measured = run_latency(
                    live,
                    broker,
                    rate=rate,
                    warmup_s=warmup_s,
                    seconds=latency_s,
                    customers=args.latency_customers,
                    seed=args.seed + 1,
                )
                if index == 0:
                    results.latency = measured
                else:
                    results.latency_within = measured
                print(
                    f"    offered {measured.offered_rate:,.0f} ev/s ({measured.sent:,} sent, producer at most "
                    f"{measured.max_behind_ms:.0f} ms behind), {measured.decisions:,} decisions, input backlog when "
                    f"the producer stopped {measured.backlog_at_end:,}; p50 {measured.percentile(0.5) * 1000:,.1f} "
                    f"ms, p99 {measured.percentile(0.99) * 1000:,.1f} ms, max {measured.percentile(1.0) * 1000:,.1f} ms"
                )

        print("\n[3/6] ceiling: aiokafka consumer + orjson.loads", flush=True)
        results.ceiling = ceiling(args.bootstrap, main_run.events_topic, args.partitions, events)
        print(f"    {_rate(results.ceiling.rate)}")

        print("\n[4/6] Faust floor: a Faust agent that only decodes, timed like ours", flush=True)
        floor = StackRun(args.bootstrap, args.redis_url, f"{name}-floor", workdir / "floor", args.partitions)
        runs.append(floor)
        results.faust_floor = run_baseline(floor, broker, main_run.events_topic, events, args.budget, noop=True)
        print(f"    {_rate(results.faust_floor.rate)}")
        if results.faust_floor.peak_rss:
            results.checks.append(f"peak RSS of the Faust floor: {results.faust_floor.peak_rss / 2**20:,.0f} MiB")

        if not args.no_baseline:
            print(f"\n[5/6] baseline: Faust hopping windowed tables (time-boxed to {baseline_budget:.0f} s)")
            base = StackRun(args.bootstrap, args.redis_url, f"{name}-faust", workdir / "faust", args.partitions)
            runs.append(base)
            results.baseline = run_baseline(base, broker, main_run.events_topic, events, baseline_budget)
            print(f"    {_rate(results.baseline.rate)}")
            if results.baseline.peak_rss:
                results.checks.append(f"peak RSS of the baseline: {results.baseline.peak_rss / 2**20:,.0f} MiB")

        print("\n[6/6] ours: one fatigue worker until every decision is on the topic and in Redis", flush=True)
        results.ours = run_ours(main_run, broker, events, expected, args.budget, results)
        print(f"    {_rate(results.ours.rate)} ({results.ours.wall_seconds:.1f} s from process start)")
        results.state_bytes = state_bytes(broker, main_run)
        results.checks.append(
            f"state bytes: worker changelog mean {sum(results.state_bytes) / max(len(results.state_bytes), 1):,.0f} "
            f"over {len(results.state_bytes):,} keys (8 of them the input offset); replay's states "
            f"{expected.state_bytes:,.0f} over {expected.customers:,} customers"
        )
        print("\n".join(f"    {line}" for line in results.checks))

        if args.profile:
            print("\n[6b] profile: the worker again under py-spy (fresh group, same input)", flush=True)
            prof_name = f"{name}-prof"
            prof = StackRun(args.bootstrap, args.redis_url, prof_name, workdir / "prof", args.partitions, policy)
            prof.events_topic = main_run.events_topic  # the same input, under its own group and outputs
            prof.worker_env = worker_env
            runs.append(prof)
            # a minute of samples is plenty, and the whole input would double the run; the stacks go to CACHE,
            # not the run's directory, so they outlive the cleanup (for flame graphs)
            results.profile = run_profile(prof, broker, events, min(args.budget, 60.0), CACHE)
            print("\n".join(f"    {line}" for line in results.profile))
    finally:
        broker.close()
        if not args.keep:
            for run in runs:
                run.cleanup(topics=run is main_run)  # the others' topics carry the main run's name
            shutil.rmtree(workdir, ignore_errors=True)

    table = report(results)
    print(
        f"\nEnd to end on the local stack: {events:,} events, {customers:,} customers, one worker process, "
        f"{args.partitions} partitions"
    )
    print("\n".join(table))
    print("\n".join(results.checks))
    results.machine["load average at end"] = f"{os.getloadavg()[0]:.2f}"
    print(
        f"machine: {results.machine['cpus']} cpus ({results.machine['cpu']}), Python {results.machine['python']}, "
        f"load average {results.machine['load average at start']} at start, "
        f"{results.machine['load average at end']} at the end"
    )
    print(f"reproduce: {results.command}")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(_as_json(results), option=orjson.OPT_INDENT_2))
    return 0


def _as_json(results: Results) -> dict[str, Any]:
    def throughput(value: Throughput | None) -> dict[str, Any] | None:
        return None if value is None else {**value.__dict__, "rate": value.rate}

    def latency(value: Latency | None) -> dict[str, Any] | None:
        if value is None:
            return None
        return {
            "offered_rate": value.offered_rate,
            "decisions": value.decisions,
            "samples": len(value.samples),
            "backlog_at_end": value.backlog_at_end,
            "warmup_included": value.warmup_included,
            "p50_ms": value.percentile(0.5) * 1000,
            "p99_ms": value.percentile(0.99) * 1000,
            "max_ms": value.percentile(1.0) * 1000,
        }

    sizes = results.state_bytes
    return {
        "machine": results.machine,
        "command": results.command,
        "traffic": results.traffic,
        "expected": {
            "decisions": results.expected_decisions,
            "rejections": results.expected_rejections,
            "customers": results.expected_customers,
        },
        "ceiling": throughput(results.ceiling),
        "faust_floor": throughput(results.faust_floor),
        "ours": throughput(results.ours),
        "baseline": throughput(results.baseline),
        "latency": latency(results.latency),
        "latency_within": latency(results.latency_within),
        "state_bytes_mean": sum(sizes) / len(sizes) if sizes else None,
        "checks": results.checks,
        "profile": results.profile,
    }


if __name__ == "__main__":
    sys.exit(main())
