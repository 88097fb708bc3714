"""End-to-end benchmark of one guard worker on the local stack (real Kafka 4 and Redis), with references.

One command, from a clean checkout (it starts the stack with ``deploy/local/stack.sh up`` if Kafka does not
answer):

    .venv/bin/python bench/stack_bench.py [--events 200000] [--quick] [--profile]

What one run does, all on the same generated input (``fatigue.generate``: Zipf-skewed customers, channel and
category mix, call outcomes, opens, preferences, duplicates, late and malformed messages), under a fresh run
name (topic prefix, consumer groups, Redis prefix, data directories) so runs never interfere:

1. produce N events into a fresh 6-partition input topic (murmur2 on the customer id, Kafka timestamp = event
   time) and compute the decisions the worker must publish with ``fatigue.replay.Replay(partitions=6)``, as the
   end-to-end parity tests do;
2. latency: a fresh worker (``--engine auto``) on fresh topics, fed at a fixed offered rate (5k events/s) by a
   separate producer process that stamps each event ``ts = now``. Latency = the moment the decision is in Redis
   - the send time of its ``cause_event_id`` (warm-up excluded). "In Redis" is read from the Redis view's
   per-partition watermark, which its Lua script raises together with the keys it writes, polled every 2 ms by
   a separate process; the decisions topic is read (committed) for each decision's partition and offset, and
   the moment it became visible there is reported too. A second point at ``--reference-rate`` (300 events/s)
   gives the latency well inside one worker's capacity;
3. ceiling: a raw aiokafka consumer that reads the topic and ``orjson.loads`` every value;
4. Faust floor: ``bench/faust_baseline.py --noop``, a Faust agent that only decodes, timed like ours: what a
   Faust stream costs before any state or output;
5. baseline: ``bench/faust_baseline.py``, the same caps with Faust's hopping windowed tables, on the same input
   topic under its own consumer group, timed like ours (time-boxed: ``--baseline-budget``);
6. ours, twice, each under its own run name (consumer group, output topics, changelog, Redis prefix) over the
   same input topic: ``fatigue worker --engine python`` with ``FATIGUE_NO_NATIVE=1`` in its environment, then
   ``fatigue worker --engine native``. Each runs from the beginning of the topic until the group has committed
   every input offset (the worker commits them in the transactions that carry the outputs, so every decision is
   then committed on the topic) and the Redis view has committed both compacted topics (every decision and
   preference is in Redis). Rate = input offsets committed between the first observed commit and that moment /
   elapsed (startup and rebalance excluded). Peak RSS is the worker's ``VmHWM``. Then its outputs are read
   committed (the transactions leave markers and aborted records on the topics: end offsets are not counts): the
   decisions must be the replay's exactly (as a multiset of canonical JSON), tombstones (expired blocks, erasures)
   are counted apart, dead letters against the replay's rejections. State bytes per customer: the mean size of the
   core's state bytes (the changelog value without its 8-byte input-offset prefix) of the latest value per
   customer on ``{run name}-customer-state-v1-changelog``.

Order of the runs: latency first (fresh topics, nothing else of the run on the broker yet), then the ceiling,
the Faust floor, the baseline and ours last (python, then native), so that whatever the broker still does after
a run can only slow ours.

``--profile`` adds a run of each engine under ``py-spy record --gil --native`` (a bench-only tool:
``.venv/bin/pip install py-spy``) over the same input and prints where the worker's time goes, by layer, file and
function.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import hashlib
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
import redis
from _stack import Broker, StackRun

from fatigue.engine import Guard
from fatigue.policy import load_policy
from fatigue.replay import Replay, tune_gc
from streams import redis_keys
from streams.redis_view import watermark_key
from streams.settings import Settings
from streams.state_store import CLOCK_KEY
from streams.task import OFFSET_BYTES

REPO = _stack.REPO
CACHE = REPO / ".cache" / "bench" / "stack"
STACK = REPO / "deploy" / "local" / "stack.sh"
# issue #22: one worker process, exactly-once, input -> decisions topic and Redis
TARGETS_EVENTS_PER_S = {"native": 50_000, "python": 25_000}
ENGINES = ("python", "native")  # the order they run in: native last
TARGET_BASELINE_RATIO = 10.0  # an earlier issue's target, kept as a reference
TARGET_P99_MS = 100.0
TARGET_STATE_BYTES = 300
TARGET_RSS_BYTES = 250 * 2**20
WATERMARK_POLL_S = 0.002


def engine_run(engine: str) -> tuple[list[str], dict[str, str]]:
    """The worker's arguments and extra environment for one engine (python: native unavailable, as the issue's
    ``FATIGUE_NO_NATIVE=1``)."""
    if engine == "python":
        return ["--engine", "python"], {"FATIGUE_NO_NATIVE": "1"}
    return ["--engine", engine], {}


def canonical_digest(decision: dict[str, Any]) -> bytes:
    """A decision counted by a digest of its canonical JSON (the e2e tests' Tally does the same)."""
    return hashlib.blake2b(orjson.dumps(decision, option=orjson.OPT_SORT_KEYS), digest_size=16).digest()


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
    input_seconds: float | None = None  # from the start of the interval until every input offset was committed

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Ours:
    """One engine's run: its throughput, what it published (read committed) and its state sizes."""

    engine: str
    flavour: str = "?"  # fatigue_core_info's label: native, python-mypyc, ...
    throughput: Throughput | None = None
    state_bytes: list[int] = field(default_factory=list)  # the core's bytes of the latest state per customer
    decisions_exact: bool | None = None
    checks: list[str] = field(default_factory=list)


@dataclass
class Latency:
    offered_rate: float
    sent: int
    decisions: int
    flavour: str
    transactions: str  # the worker's transaction count and times
    samples: list[float]  # event -> in Redis, seconds, one per decision caused by a measured (post warm-up) event
    points: list[tuple[float, float]]  # (send time since the producer started, event -> Redis) of the same decisions
    topic_samples: list[float]  # event -> committed on the decisions topic (seen by a read_committed consumer)
    warmup_included: bool  # no decision of a post-warm-up event reached Redis: these are warm-up ones
    not_in_redis: int  # decisions seen on the topic whose offset Redis's watermark never reached
    max_behind_ms: float
    backlog_at_end: int  # input offsets not yet committed when the producer stopped

    @staticmethod
    def _percentile(values: list[float], fraction: float) -> float:
        ordered = sorted(values)
        return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)] if ordered else float("nan")

    def percentile(self, fraction: float) -> float:
        return self._percentile(self.samples, fraction)

    def timeline(self) -> list[tuple[int, int, float, float]]:
        """Per second of sending: (second, decisions, p50 ms, max ms) of event -> Redis, to see when the tail comes."""
        by_second: dict[int, list[float]] = {}
        for sent, latency in self.points:
            by_second.setdefault(int(sent), []).append(latency)
        return [
            (second, len(values), self._percentile(values, 0.5) * 1000, max(values) * 1000)
            for second, values in sorted(by_second.items())
        ]

    def topic_percentile(self, fraction: float) -> float:
        return self._percentile(self.topic_samples, fraction)


@dataclass
class Results:
    machine: dict[str, str]
    command: str
    traffic: list[str] = field(default_factory=list)
    expected_decisions: int = 0
    expected_rejections: int = 0
    expected_customers: int = 0
    expected_state_bytes: float = 0.0
    ceiling: Throughput | None = None
    faust_floor: Throughput | None = None
    ours: dict[str, Ours] = field(default_factory=dict)  # by engine
    baseline: Throughput | None = None
    latency: Latency | None = None  # at the target's offered rate
    latency_within: Latency | None = None  # at --reference-rate, well inside one worker's capacity
    checks: list[str] = field(default_factory=list)
    profile: dict[str, list[str]] = field(default_factory=dict)  # by engine


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
        "load average at start": " ".join(f"{value:.2f}" for value in os.getloadavg()),
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
    digests: Counter[bytes]  # the decisions as a multiset (canonical JSON digests)
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
    digests: Counter[bytes] = Counter()
    for message in messages:
        for decision in replay.feed(message.value, message.key).decisions:
            digests[canonical_digest(decision)] += 1
    sizes = [len(state.to_bytes()) for state in replay.states.values()]
    mean_bytes = sum(sizes) / len(sizes) if sizes else 0.0
    return Expected(
        sum(digests.values()), digests, sum(replay.stats.rejections.values()), len(replay.states), mean_bytes
    )


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
    input_done: float | None = None
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
        if input_done is None and committed >= total:
            input_done = now
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
                input_seconds=input_done - first[0] if input_done is not None else None,
            )
        if now >= next_print:
            next_print += 10
            progress = describe()
            print(f"    {now - started:5.0f}s  {committed:,}/{total:,} input offsets committed{progress}", flush=True)
        time.sleep(poll_s)


def transaction_times(metrics: str) -> str:
    """Count and mean of ``fatigue_transaction_seconds``, and the share over 100 ms."""
    count = _stack.metric_sum(metrics, "fatigue_transaction_seconds_count") or 0
    total = _stack.metric_sum(metrics, "fatigue_transaction_seconds_sum") or 0
    fast = _stack.metric_sum(metrics, "fatigue_transaction_seconds_bucket", le="0.1") or 0
    if not count:
        return "no transactions"
    return (
        f"{count:,.0f} transactions, mean {total / count * 1000:,.0f} ms from the first send to the commit, "
        f"{1 - fast / count:.0%} over 100 ms"
    )


def handled_times(metrics: str) -> str:
    """``fatigue_event_to_decision_seconds``: from the event's ``ts`` (the send time, in ms) to the worker handling
    it, before its transaction; the whole run, warm-up included."""
    count = _stack.metric_sum(metrics, "fatigue_event_to_decision_seconds_count") or 0
    total = _stack.metric_sum(metrics, "fatigue_event_to_decision_seconds_sum") or 0
    if not count:
        return "no decisions timed"
    shares = []
    for le in ("0.05", "0.1", "0.25"):
        within = _stack.metric_sum(metrics, "fatigue_event_to_decision_seconds_bucket", le=le) or 0
        shares.append(f"{within / count:.0%} within {float(le) * 1000:.0f} ms")
    return f"event -> handled in the worker mean {total / count * 1000:,.0f} ms, {', '.join(shares)}"


def core_flavour(metrics: str) -> str:
    """The core a worker runs, from its ``fatigue_core_info{flavour=...}``."""
    for line in metrics.splitlines():
        if line.startswith("fatigue_core_info{") and 'flavour="' in line:
            return line.split('flavour="', 1)[1].split('"', 1)[0]
    return "?"


def run_ours(
    run: StackRun, broker: Broker, total: int, expected: Expected, budget_s: float, engine: str, poll_s: float = 0.05
) -> Ours:
    """One ``fatigue worker --engine ENGINE`` over the pre-produced input until every input offset is committed
    and Redis holds everything on the decisions and preferences topics (its watermarks); then its outputs are
    read committed and checked against the replay."""
    port = _stack.free_port()
    args, env = engine_run(engine)
    run.worker_env = {**run.worker_env, **env}
    # wall clock never takes over: the decisions are then exactly the replay's (no quiet-partition deadlines)
    process = run.start(run.worker_args(port, ["--quiet-after", "1e9", *args]), "worker.log")
    topics = run.topics

    redis_client = redis.Redis.from_url(run.redis_url)

    def in_redis() -> bool:
        # the input offsets are committed in the transactions that carry the outputs: once they all are, every
        # decision is committed on the topic; Redis holds a partition up to its watermark, which the view's script
        # raises with the keys it writes (past the transaction markers)
        for topic in (topics["decisions"], topics["prefs"]):
            for partition, end in broker.ends(topic).items():
                held = redis_client.get(watermark_key(run.name, topic, partition))
                if end > 0 and (held is None or int(held) < end - 1):
                    return False
        return True

    def describe() -> str:
        ends = broker.ends(topics["decisions"])
        held = sum(int(redis_client.get(watermark_key(run.name, topics["decisions"], p)) or -1) + 1 for p in ends)
        return f", Redis at {held:,}/{sum(ends.values()):,} of the decisions topic's offsets"

    ours = Ours(engine)
    try:
        ours.throughput = follow(
            broker,
            process,
            run.name,
            topics["events"],
            total,
            budget_s=budget_s,
            done=in_redis,
            describe=describe,
            poll_s=poll_s,
        )
        metrics = _stack.scrape(port)
    except RuntimeError:
        print(run.log_tail("worker.log"), file=sys.stderr)
        raise
    run.stop(process)
    ours.flavour = core_flavour(metrics)
    check_outputs(run, broker, total, expected, metrics, ours)
    return ours


def check_outputs(run: StackRun, broker: Broker, total: int, expected: Expected, metrics: str, ours: Ours) -> None:
    """Read every output topic committed: decisions against the replay (exact), tombstones apart, dead letters
    against the replay's rejections; the state sizes from the changelog."""
    topics = run.topics
    on_topic: Counter[bytes] = Counter()
    tombstones = 0
    decisions_read = broker.read_all(topics["decisions"])
    for _, value in decisions_read:
        if value is None:
            tombstones += 1
        else:
            on_topic[canonical_digest(orjson.loads(value))] += 1
    decisions = sum(on_topic.values())
    missing = sum((expected.digests - on_topic).values())
    extra = sum((on_topic - expected.digests).values())
    ours.decisions_exact = missing == 0 and extra == 0
    expired = int(_stack.metric_sum(metrics, "fatigue_tombstones_total") or 0)
    erasures = int(_stack.metric_sum(metrics, "fatigue_erasures_total") or 0)
    verdict = (
        "exactly the replay's"
        if ours.decisions_exact
        else f"**not the replay's**: {missing:,} missing, {extra:,} extra"
    )
    ours.checks.append(
        f"decisions on the topic (read committed) {decisions:,}, {verdict} ({expected.decisions:,}); tombstones "
        f"{tombstones:,} besides (expired blocks tombstoned, fatigue_tombstones_total: {expired:,}; the rest for "
        f"{erasures:,} erasures); decisions topic end offsets {broker.end(topics['decisions']):,} (markers included)"
    )
    counts = {kind: len(broker.read_all(topics[kind])) for kind in ("dlq", "violations", "prefs")}
    rerouted = _stack.metric_sum(metrics, "fatigue_rerouted_total") or 0
    ours.checks.append(
        f"dead letters (read committed) {counts['dlq']:,} (replay rejections: {expected.rejections:,}"
        f"{', equal' if counts['dlq'] == expected.rejections else ', **differ**'}); re-routed inputs {rerouted:g} "
        f"(murmur2 keys: 0 expected)"
    )
    transactions = {
        outcome: int(_stack.metric_sum(metrics, "fatigue_transactions_total", outcome=outcome) or 0)
        for outcome in ("committed", "failed", "fenced")
    }
    changelog = Settings(app_id=run.name).changelog_topic
    changelog_records = broker.read_all(changelog)
    outputs = {"changelog": len(changelog_records), "decisions + tombstones": len(decisions_read)}
    outputs |= {"violations": counts["violations"], "dead letters": counts["dlq"], "preferences": counts["prefs"]}
    produced = ", ".join(f"{kind} {count:,}" for kind, count in outputs.items())
    store = _stack.metric_sum(metrics, "fatigue_state_store_bytes") or 0
    ours.checks.append(
        f"records produced (committed): {sum(outputs.values()) / total:.2f} per input event ({produced}) in "
        f"{transactions['committed']:,} transactions ({transactions['failed']} failed, {transactions['fenced']} "
        f"fenced; {transaction_times(metrics)}); RocksDB at the end (fatigue_state_store_bytes): "
        f"{store / 2**20:,.0f} MiB"
    )
    measured = ours.throughput
    if measured is not None and measured.input_seconds:
        ours.checks.append(
            f"every input offset (and so every output) committed {measured.input_seconds:.1f} s into the interval "
            f"({measured.events / measured.input_seconds / 1000:,.1f}k ev/s input -> topics), the Redis view done "
            f"{measured.seconds - measured.input_seconds:.1f} s later"
        )
    ours.state_bytes = core_state_bytes(changelog_records)
    written = sum(len(value or b"") for _, value in changelog_records)
    ours.checks.append(
        f"state changelog {changelog}: {written / 2**20:,.1f} MiB of values written; latest state per customer "
        f"{len(ours.state_bytes):,} customers, core bytes (the 8-byte offset prefix left out) mean "
        f"{sum(ours.state_bytes) / max(len(ours.state_bytes), 1):,.0f} B; the replay's states "
        f"{expected.state_bytes:,.0f} B over {expected.customers:,} customers"
    )
    ours.checks.append(redis_bytes(run.redis_url, run.name))


def redis_bytes(redis_url: str, prefix: str) -> str:
    """What the view keeps in Redis per customer, by Redis's own count (MEMORY USAGE, key and overhead included):
    the customers with a key of the hash-tagged layout, and the mean bytes per customer of their block keys,
    preference views, position hashes and, if written, the legacy layout's keys."""
    client = redis_keys.sync_client(redis_url)
    try:
        names = [key.decode() for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
        pipe = client.pipeline(transaction=False)
        for name in names:
            pipe.memory_usage(name, samples=0)
        sizes = pipe.execute() if names else []
    finally:
        client.close()
    kinds: Counter[str] = Counter()
    customers: set[str] = set()
    for name, size in zip(names, sizes, strict=True):
        parsed = redis_keys.parse_customer_key(prefix, name)
        if parsed is not None:
            customers.add(parsed[0])
            kinds[parsed[1].split(":", 1)[0]] += size or 0
        elif name.startswith((f"{prefix}:block:", f"{prefix}:prefs:")):
            kinds["legacy"] += size or 0
    count = max(len(customers), 1)
    parts = ", ".join(f"{kind} {total / count:,.0f}" for kind, total in sorted(kinds.items()))
    return (
        f"Redis (MEMORY USAGE): {len(customers):,} customers with keys, {sum(kinds.values()) / count:,.0f} B per "
        f"customer ({parts})"
    )


def core_state_bytes(changelog: list[tuple[bytes | None, bytes | None]]) -> list[int]:
    """The core's state bytes of the latest changelog value per customer: the value without the input offset the
    worker puts in front of it (``streams.task.OFFSET_BYTES``); deleted customers, erasure markers (a bare offset)
    and the partition clock's record left out."""
    latest: dict[bytes | None, bytes | None] = {}
    for key, value in changelog:
        latest[key] = value
    latest.pop(CLOCK_KEY, None)
    return [len(value) - OFFSET_BYTES for value in latest.values() if value is not None and len(value) > OFFSET_BYTES]


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
    """A fresh worker fed at ``rate`` events/s (``ts = now``); latency from send to the decision in Redis."""
    from kafka import KafkaConsumer, TopicPartition

    port = _stack.free_port()
    topics = run.topics
    _stack.create_topic(run.bootstrap, topics["events"], run.partitions)
    process = run.start(run.worker_args(port), "worker.log")
    try:
        _wait_assigned(port, topics["events"], run.partitions, process)
        flavour = core_flavour(_stack.scrape(port))
    except (RuntimeError, OSError):
        print(run.log_tail("worker.log"), file=sys.stderr)
        raise
    context = multiprocessing.get_context("spawn")
    # Redis's watermarks of the decisions view, polled by their own process from before the first event
    keys = [watermark_key(run.name, topics["decisions"], partition) for partition in range(run.partitions)]
    watermarks_path = run.workdir / "watermarks.json"
    stop_watching = context.Event()
    watcher = context.Process(
        target=_stack.watch_watermarks,
        args=(run.redis_url, keys, str(watermarks_path), stop_watching, WATERMARK_POLL_S),
        name="watermark-watcher",
    )
    watcher.start()
    consumer = KafkaConsumer(
        bootstrap_servers=run.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        max_poll_records=10_000,
        isolation_level="read_committed",
    )
    tps = [TopicPartition(topics["decisions"], partition) for partition in range(run.partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    report_path = run.workdir / "sent.json"
    count = int(rate * (warmup_s + seconds))
    producer = context.Process(
        target=_loadgen.paced_produce,
        args=(run.bootstrap, topics["events"], count, customers, seed, rate, str(report_path)),
        name="paced-producer",
    )
    producer.start()
    seen: list[tuple[str, int, int, float]] = []  # (cause event id, partition, offset, visible on the topic)
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
                        cause = orjson.loads(record.value)["cause_event_id"]
                        seen.append((cause, record.partition, record.offset, visible))
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
        time.sleep(0.5)  # the Redis view's last batch
    finally:
        try:
            scraped = _stack.scrape(port)
            transactions = f"{transaction_times(scraped)}; {handled_times(scraped)}"
        except OSError:
            transactions = "?"
        consumer.close()
        stop_watching.set()
        watcher.join(timeout=30)
        producer.join(timeout=30)
        run.stop(process)
    if producer.exitcode != 0:
        raise RuntimeError(f"the paced producer exited with {producer.exitcode}")
    if watcher.exitcode != 0:
        raise RuntimeError(f"the watermark watcher exited with {watcher.exitcode}")
    # per partition, the times its watermark changed and the watermark from then on
    changes: list[list[float]] = orjson.loads(watermarks_path.read_bytes())
    times: dict[int, list[float]] = {partition: [] for partition in range(run.partitions)}
    marks: dict[int, list[int]] = {partition: [] for partition in range(run.partitions)}
    for at, index, mark in changes:
        times[int(index)].append(at)
        marks[int(index)].append(int(mark))

    def in_redis_at(partition: int, offset: int) -> float | None:
        position = bisect.bisect_left(marks[partition], offset)  # watermarks only rise
        return times[partition][position] if position < len(marks[partition]) else None

    report: dict[str, Any] = orjson.loads(report_path.read_bytes())
    send_times: dict[str, float] = report["send_times"]
    measured_from = report["started"] + warmup_s
    timed = [
        (send_times[cause], in_redis_at(partition, offset), visible)
        for cause, partition, offset, visible in seen
        if cause in send_times
    ]
    not_in_redis = sum(1 for _, redis_at, _ in timed if redis_at is None)
    points = [(sent, redis_at, visible) for sent, redis_at, visible in timed if sent >= measured_from]
    warmup_included = not any(redis_at is not None for _, redis_at, _ in points)
    if warmup_included:
        # an overloaded worker may not reach a single post-warm-up event before the run ends: what was seen
        # (warm-up included) is then a lower bound of the latency
        points = timed
    return Latency(
        offered_rate=report["sent"] / (report["finished"] - report["started"]),
        sent=report["sent"],
        decisions=len(seen),
        flavour=flavour,
        transactions=transactions,
        samples=[redis_at - sent for sent, redis_at, _ in points if redis_at is not None],
        points=[(sent - report["started"], redis_at - sent) for sent, redis_at, _ in points if redis_at is not None],
        topic_samples=[visible - sent for sent, _, visible in points],
        warmup_included=warmup_included,
        not_in_redis=not_in_redis,
        max_behind_ms=report["max_behind_ms"],
        backlog_at_end=backlog_at_end,
    )


# ---------------------------------------------------------------------------------------------- profile


def run_profile(run: StackRun, broker: Broker, total: int, budget_s: float, out_dir: Path, engine: str) -> list[str]:
    """The worker over the same input under ``py-spy record --gil --native``; where its time goes.

    ``--gil`` keeps only samples of the thread holding the GIL: where the worker's Python CPU goes. Time spent
    waiting (for the broker's acks, in syscalls with the GIL released) is in no sample; the worker's cores used say
    how much that is. ``--native`` adds the C and Rust frames (orjson, the native core, mypyc-compiled modules,
    the interpreter's allocator), which are otherwise counted to the Python function that called them.
    """
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        return ["py-spy not found: .venv/bin/pip install py-spy (a bench-only tool, not a project dependency)"]
    port = _stack.free_port()
    args, env = engine_run(engine)
    run.worker_env = {**run.worker_env, **env}
    process = run.start(run.worker_args(port, ["--quiet-after", "1e9", *args]), "worker.log")
    raw_path = out_dir / f"{run.name}-worker-profile.txt"
    spy: list[subprocess.Popen[bytes]] = []

    def attach() -> None:
        # attached once the worker consumes, so start-up does not dilute the profile
        command = [py_spy, "record", "--pid", str(process.pid), "--rate", "200", "--gil", "--native"]
        spy.append(run.start([*command, "--format", "raw", "--output", str(raw_path)], "py-spy.log"))

    measured = follow(
        broker, process, run.name, run.topics["events"], total, budget_s=budget_s, on_first=attach, poll_s=0.05
    )
    for recorder in spy:
        recorder.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        recorder.wait(timeout=60)
    run.stop(process)
    if not raw_path.exists():
        return [f"py-spy wrote nothing; see {run.workdir / 'py-spy.log'}: {run.log_tail('py-spy.log', 5)}"]
    cores = f", {measured.cpu_seconds / measured.seconds:.2f} cores" if measured.cpu_seconds else ""
    lines = [
        f"--engine {engine}: py-spy --gil --native at 200 Hz: {_rate(measured.rate)} while sampled{cores}; "
        f"stacks in {raw_path}"
    ]
    return lines + hot_spots(raw_path.read_text())


_SO_SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


def _frame_name(frame: str) -> tuple[str, str]:
    """``function (path/to/module.py:line)`` -> (``function (module path)``, file), lines dropped; a native frame
    ``symbol (library.so)`` keeps its library as the file."""
    name, _, where = frame.partition(" (")
    where = where.removesuffix(")")
    path = where.rsplit(":", 1)[0] if where.endswith(tuple("0123456789")) and ":" in where else where
    for marker in ("site-packages/", "/main/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    path = path.replace(_SO_SUFFIX, " (compiled)")
    parts = path.split("/")
    if parts[0] in ("faust", "aiokafka", "mode", "kafka") and len(parts) > 2:
        file = "/".join(parts[:2])  # aiokafka/producer, aiokafka/consumer, aiokafka/protocol, ...
    elif parts[0] in ("fatigue", "streams"):
        file = path.removesuffix(".py")  # each file of ours
    elif len(parts) > 1:
        file = parts[0]
    else:
        file = path.removesuffix(".py")  # a standard-library module (asyncio's are under asyncio/), a library
    return f"{name} ({path})", file


# Where a sample's time goes: the innermost frame that belongs to one of these (checked in this order per frame,
# from the innermost out). orjson inside the task counts as orjson, the Rust core inside fatigue/native.py as the
# native core, aiokafka's producer inside streams/transactions as aiokafka. mypyc's compiled functions show as
# ``CPyDef_{module}___{function} (__native_fatigue_core.c)``; the runtime helpers they call (int_ops.c, CPy.h...)
# belong to no layer, so they count to the compiled function around them.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("orjson (encode/decode, wherever called)", ("orjson/",)),
    ("core, native: fatigue._native (Rust)", ("fatigue/_native",)),
    ("core, native: the Python bridge (fatigue/native.py)", ("fatigue/native.py",)),
    (
        "fatigue.clock.partition_for_key (murmur2, mypyc-compiled; per input and keyed output record)",
        ("clock___murmur2", "clock___partition_for_key", "murmur2 (", "partition_for_key ("),
    ),
    (
        "core, Python engine (fatigue/events, engine, state, clock, policy: mypyc-compiled)",
        (
            "__native_fatigue_core",
            "fatigue_core__mypyc",
            "fatigue/events",
            "fatigue/engine",
            "fatigue/state",
            "fatigue/clock",
            "fatigue/policy",
            "fatigue/timeutil",
        ),
    ),
    ("partition driver (fatigue/partition)", ("fatigue/partition",)),
    ("metrics: prometheus_client, streams/metrics", ("prometheus_client/", "streams/metrics", "faust/sensors/")),
    ("local store: RocksDB (streams/state_store, rocksdict)", ("streams/state_store", "rocksdict", "librocksdb")),
    ("Redis view (streams/redis_view, redis-py)", ("streams/redis_view", "/redis/", "redis/")),
    ("aiokafka producer (batches, sends, transaction calls)", ("aiokafka/producer/",)),
    ("aiokafka consumer (fetch, records)", ("aiokafka/consumer/",)),
    ("aiokafka protocol and connections", ("aiokafka/",)),
    ("transactions (streams/transactions)", ("streams/transactions",)),
    (
        "task: routing, outputs, seal, timers (streams/task, collector, timers)",
        ("streams/task", "streams/collector", "streams/timers"),
    ),
    ("pipeline loop (streams/pipeline)", ("streams/pipeline",)),
)


def _layer(frames: list[str]) -> str:
    for frame in reversed(frames):
        for layer, fragments in LAYERS:
            if any(fragment in frame for fragment in fragments):
                return layer
    return "event loop, Faust host, interpreter, the rest"


def hot_spots(collapsed: str, top: int = 15) -> list[str]:
    """Own time per file and per function, and inclusive time per function, from py-spy's collapsed stacks
    (``frame;frame;... count`` lines, the innermost frame last; native frames without a symbol left out)."""
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    files: Counter[str] = Counter()
    python_files: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        raw_frames = [frame for frame in stack.split(";") if " (" in frame and not frame.endswith(" (?)")]
        frames = [_frame_name(frame) for frame in raw_frames]
        if not frames:
            continue
        total += count
        layers[_layer(raw_frames)] += count
        own[frames[-1][0]] += count
        files[frames[-1][1]] += count
        python = [file for (_, file), raw in zip(frames, raw_frames, strict=True) if ".py:" in raw]
        python_files[python[-1] if python else "(no Python frame)"] += count
        for name in {name for name, _ in frames}:
            inclusive[name] += count
    if not total:
        return ["no samples"]
    lines = [f"{total} samples; by layer (the innermost frame that belongs to one):"]
    lines += [f"  {count / total:6.1%}  {name}" for name, count in layers.most_common()]
    lines.append("own time by file (or library):")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in files.most_common(top)]
    lines.append("own time by innermost Python file (C, Rust and library frames counted to their Python caller):")
    lines += [f"  {count / total:6.1%}  {name}" for name, count in python_files.most_common(top)]
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
    top, base, floor = results.ceiling, results.baseline, results.faust_floor
    rows: list[tuple[str, str, str]] = []
    for engine, ours in results.ours.items():
        measured = ours.throughput
        if measured is None:
            continue
        cores = f", {measured.cpu_seconds / measured.seconds:.2f} cores" if measured.cpu_seconds else ""
        partial = "" if measured.complete else ", **time-boxed: incomplete**"
        exact = {True: "decisions exact", False: "**decisions differ**", None: "decisions unchecked"}
        target = TARGETS_EVENTS_PER_S[engine]
        if measured.input_seconds:
            partial += f"; input -> topics alone {_rate(measured.events / measured.input_seconds)}"
        rows.append(
            (
                f"**ours, --engine {engine}** ({ours.flavour}): input -> decisions topic + Redis, exactly-once "
                f"({measured.events:,} events in {measured.seconds:.1f} s{cores}{partial}; "
                f"{exact[ours.decisions_exact]})",
                f"**{_rate(measured.rate)}**",
                f">= {target // 1000}k ev/s: {_met(measured.rate >= target and measured.complete)}",
            )
        )
    if floor is not None:
        rows.append(("Faust floor: a Faust agent that only decodes (no state, no output)", _rate(floor.rate), ""))
    if top is not None:
        rows.append(("ceiling: aiokafka consumer + `orjson.loads`", _rate(top.rate), ""))
    if base is not None:
        partial = "" if base.complete else f", time-boxed: {base.events:,} events in {base.seconds:.0f} s"
        rows.append((f"baseline: Faust hopping windowed tables{partial}", _rate(base.rate), ""))
    for engine, ours in results.ours.items():
        measured = ours.throughput
        if measured is None:
            continue
        ratios = []
        if floor is not None and floor.rate > 0:
            ratios.append(f"{measured.rate / floor.rate:.1f}x the Faust floor")
        if top is not None and top.rate > 0:
            ratios.append(f"{measured.rate / top.rate:.3f} of the ceiling")
        if base is not None and not stalled(base) and base.rate > 0:
            ratios.append(f"{measured.rate / base.rate:.0f}x the baseline")
        elif base is not None:
            ratios.append("baseline stalled (see its log tail above)")
        if ratios:
            baseline_target = ""
            if base is not None and not stalled(base) and base.rate > 0:
                ok = measured.rate / base.rate >= TARGET_BASELINE_RATIO
                baseline_target = f">= 10x baseline: {_met(ok)}"
            rows.append((f"ours ({engine}) against the references", ", ".join(ratios), baseline_target))
    for point, target in ((results.latency, True), (results.latency_within, False)):
        if point is None or not point.samples:
            continue
        p50, p99 = point.percentile(0.5) * 1000, point.percentile(0.99) * 1000
        notes = [f"{len(point.samples):,} decisions", point.flavour]
        if point.backlog_at_end > 2 * point.offered_rate:  # over 2 s behind: the worker did not keep up
            notes.append(f"queueing: {point.backlog_at_end:,} events behind at the end")
        if point.warmup_included:
            notes.append("none after the warm-up, so warm-up ones: a lower bound")
        if point.not_in_redis:
            notes.append(f"{point.not_in_redis:,} never reached Redis in the run")
        rows.append(
            (
                f"latency event -> decision in Redis at {point.offered_rate:,.0f} ev/s offered, p50 / p99",
                f"{p50:,.0f} / {p99:,.0f} ms ({'; '.join(notes)})",
                f"p99 <= 100 ms at 5k ev/s: {_met(p99 <= TARGET_P99_MS)}" if target else "(reference)",
            )
        )
        rows.append(
            (
                f"latency event -> decision committed on the topic at {point.offered_rate:,.0f} ev/s, p50 / p99",
                f"{point.topic_percentile(0.5) * 1000:,.0f} / {point.topic_percentile(0.99) * 1000:,.0f} ms",
                "(reference: read by a consumer polling with fetch_max_wait 100 ms)",
            )
        )
    for engine, ours in results.ours.items():
        if ours.throughput is not None and ours.throughput.peak_rss is not None:
            rss = ours.throughput.peak_rss
            rows.append(
                (
                    f"peak RSS of the worker, --engine {engine} (VmHWM)",
                    f"{rss / 2**20:,.0f} MiB",
                    f"<= 250 MiB: {_met(rss <= TARGET_RSS_BYTES)}",
                )
            )
    for engine, ours in results.ours.items():
        sizes = sorted(ours.state_bytes)
        if not sizes:
            continue
        mean = sum(sizes) / len(sizes)
        rows.append(
            (
                f"state bytes per customer, --engine {engine}: the core's state bytes (changelog value without its "
                f"8-byte offset prefix), mean over {len(sizes):,} customers (p50 {sizes[len(sizes) // 2]}, p99 "
                f"{sizes[int(len(sizes) * 0.99)]}, max {sizes[-1]})",
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
    parser.add_argument("--warmup-seconds", type=float, help="unmeasured seconds of traffic before it (default 15)")
    parser.add_argument(
        "--reference-rate",
        type=float,
        default=300,
        help="offered events/s of a second latency run well inside one worker's capacity (0: skip; default "
        "%(default)s)",
    )
    parser.add_argument("--latency-customers", type=int, default=100_000, help="customers of the latency run")
    parser.add_argument("--budget", type=float, default=300, help="max measured seconds of each worker run")
    parser.add_argument("--baseline-budget", type=float, help="max measured seconds of the baseline (default 90)")
    parser.add_argument("--quick", action="store_true", help="50k events, 10 s of latency, 45 s of baseline")
    parser.add_argument("--profile", action="store_true", help="also profile each engine's worker with py-spy")
    parser.add_argument(
        "--engines",
        default=",".join(ENGINES),
        help="the engines of ours, in the order they run (default %(default)s)",
    )
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep topics, Redis keys and data directories")
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the guard workers, e.g. FATIGUE_INPUT_BATCH=10000: to try a setting without editing "
        "streams/; the default run sets none",
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
    engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    if not engines or any(engine not in TARGETS_EVENTS_PER_S for engine in engines):
        parser.error(f"--engines: a comma-separated list of {', '.join(TARGETS_EVENTS_PER_S)}")

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
    # the input's run: its topic is every other run's input; its cleanup removes every topic named after it
    main_run = StackRun(args.bootstrap, args.redis_url, name, workdir / "input", args.partitions, policy)
    runs = [main_run]
    broker = Broker(args.bootstrap, args.partitions)

    def sibling(suffix: str) -> StackRun:
        """A run of its own (group, outputs, Redis prefix, data) over the main run's input topic."""
        run = StackRun(args.bootstrap, args.redis_url, f"{name}-{suffix}", workdir / suffix, args.partitions, policy)
        run.events_topic = main_run.events_topic
        run.worker_env = dict(worker_env)
        runs.append(run)
        return run

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
        results.expected_state_bytes = expected.state_bytes
        print(
            f"    replay: {expected.decisions:,} decisions, {expected.rejections:,} rejections, "
            f"{expected.customers:,} customers with state (mean {expected.state_bytes:,.0f} B)"
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

        # Latency first, on fresh topics while the broker holds nothing else of this run; the references before
        # ours, so any background work the broker does after a run (segment deletion, cleaning) can only slow
        # ours, never flatter the ratios.
        if not args.no_latency:
            rates = [args.rate] + ([args.reference_rate] if args.reference_rate > 0 else [])
            for index, rate in enumerate(rates):
                print(f"\n[2/6] latency: a fresh worker fed {rate:,.0f} ev/s with ts = now", flush=True)
                live_name = f"{name}-live{index}"
                live = StackRun(args.bootstrap, args.redis_url, live_name, workdir / live_name, args.partitions, policy)
                live.worker_env = dict(worker_env)
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
                    f"    {measured.flavour} core, offered {measured.offered_rate:,.0f} ev/s ({measured.sent:,} sent, "
                    f"producer at most {measured.max_behind_ms:.0f} ms behind), {measured.decisions:,} decisions, "
                    f"input backlog when the producer stopped {measured.backlog_at_end:,}; event -> Redis p50 "
                    f"{measured.percentile(0.5) * 1000:,.1f} ms, p99 {measured.percentile(0.99) * 1000:,.1f} ms, "
                    f"max {measured.percentile(1.0) * 1000:,.1f} ms over {len(measured.samples):,} decisions "
                    f"({measured.not_in_redis:,} not in Redis by the end); event -> topic p50 "
                    f"{measured.topic_percentile(0.5) * 1000:,.1f} ms, "
                    f"p99 {measured.topic_percentile(0.99) * 1000:,.1f} ms; worker: {measured.transactions}"
                )

        print("\n[3/6] ceiling: aiokafka consumer + orjson.loads", flush=True)
        results.ceiling = ceiling(args.bootstrap, main_run.events_topic, args.partitions, events)
        print(f"    {_rate(results.ceiling.rate)}")

        print("\n[4/6] Faust floor: a Faust agent that only decodes, timed like ours", flush=True)
        floor = sibling("floor")
        results.faust_floor = run_baseline(floor, broker, main_run.events_topic, events, args.budget, noop=True)
        print(f"    {_rate(results.faust_floor.rate)}")
        if results.faust_floor.peak_rss:
            results.checks.append(f"peak RSS of the Faust floor: {results.faust_floor.peak_rss / 2**20:,.0f} MiB")

        if not args.no_baseline:
            print(f"\n[5/6] baseline: Faust hopping windowed tables (time-boxed to {baseline_budget:.0f} s)")
            base = sibling("faust")
            results.baseline = run_baseline(base, broker, main_run.events_topic, events, baseline_budget)
            print(f"    {_rate(results.baseline.rate)}")
            if results.baseline.peak_rss:
                results.checks.append(f"peak RSS of the baseline: {results.baseline.peak_rss / 2**20:,.0f} MiB")

        for engine in engines:
            print(
                f"\n[6/6] ours: one fatigue worker --engine {engine} until every decision is on the topic and in Redis",
                flush=True,
            )
            ours = run_ours(sibling(engine), broker, events, expected, args.budget, engine)
            results.ours[engine] = ours
            assert ours.throughput is not None
            print(
                f"    {ours.flavour} core: {_rate(ours.throughput.rate)} ({ours.throughput.wall_seconds:.1f} s from "
                f"process start)"
            )
            print("\n".join(f"    {line}" for line in ours.checks), flush=True)

        if args.profile:
            for engine in engines:
                print(f"\n[6b] profile: --engine {engine} again under py-spy (fresh group, same input)", flush=True)
                # the stacks go to CACHE, not the run's directory, so they outlive the cleanup (for flame graphs)
                results.profile[engine] = run_profile(
                    sibling(f"prof-{engine}"), broker, events, min(args.budget, 120.0), CACHE, engine
                )
                print("\n".join(f"    {line}" for line in results.profile[engine]), flush=True)
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
    for engine, ours in results.ours.items():
        print("\n".join(f"{engine}: {line}" for line in ours.checks))
    print("\n".join(results.checks))
    results.machine["load average at end"] = " ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"machine: {results.machine['cpus']} cpus ({results.machine['cpu']}), Python {results.machine['python']}, "
        f"load average (1, 5, 15 min) {results.machine['load average at start']} at start, "
        f"{results.machine['load average at end']} at the end; code {results.machine['code']}"
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
            "flavour": value.flavour,
            "transactions": value.transactions,
            "decisions": value.decisions,
            "samples": len(value.samples),
            "not_in_redis": value.not_in_redis,
            "backlog_at_end": value.backlog_at_end,
            "warmup_included": value.warmup_included,
            "redis_p50_ms": value.percentile(0.5) * 1000,
            "redis_p99_ms": value.percentile(0.99) * 1000,
            "redis_max_ms": value.percentile(1.0) * 1000,
            "topic_p50_ms": value.topic_percentile(0.5) * 1000,
            "topic_p99_ms": value.topic_percentile(0.99) * 1000,
            "timeline": value.timeline(),
        }

    return {
        "machine": results.machine,
        "command": results.command,
        "traffic": results.traffic,
        "expected": {
            "decisions": results.expected_decisions,
            "rejections": results.expected_rejections,
            "customers": results.expected_customers,
            "state_bytes_mean": results.expected_state_bytes,
        },
        "ceiling": throughput(results.ceiling),
        "faust_floor": throughput(results.faust_floor),
        "baseline": throughput(results.baseline),
        "ours": {
            engine: {
                "flavour": ours.flavour,
                "throughput": throughput(ours.throughput),
                "decisions_exact": ours.decisions_exact,
                "state_bytes_mean": sum(ours.state_bytes) / len(ours.state_bytes) if ours.state_bytes else None,
                "checks": ours.checks,
            }
            for engine, ours in results.ours.items()
        },
        "latency": latency(results.latency),
        "latency_within": latency(results.latency_within),
        "checks": results.checks,
        "profile": results.profile,
    }


if __name__ == "__main__":
    sys.exit(main())
