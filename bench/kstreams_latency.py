"""Latency reference: a Kafka Streams exactly-once pass-through on the same machine, fed like the guard.

What is the least latency a transactional stream processor gets here? ``bench/kstreams/PassThrough.java`` copies
its input topic to its output with ``exactly_once_v2`` (no state, no work), at a given ``commit.interval.ms``
(Kafka Streams' exactly-once default is 100 ms). It is fed by the same paced producer as ``bench/stack_bench.py``'s
latency point (6 partitions, generated events stamped ``ts = now``, 5k events/s by default), and its output is
read committed; latency = when a record is read - when its event was sent (warm-up excluded). Compare with
stack_bench's "event -> topic" at the same rate.

    .venv/bin/python bench/kstreams_latency.py [--rate 5000] [--seconds 20] [--commit-intervals 100,10]

Needs Java 17 and Maven once (the jars go to .cache/bench/kstreams).
"""

from __future__ import annotations

import argparse
import multiprocessing
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import _loadgen
import _stack
import orjson
from kafka import KafkaConsumer

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "bench" / "kstreams"
SOURCE = REPO / "bench" / "kstreams" / "PassThrough.java"
PARTITIONS = 6


def _build() -> str:
    """The classpath of the compiled pass-through (jars fetched and the class compiled once)."""
    lib, classes = CACHE / "lib", CACHE / "classes"
    if not (lib / "kafka-streams-4.3.1.jar").exists():
        subprocess.run(
            ["mvn", "-q", "-f", str(SOURCE.parent / "pom.xml"), "dependency:copy-dependencies",
             f"-DoutputDirectory={lib}", "-DincludeScope=runtime"],
            check=True,
        )  # fmt: skip
    if not (classes / "PassThrough.class").exists() or (classes / "PassThrough.class").stat().st_mtime < (
        SOURCE.stat().st_mtime
    ):
        classes.mkdir(parents=True, exist_ok=True)
        subprocess.run(["javac", "-d", str(classes), "-cp", f"{lib}/*", str(SOURCE)], check=True)
    return f"{classes}:{lib}/*"


def _read(bootstrap: str, topic: str, arrivals: dict[str, float], stop: threading.Event) -> None:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    try:
        while not stop.is_set():
            for records in consumer.poll(timeout_ms=50).values():
                now = time.time()
                for record in records:
                    try:
                        event_id = orjson.loads(record.value).get("event_id")
                    except (orjson.JSONDecodeError, AttributeError):
                        continue  # the generator's malformed messages pass through too
                    if isinstance(event_id, str):
                        arrivals.setdefault(event_id, now)
    finally:
        consumer.close()


def measure(bootstrap: str, classpath: str, commit_ms: int, rate: int, seconds: float, warmup_s: float) -> str:
    name = f"kstreams-{uuid.uuid4().hex[:8]}"
    source, sink = f"{name}.in", f"{name}.out"
    _stack.create_topic(bootstrap, source, PARTITIONS)
    _stack.create_topic(bootstrap, sink, PARTITIONS)
    app = subprocess.Popen(
        ["java", "-Xmx256m", "-cp", classpath, "PassThrough", bootstrap, name, source, sink, str(commit_ms)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    arrivals: dict[str, float] = {}
    stop = threading.Event()
    reader = threading.Thread(target=_read, args=(bootstrap, sink, arrivals, stop), daemon=True)
    reader.start()
    report = CACHE / f"{name}-sent.json"
    try:
        time.sleep(8)  # the app joins its group, initialises its producer and is assigned every partition
        producer = multiprocessing.get_context("spawn").Process(
            target=_loadgen.paced_produce,
            args=(bootstrap, source, int(rate * seconds), 20_000, 7, float(rate), str(report)),
        )
        producer.start()
        producer.join()
        sent = orjson.loads(report.read_bytes())
        deadline = time.time() + 15
        while time.time() < deadline and len(arrivals) < len(sent["send_times"]):
            time.sleep(0.2)
    finally:
        stop.set()
        app.terminate()
        app.wait(timeout=30)
        report.unlink(missing_ok=True)
    start = sent["started"] + warmup_s
    latencies = sorted(
        (arrivals[event_id] - at) * 1000
        for event_id, at in sent["send_times"].items()
        if at >= start and event_id in arrivals
    )
    missing = sum(1 for event_id in sent["send_times"] if event_id not in arrivals)
    if not latencies:
        return f"commit.interval.ms {commit_ms}: nothing arrived ({missing} missing)"

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return (
        f"commit.interval.ms {commit_ms:>4}: event -> output read committed p50 {pick(0.5):.0f} ms, p99 "
        f"{pick(0.99):.0f} ms, max {latencies[-1]:.0f} ms over {len(latencies):,} events ({missing} not arrived)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--commit-intervals", default="100,10")
    args = parser.parse_args()
    if not _stack.broker_answers(args.bootstrap):
        subprocess.run([str(REPO / "deploy" / "local" / "stack.sh"), "up"], check=True)
    classpath = _build()
    print(f"Kafka Streams 4.3.1 pass-through, exactly_once_v2, {PARTITIONS} partitions, {args.rate:,} events/s offered")
    for commit_ms in (int(value) for value in args.commit_intervals.split(",")):
        print(measure(args.bootstrap, classpath, commit_ms, args.rate, args.seconds, args.warmup_seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
