"""Waiting for transaction markers in tests: a producer's commit/abort returns once the coordinator has decided,
before the markers are written to the data partitions, so a reader started right after can find the last stable
offset still before the transaction (a CI run read a partition whose last abort marker was not there yet)."""

from __future__ import annotations

import time

from kafka import KafkaConsumer, TopicPartition


def wait_for_last_stable_offsets(bootstrap: str, topic: str, wanted: dict[int, int], timeout_s: float = 30) -> None:
    """Until ``topic``'s partitions have the last stable offsets ``wanted`` (every marker written)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed")
    try:
        tps = [TopicPartition(topic, partition) for partition in wanted]
        deadline = time.monotonic() + timeout_s
        while True:
            ends = {tp.partition: offset for tp, offset in consumer.end_offsets(tps).items()}
            if ends == wanted or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert ends == wanted, f"transaction markers not written in {timeout_s}s: last stable offsets {ends}"
    finally:
        consumer.close()
