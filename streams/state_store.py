"""One input partition's customer states on local disk (RocksDB via rocksdict): a cache of the state changelog.

The changelog topic (compacted, one partition per input partition) is the state's record: every batch's changed
states go to it in the batch's transaction, with the batch's outputs and input offsets. The local database is
written only after that transaction committed, in one atomic write together with the changelog position it then
reflects, so it is never ahead of the changelog; after a crash it may be behind, and the partition's restore
(:mod:`streams.restore`) reads the changelog from that position. Hence no write-ahead log (as Kafka Streams' stores):
a crash loses the writes since RocksDB last flushed its memtable, whole writes and in order, so the store is at an
earlier position with exactly that position's states, and the restore reads the rest. A database that cannot be
opened for corruption (seen once after a SIGKILL: a MANIFEST naming a missing ``.sst``) is moved aside for a
post-mortem and the partition is restored from the whole changelog.

Keys are customer ids (UTF-8); values are the core's state bytes. Keys starting with ``0xff`` (never the first
byte of UTF-8) are the partition's own: its changelog position, and the partition clock's time (which is also a
changelog record, so a new host restores it).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import rocksdict

log = logging.getLogger("fatigue.state")

META_PREFIX: Final = b"\xff"
POSITION_KEY: Final = b"\xff\x00changelog-position"
CLOCK_KEY: Final = b"\xff\x00partition-clock"
WRITTEN_AT_KEY: Final = b"\xff\x00written-at"
STORE_VERSION: Final = "state-v2"

Change = tuple[bytes, "bytes | None"]  # (key, value; None deletes)


def encode_int(value: int | None) -> bytes:
    return b"" if value is None else value.to_bytes(8, "big", signed=True)


def decode_int(raw: bytes | None) -> int | None:
    return None if not raw else int.from_bytes(raw, "big", signed=True)


class PartitionStore:
    """The local states of one input partition (see the module docstring)."""

    def __init__(self, path: Path, options: rocksdict.Options) -> None:
        self.path = path
        self._options = options
        self._write_options = rocksdict.WriteOptions()
        # the changelog is the log (module docstring); rocksdict's stubs call this property a method
        self._write_options.disable_wal = True  # type: ignore[method-assign, assignment]
        self._db = self._open()

    def _open(self) -> rocksdict.Rdict:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return rocksdict.Rdict(str(self.path), self._options)
        except Exception as error:  # rocksdict raises plain Exception with RocksDB's status text
            if "corruption" not in str(error).lower():
                raise
            aside = self.path.with_name(f"{self.path.name}.corrupt-{time.time_ns()}")
            self.path.rename(aside)
            log.error(
                "the local state database %s is corrupt (%s); moved it to %s, the partition is restored from the "
                "changelog",
                self.path,
                error,
                aside,
            )
            return rocksdict.Rdict(str(self.path), self._options)

    def get(self, key: bytes) -> bytes | None:
        value: bytes | None = self._db.get(key)
        return value

    @property
    def position(self) -> int:
        """The changelog offset the store has read up to (the next one to apply); 0 when it has nothing."""
        return decode_int(self.get(POSITION_KEY)) or 0

    @property
    def clock_ms(self) -> int | None:
        return decode_int(self.get(CLOCK_KEY))

    @property
    def written_at_ms(self) -> int | None:
        """Wall-clock time of the last write (how stale the store may be)."""
        return decode_int(self.get(WRITTEN_AT_KEY))

    def apply(self, changes: Sequence[Change], position: int) -> None:
        """Write committed changes and the changelog position they bring the store to, atomically."""
        batch = rocksdict.WriteBatch(raw_mode=True)
        for key, value in changes:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(POSITION_KEY, encode_int(position))
        batch.put(WRITTEN_AT_KEY, encode_int(int(time.time() * 1000)))
        self._db.write(batch, self._write_options)

    def states(self) -> Iterator[tuple[bytes, bytes]]:
        """Every customer state stored: (customer key, state bytes)."""
        for key, value in self._db.items():
            if isinstance(key, bytes) and not key.startswith(META_PREFIX):
                yield key, value

    def estimated_customers(self) -> int:
        """RocksDB's estimate of the keys stored (cheap; the partition's own keys included)."""
        return int(self._db.property_int_value("rocksdb.estimate-num-keys") or 0)

    def size_bytes(self) -> int:
        """What RocksDB says it holds on disk and in memtables."""
        return sum(
            int(self._db.property_int_value(name) or 0)
            for name in ("rocksdb.total-sst-files-size", "rocksdb.cur-size-all-mem-tables")
        )

    def wipe(self) -> None:
        """Start from nothing (the changelog no longer covers what is stored)."""
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._db = self._open()

    def close(self) -> None:
        self._db.close()


def store_options(block_cache_bytes: int, write_buffer_bytes: int) -> rocksdict.Options:
    """Options for every partition store of a worker: one block cache shared by all of them, so memory does not
    grow with the partitions a worker owns; small memtables (states are written once per transaction)."""
    options = rocksdict.Options(raw_mode=True)
    options.create_if_missing(True)
    options.set_write_buffer_size(write_buffer_bytes)
    options.set_max_write_buffer_number(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(rocksdict.Cache(block_cache_bytes))
    options.set_block_based_table_factory(table)
    return options


def partition_path(data_dir: Path, partition: int) -> Path:
    return data_dir / STORE_VERSION / f"partition-{partition}.db"
