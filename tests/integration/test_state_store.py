"""A partition's local store on the real RocksDB, and its restore from a real changelog topic read committed.

- a corrupt database is set aside and opened empty (so the partition is restored from the changelog) instead of
  crash-looping the worker; any other open error (a lock still held) is raised;
- the restore applies exactly the committed changelog records the store lacks (none of an aborted transaction),
  from the store's position to the last stable offset, and records that position; a store whose position lies
  outside the changelog is restored from scratch.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.restore import restore
from streams.state_store import PartitionStore, store_options
from tests.transaction_markers import wait_for_last_stable_offsets

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


def _store(path: Path) -> PartitionStore:
    return PartitionStore(path, store_options(1 << 20, 1 << 20))


def test_a_corrupt_database_is_set_aside_and_opened_empty(tmp_path: Path) -> None:
    path = tmp_path / "partition-0.db"
    store = _store(path)
    store.apply([(f"cust-{n}".encode(), b"state" * 20) for n in range(1000)], position=1000)
    store._db.flush()
    store.close()
    # what a worker found after a SIGKILL: the MANIFEST names a table file that is gone
    tables = list(path.glob("*.sst"))
    assert tables
    for table_file in tables:
        table_file.unlink()

    reopened = _store(path)
    try:
        assert list(reopened.states()) == []
        assert reopened.position == 0  # restored from the start of the changelog
    finally:
        reopened.close()
    (aside,) = tmp_path.glob("partition-0.db.corrupt-*")
    assert any(aside.glob("MANIFEST-*")), "the corrupt database is kept for a post-mortem"


def test_other_open_errors_are_raised(tmp_path: Path) -> None:
    path = tmp_path / "partition-0.db"
    store = _store(path)
    try:
        with pytest.raises(Exception, match=r"(?i)lock"):
            _store(path)
    finally:
        store.close()
    assert not list(tmp_path.glob("partition-0.db.corrupt-*"))


async def _write_changelog(bootstrap: str, topic: str) -> None:
    """Committed, aborted, committed transactions, then a plain tombstone: offsets 0..2 (+marker), 4..5 aborted
    (+marker), 7 (+marker), 9 tombstone."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"{topic}-writer")
    await producer.start()
    try:
        for keys, commit in ((["a", "b", "c"], True), (["a", "d"], False), (["b"], True)):
            await producer.begin_transaction()
            for key in keys:
                await producer.send_and_wait(topic, f"{key}-{commit}".encode(), key=key.encode(), partition=0)
            if commit:
                await producer.commit_transaction()
            else:
                await producer.abort_transaction()
        await producer.begin_transaction()
        await producer.send_and_wait(topic, None, key=b"c", partition=0)
        await producer.commit_transaction()
    finally:
        await producer.stop()


async def _restore(bootstrap: str, store: PartitionStore, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed", group_id=None)
    await consumer.start()
    try:
        return await restore(consumer, store, TopicPartition(topic, 0), max_age_ms=3_600_000)
    finally:
        await consumer.stop()


def test_restore_reads_what_the_store_lacks_committed_only(
    bootstrap_servers: str, topic_factory: Callable[..., str], tmp_path: Path
) -> None:
    topic = topic_factory("changelog", partitions=1, config={"cleanup.policy": "compact"})
    asyncio.run(_write_changelog(bootstrap_servers, topic))
    wait_for_last_stable_offsets(bootstrap_servers, topic, {0: 11})

    fresh = _store(tmp_path / "fresh.db")
    read = asyncio.run(_restore(bootstrap_servers, fresh, topic))
    assert dict(fresh.states()) == {b"a": b"a-True", b"b": b"b-True"}  # c deleted, d and a's rewrite aborted
    assert read == 5  # a, b, c, b, the tombstone of c
    end = fresh.position
    assert end >= 10  # past the last transaction's marker: nothing left to read
    assert asyncio.run(_restore(bootstrap_servers, fresh, topic)) == 0

    behind = _store(tmp_path / "behind.db")
    behind.apply([(b"a", b"a-True"), (b"b", b"b-True"), (b"c", b"c-True")], position=4)
    assert asyncio.run(_restore(bootstrap_servers, behind, topic)) == 2  # b again, c's tombstone
    assert dict(behind.states()) == {b"a": b"a-True", b"b": b"b-True"}
    assert behind.position == end

    ahead = _store(tmp_path / "ahead.db")
    ahead.apply([(b"zombie", b"state of another changelog")], position=end + 100)
    asyncio.run(_restore(bootstrap_servers, ahead, topic))
    assert dict(ahead.states()) == {b"a": b"a-True", b"b": b"b-True"}  # wiped and restored from scratch


_WRITER = """
import sys
from pathlib import Path
from streams.state_store import PartitionStore, store_options

store = PartitionStore(Path(sys.argv[1]), store_options(1 << 20, 64 << 10))
position = 0
while True:  # until killed: batches of 50 states, each bringing the store to a new changelog position
    position += 1
    store.apply([(f"c{n}".encode(), f"{position}:{n}".encode() * 40) for n in range(50)], position)
    if position == 200:
        print("written", flush=True)
"""


def test_a_killed_writer_leaves_a_whole_earlier_position(tmp_path: Path) -> None:
    """The store has no write-ahead log: a SIGKILLed process loses its writes since the last memtable flush. What
    is left must be one position's states exactly (whole batches, in order), for the restore to read on from it."""
    path = tmp_path / "partition-0.db"
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, cwd=REPO)
    assert writer.stdout is not None
    assert writer.stdout.readline() == b"written\n"
    time.sleep(0.5)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    store = _store(path)
    try:
        position = store.position
        assert position > 0, "the 64 KiB memtables flushed many times before the kill"
        assert dict(store.states()) == {f"c{n}".encode(): f"{position}:{n}".encode() * 40 for n in range(50)}
    finally:
        store.close()
