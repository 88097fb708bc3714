"""The state table's store on the real RocksDB: a corrupt partition database is set aside and opened empty (so
Faust restores the partition from the changelog) instead of crash-looping the worker; any other error (a lock
held by a database not yet released) still reaches Faust, which retries it."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from streams import store as restoring_store


def _store(datadir: Path) -> restoring_store.RestoringRocksDBStore:
    app = faust.App("store-test", store="rocksdb://", datadir=str(datadir), autodiscover=False)
    table = app.Table(
        "customer-state-v1",
        store=restoring_store.store_url("customer-state-v1"),
        key_type=bytes,
        value_type=bytes,
        default=None,
    )
    store = table.data
    assert isinstance(store, restoring_store.RestoringRocksDBStore)
    assert store.partition_path(0) == datadir / "v1" / "tables" / "customer-state-v1-0.db"  # as with Faust's store
    return store


def test_a_corrupt_partition_database_is_set_aside_and_opened_empty(tmp_path: Path):
    store = _store(tmp_path)
    path = store.partition_path(0)
    database = store._open_for_partition(0)
    for number in range(1000):
        database[f"cust-{number}".encode()] = b"state" * 20
    database.flush()
    database.close()
    # what a worker found after a SIGKILL: the MANIFEST names a table file that is gone
    tables = list(path.glob("*.sst"))
    assert tables
    for table_file in tables:
        table_file.unlink()

    reopened = store._open_for_partition(0)
    try:
        assert list(reopened.keys()) == []  # empty: recovery reads the partition back from the changelog
        reopened[b"cust-1"] = b"restored"
        assert reopened[b"cust-1"] == b"restored"
    finally:
        reopened.close()
    (aside,) = path.parent.glob(f"{path.name}.corrupt-*")
    assert any(aside.glob("MANIFEST-*")), "the corrupt database is kept for a post-mortem"


def test_other_open_errors_still_reach_faust(tmp_path: Path):
    store = _store(tmp_path)
    path = store.partition_path(0)
    database = store._open_for_partition(0)
    try:
        with pytest.raises(Exception, match=r"(?i)lock"):
            store._open_for_partition(0)  # Faust retries this one until the old handle is released
    finally:
        database.close()
    assert not list(path.parent.glob(f"{path.name}.corrupt-*"))
